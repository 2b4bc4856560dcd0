"""The training step and loop: sharding equivalence, learning, exact resume, freezing, config errors."""
from __future__ import annotations

import dataclasses
import json

import jax
import numpy as np
import optax
import pytest

from clic_jax import models
from clic_jax.data import pipeline as pipeline_lib
from clic_jax.train import config as config_lib
from clic_jax.train import mesh as mesh_lib
from clic_jax.train import optimizer as opt_lib
from clic_jax.train import step as step_lib
from clic_jax.train import trainer
from clic_jax.train.checkpoint import load_params_for_eval
from configs import tiny


def tiny_config(csv_path, image_root, **overrides):
  config = tiny.get_config()
  config.data.csv, config.data.image_root = str(csv_path), str(image_root)
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def read_metrics(workdir):
  with open(workdir / "metrics.jsonl") as f:
    return [json.loads(line) for line in f]


def synthetic_batch(kind, batch=16, positives=4, size=32, seed=0):
  rng = np.random.default_rng(seed)
  k = 1 if kind == "clip" else positives + 1
  tokens = rng.integers(1, 49000, (batch, k, 77)).astype(np.int32)
  lengths = rng.integers(3, 20, (batch, k))
  for i in range(batch):
    for j in range(k):
      tokens[i, j, 0], tokens[i, j, lengths[i, j]] = 49406, 49407
      tokens[i, j, lengths[i, j] + 1:] = 0
  return {"images": rng.standard_normal((batch, size, size, 3)).astype(np.float32),
          "texts": tokens}


def _step_on(devices, model, params, tx, kind, batch):
  mesh = mesh_lib.make_mesh(1, devices)
  state = jax.device_put(step_lib.create_state(params, tx, ("^visual/",)), mesh_lib.replicated(mesh))
  fn = jax.jit(step_lib.make_train_step(model, tx, kind, config_lib.loss_spec()))
  new_state, metrics = fn(state, mesh_lib.global_batch(mesh, batch))
  return jax.device_get(new_state.trainable), jax.device_get(metrics)


@pytest.mark.parametrize("kind", ["clic", "clip"])
def test_sharded_step_matches_one_device(kind):
  assert jax.device_count() == 8, "conftest should give 8 simulated CPU devices"
  model, params = models.create_model("tiny", seed=1)
  batch = synthetic_batch(kind)
  # SGD: the updated parameters are p - lr * g, so this compares the gradients element by element.
  # (Adam's first step g / (|g| + eps) maps rounding noise in gradients that cancel to ~0, such as
  # the softmax-invariant attention key bias, onto +-lr; that is not a sharding difference.)
  sgd = optax.sgd(1e-2)
  (p1, m1), (p8, m8) = [_step_on(d, model, params, sgd, kind, batch)
                        for d in (jax.devices()[:1], jax.devices())]
  assert np.isclose(m1["loss"], m8["loss"], rtol=1e-5, atol=0)
  assert np.isclose(m1["grad_norm"], m8["grad_norm"], rtol=1e-5, atol=0)
  for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p8)):
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7)
  # The update moved the parameters (the comparison is not between two untouched copies).
  before = jax.tree.leaves(opt_lib.split_trainable(
      params, opt_lib.trainable_mask(params, ("^visual/",)))[0])
  assert max(float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(p1), before)) > 1e-6
  # The real optimizer: the same loss and gradient norm on 1 and 8 devices.
  adamw = opt_lib.make_optimizer(params, total_steps=10, lr=1e-3, lr_start=1e-4, lr_end=1e-5,
                                 warmup_fraction=0.0, freeze=("^visual/",))
  (_, a1), (_, a8) = [_step_on(d, model, params, adamw, kind, batch)
                      for d in (jax.devices()[:1], jax.devices())]
  assert np.isclose(a1["loss"], a8["loss"], rtol=1e-5, atol=0)
  assert np.isclose(a1["grad_norm"], a8["grad_norm"], rtol=1e-5, atol=0)


