"""Why the CLIC step is slower than PyTorch on CPU: the text tower's backward pass, taken apart.

  python -m benchmarks.cpu_text_backward [--layers=1,3,6,12] [--profile] [--json=FILE]

Three measurements on the ViT-B-32 text tower's shapes (40 captions x 77 tokens, width 512, MLP
2,048, 8 heads), float32, each timed as the median of `--repeats` after one warm-up:
1. matmuls: the MLP's forward and backward products in jax (jit) and torch, side by side: shows
   whether XLA:CPU's matrix kernels are the gap (they are not);
2. depth: forward + backward of a stack of N clic_jax transformer blocks, per block, unrolled
   (how GPUs run it) and under lax.scan (the CPU default): a constant per-block cost means the
   compiler keeps up; a growing one means work that scales with depth;
3. `--profile`: a jax.profiler trace of the unrolled 12-block backward, the kernel times summed by
   kernel family (`copy_bitcast_fusion`, `ynn_fusion`, ...), from the trace's perfetto JSON.
benchmarks/RESULTS.md records what these showed on the project's CPU machine.
"""
from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import statistics
import tempfile
import time

import numpy as np

TOKENS, WIDTH, HIDDEN, HEADS = 40 * 77, 512, 2048, 8


def _median_s(fn, repeats: int) -> float:
  fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def matmuls(repeats: int = 5) -> list[dict]:
  """GFLOP/s of the MLP's three products (forward, input gradient, weight gradient), jax vs torch."""
  import jax
  import jax.numpy as jnp
  import torch
  rng = np.random.default_rng(0)
  x = rng.standard_normal((TOKENS, WIDTH), dtype=np.float32)
  w = rng.standard_normal((WIDTH, HIDDEN), dtype=np.float32)
  dy = rng.standard_normal((TOKENS, HIDDEN), dtype=np.float32)
  cases = {"forward x @ w": ((x, w), lambda a, b: a @ b),
           "input grad dy @ w.T": ((dy, w), lambda a, b: a @ b.T),
           "weight grad x.T @ dy": ((x, dy), lambda a, b: a.T @ b)}
  rows = []
  for name, (args, fn) in cases.items():
    jitted, jax_args = jax.jit(fn), [jnp.asarray(a) for a in args]
    torch_args = [torch.from_numpy(a) for a in args]
    jax_s = _median_s(lambda: jitted(*jax_args).block_until_ready(), repeats)
    torch_s = _median_s(lambda: fn(*torch_args), repeats)
    gflop = 2 * TOKENS * WIDTH * HIDDEN / 1e9
    rows.append({"product": name, "jax_s": jax_s, "torch_s": torch_s,
                 "jax_gflops": gflop / jax_s, "torch_gflops": gflop / torch_s})
  return rows


def _stack_grad(layers: int, scan: bool = False):
  import jax
  import jax.numpy as jnp

  from clic_jax.models import clip
  x = jax.random.normal(jax.random.key(0), (TOKENS // 77, 77, WIDTH))
  module = clip.Transformer(clip.Blocks(WIDTH, layers, HEADS, HIDDEN / WIDTH, causal=True,
                                        quick_gelu=True), clip.Execution(scan_layers=scan))
  params = module.init(jax.random.key(1), x)
  grad = jax.jit(jax.grad(lambda p, x: jnp.sum(jnp.square(module.apply(p, x)))))
  return lambda: jax.block_until_ready(grad(params, x))


def depth(layer_counts=(1, 3, 6, 12), repeats: int = 3) -> list[dict]:
  rows = []
  for layers in layer_counts:
    unrolled = _median_s(_stack_grad(layers), repeats)
    scanned = _median_s(_stack_grad(layers, scan=True), repeats)
    rows.append({"layers": layers, "fwd_bwd_s": unrolled, "per_block_s": unrolled / layers,
                 "scan_fwd_bwd_s": scanned, "scan_per_block_s": scanned / layers})
  return rows


def profile(layers: int = 12) -> list[dict]:
  """Kernel time by family in one traced forward + backward of `layers` blocks."""
  import jax
  run = _stack_grad(layers)
  run()
  with tempfile.TemporaryDirectory() as tmp:
    with jax.profiler.trace(tmp, create_perfetto_trace=True):
      run()
    path = glob.glob(f"{tmp}/**/*.json.gz", recursive=True)[0]
    with gzip.open(path) as f:
      trace = json.load(f)
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  total, count = collections.Counter(), collections.Counter()
  for e in events:
    name = e.get("name", "")
    if e.get("ph") == "X" and "dur" in e and "fusion" in name:
      family = re.sub(r"\.\d+$", "", name)
      total[family] += e["dur"] / 1e6
      count[family] += 1
  return [{"kernel_family": k, "seconds": s, "count": count[k]} for k, s in total.most_common(8)]


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--layers", default="1,3,6,12")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--profile", action="store_true")
  parser.add_argument("--json", default=None)
  args = parser.parse_args(argv)
  import torch
  torch.set_num_threads(os.cpu_count() or 1)
  result = {"matmuls": matmuls(max(args.repeats, 3)),
            "depth": depth(tuple(int(v) for v in args.layers.split(",")), args.repeats)}
  print(f"{'product (3,080 x 512 x 2,048)':<28} {'jax GFLOP/s':>12} {'torch GFLOP/s':>14}")
  for r in result["matmuls"]:
    print(f"{r['product']:<28} {r['jax_gflops']:>12.0f} {r['torch_gflops']:>14.0f}")
  print(f"\n{'blocks':>6} {'unrolled s':>10} {'per block ms':>13} {'scanned s':>10} "
        f"{'per block ms':>13}")
  for r in result["depth"]:
    print(f"{r['layers']:>6} {r['fwd_bwd_s']:>10.2f} {1e3 * r['per_block_s']:>13.0f} "
          f"{r['scan_fwd_bwd_s']:>10.2f} {1e3 * r['scan_per_block_s']:>13.0f}")
  if args.profile:
    result["profile"] = profile(max(int(v) for v in args.layers.split(",")))
    print(f"\n{'kernel family':<28} {'seconds':>8} {'kernels':>8}")
    for r in result["profile"]:
      print(f"{r['kernel_family']:<28} {r['seconds']:>8.2f} {r['count']:>8}")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(result, f, indent=2)


if __name__ == "__main__":
  main()
