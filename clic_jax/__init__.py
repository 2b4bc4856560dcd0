"""clic_jax: CLIC compositional fine-tuning of CLIP in JAX/Flax, interoperable with open_clip.

  import clic_jax
  tokens = clic_jax.tokenize(["a dog."])                                   # (N, 77) int32
  tokens = clic_jax.get_tokenizer("ViT-L-14-CLIPA")(["a dog."])            # the model's own
  model, params = clic_jax.create_model("ViT-B-32-quickgelu", seed=0)
  model, params = clic_jax.load_open_clip("ViT-B-32-quickgelu", "openai")
  clic_jax.export_open_clip("ViT-B-32-quickgelu", params, "out.safetensors")
  from clic_jax import losses

Imports are lazy so that `import clic_jax` stays cheap (no jax/flax until something is used).
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "tokenize": ("clic_jax.tokenizer", "tokenize"),
    "get_tokenizer": ("clic_jax.model_tokenizer", "get_tokenizer"),
    "create_model": ("clic_jax.models", "create_model"),
    "known_models": ("clic_jax.models", "known_models"),
    "load_open_clip": ("clic_jax.interop", "load_open_clip"),
    "export_open_clip": ("clic_jax.interop", "export_open_clip"),
    "losses": ("clic_jax.losses", None),
}


def __getattr__(name):
  if name not in _LAZY:
    raise AttributeError(f"module 'clic_jax' has no attribute {name!r}")
  module_name, attr = _LAZY[name]
  module = importlib.import_module(module_name)
  value = module if attr is None else getattr(module, attr)
  globals()[name] = value
  return value


def __dir__():
  return sorted(list(globals()) + list(_LAZY))


__all__ = list(_LAZY)
