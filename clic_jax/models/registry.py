"""Architecture registry: CLIP architectures by open_clip name.

Sizes and tower options are open_clip's published model configs (facts, not code). A name ending
in `-quickgelu` selects QuickGELU, which OpenAI's weights need; everything else uses exact (erf)
GELU unless the config asks for the tanh approximation. Parsing open_clip's config schema lives
in `open_clip_schema`.
"""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True, kw_only=True)
class TowerConfig:
  """What the image and text towers' block stacks have in common (models.clip.Blocks)."""
  width: int
  layers: int = 12
  mlp_ratio: float = 4.0
  norm_eps: float = 1e-5                 # LayerNorm eps (open_clip's norm_kwargs.eps)
  gelu_tanh: bool = False                # GELU's tanh approximation (act_kwargs.approximate)


@dataclasses.dataclass(frozen=True, kw_only=True)
class VisionConfig(TowerConfig):
  """The image tower: a ViT over (image_size / patch_size)^2 patches plus a class token."""
  image_size: int = 224
  patch_size: int = 32
  width: int = 768
  head_width: int = 64
  # open_clip tower options (defaults: OpenAI's ViT). CLIPA/CLIPS drop ln_pre and average the
  # patch tokens, normalizing after the average.
  no_ln_pre: bool = False
  pool_type: str = "tok"                 # "tok": class token; "avg": mean of the patch tokens
  final_ln_after_pool: bool = False      # ln_post on the pooled vector instead of every token

  @property
  def heads(self) -> int:
    return self.width // self.head_width

  @property
  def grid(self) -> int:
    return self.image_size // self.patch_size


@dataclasses.dataclass(frozen=True, kw_only=True)
class TextConfig(TowerConfig):
  """The text tower: a transformer over token rows of at most context_length, whose embedding is
  read at one position per row (pool_type)."""
  context_length: int = 77
  vocab_size: int = 49408
  width: int = 512
  heads: int = 8
  causal: bool = True                    # False: open_clip's no_causal_mask (bidirectional)
  pool_type: str = "argmax"              # "argmax" (EOT, the largest id), "last", "first"
  pad_id: int = 0                        # the tokenizer's padding id
  # Hugging Face tokenizer (a hub repository or a local directory) instead of CLIP's BPE.
  hf_tokenizer_name: str | None = None
  strip_sep_token: bool = False          # tokenizer_kwargs.strip_sep_token: [SEP] -> pad


@dataclasses.dataclass(frozen=True)
class ClipConfig:
  embed_dim: int
  vision: VisionConfig
  text: TextConfig
  quick_gelu: bool = False
  family: str = "vit"                    # the modules that build it (models.families)


def rows_trimmable(cfg: ClipConfig) -> bool:
  """Whether cutting padding columns off token rows leaves the text embedding unchanged.

  Exact only for a causal tower that pools the end-of-text token: no position before the pad
  sees the pads. A bidirectional tower attends to the pads (open_clip has no padding mask), and
  "last"/"first" pooling reads a position whose value depends on the padded length.
  """
  return cfg.text.causal and cfg.text.pool_type == "argmax"


# Vision and text options of CLIPA (open_clip's ViT-*-CLIPA configs).
_CLIPA_VISION = dict(no_ln_pre=True, pool_type="avg", final_ln_after_pool=True)
_CLIPA_TEXT = dict(context_length=32, vocab_size=32000, causal=False, pool_type="last",
                   hf_tokenizer_name="bert-base-uncased", strip_sep_token=True)
# CLIPS (UCSC-VLAA's hub configs): CLIPA's towers with LayerNorm eps 1e-6, a tanh-GELU text tower
# and 80 text positions.
_CLIPS_VISION = dict(_CLIPA_VISION, norm_eps=1e-6)
_CLIPS_TEXT = dict(_CLIPA_TEXT, context_length=80, norm_eps=1e-6, gelu_tanh=True)


def _clip(embed_dim, image_size, patch_size, width, layers, text_width, text_heads,
          text_layers=12, head_width=64, mlp_ratio=4.0, vision=(), text=()) -> ClipConfig:
  return ClipConfig(embed_dim,
                    VisionConfig(image_size=image_size, patch_size=patch_size, width=width,
                                 layers=layers, head_width=head_width, mlp_ratio=mlp_ratio,
                                 **dict(vision)),
                    TextConfig(width=text_width, heads=text_heads, layers=text_layers,
                               **dict(text)))


