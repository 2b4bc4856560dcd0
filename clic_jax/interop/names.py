"""The open_clip state-dict <-> Flax parameter table.

Every Flax parameter path maps to one open_clip key and a layout change. Only this direction is
written down; the reverse is the same table read backwards, so the two cannot drift apart.

  Flax path                                   open_clip key                             layout
  visual/conv1/kernel                         visual.conv1.weight                       HWIO <- OIHW
  .../resblocks_N/attn/in_proj/kernel         ....resblocks.N.attn.in_proj_weight       transpose
  .../resblocks_N/attn/in_proj/bias           ....resblocks.N.attn.in_proj_bias
  .../{out_proj,c_fc,c_proj}/kernel           .../{...}.weight                          transpose
  .../ln_*/scale                              .../ln_*.weight
  token_embedding/embedding                   token_embedding.weight
  everything else (biases, class_embedding, positional_embedding, proj, text_projection,
  logit_scale)                                same name, '/' -> '.'
"""
from __future__ import annotations

import re
from typing import Callable

import numpy as np

IDENTITY, TRANSPOSE, CONV = "identity", "transpose", "conv"

# Buffers and metadata some checkpoints carry that are not parameters (open_clip's attn_mask is a
# non-persistent buffer; OpenAI's TorchScript archives add the three integers).
IGNORED_KEYS = frozenset({"attn_mask", "input_resolution", "context_length", "vocab_size",
                          "text.transformer.embeddings.position_ids"})


def torch_key(path: tuple[str, ...]) -> tuple[str, str]:
  """Returns (open_clip key, layout) for a Flax parameter path."""
  parts = [m.group(0).replace("_", ".") if (m := re.fullmatch(r"resblocks_\d+", p)) else p
           for p in path]
  leaf, parent = parts[-1], parts[-2] if len(parts) > 1 else ""
  layout = IDENTITY
  if parent == "in_proj":                     # torch.nn.MultiheadAttention's fused projection
    parts = parts[:-2] + ["in_proj_weight" if leaf == "kernel" else "in_proj_bias"]
    layout = TRANSPOSE if leaf == "kernel" else IDENTITY
  elif leaf == "kernel":
    parts[-1] = "weight"
    layout = CONV if parent == "conv1" else TRANSPOSE
  elif leaf in ("scale", "embedding"):
    parts[-1] = "weight"
  return ".".join(parts), layout


_TO_FLAX: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    IDENTITY: lambda x: x, TRANSPOSE: lambda x: x.T, CONV: lambda x: x.transpose(2, 3, 1, 0)}
_TO_TORCH: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    IDENTITY: lambda x: x, TRANSPOSE: lambda x: x.T, CONV: lambda x: x.transpose(3, 2, 0, 1)}


def to_flax(value: np.ndarray, layout: str) -> np.ndarray:
  return np.array(_TO_FLAX[layout](value), order="C")  # keeps 0-d (logit_scale) 0-d


def to_torch(value: np.ndarray, layout: str) -> np.ndarray:
  return np.array(_TO_TORCH[layout](value), order="C")


def torch_shape(flax_shape: tuple[int, ...], layout: str) -> tuple[int, ...]:
  return tuple(to_torch(np.empty(flax_shape, np.uint8), layout).shape)
