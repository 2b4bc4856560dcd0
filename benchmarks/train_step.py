"""Training-step speed: clic_jax's jitted CLIC and CLIP steps against the same step in PyTorch.

  python -m benchmarks.train_step --batch_sizes=8,16 --repeats=5 --json=out.json

Both sides do the same work from the same weights on the same batch (fp32, CPU):
- model: open_clip's `create_model(name)` (random init, seeded); its state dict is copied into
  clic_jax with `clic_jax.load_open_clip(name, state_dict_as_numpy)`;
- CLIC step: B images through the frozen vision tower (forward only: torch.no_grad / the frozen half
  of clic_jax's TrainState), the 5*B captions [p1 | p2 | p3 | p4 | neg] in one encode_text call, the
  CLIC loss with separate negatives and the uni-modal term (docs/method.md, "Total loss"; weights
  0.5/0.5/1.0), backward through the text tower and logit_scale, AdamW (betas 0.9/0.98, eps 1e-8,
  weight decay 0.1 on trainable matrices only), logit_scale clamped to [0, ln 100];
- CLIP step: the same with one caption per image and the symmetric CLIP loss.
The first step's losses of the two frameworks are printed and compared (they start from the same
weights), so the timing compares equal computations.

Token rows. The batch holds 77-token rows, as open_clip's tokenizer writes them. Four steps run:
- `clic_jax`: the step as clic_jax's trainer runs it: rows cut after the batch's longest caption to
  the shortest of the trainer's `data.text_length_buckets` (exact: the text tower is causal and
  pools at the end-of-text token; done on the host before the batch goes to the device);
- `torch`: open_clip as the reference trains it, on the 77-token rows;
- `clic_jax_full_rows` and `torch_trimmed_rows` (`equal_rows=True`): each framework on the other's
  rows, so the framework comparison at equal work is in the same run.
`train_step_ratio_vs_torch` = clic_jax / torch (the two as their trainers run); the equal-work
ratios are `same_rows_full_ratio` (77 rows each) and `same_rows_trimmed_ratio`.

Host memory: by default the steps run inside `host_malloc.kept_freed_memory()` (glibc keeps freed
blocks in the process), the same for both frameworks; without it every XLA:CPU step maps and
page-faults a fresh 3.5 GB temporary block. Each row records both frameworks' minor page faults
per step. `--malloc=default` measures glibc's defaults.

Timing: `warmup` untimed steps per framework (compile, allocator warm-up), then `repeats` rounds,
each timing one step of every framework back to back (alternating, so both see the same machine
load), and the median per framework. torch gets `torch.set_num_threads(cpu_count)`; XLA's CPU
client uses all cores by default. jax steps donate the train state and block until the new state
is ready; the batch is already on the device (the trainer prefetches it there).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time

import numpy as np

from benchmarks import host_malloc
from benchmarks.text_calls import SeparateTextCalls

SOT, EOT = 49406, 49407
NUM_POSITIVES = 4
OPTIM = {"lr": 1e-6, "b1": 0.9, "b2": 0.98, "eps": 1e-8, "weight_decay": 0.1}


# ---------------------------------------------------------------------------------------------------
# Shared inputs.


def texts_per_image(kind: str) -> int:
  return NUM_POSITIVES + 1 if kind == "clic" else 1


def make_batch(cfg, batch_size: int, kind: str, seed: int = 0) -> dict:
  """Normalized-looking images (B, S, S, 3) and token rows (B, K, L) shaped like real captions."""
  rng = np.random.default_rng(seed)
  size, length = cfg.vision.image_size, cfg.text.context_length
  images = rng.standard_normal((batch_size, size, size, 3), dtype=np.float32)
  k = texts_per_image(kind)
  texts = np.zeros((batch_size, k, length), np.int32)
  lengths = rng.integers(6, min(40, length - 1), size=(batch_size, k))
  # Ids inside the model's vocabulary (CLIPA's WordPiece has 32000: CLIP's ids would be NaN).
  vocab = cfg.text.vocab_size
  sot, eot, top = (SOT, EOT, 49000) if vocab > EOT else (vocab - 2, vocab - 1, vocab - 2)
  for b in range(batch_size):
    for j in range(k):
      n = lengths[b, j]
      texts[b, j, 0] = sot
      texts[b, j, 1:n] = rng.integers(1, top, size=n - 1)
      texts[b, j, n] = eot
  return {"images": images, "texts": texts}


def trainer_rows(texts: np.ndarray, cfg=None) -> np.ndarray:
  """The token rows as clic_jax's trainer feeds them to the step (default text_length_buckets;
  full length for a tower whose rows are not trimmable, such as CLIPA's)."""
  from clic_jax.data.pipeline import text_length_for
  from clic_jax.models import rows_trimmable
  from clic_jax.train import config
  if cfg is not None and not rows_trimmable(cfg):
    return texts
  buckets = config.parse_text_length_buckets(config.default_config().data.text_length_buckets)
  return np.ascontiguousarray(texts[..., :text_length_for(texts, buckets)])


