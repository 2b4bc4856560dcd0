"""CLIC against its alternatives and ablations on the toy world, on one budget and several seeds.

  python -m experiments.compare_variants --out=experiments/results [--seeds=0,1,2]
      [--variants=clic,clip_finetune,...] [--pretrain_steps=N --finetune_steps=M]
      [--num_train=N --num_test=N] [--workdir=/tmp/clic_experiment]

1. generate the demo's toy world (configs/demo.py's sizes unless overridden);
2. pretrain ONE tiny CLIP from scratch (the demo's `pretrain` stage, seed 0): it stands in for the
   fixed pretrained CLIP every method starts from;
3. fine-tune every variant (the demo's `clic` stage plus the variant's overrides: same steps,
   batch, lr schedule and frozen vision tower) once per seed; the seed changes the data order,
   partners, coin flips and negatives, not the starting weights;
4. evaluate the pretrained model and every fine-tuned one with the real evaluator on the toy
   benchmark, and write results.json, table.md and results.png to --out.

Every run lives in WORKDIR/<variant>/seed<k>/ and is skipped when its eval.json exists, so an
interrupted experiment resumes where it stopped (the trainer itself resumes a half-finished run).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

log = logging.getLogger("experiments.compare_variants")

# Config overrides of each variant on top of the demo's `clic` stage.
VARIANTS: dict[str, dict[str, Any]] = {
    "clic": {},
    "clip_finetune": {"step_kinds": "clip"},
    "negclip": {"data": {"mode": "negclip"}},
    "clic_no_hardneg": {"loss": {"sneg": 0.0}},
    "clic_no_uni": {"loss": {"uni": 0.0}},
    "clic_no_concat": {"data": {"mode": "baseline"}},
    # Diagnostic, not run by default: is the frozen vision tower what limits CLIC here?
    "clic_vision_trainable": {"freeze": ()},
}
DEFAULT_VARIANTS = ("clic", "clip_finetune", "negclip", "clic_no_hardneg", "clic_no_uni",
                    "clic_no_concat")
DESCRIPTIONS = {
    "clic": "CLIC: concatenated pairs, 4 positives, separate hard negative, uni-modal loss; "
            "alternating with CLIP steps",
    "clip_finetune": "plain CLIP fine-tuning on the same data (every step a CLIP step)",
    "negclip": "NegCLIP-style: single image, caption + single-caption swap negative, unified loss",
    "clic_no_hardneg": "CLIC with loss.sneg=0 (the negative is still encoded, but not trained on)",
    "clic_no_uni": "CLIC with loss.uni=0",
    "clic_no_concat": "CLIC without concatenation (D11 baseline: single image, c1 twice, extras, "
                      "single-caption negative; no uni-modal loss)",
    "clic_vision_trainable": "diagnostic: CLIC with the vision tower trainable too (freeze=())",
}

# The metrics of the chart (benchmark/metric as flattened below), compositional first.
KEY_METRICS = ("sugarcrepe/swap_att", "sugarcrepe/swap_obj", "sugarcrepe/replace_att",
               "sugarcrepe/replace_rel", "sugarcrepe_pp/itt/swap_att",
               "sugarcrepe_pp/itt/swap_obj", "sugarcrepe_pp/tot/swap_att",
               "sugarcrepe_pp/tot/swap_obj", "retrieval/image_to_text_R@1",
               "retrieval/image_to_text_R@5", "retrieval/text_to_image_R@1",
               "retrieval/text_to_image_R@5")


@dataclasses.dataclass(frozen=True)
class Budget:
  """What a run may change from the demo's defaults; None keeps configs/demo.py's value."""
  pretrain_steps: int | None = None
  finetune_steps: int | None = None
  num_train: int | None = None
  num_test: int | None = None
  batch_size: int | None = None
  eval_batch_size: int | None = None
  model_name: str | None = None        # tests: "tiny" compiles faster than the demo's "tiny-64"


# ------------------------------------------------------------------------------------------------
# Configs.


def base_config(budget: Budget):
  """configs/demo.py with the budget applied (the same for every variant)."""
  from configs import demo as demo_config
  config = demo_config.get_config()
  d = config.demo_settings
  with config.unlocked():
    if budget.num_train is not None:
      d.num_train = budget.num_train
    if budget.num_test is not None:
      d.num_test = budget.num_test
    if budget.pretrain_steps is not None:
      d.pretrain.total_steps = budget.pretrain_steps
    if budget.finetune_steps is not None:
      d.clic.total_steps = budget.finetune_steps
    if budget.batch_size is not None:
      config.global_batch_size = budget.batch_size
    if budget.eval_batch_size is not None:
      d.eval_batch_size = budget.eval_batch_size
    if budget.model_name is not None:
      config.model.name = budget.model_name
    config.checkpoint_every_steps = max(config.checkpoint_every_steps, 1)
  return config


def merge_overrides(stage: dict, overrides: dict) -> dict:
  """stage with overrides applied; nested dicts (loss=..., data=...) merge key by key."""
  merged = dict(stage)
  for key, value in overrides.items():
    if isinstance(value, dict) and isinstance(merged.get(key), dict):
      merged[key] = merge_overrides(merged[key], value)
    else:
      merged[key] = value
  return merged


def variant_stage(config, variant: str, seed: int, pretrain_export: Path) -> dict:
  """The demo's `clic` stage with the variant's overrides, the seed and the pretrained weights."""
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r}; choose from {sorted(VARIANTS)}")
  stage = config.demo_settings.clic.to_dict()
  stage.update(seed=seed, init_from=f"local-dir:{pretrain_export}")
  return merge_overrides(stage, VARIANTS[variant])


# ------------------------------------------------------------------------------------------------
# Runs (each resumable).


def _train_and_evaluate(config, stage: dict, world: dict, run_dir: Path, eval_batch_size: int
                        ) -> dict:
  """Trains one stage in run_dir (unless exported already), evaluates it, caches eval.json."""
  from clic_jax import demo
  from clic_jax.train import trainer
  _check_same_stage(run_dir, {"stage": stage, "global_batch_size": config.global_batch_size,
                              "model": config.model.name, "world": world["out_dir"]})
  eval_file = run_dir / "eval.json"
  if eval_file.is_file():
    log.info("  %s: finished earlier, reusing %s", run_dir.name, eval_file)
    return json.loads(eval_file.read_text())
  started = time.time()
  summary = None
  if not (run_dir / "open_clip").is_dir():
    summary = trainer.train(demo.phase_config(config, stage, world), run_dir)
    if summary.get("preempted"):
      raise SystemExit(f"{run_dir} was preempted; rerun the same command to resume.")
  results = demo.evaluate_workdir(run_dir, world, eval_batch_size)
  record = {"results": results, "seconds": round(time.time() - started, 1),
            "final_train_metrics": (summary or {}).get("metrics", {})}
  eval_file.write_text(json.dumps(record, indent=1, default=float))
  return record


def _check_same_stage(run_dir: Path, setup: dict) -> None:
  """Resuming is only right with the same settings: record them once, refuse a different budget."""
  setup = json.loads(json.dumps(setup, sort_keys=True, default=str))
  path = run_dir / "stage.json"
  if path.is_file():
    recorded = json.loads(path.read_text())
    if recorded != setup:
      raise ValueError(f"{run_dir} was run with other settings ({path}: {recorded}); now "
                       f"{setup}. Use another --workdir for another budget.")
    return
  run_dir.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(setup, indent=1, sort_keys=True))


def flatten(results: dict) -> dict[str, float]:
  """benchmark -> metric -> value (or {"itt","tot"}) as {"bench/metric" or "bench/itt/metric"},
  restricted to demo.SHOWN, like the demo's table."""
  from clic_jax import demo
  flat = {}
  for bench, metrics in demo.SHOWN.items():
    for metric in metrics:
      value = results.get(bench, {}).get(metric)
      if isinstance(value, dict):
        for sub in ("itt", "tot"):
          flat[f"{bench}/{sub}/{metric}"] = float(value[sub])
      elif value is not None:
        flat[f"{bench}/{metric}"] = float(value)
  return flat


