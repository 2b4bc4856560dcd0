"""Accelerator benchmark: CLIC train-step throughput, MFU and peak memory (ViT-B-16, ViT-L-14).

  python -m benchmarks.accelerator --models=ViT-B-16,ViT-L-14 --batch=200 --json=acc.json
  python -m benchmarks.accelerator --model=tiny --batch=8          # CPU smoke run

The step is the trainer's: `clic_jax.train.step.make_train_step` on a model built with
`build_model(name, dtype=bfloat16, remat=..., attention_impl=...)` (bf16 compute, fp32 params and
AdamW state), vision tower frozen, 5 captions per image, jitted with the state donated, the batch
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


def bench_one(model: str, batch: int, *, remat: bool = False, attention_impl: str | None = None,
              dtype: str = "bfloat16", fsdp: int = 1, warmup: int = 2, steps: int = 5,
              peak_tflops: float | None = None, seed: int = 0) -> dict:
  """Compiles and times the CLIC step of one configuration; returns the numbers as a dict."""
  import jax
  import jax.numpy as jnp

  from benchmarks.train_step import make_batch
  from clic_jax.models import build_model, init_params
  from clic_jax.train import mesh as mesh_lib
  from clic_jax.train import optimizer as opt_lib
  from clic_jax.train import step as step_lib

  freeze = ("^visual/",)
  module = build_model(model, dtype=jnp.dtype(dtype), remat=remat, attention_impl=attention_impl)
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
  host = make_batch(module.cfg, global_batch, "clic", seed)
  device_batch = mesh_lib.global_batch(mesh, host)
  step = jax.jit(step_lib.make_train_step(module, tx, "clic", step_lib.LossWeights()),
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
  count = flops_lib.step_flops(model, global_batch, "clic")
  achieved = count.total / step_s
  result = {
      "model": model, "per_device_batch": batch, "global_batch": global_batch, "devices": devices,
      "device_kind": device.device_kind, "platform": device.platform, "dtype": dtype,
      "remat": remat, "attention_impl": attention_impl or "default", "fsdp": fsdp,
      "compile_s": compile_s, "step_s": step_s, "times_s": times,
      "examples_per_s": global_batch / step_s, "captions_per_s": 5 * global_batch / step_s,
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
        steps: int = 5, peak_tflops: float | None = None, verbose: bool = True) -> dict:
  """Every (model, remat, attention_impl) combination; a failing one is recorded, not raised."""
  rows = []
  for model in models:
    for remat in remat_options:
      for impl in attention_impls:
        label = f"{model} remat={remat} attention={impl or 'default'}"
        try:
          row = bench_one(model, batch, remat=remat, attention_impl=impl, dtype=dtype, fsdp=fsdp,
                          warmup=warmup, steps=steps, peak_tflops=peak_tflops)
        except Exception as error:   # e.g. out of memory without remat, cudnn missing
          row = {"model": model, "remat": remat, "attention_impl": impl or "default",
                 "error": f"{type(error).__name__}: {str(error)[:500]}"}
        if verbose:
          print(f"[accelerator] {label}: " + (row.get("error") or
                f"{row['step_s'] * 1e3:.1f} ms/step, {row['examples_per_s']:.1f} ex/s, MFU "
                f"{_pct(row['mfu'])}"), flush=True)
        rows.append(row)
  return {"rows": rows}


def _pct(value) -> str:
  return "n/a" if value is None else f"{100 * value:.1f}%"


def _gib(value) -> str:
  return "n/a" if value is None else f"{value / 2 ** 30:.2f}"


def format_table(result: dict) -> str:
  lines = [f"{'model':<20} {'remat':>5} {'attn':>8} {'batch':>6} {'ms/step':>9} {'ex/s':>8} "
           f"{'TFLOP/s':>8} {'MFU':>6} {'mem GiB':>8} {'compile s':>9}"]
  for r in result["rows"]:
    if "error" in r:
      lines.append(f"{r['model']:<20} {str(r['remat']):>5} {r['attention_impl']:>8}  "
                   f"ERROR {r['error'][:80]}")
      continue
    lines.append(f"{r['model']:<20} {str(r['remat']):>5} {r['attention_impl']:>8} "
                 f"{r['global_batch']:>6} {r['step_s'] * 1e3:>9.1f} {r['examples_per_s']:>8.1f} "
                 f"{r['achieved_tflops']:>8.2f} {_pct(r['mfu']):>6} "
                 f"{_gib(r.get('compiled_peak_bytes')):>8} {r['compile_s']:>9.1f}")
  if result["rows"] and "device_kind" in result["rows"][0]:
    r = result["rows"][0]
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
  parser.add_argument("--dtype", default="bfloat16")
  parser.add_argument("--fsdp", type=int, default=1)
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--peak_tflops", type=float, default=None,
                      help="peak bf16 TFLOP/s per device (overrides the table; needed on CPU)")
  parser.add_argument("--json", default=None)
  args = parser.parse_args(argv)
  impls = tuple(None if s.strip() == "default" else s.strip()
                for s in args.attention_impl.split(","))
  result = run(tuple(args.models.split(",")), args.batch, _bools(args.remat), impls, args.dtype,
               args.fsdp, args.warmup, args.steps, args.peak_tflops)
  print(format_table(result))
  if args.json:
    with open(args.json, "w") as f:
      json.dump(result, f, indent=2)


if __name__ == "__main__":
  main()