def flat_texts(texts: np.ndarray) -> np.ndarray:
  """(B, K, L) -> (K*B, L) in the order [p1 block | p2 block | ... | neg block] of clic_jax."""
  b, k, length = texts.shape
  return np.ascontiguousarray(np.swapaxes(texts, 0, 1).reshape(k * b, length))


# ---------------------------------------------------------------------------------------------------
# PyTorch side: open_clip model, the CLIC loss (docs/method.md, "Total loss"), torch AdamW.


def torch_model(name: str, seed: int = 0, context_length: int | None = None):
  """open_clip's model (random init, seeded); `context_length` builds it for shorter token rows."""
  import open_clip
  import torch

  from clic_jax.models import config_to_open_clip, get_model_config
  torch.manual_seed(seed)
  if name in open_clip.list_models():
    return open_clip.create_model(name, force_context_length=context_length)
  cfg = config_to_open_clip(get_model_config(name))   # tiny test models
  if context_length:
    cfg["text_cfg"]["context_length"] = context_length
  return open_clip.model.CLIP(**cfg)


def load_for_rows(model, state_dict: dict) -> None:
  """Loads a full-length state dict into a model built for shorter rows: the text positional
  embedding is cut to the model's length (the causal mask is a buffer built at that length)."""
  length = model.positional_embedding.shape[0]
  model.load_state_dict({k: v[:length] if k == "positional_embedding" else v
                         for k, v in state_dict.items()})


def torch_clic_loss(img, txt, scale, batch_size: int):
  """CLIC loss, separate negatives + uni-modal term (docs/method.md, "Total loss").

  img (B, D) and txt ((P+1)*B, D) L2-normalized, txt = [p1; p2; p3; p4; neg].
  """
  import torch
  import torch.nn.functional as F
  b = batch_size
  pos = txt[:NUM_POSITIVES * b].view(NUM_POSITIVES, b, -1)
  neg = txt[NUM_POSITIVES * b:]
  labels = torch.arange(b, device=img.device)
  i2t, t2i, sneg = [], [], []
  own_neg = scale * (img * neg).sum(-1)
  for i in range(NUM_POSITIVES):
    logits = scale * img @ pos[i].T                 # (B images, B captions of set i)
    i2t.append(F.cross_entropy(logits, labels))
    t2i.append(F.cross_entropy(logits.T, labels))
    two_way = torch.stack([logits.diagonal(), own_neg], dim=1)   # [s<I,p_i>, s<I,n>], target 0
    sneg.append(F.cross_entropy(two_way, torch.zeros(b, dtype=torch.long, device=img.device)))
  contrastive = (torch.stack(i2t).mean() + torch.stack(t2i).mean()) / 2
  uni = (pos[0] - pos[1]).pow(2).sum(-1).mean()
  from clic_jax.train.config import loss_spec   # the trainer's default weights
  weights = loss_spec()
  return (weights.cont * contrastive + weights.sneg * torch.stack(sneg).mean()
          + weights.uni * uni)


def torch_clip_loss(img, txt, scale):
  import torch
  import torch.nn.functional as F
  logits = scale * img @ txt.T
  labels = torch.arange(img.shape[0], device=img.device)
  return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


