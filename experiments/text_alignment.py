"""How fast does the text tower learn to bind while it is aligned to a binding image tower?

  python -m experiments.text_alignment --workdir=/tmp/clic_experiment --text_steps=1500 \
      --eval_at=50,100,200,300,1500 --out=experiments/results/text_alignment.json

Runs the pretraining recipe's text stage (clic_jax/demo/pretraining.py: LiT, the CLIP loss on
random batches against the locked image tower) and evaluates the model at each step of --eval_at
on the toy benchmark and the binding probes: retrieval says how well the text is aligned, the
SugarCrepe swap_att score and the text binding probe say how far the text tower binds. The image
tower and the world are the experiment's (WORKDIR/world, WORKDIR/pretrained/vision_tower.npz;
trained here first when missing, with configs/demo.py's settings and the flags below).
The result decides how long the recipe aligns the text tower (experiments/README.md).
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

log = logging.getLogger("experiments.text_alignment")

SHOWN = (("sugarcrepe", "swap_att"), ("sugarcrepe", "swap_obj"), ("binding", "text_attribute"),
         ("binding", "text_spatial"), ("binding", "image_attribute"),
         ("retrieval", "image_to_text_R@1"), ("retrieval", "text_to_image_R@1"))


def sweep(workdir: str | Path, eval_at: list[int], budget) -> list[dict]:
  """One row per step of eval_at: the step and the SHOWN metrics."""
  from clic_jax.data.toyworld import generate_world
  from clic_jax.demo import benchmarks_of, pretrain_settings, pretraining
  from clic_jax.evaluate import evaluate
  from experiments import compare_variants
  workdir = Path(workdir)
  config = compare_variants.base_config(budget)
  d = config.demo_settings
  world = generate_world(str(workdir / "world"), d.num_train, d.num_test, seed=d.world_seed,
                         image_size=d.image_size)
  settings = pretrain_settings(config, text_steps=max(eval_at))
  model, params, data, _ = pretraining.image_tower_stage(world, workdir / "pretrained", settings)
  benchmarks = benchmarks_of(world, dict(d.binding))
  rows, started = [], time.time()

  def measure(step: int, params: dict) -> None:
    results = evaluate(model, params, benchmarks, batch_size=d.eval_batch_size)
    row = {"step": step, **{f"{b}/{m}": float(results[b][m]) for b, m in SHOWN}}
    log.info("text step %d (%.0f s): %s", step, time.time() - started,
             ", ".join(f"{k} {v:.3f}" for k, v in row.items() if k != "step"))
    rows.append(row)

  pretraining.train_text(model, params, data, settings, on_checkpoint=measure,
                         checkpoints=eval_at)
  return rows


def markdown(rows: list[dict]) -> str:
  keys = [k for k in rows[0] if k != "step"]
  lines = ["| text step | " + " | ".join(keys) + " |", "|---:|" + "---:|" * len(keys)]
  lines += [f"| {r['step']} | " + " | ".join(f"{r[k]:.3f}" for k in keys) + " |" for r in rows]
  return "\n".join(lines)


def main(argv=None) -> list[dict]:
  from experiments.compare_variants import Budget, _int_list
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--workdir", default="/tmp/clic_experiment")
  p.add_argument("--out", default="experiments/results/text_alignment.json",
                 help="the rows as JSON, and a markdown table beside it (.md)")
  p.add_argument("--eval_at", default="50,100,200,300,1500",
                 help="text steps to evaluate at; the schedule runs to the largest")
  p.add_argument("--vision_steps", type=int, default=None, help="default: configs/demo.py")
  p.add_argument("--pretrain_batch", type=int, default=None, help="default: configs/demo.py")
  p.add_argument("--corpus_scenes", type=int, default=None, help="default: the recipe's")
  p.add_argument("--probe_scenes", type=int, default=None, help="default: configs/demo.py")
  p.add_argument("--num_train", type=int, default=None, help="default: configs/demo.py")
  p.add_argument("--num_test", type=int, default=None, help="default: configs/demo.py")
  p.add_argument("--eval_batch_size", type=int, default=None, help="default: configs/demo.py")
  p.add_argument("--model", default=None, help="default: configs/demo.py (tiny-64)")
  args = p.parse_args(argv)
  from clic_jax import logging_setup
  logging_setup.setup_logging(args.workdir)
  eval_at = sorted(set(_int_list(args.eval_at)))
  if not eval_at or eval_at[0] < 1:
    raise SystemExit(f"error: --eval_at={args.eval_at} needs steps >= 1")
  budget = Budget(vision_steps=args.vision_steps, pretrain_batch=args.pretrain_batch,
                  corpus_scenes=args.corpus_scenes, probe_scenes=args.probe_scenes,
                  num_train=args.num_train, num_test=args.num_test,
                  eval_batch_size=args.eval_batch_size, model_name=args.model)
  rows = sweep(args.workdir, eval_at, budget)
  out = Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(rows, indent=1))
  out.with_suffix(".md").write_text(markdown(rows) + "\n")
  print(markdown(rows) + f"\n\nwritten to {out} and {out.with_suffix('.md')}")
  return rows


if __name__ == "__main__":
  main()
