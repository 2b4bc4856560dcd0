"""CLIP models: the Flax modules, the architecture registry and random initialisation."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from clic_jax.models.clip import CLIP, Execution
from clic_jax.models.families import model_class, name_table
from clic_jax.models.open_clip_schema import (UnsupportedArchitectureError, config_from_open_clip,
                                              config_to_open_clip)
from clic_jax.models.registry import (ClipConfig, TextConfig, UnknownModelError, VisionConfig,
                                      get_model_config, image_normalization, known_models,
                                      rows_trimmable)


def build_model(name: str | ClipConfig, dtype=jnp.float32, remat: bool = False,
                attention_impl: str | None = None, scan_layers: bool | None = None) -> CLIP:
  """The Flax module for an architecture name (see `known_models()`) or a ClipConfig.

  The keyword options say how it runs (models.clip.Execution); the parameters are the same
  whatever they are.
  """
  cfg = get_model_config(name)
  run = Execution(dtype=dtype, remat=remat, attention_impl=attention_impl, scan_layers=scan_layers)
  return model_class(cfg.family)(cfg, run=run)


def init_params(model: CLIP, seed: int = 0):
  """Random float32 parameters with open_clip's initialisation scales."""
  cfg = model.cfg
  images = jnp.zeros((1, cfg.vision.image_size, cfg.vision.image_size, 3), jnp.float32)
  tokens = jnp.zeros((1, cfg.text.context_length), jnp.int32)
  return jax.jit(model.init)(jax.random.key(seed), images, tokens)["params"]


def create_model(name: str | ClipConfig, seed: int = 0, **model_kwargs):
  """Returns (model, params): the Flax module and randomly initialised parameters."""
  model = build_model(name, **model_kwargs)
  return model, init_params(model, seed)


__all__ = ["CLIP", "ClipConfig", "Execution", "TextConfig", "VisionConfig", "UnknownModelError", "build_model",
           "create_model", "init_params", "config_from_open_clip", "config_to_open_clip",
           "get_model_config", "image_normalization", "known_models", "model_class", "name_table",
           "rows_trimmable", "UnsupportedArchitectureError"]
