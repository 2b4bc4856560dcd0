"""The paper's other backbones: CLIPS, CLIPA and LAION's ViT-H-14 / ViT-bigG-14.

open_clip -> clic_jax -> open_clip for each family's tower options, with configs in the layout the
hub serves (open_clip_config.json beside open_clip_model.safetensors): embeddings within 1e-4
relative error, the round trip bit-exact. Small widths keep each family's options and head sizes;
ViT-L-14-CLIPA runs at full size.
"""
from __future__ import annotations

import copy
import functools
import json
from pathlib import Path

import jax
import numpy as np
import open_clip
import pytest
import torch
from safetensors.numpy import load_file
from safetensors.torch import save_file

import clic_jax
from clic_jax.models import (UnknownModelError, UnsupportedArchitectureError,
                             config_from_open_clip, get_model_config, rows_trimmable)

torch.set_num_threads(2)
REL_TOL = 1e-4
OPEN_CLIP_CONFIGS = Path(open_clip.__file__).parent / "model_configs"
# model_cfg of UCSC-VLAA/ViT-L-14-CLIPS-224-Recap-DataComp-1B's open_clip_config.json.
CLIPS_L14_224 = {
    "embed_dim": 768,
    "vision_cfg": {"image_size": 224, "layers": 24, "width": 1024, "patch_size": 14,
                   "no_ln_pre": True, "pool_type": "avg", "final_ln_after_pool": True,
                   "norm_kwargs": {"eps": 1e-6}},
    "text_cfg": {"context_length": 80, "vocab_size": 32000, "hf_tokenizer_name": "bert-base-uncased",
                 "tokenizer_kwargs": {"strip_sep_token": True}, "width": 768, "heads": 12,
                 "layers": 12, "pool_type": "last", "no_causal_mask": True,
                 "act_kwargs": {"approximate": "tanh"}, "norm_kwargs": {"eps": 1e-6}},
}


def open_clip_config(name: str) -> dict:
  if name == "ViT-L-14-CLIPS-224":
    return copy.deepcopy(CLIPS_L14_224)
  return json.loads((OPEN_CLIP_CONFIGS / f"{name}.json").read_text())


def small(model_cfg: dict, image_size: int = 56) -> dict:
  """The same options and head sizes at two heads per tower, two blocks, a 4x4 patch grid."""
  cfg = copy.deepcopy(model_cfg)
  v, t = cfg["vision_cfg"], cfg["text_cfg"]
  v.update(layers=2, width=2 * v.get("head_width", 64), image_size=image_size)
  t.update(layers=2, width=2 * (t["width"] // t["heads"]), heads=2)
  cfg["embed_dim"] = 48
  return cfg


def relative_error(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.linalg.norm(a - b, axis=-1) / np.linalg.norm(b, axis=-1)))


def torch_model(model_cfg: dict, seed: int = 0):
  """open_clip's CLIP with random weights, biases and LayerNorms perturbed too."""
  torch.manual_seed(seed)
  model = open_clip.model.CLIP(**model_cfg)
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.02 * torch.randn_like(p))
  return model.eval()


def write_hub_dir(directory: Path, model_cfg: dict, tmodel) -> Path:
  directory.mkdir(parents=True, exist_ok=True)
  (directory / "open_clip_config.json").write_text(json.dumps(
      {"model_cfg": model_cfg, "preprocess_cfg": {"mean": [0.485, 0.456, 0.406],
                                                 "std": [0.229, 0.224, 0.225]}}))
  save_file({k: v.contiguous() for k, v in tmodel.state_dict().items() if k != "attn_mask"},
            str(directory / "open_clip_model.safetensors"))
  return directory