def test_tiny_config_trains_and_loss_falls(tmp_path, caption_dataset):
  csv_path, images = caption_dataset
  config = tiny_config(csv_path, images, total_steps=30, freeze=("^visual/transformer/resblocks_0",))
  summary = trainer.train(config, tmp_path)
  rows = read_metrics(tmp_path)
  assert [r["step"] for r in rows] == list(range(1, 31))
  for key in ("loss", "lr", "logit_scale", "grad_norm", "examples_per_s", "contrastive_loss"):
    assert all(np.isfinite(r[key]) for r in rows if key in r), key
  clic = [r["clic/loss"] for r in rows if "clic/loss" in r]
  clip = [r["clip/loss"] for r in rows if "clip/loss" in r]
  assert len(clic) == len(clip) == 15            # CLIC first, then alternating
  assert np.mean(clic[-4:]) < np.mean(clic[:4]) - 0.05
  assert np.mean(clip[-4:]) < np.mean(clip[:4]) - 0.05
  assert any(k.startswith("pipeline/") for k in rows[-1])
  # Frozen parameters are bit-identical to the initialisation; trained ones moved.
  _, trained = load_params_for_eval(tmp_path)
  _, init = models.create_model("tiny", seed=config.seed)
  frozen_before = init["visual"]["transformer"]["resblocks_0"]
  frozen_after = trained["visual"]["transformer"]["resblocks_0"]
  for a, b in zip(jax.tree.leaves(frozen_before), jax.tree.leaves(frozen_after)):
    assert np.array_equal(np.asarray(a), np.asarray(b))
  assert not np.array_equal(np.asarray(init["text_projection"]), trained["text_projection"])
  assert summary["step"] == 30


def test_sigterm_resume_reproduces_uninterrupted_run(tmp_path, caption_dataset):
  csv_path, images = caption_dataset
  common = dict(total_steps=8, checkpoint_every_steps=4)
  straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
  trainer.train(tiny_config(csv_path, images, **common), straight)
  first = trainer.train(tiny_config(csv_path, images, debug_sigterm_at_step=3, **common),
                        interrupted)
  assert first["preempted"] and first["step"] == 3
  second = trainer.train(tiny_config(csv_path, images, **common), interrupted)
  assert second["step"] == 8 and not second["preempted"]
  a = [(r["step"], r["loss"]) for r in read_metrics(straight)]
  b = [(r["step"], r["loss"]) for r in read_metrics(interrupted)]
  assert a == b                                   # exactly, step by step


def test_bad_configs_fail_before_compiling(tmp_path, caption_dataset):
  csv_path, images = caption_dataset
  cases = [({"model.name": "ViT-X-99"}, "Known models"),
           ({"global_batch_size": 12}, "multiple of the device count"),
           ({"optim.grad_accum_steps": 4}, "must be a multiple of 32"),   # 16 over 4 x 8
           ({"data.csv": str(tmp_path / "missing.csv")}, "does not exist"),
           ({"init_from": str(tmp_path / "nope" / "w.safetensors")}, "init_from"),
           ({"mesh.fsdp": 3}, "fsdp"),
           ({"data.mode": "weird"}, "data.mode"),
           ({"model.attention_impl": "flash"}, "attention_impl"),
           ({"evals": {"sugarcrep": {}}}, "Unknown benchmark 'sugarcrep'"),
           ({"evals": {"sugarcrepe": {"data_dir": str(tmp_path)}}}, "coco_dir"),
           ({"evals": {"retrieval/coco": {"annotation_file": str(tmp_path / "karpathy.json"),
                                          "image_root": str(tmp_path)}}}, "does not exist"),
           ({"loss.hard_negative_sets": "p1p2"}, "hard_negative_sets='p1p2'"),
           ({"loss.hard_negative_sets": "minimal", "loss.separate_negatives": False},
            "needs config.loss.separate_negatives=True"),
           ({"loss.hard_negative_sets": "minimal", "data.mode": "negclip"},
            "does not apply to data.mode='negclip'"),
           # A loss option that no step of the run reads is an error, not silence.
           ({"loss.cont": 0.3, "loss.separate_negatives": False}, "loss.cont=0.3 is not used"),
           ({"loss.sneg": 0.1, "data.mode": "negclip"}, "negclip steps use the unified form"),
           ({"loss.uni": 0.5, "data.mode": "baseline"}, "baseline steps fix it to 0.0"),
           ({"loss.cont": 0.3, "step_kinds": "clip"}, "clip steps have no loss options"),
           ({"step_kinds": "clip", "data.mode": "negclip"}, "step_kinds='clip' does not apply"),
           ({"step_kinds": "clic,clop"}, "step_kinds='clic,clop'"),
           ({"hard_negative_freq": -1.0}, "hard_negative_freq must be a finite number > 0"),
           ({"optim.warmup_fraction": 1.5}, "config.optim: .*warmup_fraction"),
           ({"data.csv": ""}, "exactly one data source")]
  for overrides, message in cases:
    with pytest.raises(config_lib.ConfigError, match=message):
      trainer.train(tiny_config(csv_path, images, **overrides), tmp_path / "bad")


