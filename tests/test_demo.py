"""A very short run of the offline demo (configs/demo.py) through every real stage."""
from __future__ import annotations

import json
import math

import numpy as np

from clic_jax import demo
from clic_jax.data.toyworld import world_paths
from clic_jax.demo import pretraining
from configs import demo as demo_config


def _tiny_config():
  config = demo_config.get_config()
  config.global_batch_size = 16
  config.log_every_steps = 2
  config.tensorboard = False
  d = config.demo_settings
  d.num_train, d.num_test, d.eval_batch_size = 80, 24, 32
  d.binding = dict(num_train=60, num_twins=10)
  d.pretrain.update(dict(corpus_scenes=60, vision_steps=3, vision_batch=8, text_steps=3,
                         text_batch=8))
  d.clip_finetune.total_steps, d.clic.total_steps = 4, 4
  return config


def test_tiny_demo_run_writes_the_side_by_side_table(tmp_path, capsys, monkeypatch):
  results = demo.run(_tiny_config(), tmp_path)

  written = json.loads((tmp_path / "demo_results.json").read_text())
  assert written == json.loads(json.dumps(results))
  for bench in ("sugarcrepe", "sugarcrepe_pp/itt", "sugarcrepe_pp/tot", "retrieval", "binding"):
    assert bench in written, bench
    for category, values in written[bench].items():
      assert set(values) == set(demo.MODELS), (bench, category)
      assert all(0.0 <= v <= 1.0 and math.isfinite(v) for v in values.values())
  assert {"swap_att", "swap_obj", "replace_att", "replace_rel"} <= set(written["sugarcrepe"])
  assert {"image_attribute", "text_attribute"} <= set(written["binding"])
  for name in demo.MODELS:
    assert (tmp_path / name / "open_clip" / "open_clip_config.json").is_file(), name
  for name in demo.MODELS[1:]:
    assert (tmp_path / name / "metrics.jsonl").is_file()
  rows = [json.loads(l) for l in (tmp_path / "clic" / "metrics.jsonl").read_text().splitlines()]
  assert any("clic/pos_over_neg_wrong_image/p3" in row for row in rows)
  assert (tmp_path / "world" / "test.csv.scenes.jsonl").is_file()
  out = capsys.readouterr().out
  assert "clip_finetune" in out and "swap_att" in out

  # A second run reuses the pretrained model (same settings, same world) instead of rebuilding it.
  report = (tmp_path / "pretrained" / "pretraining.json").read_text()
  export = pretraining.pretrain(
      {"manifest": str(tmp_path / "world" / "manifest.json")}, tmp_path / "pretrained",
      pretraining.PretrainSettings(model="tiny-64", context_length=32,
                                   **dict(_tiny_config().demo_settings.pretrain)))
  assert export == tmp_path / "pretrained" / "open_clip"
  assert (tmp_path / "pretrained" / "pretraining.json").read_text() == report
  _check_a_new_text_budget_reuses_the_image_tower(tmp_path, monkeypatch)


def _check_a_new_text_budget_reuses_the_image_tower(workdir, monkeypatch):
  from safetensors.numpy import load_file
  world = world_paths(str(workdir / "world"))
  settings = pretraining.PretrainSettings(model="tiny-64", context_length=32,
                                          **dict(_tiny_config().demo_settings.pretrain))
  first = load_file(str(workdir / "pretrained" / "open_clip" / "open_clip_model.safetensors"))

  def no_training(*args, **kwargs):
    raise AssertionError("the image tower was trained again")
  monkeypatch.setattr(pretraining, "train_vision", no_training)
  longer_text = pretraining.PretrainSettings(**dict(vars(settings), text_steps=4))
  second = load_file(str(pretraining.pretrain(world, workdir / "pretrained", longer_text)
                         / "open_clip_model.safetensors"))
  visual = [name for name in first if name.startswith("visual.")]
  assert visual and first.keys() == second.keys()
  for name in visual:                       # the cached tower, bit for bit
    assert first[name].dtype == second[name].dtype
    np.testing.assert_array_equal(first[name], second[name], err_msg=name)
  assert not np.array_equal(first["text_projection"], second["text_projection"])

  # A change to the image tower's settings trains it again.
  more_vision = pretraining.PretrainSettings(**dict(vars(longer_text), vision_steps=4))
  try:
    pretraining.pretrain(world, workdir / "pretrained", more_vision)
  except AssertionError as e:
    assert "trained again" in str(e)
  else:
    raise AssertionError("changed image-tower settings reused the old tower")


