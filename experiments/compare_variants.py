"""CLIC against plain fine-tuning and its alternatives on the toy world, one budget, several seeds.

  python -m experiments.compare_variants --out=experiments/results [--seeds=0,1,2]
      [--variants=clic,clip_finetune,...] [--vision_steps=N --text_steps=N --finetune_steps=M]
      [--num_train=N --num_test=N] [--workdir=/tmp/clic_experiment]

1. generate the demo's toy world (configs/demo.py's sizes unless overridden);
2. build ONE pretrained toy CLIP in the paper's regime (clic_jax/demo/pretraining.py: an image
   tower that binds, a text tower aligned to it on random batches); every method starts from it;
3. fine-tune every variant (the demo's fine-tuning stage plus the variant's overrides: same steps,
   batch, lr schedule and frozen vision tower) once per seed; the seed changes the data order,
   partners, coin flips and negatives, not the starting weights;
4. evaluate the pretrained model and every fine-tuned one with the real evaluator on the toy
   benchmark and the binding probes, and write results.json, table.md and results.png to --out.

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
    "clic_minimal_negatives": {"loss": {"hard_negative_sets": "minimal"}},
    "negclip": {"data": {"mode": "negclip"}},
    "clic_no_hardneg": {"loss": {"sneg": 0.0}},
    "clic_no_uni": {"loss": {"uni": 0.0}},
    "clic_no_concat": {"data": {"mode": "baseline"}},
    # Diagnostic, not run by default: is the frozen vision tower what limits CLIC here?
    "clic_vision_trainable": {"freeze": ()},
}
DEFAULT_VARIANTS = ("clic", "clip_finetune", "negclip", "clic_minimal_negatives")
DESCRIPTIONS = {
    "clic": "CLIC: concatenated pairs, 4 positives, separate hard negative, uni-modal loss; "
            "alternating with CLIP steps",
    "clip_finetune": "plain CLIP fine-tuning on the same data (every step a CLIP step)",
    "clic_minimal_negatives": "CLIC with the hard-negative loss on the minimal pairs p1/p2 only "
                              "(loss.hard_negative_sets='minimal')",
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
               "retrieval/text_to_image_R@5", "binding/image_attribute", "binding/text_attribute",
               "binding/text_spatial")
# The claim under test: CLIC beats plain fine-tuning on these by more than the noise ...
CLAIM_GAINS = ("sugarcrepe/swap_att", "sugarcrepe/swap_obj", "sugarcrepe_pp/itt/swap_att",
               "sugarcrepe_pp/itt/swap_obj")
# ... without losing more than this much of these.
CLAIM_KEPT = ("retrieval/image_to_text_R@1", "retrieval/text_to_image_R@1")
MAX_RETRIEVAL_LOSS = 0.01


@dataclasses.dataclass(frozen=True)
class Budget:
  """What a run may change from the demo's defaults; None keeps configs/demo.py's value."""
  vision_steps: int | None = None       # pretraining: the image tower's steps
  text_steps: int | None = None         # pretraining: the text tower's steps
  pretrain_batch: int | None = None     # both pretraining stages
  corpus_scenes: int | None = None      # pretraining corpus size
  probe_scenes: int | None = None        # binding probes: training scenes (twins: a fifth)
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
    if budget.corpus_scenes is not None:
      d.pretrain.corpus_scenes = budget.corpus_scenes
    if budget.vision_steps is not None:
      d.pretrain.vision_steps = budget.vision_steps
    if budget.text_steps is not None:
      d.pretrain.text_steps = budget.text_steps
    if budget.probe_scenes is not None:
      d.binding = dict(num_train=budget.probe_scenes, num_twins=max(1, budget.probe_scenes // 5))
    if budget.pretrain_batch is not None:
      d.pretrain.vision_batch = d.pretrain.text_batch = budget.pretrain_batch
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
  """The demo's CLIC fine-tuning stage with the variant's overrides, the seed and the pretrained
  weights (the demo's clip_finetune stage is this with step_kinds="clip")."""
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
  if not (run_dir / "open_clip").is_dir():
    summary = trainer.train(demo.phase_config(config, stage, world), run_dir)
    if summary.get("preempted"):
      raise SystemExit(f"{run_dir} was preempted; rerun the same command to resume.")
  results = demo.evaluate_export(run_dir / "open_clip", world, config.demo_settings)
  record = {"results": results, "seconds": round(time.time() - started, 1),
            "train_metrics": _last_rows(run_dir / "metrics.jsonl")}
  eval_file.write_text(json.dumps(record, indent=1, default=float))
  return record


def _last_rows(path: Path, window: int = 2) -> dict[str, float]:
  """The mean of the last `window` metric rows (the end of training), for the diagnostics."""
  rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
  rows = [r for r in rows if "loss" in r][-window:]
  keys = set().union(*(r.keys() for r in rows)) if rows else set()
  return {k: float(np.mean([r[k] for r in rows if k in r])) for k in sorted(keys)
          if all(isinstance(r.get(k, 0.0), (int, float)) for r in rows)}


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
  """One model's results as {"bench/metric" or "sugarcrepe_pp/itt/metric": value}, restricted to
  the demo's table (demo.SHOWN)."""
  from clic_jax import demo
  return {f"{group}/{metric}": float(value)
          for group, metric, value in demo.shown_metrics(results)}


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
  from clic_jax import demo
  from clic_jax.demo import pretraining
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

  log.info("[pretrain] the pretrained toy CLIP (%s)", dict(d.pretrain))
  pretrain_export = pretraining.pretrain(world, workdir / "pretrained",
                                         demo.pretrain_settings(config))
  pretrained_file = workdir / "pretrained" / "eval.json"
  if not pretrained_file.is_file():
    pretrained_file.write_text(json.dumps(demo.evaluate_export(pretrain_export, world, d),
                                          default=float))
  pretrained = flatten(json.loads(pretrained_file.read_text()))
  pretraining_report = json.loads((workdir / "pretrained" / "pretraining.json").read_text())

  runs: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
  seconds: dict[str, list[float]] = {v: [] for v in variants}
  diagnostics: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
  total, done = len(variants) * len(seeds), 0
  for seed in seeds:                   # seed-major: a stopped experiment has every variant once
    for variant in variants:
      done += 1
      run_dir = workdir / variant / f"seed{seed}"
      log.info("[%d/%d] %s seed %d (%d fine-tune steps) -> %s; %.0f s elapsed", done, total,
               variant, seed, d.clic.total_steps, run_dir, time.time() - started)
      stage = variant_stage(config, variant, seed, pretrain_export)
      record = _train_and_evaluate(config, stage, world, run_dir, d.eval_batch_size)
      runs[variant].append(flatten(record["results"]))
      diagnostics[variant].append({k: v for k, v in record["train_metrics"].items()
                                   if "pos_over_neg" in k or k.endswith("negative_valid")})
      seconds[variant].append(record["seconds"])
      flat = runs[variant][-1]
      log.info("    swap_att %.3f swap_obj %.3f i2t R@1 %.3f t2i R@1 %.3f",
               flat.get("sugarcrepe/swap_att", math.nan), flat.get("sugarcrepe/swap_obj", math.nan),
               flat.get("retrieval/image_to_text_R@1", math.nan),
               flat.get("retrieval/text_to_image_R@1", math.nan))

  summary = summarize(runs)
  all_metrics = list(flatten_metric_order(pretrained, summary))
  items = benchmark_items(world, d.binding)
  results = {
      "variants": summary,
      "pretrained": pretrained,
      "differences": paired_differences(runs, "clip_finetune"),
      "sampling_se": {m: sampling_se(summary.get("clip_finetune", {}).get(m, {}).get(
          "mean", pretrained.get(m, 0.5)), items.get(m)) for m in all_metrics},
      "claim": claim_verdict(runs, items) if {"clic", "clip_finetune"} <= set(runs) else None,
      "diagnostics": summarize(diagnostics),
      "pretraining": pretraining_report,
      "meta": {"seeds": list(seeds), "variants": {v: VARIANTS[v] for v in variants},
               "descriptions": {v: DESCRIPTIONS[v] for v in variants},
               "model": config.model.name, "global_batch_size": config.global_batch_size,
               "pretraining": dict(d.pretrain), "finetune_steps": d.clic.total_steps,
               "finetune_optim": d.clic.optim.to_dict(), "freeze": list(d.clic.freeze),
               "num_train": d.num_train, "num_test": d.num_test,
               "benchmark_items": items,
               "seconds_per_run": {v: s for v, s in seconds.items()},
               "std": "sample standard deviation over seeds (ddof=1)"},
  }
  (out / "results.json").write_text(json.dumps(results, indent=1))
  table = format_table(summary, pretrained, all_metrics)
  (out / "table.md").write_text(
      f"Mean ± std over seeds {list(seeds)}; {d.clic.total_steps} fine-tune steps of batch "
      f"{config.global_batch_size} from one pretrained toy CLIP (clic_jax/demo/pretraining.py)."
      "\n\n"
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


def benchmark_items(world: dict, binding: dict) -> dict[str, int]:
  """Items behind each flattened metric: the binomial sampling error needs them."""
  stats = json.loads(Path(world["manifest"]).read_text())["stats"]
  items = {f"sugarcrepe/{c}": n for c, n in stats["sugarcrepe_items"].items()}
  for c, n in stats["sugarcrepe_pp_items"].items():
    items[f"sugarcrepe_pp/itt/{c}"] = items[f"sugarcrepe_pp/tot/{c}"] = n
  images = stats["retrieval_images"]
  for k in ("R@1", "R@5"):
    items[f"retrieval/image_to_text_{k}"] = images
    items[f"retrieval/text_to_image_{k}"] = images * 5
  for m in ("image_attribute", "image_spatial", "text_attribute", "text_spatial"):
    items[f"binding/{m}"] = 2 * binding["num_twins"]
  return items


def sampling_se(p: float, n: int | None) -> float | None:
  """Binomial standard error of an accuracy p measured on n items: the benchmark's own noise."""
  return None if not n else float(math.sqrt(max(p * (1 - p), 0.0) / n))


def paired_differences(runs: dict[str, list[dict[str, float]]], reference: str) -> dict:
  """variant - reference per seed (same seed, same data order), then mean and sample std."""
  if reference not in runs:
    return {}
  return {v: summarize({v: [{m: r[m] - ref[m] for m in r if m in ref}
                            for r, ref in zip(runs[v], runs[reference])]})[v]
          for v in runs if v != reference}


def claim_verdict(runs: dict[str, list[dict[str, float]]], items: dict[str, int]) -> dict:
  """Does CLIC beat plain fine-tuning by more than the noise, keeping retrieval?

  Noise of a difference: the larger of its seed-to-seed std (the fine-tuning randomness) and the
  benchmark's binomial error of a difference (sqrt(2) * SE at the fine-tuned score); "beats" means
  a mean gain above twice that.
  """
  diffs = paired_differences(runs, "clip_finetune")["clic"]
  verdict = {}
  for metric in CLAIM_GAINS + CLAIM_KEPT:
    d = diffs[metric]
    base = float(np.mean([r[metric] for r in runs["clip_finetune"]]))
    noise = max(d["std"], math.sqrt(2) * (sampling_se(base, items.get(metric)) or 0.0))
    holds = d["mean"] > 2 * noise if metric in CLAIM_GAINS else d["mean"] >= -MAX_RETRIEVAL_LOSS
    verdict[metric] = {"difference": d["mean"], "noise": noise, "holds": bool(holds)}
  verdict["all"] = all(v["holds"] for v in verdict.values())
  return verdict


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
  p.add_argument("--vision_steps", type=int, default=None,
                 help="pretraining steps of the image tower; default: configs/demo.py")
  p.add_argument("--text_steps", type=int, default=None,
                 help="pretraining steps of the text tower; default: configs/demo.py")
  p.add_argument("--pretrain_batch", type=int, default=None, help="default: configs/demo.py")
  p.add_argument("--corpus_scenes", type=int, default=None,
                 help="pretraining corpus scenes; default: clic_jax/demo/pretraining.py")
  p.add_argument("--probe_scenes", type=int, default=None,
                 help="binding-probe training scenes (a fifth as many twins); default: demo's")
  p.add_argument("--finetune_steps", type=int, default=None, help="default: configs/demo.py")
  p.add_argument("--num_train", type=int, default=None, help="default: configs/demo.py")
  p.add_argument("--num_test", type=int, default=None, help="default: configs/demo.py")
  p.add_argument("--batch_size", type=int, default=None, help="default: configs/demo.py")
  p.add_argument("--eval_batch_size", type=int, default=None, help="default: configs/demo.py")
  p.add_argument("--model", default=None, help="default: configs/demo.py (tiny-64)")
  p.add_argument("--no_compilation_cache", action="store_true",
                 help="do not reuse compiled programs across runs (WORKDIR/jax_cache)")
  args = p.parse_args(argv)
  # Our progress on the terminal, the libraries' INFO chatter in WORKDIR/logs/train.log.
  from clic_jax import logging_setup
  logging_setup.setup_logging(args.workdir)
  variants = [v.strip() for v in args.variants.split(",") if v.strip()]
  budget = Budget(vision_steps=args.vision_steps, text_steps=args.text_steps,
                  pretrain_batch=args.pretrain_batch, corpus_scenes=args.corpus_scenes,
                  probe_scenes=args.probe_scenes,
                  finetune_steps=args.finetune_steps,
                  num_train=args.num_train, num_test=args.num_test, batch_size=args.batch_size,
                  eval_batch_size=args.eval_batch_size, model_name=args.model)
  try:
    return run_experiment(args.out, _int_list(args.seeds), variants, budget, args.workdir,
                          compilation_cache=not args.no_compilation_cache)
  except ValueError as e:
    raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
  main()