class TorchStep:
  """One open_clip training step with the reference's optimizer and freezing.

  See docs/method.md, "Freezing and optimizer".

  `amp_dtype` (e.g. torch.bfloat16) runs the forward under autocast, as the reference trains on
  GPUs; None is plain fp32 (the CPU comparison).
  """

  def __init__(self, model, kind: str, freeze_vision: bool = True, amp_dtype=None):
    import torch
    self.model, self.kind, self.freeze_vision = model, kind, freeze_vision
    self.amp_dtype = amp_dtype
    model.train()
    decay, no_decay = [], []
    for name, param in model.named_parameters():
      if freeze_vision and "visual" in name:
        param.requires_grad_(False)
        continue
      no_wd = param.ndim < 2 or any(s in name for s in ("bias", "ln", "bn")) or "logit_scale" in name
      (no_decay if no_wd else decay).append(param)
    self.optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": OPTIM["weight_decay"]},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=OPTIM["lr"], betas=(OPTIM["b1"], OPTIM["b2"]), eps=OPTIM["eps"])

  def __call__(self, images, texts) -> float:
    import torch
    import torch.nn.functional as F
    model = self.model
    with torch.autocast(images.device.type, dtype=self.amp_dtype or torch.float32,
                        enabled=self.amp_dtype is not None):
      if self.freeze_vision:
        with torch.no_grad():
          img = model.encode_image(images)
      else:
        img = model.encode_image(images)
      txt = model.encode_text(texts)               # all K*B captions in one call
      img, txt = F.normalize(img.float(), dim=-1), F.normalize(txt.float(), dim=-1)
      scale = model.logit_scale.exp()
      if self.kind == "clic":
        loss = torch_clic_loss(img, txt, scale, images.shape[0])
      else:
        loss = torch_clip_loss(img, txt, scale)
    self.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    self.optimizer.step()
    with torch.no_grad():
      model.logit_scale.clamp_(0, math.log(100.0))
    return loss.detach()


# ---------------------------------------------------------------------------------------------------
# clic_jax side.


class JaxStep:
  """clic_jax's jitted train step (donated state) and its state, ready to call on a device batch."""

  def __init__(self, module, params, kind: str, freeze_vision: bool = True,
               separate_text_calls: bool = False, **module_overrides):
    """`module_overrides` change the CLIP module's options (remat=True, pooled_last_block=False)."""
    import jax

    from clic_jax.train import optimizer as opt_lib
    from clic_jax.train import step as step_lib
    from clic_jax.train.config import loss_spec
    module = module.running(**module_overrides) if module_overrides else module
    freeze = ("^visual/",) if freeze_vision else ()
    tx = opt_lib.make_optimizer(
        params, total_steps=1000, lr=OPTIM["lr"], lr_start=OPTIM["lr"], lr_end=OPTIM["lr"],
        warmup_fraction=0.0, weight_decay=OPTIM["weight_decay"], b1=OPTIM["b1"], b2=OPTIM["b2"],
        eps=OPTIM["eps"], freeze=freeze)
    if separate_text_calls:
      module = SeparateTextCalls(module, texts_per_image(kind))
    self.state = jax.jit(lambda p: step_lib.create_state(p, tx, freeze))(params)
    step = step_lib.make_train_step(module, tx, kind, loss_spec())
    self._step = jax.jit(step, donate_argnums=0)

  def __call__(self, batch):
    import jax
    self.state, metrics = self._step(self.state, batch)
    jax.block_until_ready((self.state, metrics))
    return metrics["loss"]


# ---------------------------------------------------------------------------------------------------
# Measurement.


def _timed(fn, *args) -> tuple[float, object]:
  start = time.perf_counter()
  out = fn(*args)
  return time.perf_counter() - start, out


def measure_alternating(steps: dict, warmup: int, repeats: int, verbose: bool = False) -> dict:
  """{name: zero-arg step} -> {name: {"median_s", "times_s", "first_loss", "minor_faults"}}, rounds
  interleaved; "minor_faults" is the median count of page faults per timed step."""
  results = {name: {"times_s": [], "faults": []} for name in steps}
  for name, fn in steps.items():
    for i in range(max(warmup, 1)):
      seconds, loss = _timed(fn)
      if i == 0:
        results[name]["first_loss"] = float(loss)
        results[name]["first_step_s"] = seconds
  for _ in range(repeats):
    for name, fn in steps.items():
      faults = host_malloc.minor_faults()
      results[name]["times_s"].append(_timed(fn)[0])
      results[name]["faults"].append(host_malloc.minor_faults() - faults)
      if verbose:
        print(f"  {name}: {results[name]['times_s'][-1]:.3f}s", flush=True)
  for r in results.values():
    r["median_s"] = statistics.median(r["times_s"])
    r["minor_faults"] = int(statistics.median(r.pop("faults")))
  return results