def summarize(values_by_variant: dict[str, list[dict[str, float]]]) -> dict:
  """variant -> metric -> {"mean", "std" (sample std, ddof=1; 0 for one seed), "values"}."""
  out = {}
  for variant, runs in values_by_variant.items():
    metrics = sorted(set().union(*(r.keys() for r in runs))) if runs else []
    out[variant] = {}
    for metric in metrics:
      values = [r[metric] for r in runs if metric in r]
      std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
      out[variant][metric] = {"mean": float(np.mean(values)), "std": std, "values": values}
  return out


# ------------------------------------------------------------------------------------------------
# Outputs.


def format_table(summary: dict, pretrained: dict[str, float], metrics: Sequence[str]) -> str:
  """Markdown: one row per metric, one column per variant (mean ± std), the pretrained model first."""
  variants = list(summary)
  head = "| metric | " + " | ".join(["pretrained"] + variants) + " |"
  rule = "|---|---:|" + "---:|" * len(variants)
  rows = [head, rule]
  for metric in metrics:
    cells = [f"{pretrained[metric]:.3f}" if metric in pretrained else "n/a"]
    for v in variants:
      s = summary[v].get(metric)
      cells.append("n/a" if s is None else f"{s['mean']:.3f} ± {s['std']:.3f}")
    rows.append(f"| {metric} | " + " | ".join(cells) + " |")
  return "\n".join(rows)


