"""Export to Hugging Face transformers' CLIP format and back: transformers.CLIPModel (and
CLIPVisionModel, as LLaVA loads its vision tower) computes clic_jax's embeddings within 1e-4."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch
import transformers

import clic_jax
from clic_jax import interop
from clic_jax.interop.transformers_format import NoTransformersTwinError, transformers_config
from clic_jax.models import get_model_config

torch.set_num_threads(2)
REL_TOL = 1e-4


def small(name: str, image_size: int) -> clic_jax.models.ClipConfig:
  """The architecture's options and head sizes at two heads per tower and two blocks."""
  cfg = get_model_config(name)
  return dataclasses.replace(
      cfg, embed_dim=48,
      vision=dataclasses.replace(cfg.vision, layers=2, width=2 * cfg.vision.head_width,
                                 image_size=image_size),
      text=dataclasses.replace(cfg.text, layers=2, width=128, heads=2))


def relative_error(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.linalg.norm(a - b, axis=-1) / np.linalg.norm(b, axis=-1)))


def _features(output):
  """get_*_features returns a tensor, or (transformers 5) an output whose pooler_output it is."""
  return (output if isinstance(output, torch.Tensor) else output.pooler_output).numpy()


def perturbed(params, seed=0):
  """Random parameters with LayerNorms and biases away from their 1/0 initialisation."""
  leaves, treedef = jax.tree.flatten(params)
  rng = np.random.default_rng(seed)
  return jax.tree.unflatten(treedef, [np.asarray(x) + 0.02 * rng.standard_normal(np.shape(x))
                                      .astype(np.float32) for x in leaves])


def check_transformers_twin(tmp_path, cfg) -> dict:
  model, params = clic_jax.create_model(cfg, seed=1)
  params = perturbed(params)
  out = interop.export_transformers(cfg, params, tmp_path / "hf")
  hf = transformers.CLIPModel.from_pretrained(str(out)).eval()
  rng = np.random.default_rng(0)
  images = rng.standard_normal((2, cfg.vision.image_size, cfg.vision.image_size, 3)
                               ).astype(np.float32)
  tokens = clic_jax.tokenize(["a dog.", "A red cube left of a blue ball", "word " * 100],
                             cfg.text.context_length)
  with torch.no_grad():
    pixels = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
    hf_img = _features(hf.get_image_features(pixel_values=pixels))
    hf_txt = _features(hf.get_text_features(input_ids=torch.from_numpy(tokens).long()))
    vision_tower = transformers.CLIPVisionModel.from_pretrained(str(out)).eval()
    tower_pooled = vision_tower(pixel_values=pixels).pooler_output.numpy()
  j_img = np.asarray(model.apply({"params": params}, images, method="encode_image"))
  j_txt = np.asarray(model.apply({"params": params}, tokens, method="encode_text"))
  errors = {"image": relative_error(j_img, hf_img), "text": relative_error(j_txt, hf_txt),
            "vision_tower": relative_error(tower_pooled @ np.asarray(params["visual"]["proj"]),
                                           j_img)}
  assert all(e < REL_TOL for e in errors.values()), errors
  assert relative_error(j_txt[:1], j_txt[1:2]) > 0.1
  # And back: the transformers directory loads into clic_jax with the same parameters, bit for bit.
  model2, params2 = interop.load_transformers(out)
  assert model2.cfg == cfg
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(params2)):
    assert np.array_equal(np.asarray(a, np.float32), np.asarray(b))
  return errors


@pytest.mark.parametrize("name,image_size", [("ViT-B-32-quickgelu", 64), ("ViT-L-14", 56)])
def test_transformers_twin(tmp_path, name, image_size):
  check_transformers_twin(tmp_path, small(name, image_size))


def test_architectures_without_a_twin_are_refused(tmp_path):
  for name in ("ViT-L-14-CLIPA", "tiny-clipa"):
    with pytest.raises(NoTransformersTwinError, match="no transformers CLIPModel twin"):
      transformers_config(get_model_config(name))
  config = transformers_config(get_model_config("ViT-bigG-14"))
  assert config["vision_config"]["intermediate_size"] == 8192
  assert config["text_config"]["hidden_act"] == "gelu"


def test_export_cli_transformers_format(tmp_path):
  from test_export import _fake_workdir
  model, params = _fake_workdir(tmp_path / "wd")
  run = lambda *a: subprocess.run([sys.executable, "-m", "clic_jax.export", *a],  # noqa: E731
                                  capture_output=True, text=True, timeout=300)
  result = run(f"--workdir={tmp_path / 'wd'}", f"--out_dir={tmp_path / 'hf'}",
               "--format=transformers")
  assert result.returncode == 0, result.stderr
  assert json.loads((tmp_path / "hf" / "config.json").read_text())["model_type"] == "clip"
  _, again = interop.load_transformers(tmp_path / "hf")
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(again)):
    assert np.array_equal(np.asarray(a), np.asarray(b))
  result = run(f"--workdir={tmp_path / 'wd'}", f"--out={tmp_path / 'x.safetensors'}",
               "--format=transformers")
  assert result.returncode != 0 and "use --out_dir" in result.stderr