def _setup_threads() -> int:
  import torch
  cores = os.cpu_count() or 1
  torch.set_num_threads(cores)
  return cores


def run(model: str = "ViT-B-32-quickgelu", batch_sizes=(8, 16), kinds=("clic", "clip"),
        warmup: int = 2, repeats: int = 5, ablations: bool = False, seed: int = 0,
        verbose: bool = True, split_text_calls: bool | None = None, equal_rows: bool = True,
        malloc: str = "keep") -> dict:
  """Times clic_jax against PyTorch for each (kind, batch size); optional clic_jax-only ablations.

  `equal_rows` adds each framework on the other's token rows (module docstring). `malloc`: "keep"
  runs everything inside host_malloc.kept_freed_memory(), "default" leaves glibc as it is.
  Ablations (CLIC step, first batch size, same measurement loop, trainer rows): the vision tower
  trained instead of frozen, the other text-call mode, rematerialized blocks, and the last block
  run for every token (`pooled_last_block=False`). `split_text_calls` chooses whether the compared
  clic_jax step encodes each caption set in its own call (benchmarks/text_calls.py); None does
  what the trainer does: one batched call.
  """
  if malloc not in ("keep", "default"):
    raise ValueError(f"malloc must be 'keep' or 'default', got {malloc!r}")
  with host_malloc.kept_freed_memory(malloc == "keep") as kept:
    result = _run(model, batch_sizes, kinds, warmup, repeats, ablations, seed, verbose,
                  bool(split_text_calls), equal_rows)
  result.update(malloc=malloc, malloc_applied=kept)
  return result


