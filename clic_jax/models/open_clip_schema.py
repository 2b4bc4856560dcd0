"""open_clip's model config schema (`model_cfg` of open_clip_config.json) <-> ClipConfig.

Each supported key is one row of a table: its open_clip name, the ClipConfig field it sets, the
value open_clip assumes when the key is absent, and how the value is read. Keys that change the
computation in ways clic_jax does not implement are refused with the reason, never ignored.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

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


@dataclasses.dataclass(frozen=True)
class _Field:
  key: str                              # open_clip's key
  field: str                            # the VisionConfig/TextConfig field
  default: Any                          # open_clip's value when the key is absent
  read: Callable[[Any], Any] = lambda v: v
  always_written: bool = False          # written even at its default (the sizes)


_VISION_FIELDS = (
    _Field("image_size", "image_size", 224, _square, True),
    _Field("layers", "layers", 12, int, True),
    _Field("width", "width", 768, int, True),
    _Field("head_width", "head_width", 64, int, True),
    _Field("mlp_ratio", "mlp_ratio", 4.0, float, True),
    _Field("patch_size", "patch_size", 16, int, True),
    _Field("no_ln_pre", "no_ln_pre", False, bool),
    _Field("pool_type", "pool_type", "tok", str),
    _Field("final_ln_after_pool", "final_ln_after_pool", False, bool),
)
_TEXT_FIELDS = (
    _Field("context_length", "context_length", 77, int, True),
    _Field("vocab_size", "vocab_size", 49408, int, True),
    _Field("width", "width", 512, int, True),
    _Field("heads", "heads", 8, int, True),
    _Field("layers", "layers", 12, int, True),
    _Field("mlp_ratio", "mlp_ratio", 4.0, float, True),
    _Field("pool_type", "pool_type", "argmax", str),
    _Field("pad_id", "pad_id", 0, int),
    _Field("hf_tokenizer_name", "hf_tokenizer_name", None, _optional_str),
)
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


def _read(fields, section: Mapping[str, Any]) -> dict[str, Any]:
  return {f.field: f.read(section.get(f.key, f.default)) for f in fields}


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
  vision = VisionConfig(**_read(_VISION_FIELDS, vc), norm_eps=_norm_eps("vision_cfg", vc.get(
      "norm_kwargs")), gelu_tanh=_gelu_tanh("vision_cfg", vc.get("act_kwargs"), quick_gelu))
  tokenizer_kwargs = dict(tc.get("tokenizer_kwargs") or {})
  strip_sep_token = bool(tokenizer_kwargs.pop("strip_sep_token", False))
  if tokenizer_kwargs:
    raise UnsupportedArchitectureError(f"text_cfg.tokenizer_kwargs {sorted(tokenizer_kwargs)} are "
                                       "not supported (only 'strip_sep_token').")
  text = TextConfig(**_read(_TEXT_FIELDS, tc), causal=not tc.get("no_causal_mask", False),
                    norm_eps=_norm_eps("text_cfg", tc.get("norm_kwargs")),
                    gelu_tanh=_gelu_tanh("text_cfg", tc.get("act_kwargs"), quick_gelu),
                    strip_sep_token=strip_sep_token)
  _check_pool("vision", vision.pool_type)
  _check_pool("text", text.pool_type)
  return ClipConfig(embed_dim, vision, text, quick_gelu=quick_gelu)


def _write(fields, tower) -> dict[str, Any]:
  return {f.key: getattr(tower, f.field) for f in fields
          if f.always_written or getattr(tower, f.field) != f.default}


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
  text_cfg = _write(_TEXT_FIELDS, t) | _common_options(t)
  if not t.causal:
    text_cfg["no_causal_mask"] = True
  if t.strip_sep_token:
    text_cfg["tokenizer_kwargs"] = {"strip_sep_token": True}
  out: dict[str, Any] = {"embed_dim": cfg.embed_dim,
                         "vision_cfg": _write(_VISION_FIELDS, v) | _common_options(v),
                         "text_cfg": text_cfg}
  if cfg.quick_gelu:
    out["quick_gelu"] = True
  return out
