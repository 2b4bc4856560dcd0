"""The training loop: CLIC steps alternating with plain CLIP steps, on every device and host.

Read top to bottom: config checks -> mesh -> input -> model and optimizer -> sharding -> update
steps -> checkpoint/resume -> loop (log, evaluate, checkpoint, preemption) -> export.
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
import jax.numpy as jnp
import numpy as np

from clic_jax import models
from clic_jax.data import images as images_lib
from clic_jax.data import pipeline as pipeline_lib
from clic_jax.data import sources as sources_lib
from clic_jax.train import checkpoint as ckpt_lib
from clic_jax.train import mesh as mesh_lib
from clic_jax.train import metrics as metrics_lib
from clic_jax.train import optimizer as opt_lib
from clic_jax.train import remote as remote_lib
from clic_jax.train import step as step_lib

log = logging.getLogger("clic_jax.train")


class ConfigError(ValueError):
  """A configuration value that cannot work; raised before anything is compiled."""


class NonFiniteLossError(RuntimeError):
  pass


# ------------------------------------------------------------------------------------------------
# Config -> the pieces. Durations are converted to steps here and nowhere else.


def compute_dtype(name: str):
  if name == "auto":
    return jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16
  try:
    return {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}[name]
  except KeyError:
    raise ConfigError(f"model.dtype={name!r}: use auto, float32, bfloat16 or float16") from None


def attention_impl(name: str) -> str | None:
  """model.attention_impl -> jax.nn.dot_product_attention's `implementation`.

  auto: cuDNN flash attention on NVIDIA GPUs (ViT-L-14 CLIC step 0.83x the time of XLA's
  attention on an H200, benchmarks/RESULTS.md), XLA's own elsewhere.
  """
  if name == "auto":
    return "cudnn" if _nvidia_gpu() else None
  if name not in ("", "xla", "cudnn"):
    raise ConfigError(f"model.attention_impl={name!r}: use auto, xla or cudnn")
  return name or None


def _nvidia_gpu() -> bool:
  if jax.default_backend() != "gpu":
    return False
  try:
    from jax.extend import backend
    return "cuda" in backend.get_backend().platform_version.lower()
  except Exception:   # unknown runtime: let XLA choose rather than fail
    return False


def source_spec(data) -> sources_lib.SourceSpec:
  kinds = [k for k in ("csv", "arrayrecord_dir", "tfds_name") if data.get(k)]
  if len(kinds) != 1:
    raise ConfigError("Set exactly one of config.data.csv (with data.image_root), "
                      f"data.arrayrecord_dir or data.tfds_name; got {kinds or 'none'}.")
  if data.get("csv") and not Path(data.csv).is_file():
    raise ConfigError(f"config.data.csv={data.csv!r} does not exist.")
  if data.get("arrayrecord_dir") and not Path(data.arrayrecord_dir).is_dir():
    raise ConfigError(f"config.data.arrayrecord_dir={data.arrayrecord_dir!r} is not a directory.")
  return sources_lib.SourceSpec(
      csv=data.get("csv") or None, image_root=data.get("image_root") or None,
      arrayrecord_dir=data.get("arrayrecord_dir") or None, tfds_name=data.get("tfds_name") or None,
      tfds_data_dir=data.get("tfds_data_dir") or None, tfds_split=data.get("tfds_split", "train"))


def step_pattern_for(config) -> tuple[str, ...]:
  mode = config.data.mode
  if mode == "negclip":
    return ("negclip",)
  if config.get("step_kinds"):            # explicit pattern, e.g. "clip" for plain CLIP training
    kinds = tuple(k.strip() for k in config.step_kinds.split(","))
    if not kinds or any(k not in ("clic", "clip") for k in kinds):
      raise ConfigError(f"config.step_kinds={config.step_kinds!r}: a comma list of clic/clip")
    return kinds
  return opt_lib.step_pattern(config.hard_negative_freq,
                              alternate_with_clip=config.get("alternate_with_clip", True))


def pipeline_config(config, image_size: int) -> pipeline_lib.PipelineConfig:
  data = config.data
  pattern = step_pattern_for(config)
  return pipeline_lib.PipelineConfig(
      source=source_spec(data), global_batch_size=config.global_batch_size,
      process_index=jax.process_index(), process_count=jax.process_count(),
      image_size=image_size, num_extra_positives=data.num_extra_positives,
      step_pattern=pattern if data.mode != "negclip" else ("clic",), mode=data.mode,
      seed=config.seed, concat_image_norm=data.concat_image_norm,
      num_threads=data.num_threads or None, prefetch_batches=data.prefetch_batches or None,
      mp_workers=data.get("mp_workers", 0), pos_backend=data.get("pos_backend", "auto"),
      context_length=data.get("context_length", 77), image_dtype=data.get("image_dtype", "uint8"))


def text_length_buckets(config) -> tuple[int, ...]:
  """data.text_length_buckets ("32,48,64", a tuple, or "" for none) as sorted ints."""
  value = config.data.get("text_length_buckets", "")
  items = value.split(",") if isinstance(value, str) else list(value)
  try:
    buckets = tuple(sorted({int(v) for v in items if str(v).strip()}))
  except ValueError:
    raise ConfigError(f"data.text_length_buckets={value!r}: a comma list of token counts, "
                      "e.g. \"32,48,64\", or \"\"") from None
  if any(b < 2 for b in buckets):
    raise ConfigError(f"data.text_length_buckets={value!r}: lengths must be at least 2")
  return buckets


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


def check_config(config) -> None:
  """Everything that can be checked before touching data or compiling."""
  try:
    models.get_model_config(config.model.name)
  except models.UnknownModelError as e:
    raise ConfigError(f"config.model.name: {e}") from None
  num_devices = jax.device_count()
  if config.global_batch_size <= 0 or config.global_batch_size % num_devices:
    raise ConfigError(f"config.global_batch_size={config.global_batch_size} must be a positive "
                      f"multiple of the device count ({num_devices}).")
  if num_devices % config.mesh.fsdp:
    raise ConfigError(f"config.mesh.fsdp={config.mesh.fsdp} must divide the device count "
                      f"({num_devices}).")
  if config.total_steps <= 0 and config.num_epochs <= 0:
    raise ConfigError("Set config.total_steps > 0 or config.num_epochs > 0.")
  if config.data.mode not in pipeline_lib.MODES:
    raise ConfigError(f"config.data.mode={config.data.mode!r}: use one of {pipeline_lib.MODES}")
  attention_impl(config.model.get("attention_impl", "auto"))
  text_length_buckets(config)
  init = config.get("init_from", "")
  if init and not (Path(init).exists() or ":" in init or "/" not in init):
    raise ConfigError(f"config.init_from={init!r}: no such file (use a weights file, a pretrained "
                      "tag such as 'openai', or 'hf-hub:org/repo').")
  compute_dtype(config.model.dtype)
  hard_negative_sets(config)
  if not isinstance(config.loss.get("mask_invalid_negatives", True), bool):
    raise ConfigError(f"config.loss.mask_invalid_negatives="
                      f"{config.loss.mask_invalid_negatives!r}: use True or False")
  if config.get("evals"):
    from clic_jax.evaluate import check_arguments
    for name, kwargs in config.evals.items():
      try:
        check_arguments(name, dict(kwargs))
      except ValueError as e:
        raise ConfigError(f"config.evals: {e}") from None


def freeze_patterns(config) -> tuple[str, ...]:
  """config.freeze without empty entries, so `--config.freeze=` on the command line freezes nothing."""
  return tuple(p for p in config.freeze if p)


# loss.hard_negative_sets -> how many leading positive sets the separate 2-way term averages over.
_HARD_NEGATIVE_SETS = {"all": None, "minimal": 2}   # minimal: p1, p2 (same words as the negative)


def hard_negative_sets(config) -> int | None:
  """config.loss.hard_negative_sets ("all" or "minimal") as losses.clic_loss's `sneg_sets`."""
  value = config.loss.get("hard_negative_sets", "all")
  if value not in _HARD_NEGATIVE_SETS:
    raise ConfigError(f"config.loss.hard_negative_sets={value!r}: use one of "
                      f"{tuple(_HARD_NEGATIVE_SETS)}")
  sets = _HARD_NEGATIVE_SETS[value]
  if sets is not None and not config.loss.separate_negatives:
    raise ConfigError(f"config.loss.hard_negative_sets={value!r} needs "
                      "config.loss.separate_negatives=True: the unified variant has no separate "
                      "hard-negative term to restrict.")
  if sets is not None and config.data.mode == "negclip":
    raise ConfigError(f"config.loss.hard_negative_sets={value!r} does not apply to "
                      "data.mode='negclip': its steps use the unified loss (one positive, no "
                      "separate hard-negative term).")
  return sets


