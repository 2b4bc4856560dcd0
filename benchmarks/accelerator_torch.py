"""The same CLIC step in PyTorch open_clip on a GPU: the baseline for benchmarks.accelerator.

  python -m benchmarks.accelerator_torch --models=ViT-B-16,ViT-L-14 --batch=200 --json=torch.json

What the reference code runs (docs/method.md, "Freezing and optimizer"): open_clip's model, eager
PyTorch, the forward under bf16 autocast (fp32 master weights), vision tower frozen (no_grad), the
5*B captions in one encode_text call, the CLIC loss, torch AdamW, logit_scale clamped. The step is
`benchmarks.train_step.TorchStep`, the one the CPU comparison checks against clic_jax's loss.

Run it in its own process, not beside JAX: JAX reserves most of the GPU's memory when it starts.
Timing: `--warmup` untimed steps, then `--steps` steps each timed between two
`torch.cuda.synchronize()` calls; the median. Peak memory is `torch.cuda.max_memory_allocated`.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

from benchmarks import flops as flops_lib
from benchmarks import train_step as ts


def bench_one(model_name: str, batch: int, kind: str = "clic", warmup: int = 2, steps: int = 10,
              seed: int = 0) -> dict:
  import open_clip
  import torch

  from clic_jax.models import get_model_config
  device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
  torch.manual_seed(seed)
  model = open_clip.create_model(model_name).to(device)
  step = ts.TorchStep(model, kind, amp_dtype=torch.bfloat16 if device.type == "cuda" else None)
  host = ts.make_batch(get_model_config(model_name), batch, kind, seed)
  images = torch.from_numpy(np.ascontiguousarray(host["images"].transpose(0, 3, 1, 2))).to(device)
  texts = torch.from_numpy(ts.flat_texts(host["texts"]).astype(np.int64)).to(device)

  sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
  for _ in range(max(warmup, 1)):
    loss = step(images, texts)
  sync()
  if device.type == "cuda":
    torch.cuda.reset_peak_memory_stats()
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    loss = step(images, texts)
    sync()
    times.append(time.perf_counter() - start)
  step_s = statistics.median(times)
  count = flops_lib.step_flops(model_name, batch, kind)
  row = {"model": model_name, "kind": kind, "batch": batch, "framework": "torch",
         "torch_version": torch.__version__, "open_clip_version": open_clip.__version__,
         "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
         "step_s": step_s, "times_s": times, "examples_per_s": batch / step_s,
         "achieved_tflops": count.total / step_s / 1e12, "loss": float(loss)}
  if device.type == "cuda":
    row["peak_bytes"] = int(torch.cuda.max_memory_allocated())
  del model, step, images, texts
  if device.type == "cuda":
    torch.cuda.empty_cache()
  return row


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", default="ViT-B-16,ViT-L-14")
  parser.add_argument("--kinds", default="clic")
  parser.add_argument("--batch", type=int, default=200)
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--json", default=None)
  args = parser.parse_args(argv)
  result = {"rows": []}
  for model_name in args.models.split(","):
    for kind in args.kinds.split(","):
      try:
        row = bench_one(model_name, args.batch, kind, args.warmup, args.steps)
        print(f"[torch] {model_name} {kind} B={args.batch}: {row['step_s'] * 1e3:.1f} ms/step, "
              f"{row['examples_per_s']:.1f} ex/s, {row['achieved_tflops']:.1f} TFLOP/s, peak "
              f"{row.get('peak_bytes', 0) / 2 ** 30:.1f} GiB", flush=True)
      except Exception as error:   # out of memory, missing package: recorded, the rest still runs
        row = {"model": model_name, "kind": kind, "framework": "torch",
               "error": f"{type(error).__name__}: {str(error)[:500]}"}
        print(f"[torch] {model_name} {kind}: ERROR {row['error']}", flush=True)
      result["rows"].append(row)
      if args.json:
        with open(args.json, "w") as f:
          json.dump(result, f, indent=2)


if __name__ == "__main__":
  main()
