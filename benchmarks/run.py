"""All speed benchmarks in one run: one table, one JSON file.

  python -m benchmarks.run --json=benchmarks.json            # full sizes (~1 h on 2 busy cores)
  python -m benchmarks.run --quick --json=quick.json         # small sizes (~10-15 min there)
  python -m benchmarks.run --only=train_step,flops           # a subset
  python -m benchmarks.run --quick --reuse=train_step=ts.json # take one result from a saved run

Runs the train-step comparison against PyTorch (benchmarks.train_step), the input pipeline
(benchmarks.pipeline), the tokenizer (benchmarks.tokenizer_speed), evaluation throughput
(benchmarks.eval_throughput) and the FLOP counts (benchmarks.flops). The JSON holds the headline
keys at the top level (`train_step_ratio_vs_torch`, `pipeline_ratio_vs_decode`,
`tokenizer_speedup_vs_open_clip`, ...) and each benchmark's full result, with the raw times,
under `benchmarks.<name>`. A benchmark that fails is recorded as `{"error": ...}` and shown as an
error row; the others still run. `--reuse=NAME=FILE` puts the JSON written by that benchmark's own
command line (e.g. `python -m benchmarks.train_step --json=FILE`), or NAME's part of an earlier
report of this command, in the report instead of running it again: on a shared machine the slow
comparisons can then run alone, and the table still comes from one place.

Each benchmark runs in a process of its own (this module with `--child`), so none inherits
another's threads, allocator state or memory: the pipeline's decode speed, for one, fell by a
third when it ran in the process that had just run the train-step comparison.
"""
from __future__ import annotations

import argparse
import datetime
import importlib
import inspect
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback

# name -> (module, headline keys, kwargs for the full run, kwargs for --quick)
BENCHMARKS = {
    "train_step": ("benchmarks.train_step", ("train_step_ratio_vs_torch", "same_rows_full_ratio",
                                             "same_rows_trimmed_ratio", "clip_ratio_vs_torch"),
                   dict(model="ViT-B-32-quickgelu", batch_sizes=(8, 16), repeats=5, warmup=2,
                        ablations=True),
                   dict(model="ViT-B-32-quickgelu", batch_sizes=(8,), repeats=3, warmup=2)),
    "pipeline": ("benchmarks.pipeline", ("pipeline_ratio_vs_decode",
                                         "pipeline_ratio_vs_decode_cpu", "text_fraction",
                                         "webdataset_ratio_vs_csv"),
                 dict(),
                 dict(num_images=200, num_samples=256, include_csv=False, rounds=2)),
    "tokenizer": ("benchmarks.tokenizer_speed", ("tokenizer_speedup_vs_open_clip",),
                  dict(num_captions=10000, repeats=3), dict(num_captions=2000, repeats=1)),
    "eval_throughput": ("benchmarks.eval_throughput", ("image_speedup", "caption_speedup"),
                        dict(), dict(images=32, captions=128, batch_size=32)),
    "flops": ("benchmarks.run", ("clic_b32_tflop_per_step",), dict(), dict()),
}

# Raw numbers shown next to each headline in the table (the JSON has everything).
RAW_KEYS = {
    "train_step_ratio_vs_torch": ("rows.0.clic_jax_step_s", "rows.0.torch_step_s"),
    "same_rows_full_ratio": ("rows.0.clic_jax_full_rows_step_s", "rows.0.torch_step_s"),
    "same_rows_trimmed_ratio": ("rows.0.clic_jax_step_s", "rows.0.torch_trimmed_rows_step_s"),
    "clip_ratio_vs_torch": ("rows.-1.clic_jax_step_s", "rows.-1.torch_step_s"),
    "pipeline_ratio_vs_decode": ("pipeline_samples_per_s", "decode_resize_samples_per_s"),
    "pipeline_ratio_vs_decode_cpu": ("pipeline_samples_per_cpu_s",
                                     "decode_resize_samples_per_cpu_s"),
    "webdataset_ratio_vs_csv": ("webdataset_pipeline_samples_per_s", "csv_pipeline_samples_per_s"),
    "tokenizer_speedup_vs_open_clip": ("clic_jax_s", "open_clip_s"),
    "image_speedup": ("batched_images_per_s", "loop_images_per_s"),
    "caption_speedup": ("batched_captions_per_s", "loop_captions_per_s"),
}


def flops_summary() -> dict:
  """Model FLOPs per step for the benchmarked and the reference configurations (no compile)."""
  from benchmarks import flops
  out = {}
  for model, batch in (("ViT-B-32-quickgelu", 8), ("ViT-B-32-quickgelu", 200), ("ViT-B-16", 200),
                       ("ViT-L-14", 200)):
    for kind in ("clic", "clip"):
      count = flops.step_flops(model, batch, kind)
      out[f"{model}/{kind}/B{batch}"] = {k: v / 1e12 for k, v in count.as_dict().items()}
  out["clic_b32_tflop_per_step"] = out["ViT-B-32-quickgelu/clic/B8"]["total_flops"]
  out["unit"] = "TFLOP"
  return out


def run(**_unused) -> dict:   # the "flops" entry of BENCHMARKS
  return flops_summary()


def _call_here(module_name: str, kwargs: dict) -> dict:
  module = importlib.import_module(module_name)
  accepted = inspect.signature(module.run).parameters
  if not any(p.kind == p.VAR_KEYWORD for p in accepted.values()):
    kwargs = {k: v for k, v in kwargs.items() if k in accepted}   # modules still changing
  return module.run(**kwargs)


