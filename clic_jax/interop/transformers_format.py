"""Hugging Face `transformers` CLIP format: config.json + model.safetensors that
`transformers.CLIPModel.from_pretrained(DIR)` (and `CLIPVisionModel`, as LLaVA-style pipelines load
their vision tower) reads, with preprocessor_config.json for `CLIPImageProcessor`.

Only OpenAI-style towers have a transformers twin (class-token pooling with ln_pre, a causal text
tower pooled at the end-of-text token); the weights are the open_clip state dict under the names
of this table, the fused attention projection split into q, k and v.

  open_clip                                   transformers
  visual.conv1.weight                         vision_model.embeddings.patch_embedding.weight
  visual.class_embedding                      vision_model.embeddings.class_embedding
  visual.positional_embedding                 vision_model.embeddings.position_embedding.weight
  visual.ln_pre / visual.ln_post              vision_model.pre_layrnorm / .post_layernorm
  visual.proj                                 visual_projection.weight (transposed)
  token_embedding.weight                      text_model.embeddings.token_embedding.weight
  positional_embedding                        text_model.embeddings.position_embedding.weight
  ln_final                                    text_model.final_layer_norm
  text_projection                             text_projection.weight (transposed)
  [visual.]transformer.resblocks.N.           {vision,text}_model.encoder.layers.N.
    attn.in_proj_{weight,bias}                  self_attn.{q,k,v}_proj.{weight,bias}
    attn.out_proj / ln_1 / ln_2                 self_attn.out_proj / layer_norm1 / layer_norm2
    mlp.c_fc / mlp.c_proj                       mlp.fc1 / mlp.fc2
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from clic_jax.interop.convert import params_to_state_dict, state_dict_to_params
from clic_jax.interop.files import read_state_dict, write_safetensors
from clic_jax.models import ClipConfig, TextConfig, VisionConfig, build_model, get_model_config
from clic_jax.models.registry import PREPROCESS

CLIP = PREPROCESS["clip"]    # OpenAI-style towers: OpenAI's (and LAION's) image preprocessing

CONFIG, WEIGHTS, PREPROCESSOR = "config.json", "model.safetensors", "preprocessor_config.json"
SOT_ID, EOT_ID, PAD_ID = 49406, 49407, 1      # CLIP BPE ids as openai/clip-vit-* configs give them

_TOP_LEVEL = {
    "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "visual.class_embedding": "vision_model.embeddings.class_embedding",
    "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "visual.ln_pre": "vision_model.pre_layrnorm",
    "visual.ln_post": "vision_model.post_layernorm",
    "visual.proj": "visual_projection.weight",
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "ln_final": "text_model.final_layer_norm",
    "text_projection": "text_projection.weight",
    "logit_scale": "logit_scale",
}
_TRANSPOSED = ("visual.proj", "text_projection")
_BLOCK = {"attn.out_proj": "self_attn.out_proj", "ln_1": "layer_norm1", "ln_2": "layer_norm2",
          "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}
_RESBLOCK = re.compile(r"(visual\.)?transformer\.resblocks\.(\d+)\.(.+)")


class NoTransformersTwinError(ValueError):
  """The architecture has no transformers CLIPModel equivalent."""


def transformers_keys(key: str) -> list[str]:
  """The transformers key(s) of one open_clip key: three (q, k, v) for a fused projection."""
  if match := _RESBLOCK.fullmatch(key):
    tower = "vision_model" if match.group(1) else "text_model"
    prefix, rest = f"{tower}.encoder.layers.{match.group(2)}.", match.group(3)
    if rest.startswith("attn.in_proj_"):
      leaf = rest.removeprefix("attn.in_proj_")
      return [f"{prefix}self_attn.{p}_proj.{leaf}" for p in "qkv"]
    module, leaf = rest.rsplit(".", 1)
    return [f"{prefix}{_BLOCK[module]}.{leaf}"]
  if key in _TOP_LEVEL:
    return [_TOP_LEVEL[key]]
  module, leaf = key.rsplit(".", 1)
  return [f"{_TOP_LEVEL[module]}.{leaf}"]


def to_transformers(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  out = {}
  for key, value in state_dict.items():
    names = transformers_keys(key)
    value = value.T if key in _TRANSPOSED else value
    parts = np.split(value, len(names), axis=0) if len(names) > 1 else [value]
    for name, part in zip(names, parts):
      out[name] = np.array(part, order="C")     # (ascontiguousarray makes 0-d arrays 1-d)
  return out


def from_transformers(weights: Mapping[str, np.ndarray], open_clip_keys) -> dict[str, np.ndarray]:
  """The open_clip state dict for `open_clip_keys`, read from transformers weights."""
  missing = [n for k in open_clip_keys for n in transformers_keys(k) if n not in weights]
  if missing:
    raise KeyError(f"transformers weights lack {len(missing)} tensors, e.g. {missing[:3]}")
  out = {}
  for key in open_clip_keys:
    parts = [np.asarray(weights[n]) for n in transformers_keys(key)]
    value = np.concatenate(parts, axis=0) if len(parts) > 1 else parts[0]
    out[key] = value.T if key in _TRANSPOSED else value
  return out


def _activation(cfg: ClipConfig, tower) -> str:
  return "quick_gelu" if cfg.quick_gelu else "gelu_pytorch_tanh" if tower.gelu_tanh else "gelu"


def transformers_config(cfg: ClipConfig) -> dict[str, Any]:
  """config.json of the transformers CLIPModel with the same architecture."""
  v, t = cfg.vision, cfg.text
  problems = [reason for bad, reason in (
      (v.pool_type != "tok", f"vision pool_type={v.pool_type!r} (transformers pools the class "
                             "token)"),
      (v.no_ln_pre, "no ln_pre (transformers always has pre_layrnorm)"),
      (not t.causal or t.pool_type != "argmax", "a text tower that is not causal with end-of-text "
                                                "pooling"),
      (t.hf_tokenizer_name is not None, "a Hugging Face tokenizer instead of CLIP's BPE"),
      (v.width % v.head_width != 0, f"vision width {v.width} not a multiple of {v.head_width}"),
  ) if bad]
  if problems:
    raise NoTransformersTwinError("This architecture has no transformers CLIPModel twin: "
                                  + "; ".join(problems) + ". Export it in open_clip format.")
  return {
      "architectures": ["CLIPModel"], "model_type": "clip", "projection_dim": cfg.embed_dim,
      "logit_scale_init_value": 2.6592, "torch_dtype": "float32",
      "text_config": {
          "vocab_size": t.vocab_size, "hidden_size": t.width,
          "intermediate_size": int(t.width * t.mlp_ratio), "num_hidden_layers": t.layers,
          "num_attention_heads": t.heads, "max_position_embeddings": t.context_length,
          "hidden_act": _activation(cfg, t), "layer_norm_eps": t.norm_eps,
          "projection_dim": cfg.embed_dim, "bos_token_id": SOT_ID, "eos_token_id": EOT_ID,
          "pad_token_id": PAD_ID},
      "vision_config": {
          "hidden_size": v.width, "intermediate_size": int(v.width * v.mlp_ratio),
          "num_hidden_layers": v.layers, "num_attention_heads": v.heads,
          "image_size": v.image_size, "patch_size": v.patch_size, "num_channels": 3,
          "hidden_act": _activation(cfg, v), "layer_norm_eps": v.norm_eps,
          "projection_dim": cfg.embed_dim},
  }


def config_from_transformers(config: Mapping[str, Any]) -> ClipConfig:
  """The inverse of `transformers_config` (for configs it writes and openai/clip-vit-* ones)."""
  tc, vc = config["text_config"], config["vision_config"]
  acts = {tc.get("hidden_act", "quick_gelu"), vc.get("hidden_act", "quick_gelu")}
  if len(acts) != 1 or not acts <= {"quick_gelu", "gelu", "gelu_pytorch_tanh"}:
    raise NoTransformersTwinError(f"hidden_act {sorted(acts)} is not supported")
  act = acts.pop()
  heads = int(vc["num_attention_heads"])
  vision = VisionConfig(
      image_size=int(vc["image_size"]), patch_size=int(vc["patch_size"]),
      width=int(vc["hidden_size"]), layers=int(vc["num_hidden_layers"]),
      head_width=int(vc["hidden_size"]) // heads,
      mlp_ratio=int(vc["intermediate_size"]) / int(vc["hidden_size"]),
      norm_eps=float(vc.get("layer_norm_eps", 1e-5)), gelu_tanh=act == "gelu_pytorch_tanh")
  text = TextConfig(
      context_length=int(tc.get("max_position_embeddings", 77)),
      vocab_size=int(tc.get("vocab_size", 49408)), width=int(tc["hidden_size"]),
      heads=int(tc["num_attention_heads"]), layers=int(tc["num_hidden_layers"]),
      mlp_ratio=int(tc["intermediate_size"]) / int(tc["hidden_size"]),
      norm_eps=float(tc.get("layer_norm_eps", 1e-5)), gelu_tanh=act == "gelu_pytorch_tanh")
  return ClipConfig(int(config.get("projection_dim", 512)), vision, text,
                    quick_gelu=act == "quick_gelu")


def export_transformers(name: str | ClipConfig, params: Mapping, directory: str | os.PathLike
                        ) -> Path:
  """Writes config.json, model.safetensors and preprocessor_config.json into `directory`."""
  cfg = get_model_config(name)
  config = transformers_config(cfg)
  directory = Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  write_safetensors(to_transformers(params_to_state_dict(params, cfg)), directory / WEIGHTS)
  (directory / CONFIG).write_text(json.dumps(config, indent=2))
  size = cfg.vision.image_size
  (directory / PREPROCESSOR).write_text(json.dumps({
      "image_processor_type": "CLIPImageProcessor", "do_resize": True,
      "size": {"shortest_edge": size}, "resample": 3, "do_center_crop": True,
      "crop_size": {"height": size, "width": size}, "do_rescale": True,
      "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": list(CLIP["mean"]),
      "image_std": list(CLIP["std"]), "do_convert_rgb": True}, indent=2))
  return directory


def load_transformers(directory: str | os.PathLike, **model_kwargs):
  """(model, params) from a transformers CLIPModel directory (config.json + weights)."""
  directory = Path(directory)
  cfg = config_from_transformers(json.loads((directory / CONFIG).read_text()))
  weights_file = next((directory / n for n in (WEIGHTS, "pytorch_model.bin")
                       if (directory / n).is_file()), None)
  if weights_file is None:
    raise FileNotFoundError(f"{directory} has no {WEIGHTS} or pytorch_model.bin")
  model = build_model(cfg, **model_kwargs)
  from clic_jax.interop.convert import expected_shapes
  from clic_jax.models import name_table
  keys = [name_table(cfg.family).torch_key(path)[0] for path in expected_shapes(cfg)]
  state_dict = from_transformers(read_state_dict(weights_file), keys)
  return model, state_dict_to_params(state_dict, cfg)