def _run(model, batch_sizes, kinds, warmup, repeats, ablations, seed, verbose, split_text_calls,
         equal_rows) -> dict:
  import jax
  import torch

  import clic_jax
  cores = _setup_threads()
  reference = torch_model(model, seed)
  state_dict = {k: v.detach().numpy().copy() for k, v in reference.state_dict().items()}
  module, params = clic_jax.load_open_clip(model, state_dict)
  cfg = module.cfg
  initial_torch_state = {k: v.clone() for k, v in reference.state_dict().items()}

  rows = []
  for kind in kinds:
    for batch_size in batch_sizes:
      host = make_batch(cfg, batch_size, kind, seed)
      trimmed = trainer_rows(host["texts"], cfg)
      device = {"trainer": jax.device_put(dict(host, texts=trimmed)),
                "full": jax.device_put(host)}
      images_t = torch.from_numpy(np.ascontiguousarray(host["images"].transpose(0, 3, 1, 2)))
      texts_t = {"full": torch.from_numpy(flat_texts(host["texts"]).astype(np.int64)),
                 "trainer": torch.from_numpy(flat_texts(trimmed).astype(np.int64))}
      reference.load_state_dict(initial_torch_state)   # same start weights as the jax copies
      torch_step = TorchStep(reference, kind)
      jax_step = JaxStep(module, params, kind, separate_text_calls=split_text_calls)
      steps = {"clic_jax": lambda: jax_step(device["trainer"]),
               "torch": lambda: torch_step(images_t, texts_t["full"])}
      if equal_rows:
        jax_full = JaxStep(module, params, kind, separate_text_calls=split_text_calls)
        short = torch_model(model, seed, context_length=trimmed.shape[-1])
        load_for_rows(short, initial_torch_state)
        torch_trimmed = TorchStep(short, kind)
        steps.update(clic_jax_full_rows=lambda: jax_full(device["full"]),
                     torch_trimmed_rows=lambda: torch_trimmed(images_t, texts_t["trainer"]))
      timings = measure_alternating(steps, warmup, repeats, verbose)
      median = {name: t["median_s"] for name, t in timings.items()}
      jax_loss, torch_loss = timings["clic_jax"]["first_loss"], timings["torch"]["first_loss"]
      row = {"kind": kind, "batch_size": batch_size, "texts_per_step": batch_size *
             texts_per_image(kind), "text_length_full": host["texts"].shape[-1],
             "text_length_trainer": trimmed.shape[-1],
             "clic_jax_step_s": median["clic_jax"], "torch_step_s": median["torch"],
             "ratio_vs_torch": median["clic_jax"] / median["torch"],
             "clic_jax_first_loss": jax_loss, "torch_first_loss": torch_loss,
             "loss_rel_diff": max(abs(t["first_loss"] - torch_loss) for t in timings.values())
             / max(abs(torch_loss), 1e-12),
             "jax_compile_and_first_step_s": timings["clic_jax"]["first_step_s"]}
      for name, t in timings.items():
        row[f"{name}_times_s"] = t["times_s"]
        row[f"{name}_minor_faults_per_step"] = t["minor_faults"]
      if equal_rows:
        row.update(clic_jax_full_rows_step_s=median["clic_jax_full_rows"],
                   torch_trimmed_rows_step_s=median["torch_trimmed_rows"],
                   same_rows_full_ratio=median["clic_jax_full_rows"] / median["torch"],
                   same_rows_trimmed_ratio=median["clic_jax"] / median["torch_trimmed_rows"])
        del jax_full, torch_trimmed
      if ablations and kind == "clic" and batch_size == batch_sizes[0]:
        row.update(_ablations(module, params, kind, device["trainer"], jax_step, warmup, repeats,
                              split_text_calls, verbose))
      if verbose:
        print(f"[train_step] {kind} B={batch_size}: first-step loss clic_jax {jax_loss:.6f} "
              f"torch {torch_loss:.6f}; step clic_jax {median['clic_jax']:.3f}s torch "
              f"{median['torch']:.3f}s (ratio {row['ratio_vs_torch']:.2f})", flush=True)
      if row["loss_rel_diff"] > 1e-3:
        raise AssertionError(f"{kind} B={batch_size}: first-step losses differ "
                             f"({ {n: t['first_loss'] for n, t in timings.items()} }); the steps "
                             "do not compute the same thing")
      rows.append(row)
      del jax_step, torch_step

  headline = next((r for r in rows if r["kind"] == "clic"), rows[0])
  result = {"model": model, "device": jax.devices()[0].platform, "cpu_count": cores,
            "split_text_calls": split_text_calls,
            "torch_threads": torch.get_num_threads(), "warmup": warmup, "repeats": repeats,
            "train_step_ratio_vs_torch": headline["ratio_vs_torch"],
            "headline": f"{headline['kind']} B={headline['batch_size']}", "rows": rows,
            "load_average_1min": os.getloadavg()[0]}
  for key in ("same_rows_full_ratio", "same_rows_trimmed_ratio"):
    if key in headline:
      result[key] = headline[key]
  for kind in kinds:
    first = next((r for r in rows if r["kind"] == kind), None)
    if first is not None:
      result[f"{kind}_ratio_vs_torch"] = first["ratio_vs_torch"]
  return result


ABLATIONS = {   # name -> JaxStep keyword arguments (the baseline's other text-call mode)
    "vision_trained": {"freeze_vision": False},
    "other_text_calls": {"separate_text_calls": None},
    "remat": {"remat": True},
    "full_last_block": {"pooled_last_block": False},
}


def _ablations(module, params, kind, batch, baseline, warmup, repeats, split, verbose) -> dict:
  """Each variant timed alternately with the baseline step, one variant alive at a time (memory).

  Returns {"clic_jax_<name>_step_s", "clic_jax_<name>_vs_baseline"} per ablation.
  """
  import gc
  out = {}
  for name, kwargs in ABLATIONS.items():
    kwargs = dict(kwargs)
    kwargs["separate_text_calls"] = (not split) if "separate_text_calls" in kwargs else split
    variant = JaxStep(module, params, kind, **kwargs)
    timings = measure_alternating({"baseline": lambda: baseline(batch),
                                   name: lambda: variant(batch)}, warmup, repeats)
    out[f"clic_jax_{name}_step_s"] = timings[name]["median_s"]
    out[f"clic_jax_{name}_vs_baseline"] = timings[name]["median_s"] / timings["baseline"]["median_s"]
    if verbose:
      print(f"[train_step] ablation {name}: {timings[name]['median_s']:.3f}s vs baseline "
            f"{timings['baseline']['median_s']:.3f}s", flush=True)
    del variant
    gc.collect()
  return out


