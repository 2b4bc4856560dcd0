"""Accelerator benchmark: CLIC train-step throughput, MFU and peak memory (ViT-B-16, ViT-L-14).

  python -m benchmarks.accelerator --models=ViT-B-16,ViT-L-14 --batch=200 --json=acc.json
  python -m benchmarks.accelerator --model=tiny --batch=8 --peak_tflops=1   # CPU smoke run
  bash benchmarks/gpu_session.sh          # everything for one GPU lease (see benchmarks/RESULTS.md)

The step is the trainer's: `clic_jax.train.step.make_train_step` on a model built with
`build_model(name, dtype=bfloat16, remat=..., attention_impl=...)` (bf16 compute, fp32 params and
AdamW state), vision tower frozen, 5 captions per image for the CLIC step (1 for `--kinds=clip`),
uint8 images normalized on the device like the trainer's, jitted with the state donated, the batch
already on the devices (the trainer prefetches it). `--batch` is per device (the reference trains
with 200 per GPU); with several devices the global batch is split over a ("data", "fsdp") mesh
like the trainer's, parameters replicated unless --fsdp > 1.

Reported per configuration:
- step time: median of `--steps` timed steps after `--warmup` untimed ones (the first compiles);
- examples/s: global batch / step time (images; each with 5 captions);
- MFU: benchmarks.flops model FLOPs of the step / step time / (devices * peak dense bf16 FLOP/s).
  Peaks come from PEAK_BF16_TFLOPS by device kind, or --peak_tflops (needed on CPU);
- memory: `compiled.memory_analysis()` (arguments + outputs - donated aliases + temporaries, the
  compiler's plan for one device) and, where the runtime reports it, the device's
  `memory_stats()["peak_bytes_in_use"]`.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

from benchmarks import flops as flops_lib

# Dense (no sparsity) bf16 peak TFLOP/s per chip, from the vendors' data sheets.
PEAK_BF16_TFLOPS = {
    "H200": 989.0,          # SXM, same tensor cores as H100 SXM
    "H100 PCIe": 756.0,
    "H100": 989.0,          # SXM
    "A100": 312.0,
    "TPU v4": 275.0,
    "TPU v5 lite": 197.0,   # v5e reports itself as "TPU v5 lite"
    "TPU v5e": 197.0,
    "TPU v5p": 459.0,
    "TPU v5": 459.0,        # v5p reports "TPU v5"
    "TPU v6 lite": 918.0,   # Trillium (v6e)
}


def peak_tflops_for(device_kind: str) -> float | None:
  """Peak bf16 TFLOP/s for a `jax.Device.device_kind`, most specific table key first."""
  for key in sorted(PEAK_BF16_TFLOPS, key=len, reverse=True):
    if key.lower() in device_kind.lower():
      return PEAK_BF16_TFLOPS[key]
  return None


def _memory(compiled) -> dict:
  try:
    analysis = compiled.memory_analysis()
  except Exception:   # not every backend implements it
    analysis = None
  if analysis is None:
    return {}
  get = lambda name: int(getattr(analysis, name, 0) or 0)
  out = {"argument_bytes": get("argument_size_in_bytes"), "output_bytes": get("output_size_in_bytes"),
         "alias_bytes": get("alias_size_in_bytes"), "temp_bytes": get("temp_size_in_bytes")}
  out["compiled_peak_bytes"] = (out["argument_bytes"] + out["output_bytes"] - out["alias_bytes"]
                                + out["temp_bytes"])
  peak = get("peak_memory_in_bytes")
  if peak:
    out["compiled_peak_bytes"] = peak
  return out


def bench_one(model: str, batch: int, *, kind: str = "clic", remat: bool = False,
              attention_impl: str | None = None, text_calls: str = "batched",
              text_length: int | None = None, dtype: str = "bfloat16", fsdp: int = 1,
              warmup: int = 2, steps: int = 5,
              peak_tflops: float | None = None, seed: int = 0,
              pooled_last_block: bool = True) -> dict:
  """Compiles and times one step kind of one configuration; returns the numbers as a dict.

  `text_length` < 77 runs the text tower on token rows cut to that length, what a pipeline that
  trims each batch to its longest caption feeds (exact for CLIP's causal text tower).
  `pooled_last_block=False` runs each tower's last block for every token (open_clip's work); the
  FLOP count follows the model that ran.
  """
  import dataclasses

  import jax
  import jax.numpy as jnp

  from benchmarks.text_calls import SeparateTextCalls
  from benchmarks.train_step import make_batch, texts_per_image
  from clic_jax.data.images import normalization_constants
  from clic_jax.models import build_model, init_params
  from clic_jax.train import mesh as mesh_lib
  from clic_jax.train import optimizer as opt_lib
  from clic_jax.train import step as step_lib
  from clic_jax.train.config import loss_spec

  freeze = ("^visual/",)
  module = build_model(model, dtype=jnp.dtype(dtype), remat=remat, attention_impl=attention_impl
                       ).running(pooled_last_block=pooled_last_block)
  mesh = mesh_lib.make_mesh(fsdp)
  devices = jax.device_count()
  global_batch = batch * devices
  params = init_params(module, seed)
  tx = opt_lib.make_optimizer(params, total_steps=1000, lr=1e-6, lr_start=1e-7, lr_end=1e-8,
                              warmup_fraction=0.2, freeze=freeze)
  params = jax.device_put(params, mesh_lib.tree_shardings(mesh, params))
  state = jax.jit(lambda p: step_lib.create_state(p, tx, freeze))(params)
  state = jax.device_put(state, mesh_lib.tree_shardings(mesh, state))
  del params
  state_sharding = jax.tree.map(lambda x: x.sharding, state)
  cfg = module.cfg
  if text_length:
    cfg = dataclasses.replace(cfg, text=dataclasses.replace(cfg.text, context_length=text_length))
  host = make_batch(cfg, global_batch, kind, seed)
  host["images"] = np.random.default_rng(seed).integers(0, 256, host["images"].shape, np.uint8)
  device_batch = mesh_lib.global_batch(mesh, host)
  encoder = SeparateTextCalls(module, texts_per_image(kind)) if text_calls == "separate" else module
  step_fn = step_lib.make_train_step(encoder, tx, kind, loss_spec(),
                                     image_norm=normalization_constants("clip"))
  step = jax.jit(step_fn,
                 in_shardings=(state_sharding, mesh_lib.batch_sharding(mesh)),
                 out_shardings=(state_sharding, mesh_lib.replicated(mesh)), donate_argnums=0)
  start = time.perf_counter()
  compiled = step.lower(state, device_batch).compile()
  compile_s = time.perf_counter() - start
  memory = _memory(compiled)

  for _ in range(max(warmup, 1)):
    state, metrics = compiled(state, device_batch)
  jax.block_until_ready((state, metrics))
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    state, metrics = compiled(state, device_batch)
    jax.block_until_ready((state, metrics))
    times.append(time.perf_counter() - start)
  step_s = statistics.median(times)
  loss = float(metrics["loss"])

  device = jax.devices()[0]
  peak = peak_tflops if peak_tflops else peak_tflops_for(device.device_kind)
  count = flops_lib.step_flops(model, global_batch, kind, text_length=text_length,
                               pooled_last_block=pooled_last_block)
  achieved = count.total / step_s
  result = {
      "model": model, "per_device_batch": batch, "global_batch": global_batch, "devices": devices,
      "device_kind": device.device_kind, "platform": device.platform, "dtype": dtype,
      "kind": kind, "remat": remat, "attention_impl": attention_impl or "default",
      "text_calls": text_calls, "text_length": text_length or module.cfg.text.context_length,
      "fsdp": fsdp, "pooled_last_block": pooled_last_block,
      "compile_s": compile_s, "step_s": step_s, "times_s": times,
      "examples_per_s": global_batch / step_s,
      "captions_per_s": texts_per_image(kind) * global_batch / step_s,
      "step_tflop": count.total / 1e12, "achieved_tflops": achieved / 1e12,
      "peak_tflops_per_device": peak,
      "mfu": achieved / (devices * peak * 1e12) if peak else None,
      "loss": loss, **memory,
  }
  try:
    stats = device.memory_stats() or {}
  except Exception:
    stats = {}
  if "peak_bytes_in_use" in stats:
    result["runtime_peak_bytes"] = int(stats["peak_bytes_in_use"])
  if not np.isfinite(loss):
    raise FloatingPointError(f"{model}: the benchmark step's loss is {loss}")
  return result


def run(models=("ViT-B-16", "ViT-L-14"), batch: int = 200, remat_options=(False,),
        attention_impls=(None,), dtype: str = "bfloat16", fsdp: int = 1, warmup: int = 2,
        steps: int = 5, peak_tflops: float | None = None, verbose: bool = True,
        kinds=("clic",), text_calls=("batched",), json_path: str | None = None,
        text_length: int | None = None, pooled_last_block: bool = True) -> dict:
  """Every (model, kind, remat, attention_impl, text_calls) combination, in that nesting order.

  A failing configuration (out of memory, cuDNN attention unavailable, ...) is recorded as an
  `error` row, not raised. With `json_path` the results are rewritten after every row, so a run
  cut short by a time limit still leaves the rows it finished.
  """
  for kind in kinds:
    if kind not in ("clic", "clip"):
      raise SystemExit(f"--kinds takes clic and/or clip, got {kind!r}")
  result = {"rows": []}
  for model in models:
    for kind in kinds:
      for remat in remat_options:
        for impl in attention_impls:
          for calls in text_calls:
            label = (f"{model} {kind} remat={remat} attention={impl or 'default'} "
                     f"text_calls={calls}" + (f" text_length={text_length}" if text_length else ""))
            try:
              row = bench_one(model, batch, kind=kind, remat=remat, attention_impl=impl,
                              text_calls=calls, text_length=text_length, dtype=dtype,
                              fsdp=fsdp, warmup=warmup, steps=steps, peak_tflops=peak_tflops,
                              pooled_last_block=pooled_last_block)
            except Exception as error:   # e.g. out of memory without remat, cudnn missing
              row = {"model": model, "kind": kind, "remat": remat,
                     "attention_impl": impl or "default", "text_calls": calls,
                     "error": f"{type(error).__name__}: {str(error)[:500]}"}
            if verbose:
              print(f"[accelerator] {label}: " + (row.get("error") or
                    f"{row['step_s'] * 1e3:.1f} ms/step, {row['examples_per_s']:.1f} ex/s, MFU "
                    f"{_pct(row['mfu'])}, compiled peak {_gib(row.get('compiled_peak_bytes'))} "
                    f"GiB, compile {row['compile_s']:.0f} s"), flush=True)
            result["rows"].append(row)
            if json_path:
              with open(json_path, "w") as f:
                json.dump(result, f, indent=2)
  return result


def _pct(value) -> str:
  return "n/a" if value is None else f"{100 * value:.1f}%"


def _gib(value) -> str:
  return "n/a" if value is None else f"{value / 2 ** 30:.2f}"


def format_table(result: dict) -> str:
  lines = [f"{'model':<18} {'kind':<4} {'remat':>5} {'attn':>7} {'text':>8} {'len':>3} {'batch':>5} "
           f"{'ms/step':>8} {'ex/s':>7} {'TFLOP/s':>7} {'MFU':>6} {'mem GiB':>7} {'compile':>7}"]
  for r in result["rows"]:
    head = (f"{r['model']:<18} {r.get('kind', 'clic'):<4} {str(r['remat']):>5} "
            f"{r['attention_impl']:>7} {r.get('text_calls', 'batched'):>8} "
            f"{r.get('text_length') or '':>3}")
    if "error" in r:
      lines.append(f"{head}  ERROR {r['error'][:80]}")
      continue
    lines.append(f"{head} {r['global_batch']:>5} {r['step_s'] * 1e3:>8.1f} "
                 f"{r['examples_per_s']:>7.1f} {r['achieved_tflops']:>7.1f} {_pct(r['mfu']):>6} "
                 f"{_gib(r.get('compiled_peak_bytes')):>7} {r['compile_s']:>6.0f}s")
  done = [r for r in result["rows"] if "device_kind" in r]
  if done:
    r = done[0]
    lines.append(f"device: {r['devices']} x {r['device_kind']} ({r['platform']}), dtype "
                 f"{r['dtype']}, peak {r['peak_tflops_per_device']} TFLOP/s per device")
  return "\n".join(lines)


def _bools(text: str) -> tuple[bool, ...]:
  values = {"0": False, "false": False, "1": True, "true": True}
  try:
    return tuple(values[t.strip().lower()] for t in text.split(","))
  except KeyError:
    raise SystemExit(f"--remat takes a comma-separated list of true/false, got {text!r}") from None


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", "--model", dest="models", default="ViT-B-16,ViT-L-14")
  parser.add_argument("--batch", type=int, default=200, help="per-device batch (images)")
  parser.add_argument("--remat", default="false", help="comma list, e.g. false,true")
  parser.add_argument("--attention_impl", default="default",
                      help="comma list of default (XLA picks), xla, cudnn")
  parser.add_argument("--kinds", default="clic", help="comma list of clic, clip")
  parser.add_argument("--text_calls", default="batched",
                      help="comma list of batched (one encode_text call), separate (one per set)")
  parser.add_argument("--text_length", type=int, default=None,
                      help="token rows cut to this length (default: the model's 77)")
  parser.add_argument("--dtype", default="bfloat16")
  parser.add_argument("--fsdp", type=int, default=1)
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--peak_tflops", type=float, default=None,
                      help="peak bf16 TFLOP/s per device (overrides the table; needed on CPU)")
  parser.add_argument("--full_last_block", action="store_true",
                      help="run each tower's last block for every token, as open_clip does")
  parser.add_argument("--json", default=None)
  args = parser.parse_args(argv)
  impls = tuple(None if s.strip() == "default" else s.strip()
                for s in args.attention_impl.split(","))
  result = run(tuple(args.models.split(",")), args.batch, _bools(args.remat), impls, args.dtype,
               args.fsdp, args.warmup, args.steps, args.peak_tflops,
               kinds=tuple(args.kinds.split(",")), text_calls=tuple(args.text_calls.split(",")),
               json_path=args.json, text_length=args.text_length,
               pooled_last_block=not args.full_last_block)   # run() writes the JSON
  print(format_table(result))


if __name__ == "__main__":
  main()
