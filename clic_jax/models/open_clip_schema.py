"""open_clip's model config schema (`model_cfg` of open_clip_config.json) <-> ClipConfig.

Supported keys are listed per tower and read into the VisionConfig/TextConfig field of the same
name; the few that differ (no_causal_mask, norm_kwargs, act_kwargs, tokenizer_kwargs) are read
one by one. Keys that change the computation in ways clic_jax does not implement are refused with
the reason, never ignored.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from clic_jax.models.registry import ClipConfig, TextConfig, VisionConfig


class UnsupportedArchitectureError(ValueError):
  """An open_clip config describes a tower clic_jax cannot build."""


def _square(value) -> int:
  if isinstance(value, (list, tuple)):
    if len(set(value)) != 1:
      raise UnsupportedArchitectureError(f"non-square image_size {value} is not supported")
    value = value[0]
  return int(value)


def _optional_str(value) -> str | None:
  return None if value in (None, "") else str(value)


# The keys read into VisionConfig/TextConfig fields of the same name: the sizes (always written)
# and the tower options (written when not at their default). A missing key takes open_clip's
# default, which is the dataclass default except where listed in _OPEN_CLIP_DEFAULTS.
_SIZES = {"vision_cfg": ("image_size", "layers", "width", "head_width", "mlp_ratio", "patch_size"),
          "text_cfg": ("context_length", "vocab_size", "width", "heads", "layers", "mlp_ratio")}
_OPTIONS = {"vision_cfg": ("no_ln_pre", "pool_type", "final_ln_after_pool"),
            "text_cfg": ("pool_type", "pad_id", "hf_tokenizer_name")}
_TOWERS = {"vision_cfg": VisionConfig, "text_cfg": TextConfig}
_OPEN_CLIP_DEFAULTS = {"vision_cfg": {"patch_size": 16}, "text_cfg": {}}
_POOL_TYPES = {"vision": ("tok", "avg"), "text": ("argmax", "last", "first")}

# Whole families open_clip builds from a model_cfg that clic_jax has no Flax port of.
_FAMILY_KEYS = (
    ("vision_cfg", "timm_model_name", "a port of the timm image tower {value!r} (EVA02, ConvNeXt, "
                                      "...)"),
    ("vision_cfg", "layers", "a port of open_clip's ModifiedResNet image tower (layers={value})"),
    ("text_cfg", "hf_model_name", "a port of the Hugging Face text tower {value!r}"),
    ("", "multimodal_cfg", "CoCa's multimodal text decoder"),
)
# Options that change the computation and are not implemented (a value other than off).
_UNSUPPORTED = {
    "vision_cfg": ("attentional_pool", "ls_init_value", "patch_dropout", "output_tokens",
                   "block_type", "qk_norm", "scaled_cosine_attn", "scale_heads",
                   "scale_attn_inner", "scale_attn", "scale_fc"),
    "text_cfg": ("ls_init_value", "embed_cls", "proj_bias", "final_ln_after_pool", "output_tokens",
                 "tokenizer_mode", "block_type", "qk_norm", "scaled_cosine_attn", "scale_heads",
                 "scale_attn_inner", "scale_attn", "scale_fc"),
}
_OFF = (None, False, 0, 0.0, "default")


def _check_buildable(model_cfg: Mapping[str, Any]) -> None:
  for section, key, need in _FAMILY_KEYS:
    where = model_cfg.get(section, {}) if section else model_cfg
    value = where.get(key)
    if key == "layers" and not isinstance(value, (list, tuple)):
      continue
    if value not in _OFF:
      raise UnsupportedArchitectureError(
          f"This open_clip config needs {need.format(value=value)}, which clic_jax does not have; "
          "it builds OpenAI-style ViT towers (with open_clip's CLIPA/CLIPS options).")
  for section, keys in _UNSUPPORTED.items():
    for key in keys:
      value = model_cfg[section].get(key)
      if value not in _OFF:
        raise UnsupportedArchitectureError(
            f"{section}.{key}={value!r} is not supported by clic_jax's towers.")
  if model_cfg["vision_cfg"].get("pos_embed_type", "learnable") != "learnable":
    raise UnsupportedArchitectureError(
        f"vision_cfg.pos_embed_type={model_cfg['vision_cfg']['pos_embed_type']!r} is not "
        "supported (only 'learnable').")
  if model_cfg["text_cfg"].get("proj_type", "linear") != "linear":
    raise UnsupportedArchitectureError(
        f"text_cfg.proj_type={model_cfg['text_cfg']['proj_type']!r} is not supported "
        "(only 'linear').")


def _norm_eps(section: str, kwargs: Mapping | None) -> float:
  kwargs = dict(kwargs or {})
  eps = float(kwargs.pop("eps", 1e-5))
  if kwargs:
    raise UnsupportedArchitectureError(f"{section}.norm_kwargs {sorted(kwargs)} are not supported "
                                       "(only 'eps').")
  return eps


def _gelu_tanh(section: str, kwargs: Mapping | None, quick_gelu: bool) -> bool:
  kwargs = dict(kwargs or {})
  approximate = kwargs.pop("approximate", "none")
  if kwargs or approximate not in ("none", "tanh") or (quick_gelu and approximate == "tanh"):
    raise UnsupportedArchitectureError(
        f"{section}.act_kwargs={dict(kwargs, approximate=approximate)} is not supported (only "
        "GELU's approximate='none' or 'tanh', and not with quick_gelu).")
  return approximate == "tanh"


def _default(section: str, key: str):
  return _OPEN_CLIP_DEFAULTS[section].get(
      key, next(f.default for f in dataclasses.fields(_TOWERS[section]) if f.name == key))


def _read(section: str, values: Mapping[str, Any]) -> dict[str, Any]:
  out = {}
  for key in _SIZES[section] + _OPTIONS[section]:
    default = _default(section, key)
    value = values.get(key, default)
    read = _square if key == "image_size" else _optional_str if default is None else type(default)
    out[key] = read(value)
  return out


def _check_pool(name: str, value: str) -> None:
  if value not in _POOL_TYPES[name]:
    raise UnsupportedArchitectureError(
        f"{name}_cfg.pool_type={value!r} is not supported (use one of {_POOL_TYPES[name]}).")


def config_from_open_clip(model_cfg: Mapping[str, Any]) -> ClipConfig:
  """Parses the `model_cfg` of an open_clip_config.json (open_clip's model config schema)."""
  if "model_cfg" in model_cfg:
    model_cfg = model_cfg["model_cfg"]
  try:
    vc, tc = dict(model_cfg["vision_cfg"]), dict(model_cfg["text_cfg"])
    embed_dim = int(model_cfg["embed_dim"])
  except KeyError as e:
    raise ValueError(f"open_clip model config lacks {e}; got keys {sorted(model_cfg)}") from None
  _check_buildable(model_cfg)
  quick_gelu = bool(model_cfg.get("quick_gelu", False))
  vision = VisionConfig(**_read("vision_cfg", vc), norm_eps=_norm_eps("vision_cfg", vc.get(
      "norm_kwargs")), gelu_tanh=_gelu_tanh("vision_cfg", vc.get("act_kwargs"), quick_gelu))
  tokenizer_kwargs = dict(tc.get("tokenizer_kwargs") or {})
  strip_sep_token = bool(tokenizer_kwargs.pop("strip_sep_token", False))
  if tokenizer_kwargs:
    raise UnsupportedArchitectureError(f"text_cfg.tokenizer_kwargs {sorted(tokenizer_kwargs)} are "
                                       "not supported (only 'strip_sep_token').")
  text = TextConfig(**_read("text_cfg", tc), causal=not tc.get("no_causal_mask", False),
                    norm_eps=_norm_eps("text_cfg", tc.get("norm_kwargs")),
                    gelu_tanh=_gelu_tanh("text_cfg", tc.get("act_kwargs"), quick_gelu),
                    strip_sep_token=strip_sep_token)
  _check_pool("vision", vision.pool_type)
  _check_pool("text", text.pool_type)
  return ClipConfig(embed_dim, vision, text, quick_gelu=quick_gelu)


def _write(section: str, tower) -> dict[str, Any]:
  out = {key: getattr(tower, key) for key in _SIZES[section]}
  out.update((key, getattr(tower, key)) for key in _OPTIONS[section]
             if getattr(tower, key) != _default(section, key))
  return out


def _common_options(tower) -> dict[str, Any]:
  out: dict[str, Any] = {}
  if tower.norm_eps != 1e-5:
    out["norm_kwargs"] = {"eps": tower.norm_eps}
  if tower.gelu_tanh:
    out["act_kwargs"] = {"approximate": "tanh"}
  return out


def config_to_open_clip(cfg: ClipConfig) -> dict[str, Any]:
  """The inverse of `config_from_open_clip`: a `model_cfg` open_clip can build. Options at their
  default are left out, so the OpenAI-style models' configs are open_clip's own."""
  v, t = cfg.vision, cfg.text
  text_cfg = _write("text_cfg", t) | _common_options(t)
  if not t.causal:
    text_cfg["no_causal_mask"] = True
  if t.strip_sep_token:
    text_cfg["tokenizer_kwargs"] = {"strip_sep_token": True}
  out: dict[str, Any] = {"embed_dim": cfg.embed_dim,
                         "vision_cfg": _write("vision_cfg", v) | _common_options(v),
                         "text_cfg": text_cfg}
  if cfg.quick_gelu:
    out["quick_gelu"] = True
  return out
