"""Model families: for each family name, the Flax module that builds it and the table that names
its parameters in open_clip's state dict. A new family is one new model module (and its name
table) plus one line in FAMILIES; build_model and the open_clip converters look families up here.
"""
from __future__ import annotations

import dataclasses
import importlib
from types import ModuleType


@dataclasses.dataclass(frozen=True)
class Family:
  model: str     # "package.module:Class": a Flax module built as Class(cfg, run=Execution(...))
  names: str     # a module with torch_key(flax_path) -> (open_clip key, layout), to_flax, to_torch


FAMILIES: dict[str, Family] = {
    # OpenAI-style ViT image and text towers, with open_clip's options (CLIPA, CLIPS, LAION).
    "vit": Family(model="clic_jax.models.clip:CLIP", names="clic_jax.interop.names"),
}


def _family(name: str) -> Family:
  if name not in FAMILIES:
    raise ValueError(f"Unknown model family {name!r}; known: {', '.join(sorted(FAMILIES))}.")
  return FAMILIES[name]


def model_class(family: str) -> type:
  module, attribute = _family(family).model.split(":")
  return getattr(importlib.import_module(module), attribute)


def name_table(family: str) -> ModuleType:
  return importlib.import_module(_family(family).names)