def test_every_mode_and_config_is_accepted_with_default_options(caption_dataset):
  """Options a mode does not read pass while they keep their defaults (configs/, the demo's and
  the experiment's stages set none of them)."""
  for overrides, pattern in [({}, ["clic", "clip"]), ({"step_kinds": "clip"}, ["clip"]),
                             ({"data.mode": "baseline"}, ["baseline", "clip"]),
                             ({"data.mode": "negclip"}, ["negclip"]),
                             ({"data.mode": "negclip", "loss.separate_negatives": False},
                              ["negclip"]),
                             ({"data.mode": "baseline", "loss.uni": 0.0}, ["baseline", "clip"]),
                             ({"hard_negative_freq": 2.0}, ["clip", "clic", "clic"]),
                             ({"alternate_with_clip": False}, ["clic"]),
                             ({"loss.separate_negatives": False}, ["clic", "clip"])]:
    spec = config_lib.run_spec(tiny_config(*caption_dataset, **overrides))
    assert [k.name for k in spec.schedule.pattern] == pattern, overrides
  from configs import b16, b32, l14
  for module in (b16, b32, l14):
    config = module.get_config()
    config.data.csv = str(caption_dataset[0])
    assert config_lib.run_spec(config).model.name == config.model.name


def test_attention_impl_auto_is_xla_off_nvidia_gpus(caption_dataset):
  def attention(impl):
    return config_lib.run_spec(tiny_config(*caption_dataset,
                                           **{"model.attention_impl": impl})).model.attention
  assert attention("auto") is None         # CPU here; cudnn only on NVIDIA GPUs
  assert attention("cudnn") == "cudnn" and attention("xla") == "xla"


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, caption_dataset, monkeypatch):
  csv_path, images = caption_dataset
  real_global_batch = mesh_lib.global_batch
  calls = []

  def poisoned(mesh, host_batch):          # the 5th batch carries NaN pixels (float32: uint8 has no NaN)
    calls.append(1)
    if len(calls) == 5:
      host_batch = dict(host_batch, images=np.full(host_batch["images"].shape, np.nan, np.float32))
    return real_global_batch(mesh, host_batch)

  monkeypatch.setattr(mesh_lib, "global_batch", poisoned)
  config = tiny_config(csv_path, images, total_steps=10, checkpoint_every_steps=2)
  with pytest.raises(trainer.NonFiniteLossError, match="Step 5: the loss or gradient is not finite"):
    trainer.train(config, tmp_path)
  saved = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
  assert saved and max(saved) == 4
  assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3, 4]   # the writer was closed
  _, params = load_params_for_eval(tmp_path)
  assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(params))


def test_uint8_images_normalized_on_device_match_host_normalization():
  from clic_jax.data import images as images_lib
  model, params = models.create_model("tiny", seed=2)
  tx = optax.sgd(1e-2)
  batch = synthetic_batch("clic")
  pixels = np.random.default_rng(3).integers(0, 256, batch["images"].shape, dtype=np.uint8)
  scale, offset = images_lib.normalization_constants("clip")
  host = dict(batch, images=pixels.astype(np.float32) * scale + offset)
  device = dict(batch, images=pixels)
  state = step_lib.create_state(params, tx, ())
  _, m_host = jax.jit(step_lib.make_train_step(model, tx, "clic", config_lib.loss_spec()))(
      state, host)
  _, m_dev = jax.jit(step_lib.make_train_step(model, tx, "clic", config_lib.loss_spec(),
                                              image_norm=(scale, offset)))(state, device)
  assert np.isclose(float(m_host["loss"]), float(m_dev["loss"]), rtol=1e-6)


