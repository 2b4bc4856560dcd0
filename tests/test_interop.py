"""Numeric parity with open_clip in both directions, and every way weights can arrive.

Tolerance: each embedding's relative L2 error ||jax - torch|| / ||torch|| must be below 1e-4 (fp32).
"""
from __future__ import annotations

import json

import jax
import numpy as np
import open_clip
import pytest
import torch

import clic_jax
from clic_jax import interop
from clic_jax.interop import hub
from clic_jax.models import config_to_open_clip, get_model_config

from hf_cache import fake_hf_cache  # noqa: E402

torch.set_num_threads(2)
REL_TOL = 1e-4
CAPTIONS = ["a dog.", "A red cube left of a blue ball", "", "two cats & a mouse on the sofa!!",
            "Ünïcödé café, 東京 and emojis 🐶🐱", " ".join(["very long caption"] * 40)]


def torch_clip(name_or_cfg, seed=0):
  """A randomly initialised open_clip CLIP whose biases and LayerNorms are perturbed too."""
  torch.manual_seed(seed)
  if isinstance(name_or_cfg, str):
    model = open_clip.create_model(name_or_cfg)
  else:
    model = open_clip.model.CLIP(**config_to_open_clip(name_or_cfg))
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.02 * torch.randn_like(p))
  return model.eval()


def relative_error(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.linalg.norm(a - b, axis=-1) / np.linalg.norm(b, axis=-1)))


def inputs(cfg, n=3, seed=0):
  rng = np.random.default_rng(seed)
  size = cfg.vision.image_size
  images = rng.standard_normal((n, size, size, 3)).astype(np.float32)
  tokens = open_clip.get_tokenizer("ViT-B-32")(CAPTIONS).numpy().astype(np.int32)
  return images, tokens


def torch_embeddings(model, images, tokens):
  with torch.no_grad():
    img = model.encode_image(torch.from_numpy(images.transpose(0, 3, 1, 2).copy()))
    txt = model.encode_text(torch.from_numpy(tokens).long())
  return img.numpy(), txt.numpy()


def jax_embeddings(model, params, images, tokens):
  img = model.apply({"params": params}, images, method="encode_image")
  txt = model.apply({"params": params}, tokens, method="encode_text")
  return np.asarray(img), np.asarray(txt)


def check_open_clip_to_jax(name):
  cfg = get_model_config(name)
  tmodel = torch_clip(name if name != "tiny" else cfg)
  state_dict = {k: v.numpy() for k, v in tmodel.state_dict().items()}
  model, params = clic_jax.load_open_clip(name, state_dict)
  images, tokens = inputs(cfg)
  t_img, t_txt = torch_embeddings(tmodel, images, tokens)
  j_img, j_txt = jax_embeddings(model, params, images, tokens)
  assert relative_error(j_img, t_img) < REL_TOL
  assert relative_error(j_txt, t_txt) < REL_TOL
  # The embeddings are not trivially equal to each other (the check has teeth).
  assert relative_error(j_txt[:1], j_txt[1:2]) > 0.1


def test_open_clip_to_jax_tiny():
  check_open_clip_to_jax("tiny")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ViT-B-32-quickgelu", "ViT-B-16"])
def test_open_clip_to_jax_full_size(name):
  check_open_clip_to_jax(name)


def test_quickgelu_matters():
  """Loading quickgelu weights into the plain-GELU architecture changes the embeddings."""
  cfg = get_model_config("tiny-quickgelu")
  tmodel = torch_clip(cfg)
  sd = {k: v.numpy() for k, v in tmodel.state_dict().items()}
  images, tokens = inputs(cfg)
  t_img, _ = torch_embeddings(tmodel, images, tokens)
  good = jax_embeddings(*clic_jax.load_open_clip("tiny-quickgelu", sd), images, tokens)[0]
  wrong = jax_embeddings(*clic_jax.load_open_clip("tiny", sd), images, tokens)[0]
  assert relative_error(good, t_img) < REL_TOL
  assert relative_error(wrong, t_img) > 10 * REL_TOL


