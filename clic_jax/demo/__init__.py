"""The offline demo: CLIC against plain CLIP fine-tuning on a procedural compositional world.

  python -m clic_jax.main --config=configs/demo.py --workdir=runs/demo

1. generate the toy world (images, reference CSV, POS tags, SugarCrepe-format benchmark);
2. build the pretrained toy CLIP in the paper's regime (pretraining.py): an image tower that
   binds attributes to objects, a text tower aligned to it on random batches;
3. fine-tune it twice from its open_clip export with the real trainer, the same data and budget:
   plain CLIP fine-tuning, and CLIC (vision tower frozen, CLIC and CLIP steps alternating);
4. evaluate the three models on the held-out benchmark and the binding probes, print them side by
   side and write WORKDIR/demo_results.json. Each model is in open_clip format under
   WORKDIR/<pretrained|clip_finetune|clic>/open_clip/ (open_clip loads it with local-dir:).
"""
from __future__ import annotations

import copy
import json
import logging
import time
from pathlib import Path

import jax

from clic_jax.data.toyworld import generate_world
from clic_jax.demo import pretraining
from clic_jax.train import trainer

log = logging.getLogger("clic_jax.demo")

MODELS = ("pretrained", "clip_finetune", "clic")
# What the table shows: benchmark -> metrics of the evaluator's result dicts.
SHOWN = {"sugarcrepe": ("swap_att", "swap_obj", "replace_att", "replace_rel", "add_att",
                        "add_obj"),
         "sugarcrepe_pp": ("swap_att", "swap_obj", "replace_att", "replace_rel"),
         "retrieval": ("image_to_text_R@1", "image_to_text_R@5", "text_to_image_R@1",
                       "text_to_image_R@5"),
         "binding": ("image_attribute", "image_spatial", "text_attribute", "text_spatial")}


def benchmarks_of(world: dict[str, str], binding: dict | None = None) -> dict[str, dict]:
  benchmarks = {
      "sugarcrepe": {"data_dir": world["sugarcrepe_dir"], "coco_dir": world["coco_dir"]},
      "sugarcrepe_pp": {"data_dir": world["sugarcrepe_pp_dir"], "coco_dir": world["coco_dir"]},
      "retrieval": {"annotation_file": world["retrieval_json"],
                    "image_root": world["retrieval_image_root"]}}
  if binding is not None:
    benchmarks["binding"] = dict(binding)
  return benchmarks


def pretrain_settings(config, **overrides) -> pretraining.PretrainSettings:
  """The pretraining recipe's settings of a demo config (demo_settings.pretrain + overrides)."""
  return pretraining.PretrainSettings(model=config.model.name, seed=config.seed,
                                      context_length=config.data.context_length,
                                      **dict(config.demo_settings.pretrain, **overrides))


def phase_config(config, stage: dict, world: dict[str, str]):
  """A trainer config for one fine-tuning run: the base config with the stage's overrides."""
  c = copy.deepcopy(config)
  with c.unlocked():
    c.demo = False
    del c.demo_settings
    c.data.csv, c.data.image_root = world["train_csv"], world["image_root"]
    c.update(stage)                       # nested dicts (optim=...) update field by field
  return c


def evaluate_export(export: Path, world: dict[str, str], d) -> dict:
  """The benchmarks on one model in open_clip format."""
  from clic_jax.evaluate import evaluate
  from clic_jax.interop import load_open_clip
  model, params = load_open_clip(None, f"local-dir:{export}")
  return evaluate(model, params, benchmarks_of(world, dict(d.binding)),
                  batch_size=d.eval_batch_size)


def shown_metrics(result: dict):
  """(row group, metric, value) of one model's results, in SHOWN order; SugarCrepe++'s
  {"itt": x, "tot": y} values become the groups "sugarcrepe_pp/itt" and "sugarcrepe_pp/tot"."""
  for bench, metrics in SHOWN.items():
    for metric in metrics:
      value = result.get(bench, {}).get(metric)
      if isinstance(value, dict):
        for sub in ("itt", "tot"):
          yield f"{bench}/{sub}", metric, value[sub]
      elif value is not None:
        yield bench, metric, value


def side_by_side(results: dict[str, dict]) -> dict:
  """{row group: {metric: {model: value}}} over the models of `results`."""
  table: dict = {}
  for name, result in results.items():
    for group, metric, value in shown_metrics(result):
      table.setdefault(group, {}).setdefault(metric, {})[name] = value
  return table


def format_table(table: dict) -> str:
  header = f"{'benchmark':<18}{'metric':<20}" + "".join(f"{m:>14}" for m in MODELS) + \
      f"{'clic - ft':>11}"
  lines = [header, "-" * len(header)]
  for bench, metrics in table.items():
    for metric, values in metrics.items():
      cells = "".join(f"{values[m]:>14.3f}" for m in MODELS)
      lines.append(f"{bench:<18}{metric:<20}{cells}"
                   f"{values['clic'] - values['clip_finetune']:>+11.3f}")
  return "\n".join(lines)


def run(config, workdir: str | Path) -> dict:
  workdir = Path(workdir)
  d = config.demo_settings
  start = time.perf_counter()
  log.info("[1/4] generating the toy world (%d train, %d held-out scenes)", d.num_train, d.num_test)
  world = generate_world(str(workdir / "world"), d.num_train, d.num_test, seed=d.world_seed,
                         image_size=d.image_size)

  log.info("[2/4] building the pretrained model (binding image tower, aligned text tower)")
  exports = {"pretrained": pretraining.pretrain(world, workdir / "pretrained",
                                                pretrain_settings(config))}

  for name in MODELS[1:]:
    log.info("[3/4] fine-tuning: %s", name)
    stage = dict(d[name], init_from=f"local-dir:{exports['pretrained']}")
    summary = trainer.train(phase_config(config, stage, world), workdir / name)
    exports[name] = Path(summary["export"])

  log.info("[4/4] evaluating the three models")
  results = {name: evaluate_export(exports[name], world, d) for name in MODELS}
  table = side_by_side(results)
  output = dict(table, _meta={
      "model": config.model.name, "devices": jax.device_count(),
      "finetune_steps": {name: d[name].total_steps for name in MODELS[1:]},
      "pretraining": dict(d.pretrain), "exports": {k: str(v) for k, v in exports.items()},
      "seconds": round(time.perf_counter() - start, 1)})
  (workdir / "demo_results.json").write_text(json.dumps(output, indent=2))
  print("\n" + format_table(table) + f"\n\nwritten to {workdir / 'demo_results.json'}; the models "
        f"in open_clip format under {workdir}/<{'|'.join(MODELS)}>/open_clip")
  return output