# Architectures that also come as "-quickgelu" (OpenAI-style towers; QuickGELU is a fact of the
# weights, not of the shape).
_OPENAI_STYLE = {
    "ViT-B-32": _clip(512, 224, 32, 768, 12, 512, 8),
    "ViT-B-16": _clip(512, 224, 16, 768, 12, 512, 8),
    "ViT-L-14": _clip(768, 224, 14, 1024, 24, 768, 12),
    "ViT-L-14-336": _clip(768, 336, 14, 1024, 24, 768, 12),
    "ViT-H-14": _clip(1024, 224, 14, 1280, 32, 1024, 16, 24, head_width=80),
    "ViT-bigG-14": _clip(1280, 224, 14, 1664, 48, 1280, 20, 32, head_width=104,
                         mlp_ratio=4.9231),
    # Tiny architectures for tests and the offline demo. Same code path, a few thousand times smaller.
    "tiny": _clip(32, 32, 8, 64, 2, 64, 4, text_layers=2, head_width=16),
    "tiny-64": _clip(64, 64, 8, 128, 4, 128, 4, text_layers=4, head_width=32),
}
_OTHERS = {
    "ViT-L-14-CLIPA": _clip(768, 224, 14, 1024, 24, 768, 12, vision=_CLIPA_VISION,
                            text=_CLIPA_TEXT),
    "ViT-L-14-CLIPA-336": _clip(768, 336, 14, 1024, 24, 768, 12, vision=_CLIPA_VISION,
                                text=_CLIPA_TEXT),
    "ViT-H-14-CLIPA": _clip(1024, 224, 14, 1280, 32, 1024, 16, 24, head_width=80,
                            vision=_CLIPA_VISION, text=_CLIPA_TEXT),
    "ViT-H-14-CLIPA-336": _clip(1024, 336, 14, 1280, 32, 1024, 16, 24, head_width=80,
                                vision=_CLIPA_VISION, text=_CLIPA_TEXT),
    "ViT-bigG-14-CLIPA": _clip(1280, 224, 14, 1664, 48, 1280, 20, 32, head_width=104,
                               mlp_ratio=4.9231, vision=_CLIPA_VISION, text=_CLIPA_TEXT),
    "ViT-bigG-14-CLIPA-336": _clip(1280, 336, 14, 1664, 48, 1280, 20, 32, head_width=104,
                                   mlp_ratio=4.9231, vision=_CLIPA_VISION, text=_CLIPA_TEXT),
    # UCSC-VLAA/ViT-L-14-CLIPS-224-Recap-DataComp-1B: CLIPA-L-14's sizes with CLIPS's options
    # (sizes not checked against the hub here; 'hf-hub:' reads the repository's own config).
    "ViT-L-14-CLIPS-224": _clip(768, 224, 14, 1024, 24, 768, 12, vision=_CLIPS_VISION,
                                text=_CLIPS_TEXT),
    # CLIPA's towers at tiny widths for tests, with CLIP's tokenizer so it trains offline.
    "tiny-clipa": _clip(32, 32, 8, 64, 2, 64, 4, text_layers=2, head_width=16,
                        vision=_CLIPA_VISION, text=dict(causal=False, pool_type="last")),
}

MODEL_CONFIGS: dict[str, ClipConfig] = dict(_OTHERS)
for _name, _cfg in _OPENAI_STYLE.items():
  MODEL_CONFIGS[_name] = _cfg
  MODEL_CONFIGS[_name + "-quickgelu"] = dataclasses.replace(_cfg, quick_gelu=True)


# Image preprocessing the weights were trained with, as open_clip's preprocess_cfg: OpenAI's (also
# LAION's) mean and std with bicubic resizing of the short side, or CLIPA's ImageNet mean and std,
# bilinear, squashed. CLIPS is trained with CLIPA's code and assumed to share it; a hub model's own
# preprocess_cfg (interop.preprocess_config("hf-hub:...")) is authoritative.
PREPROCESS = {
    "clip": {"mean": (0.48145466, 0.4578275, 0.40821073),
             "std": (0.26862954, 0.26130258, 0.27577711),
             "interpolation": "bicubic", "resize_mode": "shortest"},
    "imagenet": {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
                 "interpolation": "bilinear", "resize_mode": "squash"},
}
_PREPROCESS_OF = {name: "imagenet" for name in _OTHERS if name != "tiny-clipa"}


def image_normalization(name: str) -> str:
  """"clip" or "imagenet": the mean and std a registry model's images are normalized with (the
  names of clic_jax.data.images.NORMALIZATIONS)."""
  return _PREPROCESS_OF.get(name, "clip")


def preprocess_for(name: str) -> dict:
  """open_clip's preprocess_cfg for a registry name (mean, std, interpolation, resize_mode)."""
  return dict(PREPROCESS[image_normalization(name)])


class UnknownModelError(ValueError):
  pass


# open_clip model families with no Flax port here, by name prefix: what each one would need.
UNBUILT_FAMILIES = {
    "EVA": "a port of timm's EVA02 image tower (rotary embeddings, SwiGLU)",
    "convnext": "a port of timm's ConvNeXt image tower",
    "RN": "a port of open_clip's ModifiedResNet image tower (attention pooling)",
    "coca": "CoCa's multimodal text decoder and attentional poolers",
    "ViT-SO400M": "SigLIP's attention-pool head and sigmoid loss",
    "ViT-B-16-SigLIP": "SigLIP's attention-pool head and sigmoid loss",
    "MobileCLIP": "a port of MobileCLIP's hybrid image tower",
    "xlm-roberta": "a port of the Hugging Face text tower",
    "roberta": "a port of the Hugging Face text tower",
    "mt5": "a port of the Hugging Face text tower",
}


def missing_family(name: str) -> str | None:
  """What an open_clip name needs that clic_jax lacks, or None for a name it does not know."""
  lowered = name.lower()
  return next((need for prefix, need in UNBUILT_FAMILIES.items()
               if lowered.startswith(prefix.lower())), None)


def known_models() -> list[str]:
  return sorted(MODEL_CONFIGS)


def get_model_config(name: str | ClipConfig) -> ClipConfig:
  """Returns the architecture for an open_clip model name (or passes a ClipConfig through)."""
  if isinstance(name, ClipConfig):
    return name
  if name not in MODEL_CONFIGS:
    missing = missing_family(name)
    if missing:
      raise UnknownModelError(f"{name!r} is an open_clip architecture clic_jax cannot build yet: "
                              f"it needs {missing}. Supported: {', '.join(known_models())}.")
    raise UnknownModelError(
        f"Unknown model {name!r}. Known models: {', '.join(known_models())}. Architectures "
        "described by an open_clip_config.json load through 'hf-hub:ORG/REPO' or 'local-dir:DIR'.")
  return MODEL_CONFIGS[name]