def _call(module_name: str, kwargs: dict) -> dict:
  """`module.run(**kwargs)` in a fresh Python process; its output streams through."""
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, "result.json")
    proc = subprocess.run([sys.executable, "-m", "benchmarks.run", f"--child={module_name}",
                           f"--child_kwargs={json.dumps(kwargs)}", f"--json={out}"],
                          check=False)
    if not os.path.exists(out):
      raise RuntimeError(f"{module_name} exited with status {proc.returncode} and no result")
    with open(out) as f:
      result = json.load(f)
  if "error" in result:
    raise RuntimeError(result["error"])
  return result


def _child(module_name: str, kwargs_json: str, out: str) -> int:
  try:
    result = _call_here(module_name, json.loads(kwargs_json))
  except Exception as error:   # reported by the parent as this benchmark's error row
    result = {"error": f"{type(error).__name__}: {error}",
              "traceback": traceback.format_exc(limit=5)}
  with open(out, "w") as f:
    json.dump(result, f, default=str)
  return 0


def _lookup(result: dict, dotted: str):
  value = result
  for part in dotted.split("."):
    if isinstance(value, list):
      value = value[int(part)] if -len(value) <= int(part) < len(value) else None
    elif isinstance(value, dict):
      value = value.get(part)
    else:
      return None
  return value


def run_all(quick: bool = False, only=None, verbose: bool = True, reuse=None) -> dict:
  results, summary = {}, {}
  reuse = reuse or {}
  # The train-step comparison runs last: its process ends holding ~10 GB, and on the project's VM
  # the next process's first page faults after that are slow (the pipeline benchmark measured
  # 0.47 right after it, 0.83-0.84 on its own). The table keeps the BENCHMARKS order.
  for name in sorted(BENCHMARKS, key=lambda n: n == "train_step"):
    module_name, keys, full, small = BENCHMARKS[name]
    if only and name not in only:
      continue
    if verbose:
      print(f"[run] {name} ...", flush=True)
    start = time.perf_counter()
    try:
      if name in reuse:
        with open(reuse[name]) as f:
          saved = json.load(f)
        if name in saved.get("benchmarks", {}):   # a report of this command
          saved = saved["benchmarks"][name]
        result = dict(saved, reused_from=reuse[name])
      else:
        result = _call(module_name, small if quick else full)
    except Exception as error:
      result = {"error": f"{type(error).__name__}: {error}",
                "traceback": traceback.format_exc(limit=5)}
      if verbose:
        print(f"[run] {name} failed: {result['error']}", flush=True)
    result["wall_s"] = time.perf_counter() - start
    results[name] = result
    for key in keys:
      summary[key] = result.get(key)
  results = {name: results[name] for name in BENCHMARKS if name in results}   # table order
  return {
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "machine": {"platform": platform.platform(), "processor": platform.processor(),
                  "cpu_count": os.cpu_count(), "python": sys.version.split()[0],
                  "load_average_1min_end": os.getloadavg()[0]},
      "quick": quick, **summary, "benchmarks": results}


def _fmt(value) -> str:
  if value is None:
    return "-"
  if isinstance(value, float):
    return f"{value:.4g}"
  return str(value)


def format_table(report: dict) -> str:
  lines = [f"{'benchmark':<16} {'metric':<32} {'value':>9}  raw",
           "-" * 96]
  for name, (_, keys, _, _) in BENCHMARKS.items():
    result = report["benchmarks"].get(name)
    if result is None:
      continue
    if "error" in result:
      lines.append(f"{name:<16} {'ERROR':<32} {'':>9}  {result['error'][:60]}")
      continue
    for key in keys:
      raw = "  ".join(f"{path.split('.')[-1]}={_fmt(_lookup(result, path))}"
                      for path in RAW_KEYS.get(key, ()))
      lines.append(f"{name:<16} {key:<32} {_fmt(result.get(key)):>9}  {raw}")
  return "\n".join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--json", default=None, help="write the full report here")
  parser.add_argument("--quick", action="store_true", help="small sizes, a few minutes")
  parser.add_argument("--only", default="", help=f"comma list of {', '.join(BENCHMARKS)}")
  parser.add_argument("--reuse", action="append", default=[], metavar="NAME=FILE",
                      help="use NAME's saved JSON instead of running it (repeatable)")
  parser.add_argument("--child", default="", help=argparse.SUPPRESS)        # internal: one module
  parser.add_argument("--child_kwargs", default="{}", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.child:
    return _child(args.child, args.child_kwargs, args.json)
  reuse = {}
  for item in args.reuse:
    name, sep, path = item.partition("=")
    if not sep or name not in BENCHMARKS:
      parser.error(f"--reuse takes NAME=FILE with NAME in {', '.join(BENCHMARKS)}, got {item!r}")
    if not os.path.isfile(path):
      parser.error(f"--reuse {name}: no such file {path!r}; write it with "
                   f"`python -m {BENCHMARKS[name][0]} --json={path}`")
    reuse[name] = path
  only = [s for s in args.only.split(",") if s]
  unknown = [s for s in only if s not in BENCHMARKS]
  if unknown:
    parser.error(f"unknown benchmark(s) {unknown}; choose from {', '.join(BENCHMARKS)}")
  report = run_all(args.quick, only, reuse=reuse)
  for name in ("train_step", "accelerator"):
    result = report["benchmarks"].get(name)
    if result and "error" not in result:
      print(importlib.import_module(f"benchmarks.{name}").format_table(result))
  print(format_table(report))
  if args.json:
    with open(args.json, "w") as f:
      json.dump(report, f, indent=2, default=str)
    print(f"wrote {args.json}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