def test_evaluation_runs_on_the_configured_schedule_and_a_failing_one_is_reported(tmp_path):
  from clic_jax.data.toyworld import generate_world
  world = generate_world(str(tmp_path / "world"), num_train=48, num_test=16, seed=1, image_size=32)
  config = tiny_config(world["train_csv"], world["image_root"], total_steps=4, eval_every_steps=2,
                       eval_batch_size=16)
  # Winoground's folder exists when the run starts (the config check passes) but holds no data:
  # that benchmark fails at each evaluation, is reported, and neither SugarCrepe nor training stop.
  (tmp_path / "winoground_not_yet_unzipped").mkdir()
  config.evals = {"sugarcrepe": {"data_dir": world["sugarcrepe_dir"],
                                 "coco_dir": world["coco_dir"]},
                  "winoground": {"data_dir": str(tmp_path / "winoground_not_yet_unzipped")}}
  summary = trainer.train(config, tmp_path / "run")
  assert summary["step"] == 4 and (tmp_path / "run" / "checkpoints" / "4").is_dir()
  evals = [r for r in read_metrics(tmp_path / "run") if "eval/sugarcrepe/swap_att" in r]
  assert [r["step"] for r in evals] == [2, 4]
  assert all(0.0 <= r["eval/sugarcrepe/swap_att"] <= 1.0 for r in evals)
  assert all(r["eval/winoground/failed"] == 1 for r in evals)