@pytest.mark.parametrize("name", ["tiny", pytest.param("ViT-B-32-quickgelu",
                                                       marks=pytest.mark.slow)])
def test_jax_to_open_clip(tmp_path, name):
  model, params = clic_jax.create_model(name, seed=3)
  cfg = model.cfg
  if name == "tiny":      # not an open_clip built-in: go through a local-dir with its config
    out = clic_jax.export_open_clip(name, params, tmp_path / "export")
    assert (out / "open_clip_config.json").is_file()
    tmodel = open_clip.create_model(f"local-dir:{out}")
  else:
    out = clic_jax.export_open_clip(name, params, tmp_path / "model.safetensors")
    tmodel = open_clip.create_model(name, pretrained=str(out))   # strict key check inside
  tmodel.eval()
  # Strict: every key of open_clip's model is in the file and nothing else is.
  from safetensors.numpy import load_file
  exported = load_file(str(out if out.suffix else out / "open_clip_model.safetensors"))
  assert set(exported) == set(tmodel.state_dict()) - {"attn_mask"}
  images, tokens = inputs(cfg)
  t_img, t_txt = torch_embeddings(tmodel, images, tokens)
  j_img, j_txt = jax_embeddings(model, params, images, tokens)
  assert relative_error(j_img, t_img) < REL_TOL
  assert relative_error(j_txt, t_txt) < REL_TOL


def test_round_trip_is_bit_exact(tmp_path):
  tmodel = torch_clip(get_model_config("tiny"))
  original = {k: v.numpy() for k, v in tmodel.state_dict().items() if k != "attn_mask"}
  _, params = clic_jax.load_open_clip("tiny", original)
  path = clic_jax.export_open_clip("tiny", params, tmp_path / "rt.safetensors")
  again = open_clip.factory.load_state_dict(str(path))
  assert set(again) == set(original)
  for key, value in original.items():
    back = again[key].numpy()
    assert back.dtype == value.dtype and back.shape == value.shape, key
    assert np.array_equal(back.view(np.uint32), value.view(np.uint32)), key


def _tiny_state_dict(seed=0):
  tmodel = torch_clip(get_model_config("tiny"), seed)
  return tmodel, tmodel.state_dict()


@pytest.mark.parametrize("fmt", ["bin_wrapped", "pt_module_prefix", "npz", "numpy_dict",
                                 "safetensors"])
def test_sources(tmp_path, fmt):
  tmodel, sd = _tiny_state_dict(seed=1)
  if fmt == "bin_wrapped":
    source = tmp_path / "open_clip_pytorch_model.bin"
    torch.save({"epoch": 1, "state_dict": sd}, source)
  elif fmt == "pt_module_prefix":     # the CLIC reference's DDP checkpoint: module.model.*
    source = tmp_path / "checkpoint.pt"
    torch.save({"state_dict": {f"module.model.{k}": v for k, v in sd.items()}}, source)
  elif fmt == "npz":
    source = tmp_path / "w.npz"
    np.savez(source, **{k: v.numpy() for k, v in sd.items()})
  elif fmt == "numpy_dict":
    source = {k: v.numpy() for k, v in sd.items()}
  else:
    from safetensors.torch import save_file
    source = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items() if k != "attn_mask"}, str(source))
  model, params = clic_jax.load_open_clip("tiny", source if fmt == "numpy_dict" else str(source))
  images, tokens = inputs(model.cfg)
  t_img, t_txt = torch_embeddings(tmodel, images, tokens)
  j_img, j_txt = jax_embeddings(model, params, images, tokens)
  assert relative_error(j_img, t_img) < REL_TOL and relative_error(j_txt, t_txt) < REL_TOL


