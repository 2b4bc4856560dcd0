"""Architecture registry: CLIP sizes by open_clip name, and parsing of open_clip's config schema.

Sizes are open_clip's published model configs (facts, not code). A name ending in `-quickgelu`
selects QuickGELU, which OpenAI's weights need; everything else uses exact (erf) GELU.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping


@dataclasses.dataclass(frozen=True)
class VisionConfig:
  image_size: int = 224
  patch_size: int = 32
  width: int = 768
  layers: int = 12
  head_width: int = 64
  mlp_ratio: float = 4.0

  @property
  def heads(self) -> int:
    return self.width // self.head_width

  @property
  def grid(self) -> int:
    return self.image_size // self.patch_size


@dataclasses.dataclass(frozen=True)
class TextConfig:
  context_length: int = 77
  vocab_size: int = 49408
  width: int = 512
  heads: int = 8
  layers: int = 12
  mlp_ratio: float = 4.0


@dataclasses.dataclass(frozen=True)
class ClipConfig:
  embed_dim: int
  vision: VisionConfig
  text: TextConfig
  quick_gelu: bool = False


_BASE = {
    "ViT-B-32": ClipConfig(512, VisionConfig(224, 32, 768, 12), TextConfig(width=512, heads=8)),
    "ViT-B-16": ClipConfig(512, VisionConfig(224, 16, 768, 12), TextConfig(width=512, heads=8)),
    "ViT-L-14": ClipConfig(768, VisionConfig(224, 14, 1024, 24), TextConfig(width=768, heads=12)),
    "ViT-L-14-336": ClipConfig(768, VisionConfig(336, 14, 1024, 24),
                               TextConfig(width=768, heads=12)),
    # Tiny architectures for tests and the offline demo. Same code path, a few thousand times smaller.
    "tiny": ClipConfig(32, VisionConfig(32, 8, 64, 2, head_width=16),
                       TextConfig(width=64, heads=4, layers=2)),
    "tiny-64": ClipConfig(64, VisionConfig(64, 8, 128, 4, head_width=32),
                          TextConfig(width=128, heads=4, layers=4)),
}

MODEL_CONFIGS: dict[str, ClipConfig] = {}
for _name, _cfg in _BASE.items():
  MODEL_CONFIGS[_name] = _cfg
  MODEL_CONFIGS[_name + "-quickgelu"] = dataclasses.replace(_cfg, quick_gelu=True)


class UnknownModelError(ValueError):
  pass


def known_models() -> list[str]:
  return sorted(MODEL_CONFIGS)


def get_model_config(name: str | ClipConfig) -> ClipConfig:
  """Returns the architecture for an open_clip model name (or passes a ClipConfig through)."""
  if isinstance(name, ClipConfig):
    return name
  if name not in MODEL_CONFIGS:
    raise UnknownModelError(
        f"Unknown model {name!r}. Known models: {', '.join(known_models())}. Architectures "
        "described by an open_clip_config.json load through 'hf-hub:ORG/REPO' or 'local-dir:DIR'.")
  return MODEL_CONFIGS[name]


# Keys of open_clip's vision_cfg / text_cfg that change the computation and that this port does not
# implement. A config using them is rejected instead of silently computing something else.
_UNSUPPORTED_VISION = ("timm_model_name", "attentional_pool", "ls_init_value", "patch_dropout",
                       "final_ln_after_pool", "no_ln_pre", "attn_pooler_queries", "output_tokens")
_UNSUPPORTED_TEXT = ("hf_model_name", "ls_init_value", "embed_cls", "no_causal_mask", "proj_bias",
                     "final_ln_after_pool")
_ALLOWED_POOL = {"vision": ("tok",), "text": ("argmax",)}


def config_from_open_clip(model_cfg: Mapping[str, Any]) -> ClipConfig:
  """Parses the `model_cfg` of an open_clip_config.json (open_clip's model config schema)."""
  if "model_cfg" in model_cfg:
    model_cfg = model_cfg["model_cfg"]
  try:
    vc, tc = dict(model_cfg["vision_cfg"]), dict(model_cfg["text_cfg"])
    embed_dim = int(model_cfg["embed_dim"])
  except KeyError as e:
    raise ValueError(f"open_clip model config lacks {e}; got keys {sorted(model_cfg)}") from None
  for key in _UNSUPPORTED_VISION:
    if vc.get(key) not in (None, False, 0, 0.0):
      raise ValueError(f"vision_cfg.{key}={vc[key]!r} is not supported by clic_jax's ViT")
  for key in _UNSUPPORTED_TEXT:
    if tc.get(key) not in (None, False, 0, 0.0):
      raise ValueError(f"text_cfg.{key}={tc[key]!r} is not supported by clic_jax's text tower")
  if vc.get("pool_type", "tok") not in _ALLOWED_POOL["vision"]:
    raise ValueError(f"vision_cfg.pool_type={vc['pool_type']!r} is not supported (only 'tok')")
  if tc.get("pool_type", "argmax") not in _ALLOWED_POOL["text"]:
    raise ValueError(f"text_cfg.pool_type={tc['pool_type']!r} is not supported (only 'argmax')")
  image_size = vc.get("image_size", 224)
  if isinstance(image_size, (list, tuple)):
    if len(set(image_size)) != 1:
      raise ValueError(f"non-square image_size {image_size} is not supported")
    image_size = image_size[0]
  vision = VisionConfig(
      image_size=int(image_size), patch_size=int(vc.get("patch_size", 16)),
      width=int(vc.get("width", 768)), layers=int(vc.get("layers", 12)),
      head_width=int(vc.get("head_width", 64)), mlp_ratio=float(vc.get("mlp_ratio", 4.0)))
  text = TextConfig(
      context_length=int(tc.get("context_length", 77)), vocab_size=int(tc.get("vocab_size", 49408)),
      width=int(tc.get("width", 512)), heads=int(tc.get("heads", 8)),
      layers=int(tc.get("layers", 12)), mlp_ratio=float(tc.get("mlp_ratio", 4.0)))
  return ClipConfig(embed_dim, vision, text, quick_gelu=bool(model_cfg.get("quick_gelu", False)))


def config_to_open_clip(cfg: ClipConfig) -> dict[str, Any]:
  """The inverse of `config_from_open_clip`: a `model_cfg` open_clip can build."""
  v, t = cfg.vision, cfg.text
  out: dict[str, Any] = {
      "embed_dim": cfg.embed_dim,
      "vision_cfg": {"image_size": v.image_size, "layers": v.layers, "width": v.width,
                     "head_width": v.head_width, "mlp_ratio": v.mlp_ratio,
                     "patch_size": v.patch_size},
      "text_cfg": {"context_length": t.context_length, "vocab_size": t.vocab_size,
                   "width": t.width, "heads": t.heads, "layers": t.layers,
                   "mlp_ratio": t.mlp_ratio},
  }
  if cfg.quick_gelu:
    out["quick_gelu"] = True
  return out