def inputs(cfg, n: int = 3, seed: int = 0):
  """Normalized-looking images, and token rows of several lengths (one full) in the model's
  vocabulary: CLIP BPE rows for argmax pooling, WordPiece-like rows ([CLS] ids, 0s) otherwise."""
  rng = np.random.default_rng(seed)
  images = rng.standard_normal((n, cfg.vision.image_size, cfg.vision.image_size, 3))
  length = cfg.text.context_length
  if cfg.text.pool_type == "argmax":
    tokens = clic_jax.tokenize(["a dog.", "A red cube left of a blue ball", "word " * 100],
                               length)
  else:
    tokens = np.zeros((3, length), np.int32)
    for row, used in enumerate((3, length // 2, length)):
      tokens[row, :used] = rng.integers(1000, cfg.text.vocab_size, used)
    tokens[:, 0] = 101
  return images.astype(np.float32), tokens


def embeddings(model, params, tmodel, images, tokens):
  with torch.no_grad():
    t_img = tmodel.encode_image(torch.from_numpy(images.transpose(0, 3, 1, 2).copy())).numpy()
    t_txt = tmodel.encode_text(torch.from_numpy(tokens).long()).numpy()
  j_img = np.asarray(model.apply({"params": params}, images, method="encode_image"))
  j_txt = np.asarray(model.apply({"params": params}, tokens, method="encode_text"))
  return (j_img, t_img), (j_txt, t_txt)


def check_round_trip(tmp_path: Path, model_cfg: dict, num_images: int = 3,
                     reload_in_open_clip: bool = True) -> dict:
  """open_clip -> clic_jax (local-dir in the hub layout) -> open_clip; returns the errors."""
  tmodel = torch_model(model_cfg)
  source = write_hub_dir(tmp_path / "hub", model_cfg, tmodel)
  model, params = clic_jax.load_open_clip(f"local-dir:{source}")
  assert model.cfg == config_from_open_clip(model_cfg)
  images, tokens = inputs(model.cfg, num_images)
  (j_img, t_img), (j_txt, t_txt) = embeddings(model, params, tmodel, images, tokens)
  errors = {"image": relative_error(j_img, t_img), "text": relative_error(j_txt, t_txt)}
  assert relative_error(j_txt[:1], j_txt[1:2]) > 0.1          # the check has teeth
  # Back to open_clip: a local-dir open_clip builds from the exported config, bit-exact weights.
  if model.cfg.text.hf_tokenizer_name:    # offline: bert-base-uncased is not in the hub cache
    with pytest.warns(UserWarning, match="no tokenizer files"):
      out = clic_jax.export_open_clip(model.cfg, params, tmp_path / "export")
  else:
    out = clic_jax.export_open_clip(model.cfg, params, tmp_path / "export")
  if reload_in_open_clip:
    again = open_clip.create_model(f"local-dir:{out}").eval()
    (_, t_img2), (_, t_txt2) = embeddings(model, params, again, images, tokens)
    errors["open_clip_again"] = max(relative_error(j_img, t_img2), relative_error(j_txt, t_txt2))
  original = load_file(str(source / "open_clip_model.safetensors"))
  exported = load_file(str(out / "open_clip_model.safetensors"))
  assert set(exported) == set(original)
  for key, value in original.items():
    assert np.array_equal(exported[key].view(np.uint32), value.view(np.uint32)), key
  assert all(e < REL_TOL for e in errors.values()), errors
  return errors


SMALL = ["ViT-L-14-CLIPS-224", "ViT-L-14-CLIPA", "ViT-H-14", "ViT-bigG-14"]


@pytest.mark.parametrize("name", SMALL)
def test_round_trip_small(tmp_path, name):
  check_round_trip(tmp_path, small(open_clip_config(name)))


@pytest.mark.slow
def test_round_trip_full_size_clipa(tmp_path):
  # One image, and no second open_clip model: the weights' round trip is checked bit for bit.
  errors = check_round_trip(tmp_path, open_clip_config("ViT-L-14-CLIPA"), num_images=1,
                            reload_in_open_clip=False)
  print(f"ViT-L-14-CLIPA full size: {errors}")


@pytest.mark.parametrize("name", [
    "ViT-H-14", "ViT-H-14-quickgelu", "ViT-bigG-14", "ViT-bigG-14-quickgelu", "ViT-L-14-CLIPA",
    "ViT-L-14-CLIPA-336", "ViT-H-14-CLIPA", "ViT-H-14-CLIPA-336", "ViT-bigG-14-CLIPA",
    "ViT-bigG-14-CLIPA-336", "ViT-L-14-CLIPS-224"])
def test_registry_names_are_open_clips_configs(name):
  cfg = get_model_config(name)
  assert cfg == config_from_open_clip(open_clip_config(name))
  assert rows_trimmable(cfg) == ("CLIP" not in name)


def test_rows_cut_short_are_padded_back_where_trimming_is_not_exact():
  """A bidirectional 'last'-pooling tower sees every padding position: the model pads short rows
  back to its context length, so the embedding is the full row's; a causal argmax tower gives the
  same embedding for trimmed rows without padding (the trainer's row trimming)."""
  for name, trimmable in (("tiny", True), ("tiny-clipa", False)):
    model, params = clic_jax.create_model(name)
    assert rows_trimmable(model.cfg) is trimmable
    tokens = clic_jax.tokenize(["a red cube", "two blue balls"], model.cfg.text.context_length)
    encode = jax.jit(functools.partial(model.apply, method="encode_text"))
    full, cut = encode({"params": params}, tokens), encode({"params": params}, tokens[:, :8])
    np.testing.assert_allclose(cut, full, rtol=1e-5, atol=1e-6)
  # Patch tokens of the averaged-patch tower (tiny-clipa) come with the same image embedding.
  images = np.random.default_rng(0).standard_normal((2, 32, 32, 3)).astype(np.float32)
  image = model.apply({"params": params}, images, method="encode_image")
  pooled, patches = model.apply({"params": params}, images, method="encode_image_patches")
  np.testing.assert_allclose(pooled, image, rtol=1e-5, atol=1e-6)
  assert patches.shape == (2, model.cfg.vision.grid ** 2, model.cfg.vision.width)


@pytest.mark.parametrize("change,message", [
    ({"vision_cfg": {"timm_model_name": "eva02_large_patch14_clip_224"}}, "timm image tower"),
    ({"vision_cfg": {"layers": [3, 4, 6, 3]}}, "ModifiedResNet"),
    ({"multimodal_cfg": {"width": 768}}, "CoCa"),
    ({"text_cfg": {"hf_model_name": "roberta-base"}}, "Hugging Face text tower"),
    ({"vision_cfg": {"pool_type": "none"}}, "pool_type"),
    ({"text_cfg": {"pool_type": "eos"}}, "pool_type"),
    ({"text_cfg": {"norm_kwargs": {"eps": 1e-6, "elementwise_affine": False}}}, "norm_kwargs"),
    ({"vision_cfg": {"act_kwargs": {"approximate": "sigmoid"}}}, "act_kwargs"),
    ({"text_cfg": {"tokenizer_kwargs": {"clean": "canonicalize"}}}, "tokenizer_kwargs"),
    ({"vision_cfg": {"attentional_pool": True}}, "attentional_pool"),
])
def test_unbuildable_configs_say_what_is_missing(change, message):
  cfg = open_clip_config("ViT-L-14-CLIPA")
  for section, values in change.items():
    if isinstance(cfg.get(section), dict):
      cfg[section].update(values)
    else:
      cfg[section] = values
  with pytest.raises(UnsupportedArchitectureError, match=message):
    config_from_open_clip(cfg)


@pytest.mark.parametrize("name,missing", [("EVA02-L-14", "EVA02"), ("convnext_base", "ConvNeXt"),
                                          ("RN50", "ModifiedResNet"), ("coca_ViT-L-14", "CoCa")])
def test_unbuilt_open_clip_families_by_name(name, missing):
  with pytest.raises(UnknownModelError, match=f"cannot build yet.*{missing}"):
    clic_jax.create_model(name)


@pytest.mark.parametrize("name,tag", [("ViT-L-14-CLIPA", "datacomp1b"), ("ViT-H-14-CLIPA-336",
                                      "datacomp1b"), ("ViT-B-32-quickgelu", "openai"),
                                      ("ViT-bigG-14", "laion2b_s39b_b160k")])
def test_preprocessing_is_open_clips(name, tag):
  from clic_jax import interop
  expected = open_clip.get_pretrained_cfg(name, tag)
  ours = interop.preprocess_config(name)
  for key in ("mean", "std", "interpolation", "resize_mode"):
    assert tuple(np.atleast_1d(ours[key])) == tuple(np.atleast_1d(expected[key])), key


def test_preprocess_config_of_hub_models_and_exports(tmp_path):
  """A local-dir (or hub) model's own preprocess_cfg is read; export writes the one it is given
  (default: the registry's for the name)."""
  from clic_jax import interop
  config = small(open_clip_config("ViT-L-14-CLIPA"))
  write_hub_dir(tmp_path / "m", config, torch_model(config))
  assert interop.preprocess_config(f"local-dir:{tmp_path / 'm'}")["mean"] == [0.485, 0.456, 0.406]
  _, params = clic_jax.create_model("tiny")
  for preprocess, mean in ((None, [0.48145466, 0.4578275, 0.40821073]),
                           (interop.preprocess_config("ViT-L-14-CLIPA"), [0.485, 0.456, 0.406])):
    out = interop.export_open_clip("tiny", params, tmp_path / "export", preprocess=preprocess)
    assert json.loads((out / "open_clip_config.json").read_text())["preprocess_cfg"]["mean"] == mean


def test_pretrained_tags_are_open_clips():
  from clic_jax.interop import hub
  for (name, tag), pretrained in hub.PRETRAINED.items():
    expected = open_clip.get_pretrained_cfg(name, tag)
    assert expected["hf_hub"].rstrip("/") == pretrained.repo_id, (name, tag)
    assert bool(expected.get("quick_gelu", False)) == pretrained.quick_gelu, (name, tag)
  assert clic_jax.models.image_normalization("ViT-L-14-CLIPA") == "imagenet"
  assert clic_jax.models.image_normalization("ViT-H-14") == "clip"