def test_hf_hub_name_uses_real_download_code(tmp_path, monkeypatch):
  import huggingface_hub.constants
  monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
  tmodel, sd = _tiny_state_dict(seed=2)
  cfg = {"model_cfg": config_to_open_clip(get_model_config("tiny")), "preprocess_cfg": {}}
  from safetensors.torch import save_file
  fake_hf_cache(tmp_path, "someone/tiny-clic", {
      "open_clip_config.json": lambda p: p.write_text(json.dumps(cfg)),
      "open_clip_model.safetensors": lambda p: save_file(
          {k: v.contiguous() for k, v in sd.items() if k != "attn_mask"}, str(p))})
  model, params = clic_jax.load_open_clip("hf-hub:someone/tiny-clic", cache_dir=str(tmp_path))
  assert model.cfg == get_model_config("tiny")
  images, tokens = inputs(model.cfg)
  assert relative_error(jax_embeddings(model, params, images, tokens)[0],
                        torch_embeddings(tmodel, images, tokens)[0]) < REL_TOL
  # local-dir: the same files in a plain folder, and a directory path as the source.
  snapshot = next((tmp_path / "models--someone--tiny-clic" / "snapshots").iterdir())
  for name, source in ((f"local-dir:{snapshot}", None), ("tiny", str(snapshot))):
    model2, params2 = clic_jax.load_open_clip(name, source)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(params),
                                                    jax.tree.leaves(params2)))


def test_pretrained_tag_downloads_from_its_repo(tmp_path, monkeypatch):
  _, sd = _tiny_state_dict()
  weights = tmp_path / "w.bin"
  torch.save(sd, weights)
  calls = []

  def fake_download(repo_id, filename, cache_dir=None):
    calls.append((repo_id, filename))
    if filename.endswith(".safetensors"):
      raise FileNotFoundError("not in this repo")
    return weights

  monkeypatch.setattr(hub, "download", fake_download)
  monkeypatch.setitem(hub.PRETRAINED, ("tiny", "openai"), hub.PretrainedTag("timm/tiny.openai",
                                                                            quick_gelu=True))
  with pytest.warns(UserWarning, match="quick_gelu"):
    clic_jax.load_open_clip("tiny", "openai")
  clic_jax.load_open_clip("tiny-quickgelu", "openai")
  assert calls[:2] == [("timm/tiny.openai", "open_clip_model.safetensors"),
                       ("timm/tiny.openai", "open_clip_pytorch_model.bin")]
  assert hub.find_tag("ViT-B-32-quickgelu", "openai").repo_id == \
      "timm/vit_base_patch32_clip_224.openai"


def test_clear_errors(tmp_path):
  with pytest.raises(ValueError, match="Known models: .*ViT-B-32"):
    clic_jax.create_model("ViT-B-33")
  _, sd = _tiny_state_dict()
  sd = {k: v.numpy() for k, v in sd.items()}
  with pytest.raises(interop.CheckpointMismatchError, match="shape of .*ln_final.weight"):
    clic_jax.load_open_clip("tiny-64", sd)
  broken = dict(sd)
  del broken["visual.proj"]
  broken["visual.extra_head.weight"] = np.zeros((2, 2), np.float32)
  with pytest.raises(interop.CheckpointMismatchError) as err:
    clic_jax.load_open_clip("tiny", broken)
  assert "missing visual.proj (expected shape (64, 32))" in str(err.value)
  assert "unexpected visual.extra_head.weight (2, 2)" in str(err.value)
  with pytest.raises(FileNotFoundError, match="neither a weights file nor a pretrained tag"):
    clic_jax.load_open_clip("ViT-B-32", "nonexistent_tag")
  with pytest.raises(FileNotFoundError, match="does not exist"):
    interop.read_state_dict(tmp_path / "missing.safetensors")
  with pytest.raises(FileNotFoundError, match="open_clip_config.json"):
    clic_jax.load_open_clip(f"local-dir:{tmp_path}")
  _, params = clic_jax.create_model("tiny")
  with pytest.raises(interop.CheckpointMismatchError, match="do not match tiny-64"):
    clic_jax.export_open_clip("tiny-64", params, tmp_path / "x.safetensors")