def test_trimmed_text_rows_give_the_same_step():
  """Cutting padding columns after the longest caption is exact (causal tower, EOT pooling)."""
  model, params = models.create_model("tiny", seed=5)
  tx = optax.sgd(1e-2)
  batch = synthetic_batch("clic")
  length = pipeline_lib.text_length_for(batch["texts"], (32, 48, 64))
  assert length == 32 < batch["texts"].shape[-1]
  trimmed = dict(batch, texts=batch["texts"][..., :length])
  state = step_lib.create_state(params, tx, ())
  step = jax.jit(step_lib.make_train_step(model, tx, "clic", config_lib.loss_spec()))
  (s_a, m_a), (s_b, m_b) = (jax.device_get(step(state, b)) for b in (batch, trimmed))
  assert np.isclose(m_a["loss"], m_b["loss"], rtol=1e-6)
  for a, b in zip(jax.tree.leaves(s_a.trainable), jax.tree.leaves(s_b.trainable)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_training_with_text_length_buckets_matches_full_rows(tmp_path, caption_dataset):
  csv_path, images = caption_dataset
  losses = {}
  for buckets in ("", "8,16,32,48,64"):
    workdir = tmp_path / (buckets or "full")
    trainer.train(tiny_config(csv_path, images, total_steps=4, checkpoint_every_steps=4,
                              **{"data.text_length_buckets": buckets}), workdir)
    losses[buckets] = [r["loss"] for r in read_metrics(workdir)]
  np.testing.assert_allclose(losses[""], losses["8,16,32,48,64"], rtol=1e-5)
  with pytest.raises(config_lib.ConfigError, match="text_length_buckets"):
    config_lib.run_spec(tiny_config(csv_path, images, **{"data.text_length_buckets": "32,long"}))


def test_masked_step_on_eight_devices_and_the_mask_switch():
  """batch["negative_valid"] reaches the loss (sharded over 8 devices like the rest of the batch):
  all-True gives the unmasked step bit for bit, a partial mask changes the loss, and
  mask_invalid_negatives=False ignores it."""
  model, params = models.create_model("tiny", seed=6)
  batch = synthetic_batch("clic")
  valid = np.ones(16, bool)
  partial = valid.copy()
  partial[[1, 6, 11]] = False
  sgd = optax.sgd(1e-2)
  mesh = mesh_lib.make_mesh(1, jax.devices())
  state = jax.device_put(step_lib.create_state(params, sgd, ()), mesh_lib.replicated(mesh))

  def run(b, **options):
    loss = dataclasses.replace(config_lib.loss_spec(), **options)
    fn = jax.jit(step_lib.make_train_step(model, sgd, "clic", loss))
    return jax.device_get(fn(state, mesh_lib.global_batch(mesh, b))[1])

  plain = run(batch)
  all_valid = run(dict(batch, negative_valid=valid))
  masked = run(dict(batch, negative_valid=partial))
  ignored = run(dict(batch, negative_valid=partial), mask_invalid_negatives=False)
  for name in plain:
    assert np.array_equal(plain[name], all_valid[name]), name
  assert masked["negative_valid"] == pytest.approx(13 / 16) and plain["negative_valid"] == 1.0
  assert masked["sneg_loss"] != plain["sneg_loss"]
  assert masked["contrastive_loss"] == pytest.approx(plain["contrastive_loss"], rel=1e-6)
  assert ignored["loss"] == plain["loss"] and ignored["negative_valid"] == 1.0
  for i in range(1, 5):
    assert 0.0 <= plain[f"pos_over_neg/p{i}"] <= 1.0
    assert 0.0 <= plain[f"pos_over_neg_wrong_image/p{i}"] <= 1.0
  minimal = run(batch, hard_negative_sets="minimal")
  assert minimal["sneg_loss"] != plain["sneg_loss"]
  assert minimal["contrastive_loss"] == plain["contrastive_loss"]


def test_trainer_logs_hard_negative_diagnostics_and_runs_minimal_sets(tmp_path, caption_dataset,
                                                                      monkeypatch):
  csv_path, images = caption_dataset
  real_global_batch = mesh_lib.global_batch
  shipped = []

  def recording(mesh, host_batch):
    shipped.append(sorted(host_batch))
    return real_global_batch(mesh, host_batch)

  monkeypatch.setattr(mesh_lib, "global_batch", recording)
  first = {}
  for sets in ("all", "minimal"):
    workdir = tmp_path / sets
    trainer.train(tiny_config(csv_path, images, total_steps=2, checkpoint_every_steps=2,
                              **{"loss.hard_negative_sets": sets}), workdir)
    rows = read_metrics(workdir)
    clic = [r for r in rows if "clic/loss" in r]
    assert [r["step"] for r in clic] == [1]
    for i in range(1, 5):
      assert 0.0 <= clic[0][f"clic/pos_over_neg/p{i}"] <= 1.0
      assert 0.0 <= clic[0][f"clic/pos_over_neg_wrong_image/p{i}"] <= 1.0
    assert 0.0 < clic[0]["clic/negative_valid"] <= 1.0
    assert all(np.isfinite(r["loss"]) for r in rows)
    assert not any("pos_over_neg" in k for r in rows if "clic/loss" not in r for k in r)
    first[sets] = clic[0]
  # The mask travels with the CLIC batches only (CLIC first, then CLIP).
  assert shipped[:2] == [["images", "negative_valid", "texts"], ["images", "texts"]]
  # Same data and initialisation: step 1 differs only in the hard-negative term.
  assert first["minimal"]["clic/contrastive_loss"] == first["all"]["clic/contrastive_loss"]
  assert first["minimal"]["clic/sneg_loss"] != first["all"]["clic/sneg_loss"]
  assert first["minimal"]["clic/pos_over_neg/p3"] == first["all"]["clic/pos_over_neg/p3"]
  # mask_invalid_negatives=False: the reference's behaviour, nothing is shipped or masked.
  shipped.clear()
  trainer.train(tiny_config(csv_path, images, total_steps=1, checkpoint_every_steps=1,
                            **{"loss.mask_invalid_negatives": False}), tmp_path / "unmasked")
  assert shipped == [["images", "texts"]]
  assert read_metrics(tmp_path / "unmasked")[0]["clic/negative_valid"] == 1.0
