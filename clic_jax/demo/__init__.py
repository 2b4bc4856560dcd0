"""The offline demo: CLIC on a procedural compositional world, start to finish on a CPU.

  python -m clic_jax.main --config=configs/demo.py --workdir=runs/demo

1. generate the toy world (images + reference CSV + POS tags + SugarCrepe-format benchmark);
2. pretrain a tiny CLIP from scratch with the plain CLIP loss (the stand-in for OpenAI's weights);
3. evaluate it ("before");
4. fine-tune it with CLIC (vision tower frozen, CLIC and CLIP steps alternating), starting from the
   pretrained weights exported in open_clip format, exactly as a real run starts from open_clip's;
5. evaluate again ("after"), print a before/after table and write WORKDIR/demo_results.json;
   the fine-tuned model is exported to WORKDIR/clic/open_clip/ (load with open_clip's local-dir:).
Every stage uses the real code path: the grain pipeline, the trainer, the evaluator and interop.
"""
from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import jax

from clic_jax import models
from clic_jax.data.toyworld import generate_world
from clic_jax.train import trainer
from clic_jax.train.checkpoint import load_params_for_eval

log = logging.getLogger("clic_jax.demo")

# What the table shows: (benchmark, metric) in the evaluator's result dicts.
SHOWN = {"sugarcrepe": ("swap_att", "swap_obj", "replace_att", "replace_rel", "add_att",
                        "add_obj"),
         "sugarcrepe_pp": ("swap_att", "swap_obj", "replace_att", "replace_rel"),
         "retrieval": ("image_to_text_R@1", "image_to_text_R@5", "text_to_image_R@1",
                       "text_to_image_R@5")}


def benchmarks_of(world: dict[str, str]) -> dict[str, dict]:
  return {"sugarcrepe": {"data_dir": world["sugarcrepe_dir"], "coco_dir": world["coco_dir"]},
          "sugarcrepe_pp": {"data_dir": world["sugarcrepe_pp_dir"], "coco_dir": world["coco_dir"]},
          "retrieval": {"annotation_file": world["retrieval_json"],
                        "image_root": world["retrieval_image_root"]}}


def phase_config(config, stage: dict, world: dict[str, str]):
  """A trainer config for one stage of the demo: the base config with the stage's overrides."""
  c = copy.deepcopy(config)
  with c.unlocked():
    c.demo = False
    c.data.csv, c.data.image_root = world["train_csv"], world["image_root"]
    c.update(stage)                       # nested dicts (optim=...) update field by field
  return c


def evaluate_workdir(workdir: Path, world: dict[str, str], batch_size: int) -> dict:
  from clic_jax.evaluate import evaluate
  cfg, params = load_params_for_eval(workdir)
  return evaluate(models.build_model(cfg), params, benchmarks_of(world), batch_size=batch_size)


def before_after(before: dict, after: dict) -> dict:
  table: dict = {}
  for bench, metrics in SHOWN.items():
    for metric in metrics:
      b, a = before.get(bench, {}).get(metric), after.get(bench, {}).get(metric)
      if isinstance(b, dict):                       # SugarCrepe++: {"itt": x, "tot": y}
        for sub in ("itt", "tot"):
          table.setdefault(f"{bench}/{sub}", {})[metric] = {"before": b[sub], "after": a[sub]}
      elif b is not None:
        table.setdefault(bench, {})[metric] = {"before": b, "after": a}
  return table


def format_table(table: dict) -> str:
  lines = [f"{'benchmark':<18}{'category':<20}{'before':>8}{'after':>8}{'change':>9}",
           "-" * 63]
  for bench, metrics in table.items():
    for metric, v in metrics.items():
      lines.append(f"{bench:<18}{metric:<20}{v['before']:>8.3f}{v['after']:>8.3f}"
                   f"{v['after'] - v['before']:>+9.3f}")
  return "\n".join(lines)


def run(config, workdir: str | Path) -> dict:
  workdir = Path(workdir)
  d = config.demo_settings
  log.info("[1/5] generating the toy world (%d train, %d held-out scenes)", d.num_train, d.num_test)
  world = generate_world(str(workdir / "world"), d.num_train, d.num_test, seed=d.world_seed,
                         image_size=d.image_size)

  log.info("[2/5] pretraining %s from scratch with the CLIP loss", config.model.name)
  trainer.train(phase_config(config, d.pretrain, world), workdir / "pretrain")

  log.info("[3/5] evaluating the pretrained model")
  before = evaluate_workdir(workdir / "pretrain", world, d.eval_batch_size)

  log.info("[4/5] fine-tuning with CLIC from the exported open_clip weights")
  stage = dict(d.clic, init_from=f"local-dir:{workdir / 'pretrain' / 'open_clip'}")
  trainer.train(phase_config(config, stage, world), workdir / "clic")

  log.info("[5/5] evaluating the CLIC model")
  after = evaluate_workdir(workdir / "clic", world, d.eval_batch_size)

  table = before_after(before, after)
  results = dict(table, _meta={"model": config.model.name, "devices": jax.device_count(),
                               "pretrain_steps": d.pretrain.total_steps,
                               "clic_steps": d.clic.total_steps,
                               "export": str(workdir / "clic" / "open_clip")})
  (workdir / "demo_results.json").write_text(json.dumps(results, indent=2))
  print("\n" + format_table(table) + f"\n\nwritten to {workdir / 'demo_results.json'}; "
        f"open_clip export in {workdir / 'clic' / 'open_clip'}")
  return results
