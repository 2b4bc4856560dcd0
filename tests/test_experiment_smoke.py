"""The variant-comparison experiment: config overrides, statistics, and a tiny end-to-end run."""
from __future__ import annotations

import json
import math

import pytest

from experiments import compare_variants as cv


def test_variant_overrides_merge_into_the_clic_stage(tmp_path):
  config = cv.base_config(cv.Budget(finetune_steps=7))
  stage = cv.variant_stage(config, "clic_no_hardneg", seed=2, pretrain_export=tmp_path / "oc")
  assert stage["loss"] == {"sneg": 0.0}
  assert stage["total_steps"] == 7 and stage["seed"] == 2
  assert stage["init_from"] == f"local-dir:{tmp_path / 'oc'}"
  assert stage["optim"] == config.demo_settings.clic.optim.to_dict()   # same budget
  merged = cv.merge_overrides({"optim": {"lr": 1.0, "b1": 0.9}}, {"optim": {"lr": 2.0}})
  assert merged == {"optim": {"lr": 2.0, "b1": 0.9}}
  assert cv.variant_stage(config, "negclip", 0, tmp_path)["data"] == {"mode": "negclip"}
  assert cv.variant_stage(config, "clip_finetune", 0, tmp_path)["step_kinds"] == "clip"
  with pytest.raises(ValueError, match="unknown variant"):
    cv.variant_stage(config, "nope", 0, tmp_path)


def test_summary_statistics():
  summary = cv.summarize({"a": [{"m": 0.2}, {"m": 0.4}, {"m": 0.6}], "b": [{"m": 0.5}]})
  assert summary["a"]["m"]["mean"] == pytest.approx(0.4)
  assert summary["a"]["m"]["std"] == pytest.approx(0.2)          # sample std (ddof=1)
  assert summary["a"]["m"]["values"] == [0.2, 0.4, 0.6]
  assert summary["b"]["m"] == {"mean": 0.5, "std": 0.0, "values": [0.5]}


def test_tiny_experiment_writes_results_and_resumes(tmp_path, monkeypatch):
  out, work = tmp_path / "results", tmp_path / "work"
  argv = [f"--out={out}", f"--workdir={work}", "--seeds=0", "--variants=clic,clip_finetune",
          "--vision_steps=2", "--text_steps=2", "--pretrain_batch=8", "--corpus_scenes=60", "--probe_scenes=40", "--finetune_steps=2", "--num_train=48", "--num_test=24",
          "--batch_size=16", "--eval_batch_size=32", "--model=tiny",
          "--no_compilation_cache"]
  results = cv.main(argv)

  on_disk = json.loads((out / "results.json").read_text())
  assert on_disk == json.loads(json.dumps(results))
  assert set(on_disk["variants"]) == {"clic", "clip_finetune"}
  claim = on_disk["claim"]
  assert set(claim) == set(cv.CLAIM_GAINS) | set(cv.CLAIM_KEPT) | {"all"}
  assert all(v["noise"] >= 0 and isinstance(v["holds"], bool) for k, v in claim.items()
             if k != "all")
  assert "clic/pos_over_neg_wrong_image/p3" in on_disk["diagnostics"]["clic"]
  assert on_disk["sampling_se"]["sugarcrepe/swap_att"] > 0
  assert on_disk["meta"]["finetune_steps"] == 2 and on_disk["meta"]["seeds"] == [0]
  for variant, metrics in on_disk["variants"].items():
    for key in ("sugarcrepe/swap_att", "sugarcrepe_pp/itt/swap_obj", "retrieval/text_to_image_R@1"):
      stats = metrics[key]
      assert len(stats["values"]) == 1 and stats["std"] == 0.0
      assert 0.0 <= stats["mean"] <= 1.0 and math.isfinite(stats["mean"])
  assert all(0.0 <= v <= 1.0 for v in on_disk["pretrained"].values())
  png = (out / "results.png").read_bytes()
  assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
  table = (out / "table.md").read_text()
  assert "| sugarcrepe/swap_att |" in table and "± 0.000" in table
  # Heavy run directories stay in the workdir, never next to the results.
  assert (work / "clic" / "seed0" / "open_clip").is_dir()
  assert sorted(p.name for p in out.iterdir()) == ["results.json", "results.png", "table.md"]

  # A second call reuses every finished run (no retraining: eval.json untouched).
  eval_file = work / "clip_finetune" / "seed0" / "eval.json"
  before = eval_file.stat().st_mtime_ns
  again = cv.main(argv)
  assert eval_file.stat().st_mtime_ns == before
  assert again["variants"] == results["variants"]

  # Another budget in the same workdir is refused instead of silently mixing runs.
  with pytest.raises(SystemExit, match="other settings"):
    cv.main([a if not a.startswith("--finetune_steps") else "--finetune_steps=3" for a in argv])

  # The text-alignment sweep starts from the experiment's image tower (not trained again) and
  # measures the model at each requested text step.
  from clic_jax.demo import pretraining
  from experiments import text_alignment

  def no_training(*args, **kwargs):
    raise AssertionError("the image tower was trained again")
  monkeypatch.setattr(pretraining, "train_vision", no_training)
  sweep_out = tmp_path / "sweep" / "text_alignment.json"
  same_setup = [a for a in argv if a.split("=")[0] in (
      "--workdir", "--vision_steps", "--pretrain_batch", "--corpus_scenes", "--probe_scenes",
      "--num_train", "--num_test", "--eval_batch_size", "--model")]
  rows = text_alignment.main(same_setup + ["--eval_at=2,1", f"--out={sweep_out}"])
  assert [r["step"] for r in rows] == [1, 2]
  assert json.loads(sweep_out.read_text()) == rows
  assert all(0.0 <= v <= 1.0 for r in rows for k, v in r.items() if k != "step")
  assert "| text step |" in sweep_out.with_suffix(".md").read_text()
