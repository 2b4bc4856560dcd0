"""Exact gradient accumulation: one update at batch B against the same update in k micro-batches.

  python -m benchmarks.grad_accum --json=grad_accum.json                    # CPU: ViT-B-32, B=32
  python -m benchmarks.grad_accum --model=ViT-L-14 --batch=800 --accum=1,4,8 \
      --dtype=bfloat16 --json=grad_accum_gpu.json                           # one GPU

For each k it compiles the CLIC train step (vision tower frozen, the default, and optionally
trainable) and reports:
  - `peak_bytes`: what XLA allocates for the step, from the compiled executable's memory analysis
    (arguments + outputs + temporaries - aliased donations): deterministic, on any backend, and
    the number that decides whether a batch fits;
  - `device_peak_bytes`: the allocator's peak on accelerators (memory_stats; absent on CPU);
  - `step_s`: the median wall time of one update (after warm-up).
With k = 1 the whole batch is embedded with gradients at once; with k > 1 the step embeds the k
micro-batches without gradients, computes the loss on the whole batch, then re-embeds one
micro-batch at a time to backpropagate (train/step.py): the activations of one micro-batch are
alive at a time, at the cost of a second forward pass of every trained tower.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from clic_jax import models
from clic_jax.data import images as images_lib
from clic_jax.train import config as config_lib
from clic_jax.train import mesh as mesh_lib
from clic_jax.train import optimizer as opt_lib
from clic_jax.train import step as step_lib

TEXTS_PER_IMAGE = 5        # CLIC: 4 positives + 1 hard negative
TEXT_LENGTH = 48           # captions bucketed to 48 tokens (the pipeline's default buckets)


def _batch(cfg: models.ClipConfig, batch: int, seed: int = 0) -> dict:
  rng = np.random.default_rng(seed)
  size = cfg.vision.image_size
  tokens = np.zeros((batch, TEXTS_PER_IMAGE, TEXT_LENGTH), np.int32)
  tokens[..., 0], tokens[..., 1:30] = 49406, rng.integers(1, 49000, (batch, TEXTS_PER_IMAGE, 29))
  tokens[..., 30] = 49407
  return {"images": rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8), "texts": tokens}


def bench_one(model_name: str, batch: int, micro_batches: int, freeze=("^visual/",),
              dtype: str = "float32", repeats: int = 3, warmup: int = 1) -> dict:
  cfg = models.get_model_config(model_name)
  model = models.build_model(cfg, dtype=jnp.dtype(dtype))
  params = models.init_params(models.build_model(cfg))
  tx = opt_lib.make_optimizer(params, total_steps=100, lr=1e-5, lr_start=1e-6, lr_end=1e-7,
                              warmup_fraction=0.1, freeze=freeze)
  mesh = mesh_lib.make_mesh(1)
  state = jax.jit(lambda p: step_lib.create_state(p, tx, freeze))(params)
  state = jax.device_put(state, mesh_lib.tree_shardings(mesh, state))
  sharding = jax.tree.map(lambda x: x.sharding, state)
  del params
  norm = images_lib.normalization_constants("clip")     # uint8 images, normalized on the device
  step = jax.jit(step_lib.make_train_step(model, tx, "clic", config_lib.loss_spec(),
                                          image_norm=norm, micro_batches=micro_batches,
                                          micro_sharding=mesh_lib.micro_batch_sharding(mesh)),
                 in_shardings=(sharding, mesh_lib.batch_sharding(mesh)),
                 out_shardings=(sharding, mesh_lib.replicated(mesh)), donate_argnums=0)
  device_batch = mesh_lib.global_batch(mesh, _batch(cfg, batch))
  compiled = step.lower(state, device_batch).compile()
  memory = compiled.memory_analysis()
  peak = None
  if memory is not None:
    peak = int(memory.argument_size_in_bytes + memory.output_size_in_bytes
               + memory.temp_size_in_bytes - memory.alias_size_in_bytes)
  times = []
  for i in range(warmup + repeats):
    start = time.perf_counter()
    state, metrics = compiled(state, device_batch)
    jax.block_until_ready(metrics)
    if i >= warmup:
      times.append(time.perf_counter() - start)
  stats = jax.devices()[0].memory_stats() or {}
  return {"model": model_name, "batch": batch, "micro_batches": micro_batches,
          "micro_batch": batch // micro_batches, "vision": "frozen" if freeze else "trained",
          "dtype": dtype, "backend": jax.default_backend(), "devices": jax.device_count(),
          "peak_bytes": peak, "temp_bytes": int(memory.temp_size_in_bytes) if memory else None,
          "device_peak_bytes": stats.get("peak_bytes_in_use"),
          "step_s": statistics.median(times), "loss": float(metrics["loss"])}


def run(model: str = "ViT-B-32", batch: int = 32, accum=(1, 4), trained_vision: bool = True,
        dtype: str = "float32", repeats: int = 3, json_path: str | None = None) -> dict:
  """Every (vision frozen/trained, k) row; the JSON is rewritten after each row, so a run cut short
  keeps what it finished. A row that fails (k = 1 out of memory, typically: the reason to
  accumulate) is recorded as {"error": ...} and the others still run."""
  rows, result = [], {"rows": []}
  for freeze in [("^visual/",)] + ([()] if trained_vision else []):
    base = None
    for k in accum:
      try:
        row = bench_one(model, batch, k, freeze, dtype, repeats)
      except Exception as e:                      # noqa: BLE001 (recorded, not hidden)
        row = {"model": model, "batch": batch, "micro_batches": k, "error": repr(e)[:500]}
        print(f"{model} B={batch} k={k}: {row['error']}", flush=True)
      else:
        base = base or row
        row["peak_ratio_vs_k1"] = (row["peak_bytes"] / base["peak_bytes"]
                                   if row["peak_bytes"] and base["peak_bytes"] else None)
        row["time_ratio_vs_k1"] = row["step_s"] / base["step_s"]
        print(format_row(row), flush=True)
      rows.append(row)
      result = {"rows": rows}
      if json_path:
        with open(json_path, "w") as f:
          json.dump(result, f, indent=2)
  return result


def format_row(r: dict) -> str:
  mib = lambda b: f"{b / 2**20:9.1f}" if b else "      n/a"
  return (f"{r['model']:>10} B={r['batch']:<4} k={r['micro_batches']:<2} vision={r['vision']:<7} "
          f"peak MiB {mib(r['peak_bytes'])} (x{r['peak_ratio_vs_k1'] or 0:.2f})  temp MiB "
          f"{mib(r['temp_bytes'])}  step {r['step_s']:7.2f} s (x{r['time_ratio_vs_k1']:.2f})  "
          f"loss {r['loss']:.5f}")


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--model", default="ViT-B-32")
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--accum", default="1,4", help="comma list of micro-batch counts k")
  parser.add_argument("--dtype", default="float32")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--no_trained_vision", action="store_true",
                      help="only the default (vision tower frozen)")
  parser.add_argument("--json", default=None)
  args = parser.parse_args()
  run(args.model, args.batch, tuple(int(k) for k in args.accum.split(",")),
      not args.no_trained_vision, args.dtype, args.repeats, args.json)


if __name__ == "__main__":
  main()