def plot(summary: dict, pretrained: dict[str, float], metrics: Sequence[str], path: Path,
         title: str) -> None:
  """Grouped bars: mean ± std per variant for each metric, the pretrained model as a black tick."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  variants = list(summary)
  metrics = [m for m in metrics if any(m in summary[v] for v in variants)]
  width = 0.8 / max(len(variants), 1)
  x = np.arange(len(metrics))
  fig, ax = plt.subplots(figsize=(max(8, 1.3 * len(metrics)), 5))
  for i, v in enumerate(variants):
    means = [summary[v].get(m, {}).get("mean", math.nan) for m in metrics]
    stds = [summary[v].get(m, {}).get("std", 0.0) for m in metrics]
    ax.bar(x - 0.4 + width * (i + 0.5), means, width, yerr=stds, capsize=2, label=v)
  for j, m in enumerate(metrics):
    if m in pretrained:
      ax.hlines(pretrained[m], j - 0.42, j + 0.42, colors="black", linewidth=1.5,
                label="pretrained" if j == 0 else None)
  ax.set_xticks(x)
  ax.set_xticklabels([m.replace("sugarcrepe_pp", "scpp").replace("sugarcrepe", "sc")
                      .replace("retrieval/", "ret/") for m in metrics], rotation=35, ha="right",
                     fontsize=8)
  ax.set_ylabel("accuracy / recall")
  ax.set_ylim(0, 1)
  ax.set_title(title, fontsize=10)
  ax.legend(fontsize=7, ncol=4, loc="upper left")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


# ------------------------------------------------------------------------------------------------
# The experiment.


def run_experiment(out: str | Path, seeds: Sequence[int] = (0, 1, 2),
                   variants: Sequence[str] = DEFAULT_VARIANTS, budget: Budget = Budget(),
                   workdir: str | Path = "/tmp/clic_experiment",
                   compilation_cache: bool = False) -> dict:
  """Runs (or resumes) every (variant, seed) and writes results.json, table.md, results.png."""
  from clic_jax.data.toyworld import generate_world
  unknown = [v for v in variants if v not in VARIANTS]
  if unknown:
    raise ValueError(f"unknown variants {unknown}; choose from {sorted(VARIANTS)}")
  out, workdir = Path(out), Path(workdir)
  out.mkdir(parents=True, exist_ok=True)
  workdir.mkdir(parents=True, exist_ok=True)
  if compilation_cache:
    # Every fine-tune of a variant compiles the same programs; seeds 1 and 2 reuse seed 0's.
    import jax
    jax.config.update("jax_compilation_cache_dir", str(workdir / "jax_cache"))
  config = base_config(budget)
  d = config.demo_settings
  started = time.time()

  log.info("[world] %d train / %d held-out scenes in %s", d.num_train, d.num_test,
           workdir / "world")
  world = generate_world(str(workdir / "world"), d.num_train, d.num_test, seed=d.world_seed,
                         image_size=d.image_size)

  log.info("[pretrain] %d CLIP steps from scratch (seed %d)", d.pretrain.total_steps, config.seed)
  pretrain_dir = workdir / "pretrain"
  pretrained = flatten(_train_and_evaluate(config, d.pretrain.to_dict(), world, pretrain_dir,
                                           d.eval_batch_size)["results"])

  runs: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
  seconds: dict[str, list[float]] = {v: [] for v in variants}
  total, done = len(variants) * len(seeds), 0
  for seed in seeds:                   # seed-major: a stopped experiment has every variant once
    for variant in variants:
      done += 1
      run_dir = workdir / variant / f"seed{seed}"
      log.info("[%d/%d] %s seed %d (%d fine-tune steps) -> %s; %.0f s elapsed", done, total,
               variant, seed, d.clic.total_steps, run_dir, time.time() - started)
      stage = variant_stage(config, variant, seed, pretrain_dir / "open_clip")
      record = _train_and_evaluate(config, stage, world, run_dir, d.eval_batch_size)
      runs[variant].append(flatten(record["results"]))
      seconds[variant].append(record["seconds"])
      flat = runs[variant][-1]
      log.info("    swap_att %.3f swap_obj %.3f i2t R@1 %.3f t2i R@1 %.3f",
               flat.get("sugarcrepe/swap_att", math.nan), flat.get("sugarcrepe/swap_obj", math.nan),
               flat.get("retrieval/image_to_text_R@1", math.nan),
               flat.get("retrieval/text_to_image_R@1", math.nan))

  summary = summarize(runs)
  all_metrics = list(flatten_metric_order(pretrained, summary))
  results = {
      "variants": summary,
      "pretrained": pretrained,
      "meta": {"seeds": list(seeds), "variants": {v: VARIANTS[v] for v in variants},
               "descriptions": {v: DESCRIPTIONS[v] for v in variants},
               "model": config.model.name, "global_batch_size": config.global_batch_size,
               "pretrain_steps": d.pretrain.total_steps, "finetune_steps": d.clic.total_steps,
               "finetune_optim": d.clic.optim.to_dict(), "freeze": list(d.clic.freeze),
               "num_train": d.num_train, "num_test": d.num_test,
               "benchmark_items": _benchmark_counts(world),
               "seconds_per_run": {v: s for v, s in seconds.items()},
               "std": "sample standard deviation over seeds (ddof=1)"},
  }
  (out / "results.json").write_text(json.dumps(results, indent=1))
  table = format_table(summary, pretrained, all_metrics)
  (out / "table.md").write_text(
      f"Mean ± std over seeds {list(seeds)}; {d.clic.total_steps} fine-tune steps of batch "
      f"{config.global_batch_size} from one CLIP pretrained {d.pretrain.total_steps} steps.\n\n"
      + table + "\n")
  plot(summary, pretrained, KEY_METRICS, out / "results.png",
       f"toy world, {config.model.name}: mean ± std over {len(seeds)} seed(s), "
       f"{d.clic.total_steps} fine-tune steps")
  print("\n" + table + f"\n\nwritten to {out}/results.json, table.md, results.png "
        f"({time.time() - started:.0f} s)")
  return results


def flatten_metric_order(pretrained: dict, summary: dict) -> list[str]:
  """Metrics in demo.SHOWN order (those present anywhere)."""
  present = set(pretrained).union(*(set(s) for s in summary.values()))
  from clic_jax import demo
  order = []
  for bench, metrics in demo.SHOWN.items():
    subs = ("itt/", "tot/") if bench == "sugarcrepe_pp" else ("",)
    for sub in subs:
      order += [f"{bench}/{sub}{m}" for m in metrics if f"{bench}/{sub}{m}" in present]
  return order


def _benchmark_counts(world: dict) -> dict:
  try:
    return json.loads(Path(world["manifest"]).read_text())["stats"]["sugarcrepe_items"]
  except (OSError, KeyError, ValueError):
    return {}


def _int_list(text: str) -> list[int]:
  return [int(s) for s in text.split(",") if s.strip()]


def main(argv: Sequence[str] | None = None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--out", default="experiments/results", help="results.json, table.md, PNG")
  p.add_argument("--workdir", default="/tmp/clic_experiment",
                 help="world, checkpoints and per-run eval.json (kept out of the repo)")
  p.add_argument("--seeds", default="0,1,2", help="fine-tuning seeds, comma-separated")
  p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                 help=f"comma-separated, from {','.join(VARIANTS)}")
  p.add_argument("--pretrain_steps", type=int, default=None, help="default: configs/demo.py")
  p.add_argument("--finetune_steps", type=int, default=None, help="default: configs/demo.py")
  p.add_argument("--num_train", type=int, default=None, help="default: configs/demo.py")
  p.add_argument("--num_test", type=int, default=None, help="default: configs/demo.py")
  p.add_argument("--batch_size", type=int, default=None, help="default: configs/demo.py")
  p.add_argument("--eval_batch_size", type=int, default=None, help="default: configs/demo.py")
  p.add_argument("--model", default=None, help="default: configs/demo.py (tiny-64)")
  p.add_argument("--no_compilation_cache", action="store_true",
                 help="do not reuse compiled programs across runs (WORKDIR/jax_cache)")
  args = p.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                      force=True)
  for noisy in ("absl", "jax._src", "orbax"):
    logging.getLogger(noisy).setLevel(logging.WARNING)
  variants = [v.strip() for v in args.variants.split(",") if v.strip()]
  budget = Budget(pretrain_steps=args.pretrain_steps, finetune_steps=args.finetune_steps,
                  num_train=args.num_train, num_test=args.num_test, batch_size=args.batch_size,
                  eval_batch_size=args.eval_batch_size, model_name=args.model)
  try:
    return run_experiment(args.out, _int_list(args.seeds), variants, budget, args.workdir,
                          compilation_cache=not args.no_compilation_cache)
  except ValueError as e:
    raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
  main()