def loss_weights(config) -> step_lib.LossWeights:
  # The baseline has no uni-modal loss (docs/method.md, "Training variants").
  uni = 0.0 if config.data.mode == "baseline" else config.loss.uni
  return step_lib.LossWeights(
      cont=config.loss.cont, sneg=config.loss.sneg, uni=uni,
      separate_negatives=config.loss.separate_negatives, sneg_sets=hard_negative_sets(config),
      mask_invalid_negatives=config.loss.get("mask_invalid_negatives", True))


def initial_params(config, cfg: models.ClipConfig):
  """open_clip weights from config.init_from (file, tag, hf-hub:, local-dir:), else random."""
  if not config.get("init_from"):
    return models.init_params(models.build_model(cfg), config.seed)
  from clic_jax.interop import load_open_clip
  _, params = load_open_clip(config.model.name, config.init_from)
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
  main = "clic" if "clic" in kinds else kinds[-1]
  row.update({t: row[f"{main}/{t}"] for t in _TERMS if f"{main}/{t}" in row})
  row.update({k: float(fetched[-1][k]) for k in ("lr", "logit_scale", "grad_norm")
              if k in fetched[-1]})
  return row


def export_final(cfg: models.ClipConfig, params, workdir) -> str:
  """WORKDIR/open_clip/ (open_clip's config + safetensors); for a remote workdir written in a local
  temporary folder and copied up."""
  from clic_jax.interop import export_open_clip
  if not remote_lib.is_remote(workdir):
    return str(export_open_clip(cfg, params, Path(workdir) / "open_clip"))
  with tempfile.TemporaryDirectory(prefix="clic_jax_export_") as local:
    export_open_clip(cfg, params, Path(local) / "open_clip")
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
  """Trains (or resumes) in `workdir`; returns a summary with the final step and metrics."""
  check_config(config)
  is_primary = jax.process_index() == 0
  model_name = config.model.name
  cfg = models.get_model_config(model_name)

  # Mesh.
  mesh = mesh_lib.make_mesh(config.mesh.fsdp)

  # Input.
  pcfg = pipeline_config(config, cfg.vision.image_size)
  source = sources_lib.open_source(pcfg.source, num_threads=pcfg.num_threads)
  # Optimizer updates; each takes optim.grad_accum_steps batches.
  total_steps = config.total_steps if config.total_steps > 0 else max(
      1, config.num_epochs * pipeline_lib.steps_per_epoch(pcfg, source)
      // config.optim.grad_accum_steps)
  data_iter = pipeline_lib.make_train_iterator(pcfg, source=source)
  pattern = pcfg.pattern

  # Model and optimizer.
  model = models.build_model(cfg, dtype=compute_dtype(config.model.dtype),
                             remat=config.model.remat,
                             attention_impl=attention_impl(config.model.get("attention_impl",
                                                                            "auto")))
  params = initial_params(config, cfg)
  optim = config.optim
  tx = opt_lib.make_optimizer(
      params, total_steps=total_steps, lr=optim.lr, lr_start=optim.lr_start, lr_end=optim.lr_end,
      warmup_fraction=optim.warmup_fraction, weight_decay=optim.weight_decay, b1=optim.b1,
      b2=optim.b2, eps=optim.eps, freeze=freeze_patterns(config),
      grad_accum_steps=optim.grad_accum_steps, clip_grad_norm=optim.clip_grad_norm or None)
  schedule = opt_lib.lr_schedule(total_steps, optim.lr, optim.lr_start, optim.lr_end,
                                 optim.warmup_fraction)
  micro = optim.grad_accum_steps

  # Sharding: parameters by the FSDP rule (replicated when mesh.fsdp == 1), batch over all devices.
  params = jax.device_put(params, mesh_lib.tree_shardings(mesh, params))
  state = jax.jit(lambda p: step_lib.create_state(p, tx, freeze_patterns(config)))(params)
  state = jax.device_put(state, mesh_lib.tree_shardings(mesh, state))
  state_sharding = jax.tree.map(lambda x: x.sharding, state)
  del params
  if is_primary:
    log.info("model %s: %.1fM trainable, %.1fM frozen parameters; %d devices (%s), mesh %s; "
             "%d steps of global batch %d, pattern %s", model_name,
             opt_lib.count_params(state.trainable) / 1e6, opt_lib.count_params(state.frozen) / 1e6,
             jax.device_count(), jax.default_backend(), dict(mesh.shape), total_steps,
             config.global_batch_size, pattern)

  # Update steps: one compiled function per (step kind, image normalization), made on first use;
  # the train state is donated. uint8 batches are normalized inside the step, on the device.
  weights = loss_weights(config)
  text_calls = config.model.get("text_calls", "auto")
  if text_calls not in ("auto", "batched", "separate"):
    raise ConfigError(f"model.text_calls={text_calls!r}: use auto, batched or separate")
  # auto = one batched call everywhere: with the CPU's scanned layers (models/clip.py) it beats
  # one call per caption set there too (8.30 s vs 9.13 s per ViT-B-32 step, benchmarks/RESULTS.md).
  separate_text_calls = text_calls == "separate"
  steps: dict[tuple[str, str], Any] = {}

  def step_fn(kind: str, image_norm: str | None):
    if (kind, image_norm) not in steps:
      norm = images_lib.normalization_constants(image_norm) if image_norm else None
      steps[kind, image_norm] = jax.jit(
          step_lib.make_train_step(model, tx, kind, weights, config.clamp_logit_scale,
                                   lambda s: schedule(s // micro), image_norm=norm,
                                   separate_text_calls=separate_text_calls),
          in_shardings=(state_sharding, mesh_lib.batch_sharding(mesh)),
          out_shardings=(state_sharding, mesh_lib.replicated(mesh)), donate_argnums=0)
    return steps[kind, image_norm]

  # Simulated CPU devices share one thread pool, and multi-device programs in flight at once (the
  # next step, orbax's background save and its cross-device barrier) can leave a collective short
  # of participants (XLA aborts after 40 s). As a precaution steps and saves run one at a time
  # there; accelerators execute in stream order and keep asynchronous dispatch and saving.
  sync_each_step = jax.default_backend() == "cpu" and jax.device_count() > 1

  # Checkpoint / resume.
  ckpt = ckpt_lib.Checkpointer(workdir, keep=config.keep_checkpoints,
                               use_async=config.async_checkpointing and not sync_each_step)
  if is_primary:
    ckpt_lib.write_model_info(workdir, model_name, cfg)
  start = ckpt.latest_step()
  if start is not None:
    state = ckpt.restore(state, data_iter, start)
    log.info("Resumed from %s at step %d.", ckpt.directory, start)
  step = int(jax.device_get(state.step))

  # Loop.
  writer = metrics_lib.MetricsWriter(workdir, enabled=is_primary,
                                     tensorboard=config.get("tensorboard", True))
  progress = metrics_lib.Progress(total_steps * micro, step)
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
    row.update(progress.update(step_now, config.global_batch_size))
    row.update({f"pipeline/{k}": v for k, v in pipeline_counts.items()})
    return row

  buckets = text_length_buckets(config)
  # closing(writer): the rows so far reach the workdir (a bucket too) even when a step raises.
  with _Preemption() as preemption, contextlib.closing(writer):
    while step < total_steps * micro:
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
      if weights.mask_invalid_negatives and "negative_valid" in host_batch:   # clic/negclip steps
        arrays["negative_valid"] = host_batch["negative_valid"]
      device_batch = mesh_lib.global_batch(mesh, arrays)
      on_device_norm = host_batch["image_norm"] if host_batch["images"].dtype == np.uint8 else None
      state, metrics = step_fn(kind, on_device_norm)(state, device_batch)
      if sync_each_step:
        jax.block_until_ready(metrics)
      step += 1
      pending.append((step, kind, metrics))

      if step % config.log_every_steps == 0 or step == total_steps * micro:
        last = flush_metrics(step)
        writer.write(step, last)
        if is_primary:
          log.info(metrics_lib.Progress.line(step, total_steps * micro, last))

      if config.eval_every_steps and step % config.eval_every_steps == 0 and config.get("evals"):
        writer.write(step, run_evals(config, cfg, state.params))

      preempted = preemption.requested or ckpt.reached_preemption(step)
      if config.get("debug_sigterm_at_step") and step == config.debug_sigterm_at_step:
        signal.raise_signal(signal.SIGTERM)      # tests: exercise the real preemption path
        preempted = preemption.requested
      if preempted or step % config.checkpoint_every_steps == 0 or step == total_steps * micro:
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
  summary = {"step": step, "total_steps": total_steps * micro, "preempted": preempted,
             "metrics": last, "pipeline": dict(pipeline_counts)}
  if not preempted and config.get("export_open_clip", True):
    params = mesh_lib.gather_to_host(state.params)     # a collective: every host takes part
    if is_primary:
      summary["export"] = export_final(cfg, params, workdir)
  return summary


def run_evals(config, cfg: models.ClipConfig, params) -> dict[str, float]:
  """The configured benchmarks on the current params, in float32, as flat 'eval/...' metrics.

  Every host gathers the whole params and runs the whole evaluation on its own devices (no
  collectives inside), so all hosts log the same numbers; process 0 writes them. A benchmark
  that fails (its data gone or unreadable since the run began) is logged with its traceback and
  shows as `eval/<name>/failed` = 1; the other benchmarks and the training go on.
  """
  from clic_jax import evaluate
  results = evaluate.evaluate(models.build_model(cfg), mesh_lib.gather_to_host(params),
                              benchmarks={k: dict(v) for k, v in config.evals.items()},
                              batch_size=config.get("eval_batch_size", 256), on_error="record")
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