def test_pair_view_labels_place_each_scene_in_its_half():
  data = pretraining.SceneSet(
      singles=np.zeros((2, 8, 8, 3), np.uint8), halves=np.zeros((2, 4, 8, 3), np.uint8),
      aspect="wider", labels=[[(0, True, 0.2, 0.4, 0.1, 0.1)], [(5, False, 0.7, 0.6, 0.2, 0.2)]],
      half_labels=[[(0, True, 0.2, 0.4, 0.1, 0.1)], [(5, False, 0.7, 0.6, 0.2, 0.2)]],
      backgrounds=np.array([0, 3]), sentences=[["a"], ["b"]])
  placed = pretraining._pair_objects(data, 0, 1)         # stacked: first on top, half as tall
  assert placed == [(0, True, 0.2, 0.2, 0.1, 0.05), (5, False, 0.7, 0.8, 0.2, 0.1)]
  target, weight = pretraining._targets(placed + [(0, False, 0.5, 0.5, 0.1, 0.1)], [0, 3])
  n = len(pretraining.IDENTITIES)
  assert target[0] == 1 and target[5] == 1 and target[1] == 0
  assert weight[2 * n + 0] == 0                          # identity 0 twice: its place is unknown
  assert target[2 * n + 5] == 0.7 and weight[2 * n + 5] == pretraining.POSITION_WEIGHT
  assert target[4 * n + 0] == 1 and target[4 * n + 3] == 1 and target[4 * n + 1] == 0

  patches = pretraining.patch_labels(placed, grid=4).reshape(4, 4)
  none = len(pretraining.IDENTITIES)
  assert patches[0, 0] == 0                    # object 0's centre (0.2, 0.2) is in patch (0, 0)
  assert patches[3, 2] == 5                    # object 5 (0.7, 0.8) covers the centre (.625, .875)
  assert patches[3, 3] == none                 # (.875, .875) lies just outside its ellipse
  assert np.count_nonzero(patches != none) == 2
  big = pretraining.patch_labels([(7, True, 0.5, 0.5, 0.3, 0.3)], grid=4).reshape(4, 4)
  assert (big[1:3, 1:3] == 7).all() and big[0, 0] == none




def test_the_demo_starts_from_the_shipped_image_tower_and_it_binds():
  """configs/demo.py's settings and world match the shipped tower (so the demo does not train
  the image tower for 24 minutes), and that tower passes the image binding probe."""
  import jax
  from clic_jax import models
  from clic_jax.data import images as images_lib
  from clic_jax.data.toyworld import world_config
  from clic_jax.data.toyworld.render import render_scene
  from clic_jax.evaluate.binding import binding_scores
  config = demo_config.get_config()
  d = config.demo_settings
  key = {"settings": demo.pretrain_settings(config).vision_stage(),
         "world": world_config(d.num_train, d.num_test, d.world_seed, d.image_size)}
  found = pretraining._matching_tower(pretraining.SHIPPED_TOWERS, key)
  assert found is not None, "configs/demo.py no longer matches the shipped image tower"
  assert found[0].stat().st_size < 3_500_000

  model = models.build_model(models.get_model_config(config.model.name))
  params = models.init_params(model, 0)
  visual = pretraining._load_tower(found[0])
  shapes = lambda tree: jax.tree.map(lambda a: (a.shape, a.dtype), tree)
  assert shapes(visual) == shapes(params["visual"])
  params = dict(params, visual=visual)
  scale, offset = images_lib.normalization_constants("clip")
  encode = jax.jit(lambda x: model.apply({"params": params}, x, method="encode_image"))

  def embed_scenes(scenes):
    views = np.stack([images_lib.clip_val_view(render_scene(s), d.image_size) for s in scenes])
    return np.asarray(encode(views.astype(np.float32) * scale + offset))
  scores = binding_scores(embed_scenes, lambda texts: np.zeros((len(texts), 1), np.float32),
                          num_train=600, num_twins=100, image_size=d.image_size)
  assert scores["image_attribute"] >= 0.9, scores
