"""The training loop: CLIC steps alternating with plain CLIP steps, on every device and host.

Read top to bottom: run spec (config.run_spec: every check, before anything is read or compiled)
-> workdir claim (workdir.claim: the lock, the config checked against the checkpoint's) -> mesh
-> input -> model and optimizer -> sharding -> update steps -> checkpoint/resume -> loop
(log, evaluate, checkpoint, preemption) -> export.
"""
from __future__ import annotations

import collections
import contextlib
import logging
import signal
import tempfile
from pathlib import Path
from typing import Any

import jax
import numpy as np

from clic_jax import models, modes
from clic_jax.data import images as images_lib
from clic_jax.data import pipeline as pipeline_lib
from clic_jax.data import sources as sources_lib
from clic_jax.train import checkpoint as ckpt_lib
from clic_jax.train import config as config_lib
from clic_jax.train import mesh as mesh_lib
from clic_jax.train import metrics as metrics_lib
from clic_jax.train import optimizer as opt_lib
from clic_jax.train import remote as remote_lib
from clic_jax.train import step as step_lib
from clic_jax.train import workdir as workdir_lib

log = logging.getLogger("clic_jax.train")


class NonFiniteLossError(RuntimeError):
  pass


def agreed_text_length(length: int) -> int:
  """The longest of every host's row length for this step; every host calls it once per step.

  The texts of a step form one global array, so all hosts must cut their rows to the same
  length. One host needs no agreement. Several exchange their lengths with a small all-gather;
  it waits for the step before it on the devices (collectives run in order), so the host
  prepares each batch one step later than it could: a pause of the batch's transfer between
  steps, against the text tower running 77/48 = 1.6x fewer positions for short captions.
  `data.text_length_buckets=""` turns both off.
  """
  if jax.process_count() == 1:
    return length
  from jax.experimental import multihost_utils
  return int(np.max(multihost_utils.process_allgather(np.asarray(length, np.int32))))


def initial_params(spec: config_lib.RunSpec, cfg: models.ClipConfig):
  """open_clip weights from init_from (file, tag, hf-hub:, local-dir:), else random."""
  if not spec.model.init_from:
    return models.init_params(models.build_model(cfg), spec.seed)
  from clic_jax.interop import load_open_clip
  _, params = load_open_clip(spec.model.name, spec.model.init_from)
  return params


# Loss terms shown at the top level of a log row, taken from the CLIC steps when there are any.
_TERMS = ("contrastive_loss", "img_to_txt_loss", "txt_to_img_loss", "sneg_loss", "uni_modal_loss",
          "accuracy")


def summarize_window(kinds: list[str], fetched: list[dict]) -> dict[str, float]:
  """One log row for the steps since the last one: `loss` averaged over all of them, every metric
  averaged per step kind as `<kind>/<name>`, the loss terms of the CLIC steps at the top level, and
  lr / logit_scale / grad_norm of the latest step."""
  row: dict[str, float] = {"loss": float(np.mean([m["loss"] for m in fetched]))}
  for kind in sorted(set(kinds)):
    of_kind = [m for k, m in zip(kinds, fetched) if k == kind]
    for key in of_kind[0]:
      if key != "nonfinite":
        row[f"{kind}/{key}"] = float(np.mean([m[key] for m in of_kind]))
  main = next((k for k in kinds if modes.STEP_KINDS[k].has_negative), kinds[-1])
  row.update({t: row[f"{main}/{t}"] for t in _TERMS if f"{main}/{t}" in row})
  row.update({k: float(fetched[-1][k]) for k in ("lr", "logit_scale", "grad_norm")
              if k in fetched[-1]})
  return row


def export_final(name: str | models.ClipConfig, params, workdir) -> str:
  """WORKDIR/open_clip/ (open_clip's config + safetensors, with the model's own preprocess_cfg:
  CLIPA's ImageNet mean/std, CLIP's otherwise); for a remote workdir written in a local temporary
  folder and copied up."""
  from clic_jax.interop import export_open_clip, preprocess_config
  preprocess = preprocess_config(name) if isinstance(name, str) else None   # None: CLIP's
  if not remote_lib.is_remote(workdir):
    return str(export_open_clip(name, params, Path(workdir) / "open_clip", preprocess=preprocess))
  with tempfile.TemporaryDirectory(prefix="clic_jax_export_") as local:
    export_open_clip(name, params, Path(local) / "open_clip", preprocess=preprocess)
    remote_lib.upload_tree(Path(local), str(workdir))
  return remote_lib.join(str(workdir), "open_clip")


# ------------------------------------------------------------------------------------------------
# Preemption: SIGTERM sets a flag; the loop saves at the next step boundary and exits cleanly.


class _Preemption:
  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:                    # not the main thread (e.g. some notebook runners)
      self._previous = None
    return self

  def _handle(self, signum, frame):
    log.warning("SIGTERM received: saving a checkpoint at the next step boundary, then exiting.")
    self.requested = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


# ------------------------------------------------------------------------------------------------
# The run.


