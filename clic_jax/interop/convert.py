"""State dict (open_clip key -> numpy array) <-> Flax params, with errors that name keys and shapes."""
from __future__ import annotations

from typing import Any, Mapping

import jax
import numpy as np

from clic_jax.interop import names
from clic_jax.models import ClipConfig, build_model, get_model_config, name_table


class CheckpointMismatchError(ValueError):
  """A state dict does not fit the requested architecture."""


def expected_shapes(cfg: ClipConfig) -> dict[tuple[str, ...], tuple[int, ...]]:
  """Flax parameter paths and shapes of an architecture, computed without allocating weights."""
  model = build_model(cfg)
  image = jax.ShapeDtypeStruct((1, cfg.vision.image_size, cfg.vision.image_size, 3), np.float32)
  tokens = jax.ShapeDtypeStruct((1, cfg.text.context_length), np.int32)
  abstract = jax.eval_shape(model.init, jax.random.key(0), image, tokens)["params"]
  return {tuple(k.key for k in path): tuple(leaf.shape)
          for path, leaf in jax.tree_util.tree_flatten_with_path(abstract)[0]}


def _nest(flat: Mapping[tuple[str, ...], Any]) -> dict:
  tree: dict = {}
  for path, value in flat.items():
    node = tree
    for part in path[:-1]:
      node = node.setdefault(part, {})
    node[path[-1]] = value
  return tree


def state_dict_to_params(state_dict: Mapping[str, np.ndarray], model: str | ClipConfig) -> dict:
  """open_clip state dict -> Flax params (float32 numpy). Raises CheckpointMismatchError."""
  cfg = get_model_config(model)
  table = name_table(cfg.family)
  state_dict = {k: v for k, v in state_dict.items() if k not in names.IGNORED_KEYS}
  flat, used, problems = {}, set(), []
  for path, shape in expected_shapes(cfg).items():
    key, layout = table.torch_key(path)
    if key not in state_dict:
      problems.append(f"missing {key} (expected shape {table.torch_shape(shape, layout)})")
      continue
    used.add(key)
    value = np.asarray(state_dict[key], dtype=np.float32)
    if value.ndim == 1 and value.size == 1 and shape == ():
      value = value.reshape(())                 # some checkpoints store logit_scale as (1,)
    converted = table.to_flax(value, layout)
    if converted.shape != shape:
      problems.append(f"shape of {key}: checkpoint {tuple(value.shape)}, "
                      f"model expects {table.torch_shape(shape, layout)}")
      continue
    flat[path] = converted
  problems += [f"unexpected {k} {tuple(np.shape(state_dict[k]))}"
               for k in sorted(set(state_dict) - used)]
  if problems:
    name = model if isinstance(model, str) else "the given architecture"
    shown = "\n  ".join(problems[:20]) + (f"\n  ... and {len(problems) - 20} more"
                                           if len(problems) > 20 else "")
    raise CheckpointMismatchError(
        f"The checkpoint does not match {name}: {len(problems)} problem(s):\n  {shown}\n"
        "Check the model name (e.g. ViT-B-16 vs ViT-B-32, -quickgelu does not change shapes) or "
        "load through 'hf-hub:'/'local-dir:' so the architecture comes from open_clip_config.json.")
  return _nest(flat)


def params_to_state_dict(params: Mapping, model: str | ClipConfig | None = None
                         ) -> dict[str, np.ndarray]:
  """Flax params -> open_clip state dict of contiguous float32 numpy arrays.

  With `model`, the tree is first checked against that architecture (names and shapes).
  """
  params = jax.device_get(params)
  flat = {tuple(k.key for k in path): np.asarray(leaf, np.float32)
          for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}
  cfg = None if model is None else get_model_config(model)
  table = name_table("vit" if cfg is None else cfg.family)
  if cfg is not None:
    expected = expected_shapes(cfg)
    bad = [f"{'/'.join(p)}: {flat[p].shape if p in flat else 'missing'} vs {s}"
           for p, s in expected.items() if p not in flat or flat[p].shape != s]
    bad += [f"{'/'.join(p)}: unexpected" for p in set(flat) - set(expected)]
    if bad:
      raise CheckpointMismatchError(f"params do not match {model}: " + "; ".join(bad[:10]))
  out = {}
  for path, value in flat.items():
    key, layout = table.torch_key(path)
    out[key] = table.to_torch(value, layout)
  return out