def format_table(result: dict) -> str:
  malloc = result.get("malloc", "default")
  lines = [f"train step: {result['model']} on {result['device']} ({result['cpu_count']} cores, "
           f"torch threads {result['torch_threads']}), median of {result['repeats']}, malloc "
           f"{malloc}{' (not applied)' if malloc == 'keep' and not result.get('malloc_applied') else ''}",
           "clic_jax: trainer rows (cut to a length bucket); torch: open_clip's 77-token rows; "
           "ratio = clic_jax / torch",
           f"{'kind':<5} {'B':>4} {'texts':>6} {'rows':>5} {'clic_jax s':>11} {'torch s':>9} "
           f"{'ratio':>6} {'loss jax':>10} {'loss torch':>10}"]
  for r in result["rows"]:
    lines.append(f"{r['kind']:<5} {r['batch_size']:>4} {r['texts_per_step']:>6} "
                 f"{r['text_length_trainer']:>5} {r['clic_jax_step_s']:>11.3f} "
                 f"{r['torch_step_s']:>9.3f} {r['ratio_vs_torch']:>6.2f} "
                 f"{r['clic_jax_first_loss']:>10.5f} {r['torch_first_loss']:>10.5f}")
    if "same_rows_full_ratio" in r:
      lines.append(f"      same rows, {r['text_length_full']} tokens: clic_jax "
                   f"{r['clic_jax_full_rows_step_s']:.3f} s vs torch {r['torch_step_s']:.3f} s "
                   f"= {r['same_rows_full_ratio']:.2f}; {r['text_length_trainer']} tokens: "
                   f"{r['clic_jax_step_s']:.3f} s vs torch {r['torch_trimmed_rows_step_s']:.3f} s "
                   f"= {r['same_rows_trimmed_ratio']:.2f}")
    lines.append(f"      page faults per step: clic_jax {r['clic_jax_minor_faults_per_step']}, "
                 f"torch {r['torch_minor_faults_per_step']}")
    for name in ABLATIONS:
      if f"clic_jax_{name}_step_s" in r:
        lines.append(f"      clic_jax ablation {name:<16} {r[f'clic_jax_{name}_step_s']:>8.3f} s "
                     f"({r[f'clic_jax_{name}_vs_baseline']:.2f}x the baseline step, alternated)")
  lines.append(f"train_step_ratio_vs_torch ({result['headline']}): "
               f"{result['train_step_ratio_vs_torch']:.2f}")
  return "\n".join(lines)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="ViT-B-32-quickgelu")
  parser.add_argument("--batch_sizes", default="8,16", help="comma-separated")
  parser.add_argument("--kinds", default="clic,clip")
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--ablations", action="store_true")
  parser.add_argument("--text_calls", default="auto", choices=("auto", "batched", "separate"),
                      help="clic_jax's caption sets: as the trainer does (auto: one batched call), "
                           "one batched call, or one call per set")
  parser.add_argument("--no_equal_rows", action="store_true",
                      help="skip the equal-work steps (each framework on the other's rows)")
  parser.add_argument("--malloc", default="keep", choices=("keep", "default"),
                      help="keep: glibc keeps freed memory in the process (host_malloc); "
                           "default: glibc as configured")
  parser.add_argument("--json", default=None)
  args = parser.parse_args(argv)
  result = run(args.model, tuple(int(b) for b in args.batch_sizes.split(",")),
               tuple(args.kinds.split(",")), args.warmup, args.repeats, args.ablations,
               split_text_calls=None if args.text_calls == "auto"
               else args.text_calls == "separate", equal_rows=not args.no_equal_rows,
               malloc=args.malloc)
  print(format_table(result))
  if args.json:
    with open(args.json, "w") as f:
      json.dump(result, f, indent=2)


if __name__ == "__main__":
  main()