def train(config, workdir: str | Path) -> dict[str, Any]:
  """Trains (or resumes) in `workdir`; returns a summary with the final step and metrics.

  Before anything is read or compiled the run claims the workdir (workdir.claim): its lock, and
  a config that its checkpoint accepts, recorded in WORKDIR/config.json.
  """
  spec = config_lib.run_spec(config)
  with workdir_lib.claim(workdir, config, stale_after_s=spec.checkpointing.lock_timeout_s):
    return _train(spec, workdir)


def _train(spec: config_lib.RunSpec, workdir: str | Path) -> dict[str, Any]:
  is_primary = jax.process_index() == 0
  cfg = spec.model.architecture
  schedule_spec, report = spec.schedule, spec.reporting

  # Mesh.
  mesh = mesh_lib.make_mesh(spec.fsdp)

  # Input.
  pcfg = spec.pipeline_config(cfg.vision.image_size)
  try:
    source = sources_lib.open_source(pcfg.source, num_threads=pcfg.num_threads or 16)
  except FileNotFoundError as e:       # the reader knows what is missing; still a config value
    raise config_lib.ConfigError(f"config.data: {e}") from None
  total_steps = schedule_spec.optimizer_updates(pipeline_lib.steps_per_epoch(pcfg, source))
  data_iter = pipeline_lib.make_train_iterator(pcfg, source=source, tokenize_fn=spec.tokenize_fn())
  kinds = {kind.name: kind for kind in pcfg.pattern}

  # Model and optimizer.
  model = models.build_model(cfg, dtype=spec.model.compute_dtype, remat=spec.model.remat,
                             attention_impl=spec.model.attention)
  params = initial_params(spec, cfg)
  tx = spec.optim.transformation(params, total_steps)
  schedule = spec.optim.learning_rate(total_steps)

  # Sharding: parameters by the FSDP rule (replicated when mesh.fsdp == 1), batch over all devices.
  params = jax.device_put(params, mesh_lib.tree_shardings(mesh, params))
  state = jax.jit(lambda p: step_lib.create_state(p, tx, spec.optim.freeze))(params)
  state = jax.device_put(state, mesh_lib.tree_shardings(mesh, state))
  state_sharding = jax.tree.map(lambda x: x.sharding, state)
  del params
  if is_primary:
    log.info("model %s: %.1fM trainable, %.1fM frozen parameters; %d devices (%s), mesh %s; "
             "%d steps of global batch %d, pattern %s", spec.model.name,
             opt_lib.count_params(state.trainable) / 1e6, opt_lib.count_params(state.frozen) / 1e6,
             jax.device_count(), jax.default_backend(), dict(mesh.shape), total_steps,
             schedule_spec.global_batch_size, tuple(kind.name for kind in pcfg.pattern))

  # Update steps: one compiled function per (step kind, image normalization), made on first use;
  # the train state is donated. uint8 batches are normalized inside the step, on the device.
  steps: dict[tuple[str, str], Any] = {}

  def step_fn(kind: str, image_norm: str | None):
    if (kind, image_norm) not in steps:
      norm = images_lib.normalization_constants(image_norm) if image_norm else None
      steps[kind, image_norm] = jax.jit(
          step_lib.make_train_step(model, tx, kinds[kind], spec.loss,
                                   spec.optim.clamp_logit_scale, schedule, image_norm=norm,
                                   micro_batches=spec.optim.grad_accum_steps,
                                   micro_sharding=mesh_lib.micro_batch_sharding(mesh)),
          in_shardings=(state_sharding, mesh_lib.batch_sharding(mesh)),
          out_shardings=(state_sharding, mesh_lib.replicated(mesh)), donate_argnums=0)
    return steps[kind, image_norm]

  # Simulated CPU devices share one thread pool, and multi-device programs in flight at once (the
  # next step, orbax's background save and its cross-device barrier) can leave a collective short
  # of participants (XLA aborts after 40 s). As a precaution steps and saves run one at a time
  # there; accelerators execute in stream order and keep asynchronous dispatch and saving.
  sync_each_step = jax.default_backend() == "cpu" and jax.device_count() > 1

  # Checkpoint / resume.
  ckpt = ckpt_lib.Checkpointer(workdir, keep=spec.checkpointing.keep,
                               use_async=spec.checkpointing.use_async and not sync_each_step)
  if is_primary:
    ckpt_lib.write_model_info(workdir, spec.model.name, cfg)
  start = ckpt.latest_step()
  if start is not None:
    state = ckpt.restore(state, data_iter, start)
    log.info("Resumed from %s at step %d.", ckpt.directory, start)
  step = int(jax.device_get(state.step))

  # Loop.
  # start_step: rows an earlier run logged after the checkpoint resumed from are dropped (redone).
  writer = metrics_lib.MetricsWriter(workdir, enabled=is_primary, tensorboard=report.tensorboard,
                                     start_step=step)
  last_step = total_steps
  progress = metrics_lib.Progress(last_step, step)
  pending: list[tuple[int, str, dict]] = []
  pipeline_counts: collections.Counter[str] = collections.Counter()
  last: dict[str, float] = {}
  preempted = False

  def flush_metrics(step_now: int) -> dict[str, float]:
    """Fetches the queued step metrics (one host sync), checks them, and summarizes the window."""
    fetched = jax.device_get([m for _, _, m in pending])
    for (s, _, _), m in zip(pending, fetched):
      if int(m["nonfinite"]):
        raise NonFiniteLossError(
            f"Step {s}: the loss or gradient is not finite (loss={float(m['loss'])}); the update "
            f"was not applied and the run stops. The last checkpoint in {ckpt.directory} is good. "
            "Lower optim.lr, check the data, or use model.dtype=float32.")
    row = summarize_window([k for _, k, _ in pending], fetched)
    pending.clear()
    row.update(progress.update(step_now, schedule_spec.global_batch_size))
    row.update({f"pipeline/{k}": v for k, v in pipeline_counts.items()})
    return row

  buckets = spec.data.text_length_buckets
  # closing(writer): the rows so far reach the workdir (a bucket too) even when a step raises.
  with _Preemption() as preemption, contextlib.closing(writer):
    while step < last_step:
      host_batch = next(data_iter)
      kind = host_batch["kind"]
      for key, value in host_batch.get("stats", {}).items():
        pipeline_counts[key] += int(np.sum(value))
      texts = host_batch["texts"]
      if buckets:   # exact: padding columns after the longest caption (one compile per length)
        own = pipeline_lib.text_length_for(texts, buckets)
        length = agreed_text_length(own)
        texts = texts[..., :length]
        pipeline_counts[f"text_length_{length}"] += 1
        pipeline_counts["text_length_raised"] += int(length > own)   # agreed above this host's
      arrays = {"images": host_batch["images"], "texts": texts}
      if spec.loss.mask_invalid_negatives and "negative_valid" in host_batch:
        arrays["negative_valid"] = host_batch["negative_valid"]
      device_batch = mesh_lib.global_batch(mesh, arrays)
      on_device_norm = host_batch["image_norm"] if host_batch["images"].dtype == np.uint8 else None
      state, metrics = step_fn(kind, on_device_norm)(state, device_batch)
      if sync_each_step:
        jax.block_until_ready(metrics)
      step += 1
      pending.append((step, kind, metrics))

      if step % report.log_every_steps == 0 or step == last_step:
        last = flush_metrics(step)
        writer.write(step, last)
        if is_primary:
          log.info(metrics_lib.Progress.line(step, last_step, last))

      if report.evaluates_at(step):
        writer.write(step, run_evals(report, cfg, state.params, spec.model.name))

      preempted = preemption.requested or ckpt.reached_preemption(step)
      if spec.debug_sigterm_at_step and step == spec.debug_sigterm_at_step:
        signal.raise_signal(signal.SIGTERM)      # tests: exercise the real preemption path
        preempted = preemption.requested
      if preempted or step % spec.checkpointing.every_steps == 0 or step == last_step:
        if pending:
          last = flush_metrics(step)             # never checkpoint past an unchecked step
        ckpt.save(step, state, data_iter, force=True)
      if preempted:
        log.warning("Preempted at step %d: checkpoint saved; rerun the same command to resume.",
                    step)
        break

  ckpt.close()
  if hasattr(data_iter, "close"):
    data_iter.close()
  summary = {"step": step, "total_steps": last_step, "preempted": preempted,
             "metrics": last, "pipeline": dict(pipeline_counts)}
  if not preempted and report.export_open_clip:
    params = mesh_lib.gather_to_host(state.params)     # a collective: every host takes part
    if is_primary:
      summary["export"] = export_final(spec.model.name, params, workdir)
  return summary


def run_evals(report: config_lib.ReportSpec, cfg: models.ClipConfig, params,
              name: str | None = None) -> dict[str, float]:
  """The configured benchmarks on the current params, in float32, as flat 'eval/...' metrics.

  Every host gathers the whole params and runs the whole evaluation on its own devices (no
  collectives inside), so all hosts log the same numbers; process 0 writes them. A benchmark
  that fails (its data gone or unreadable since the run began) is logged with its traceback and
  shows as `eval/<name>/failed` = 1; the other benchmarks and the training go on.
  """
  from clic_jax import evaluate
  from clic_jax.interop import preprocess_config
  # The model's own image preprocessing (CLIPA: ImageNet mean/std, squashed); its tokenizer is
  # the Embedder's default, clic_jax.get_tokenizer(cfg).
  results = evaluate.evaluate(models.build_model(cfg), mesh_lib.gather_to_host(params),
                              benchmarks={k: dict(v) for k, v in report.evals.items()},
                              batch_size=report.eval_batch_size, on_error="record",
                              preprocess=preprocess_config(name) if name else None)
  flat = {}

  def walk(prefix, node):
    if isinstance(node, dict):
      for k, v in node.items():
        walk(f"{prefix}/{k}", v)
    elif isinstance(node, (int, float)) and not isinstance(node, bool):
      flat[prefix] = float(node)

  walk("eval", results)
  if jax.process_index() == 0:
    log.info("eval: %s", ", ".join(f"{k}={v:.4f}" for k, v in sorted(flat.items())))
  return flat
