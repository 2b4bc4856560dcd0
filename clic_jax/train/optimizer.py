"""Optimizer, learning-rate schedule and parameter freezing.

What the reference does and what we keep (docs/method.md, "Training"):
- AdamW with torch semantics: p <- p - lr * (m_hat / (sqrt(v_hat) + eps) + wd * p), betas (0.9, 0.98),
  eps 1e-8, weight decay 0.1 on trainable matrices only (ndim >= 2 and no "bias"/"ln"/"bn" in the
  name), so biases, LayerNorm scales, 1-d parameters and logit_scale get none; token_embedding and
  positional_embedding are 2-d and do get decay, like the reference. No gradient clipping.
- Freezing by regexes on '/'-joined parameter paths (["^visual/"] is the reference's
  --freeze_only_vision; logit_scale stays trainable, like the reference). Frozen parameters get no
  optimizer state; `split_trainable` lets the train step differentiate only the trainable part.
- Warmup + cosine schedule that is exactly `total_steps` long and ends at lr_end (docs/method.md,
  "Schedule").
- logit_scale clamped to [0, ln 100] after every update (the reference's clamp is a no-op;
  docs/method.md, "Logit scale").
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

# Substrings that exempt a parameter from weight decay, as in the reference's AdamW groups.
NO_DECAY_SUBSTRINGS = ("bias", "ln", "bn")
LOGIT_SCALE_PATH = "logit_scale"


def _is_int(value) -> bool:
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


# ---------------------------------------------------------------------------------------------------
# Learning-rate schedule.


def check_hyperparameters(*, lr: float, lr_start: float, lr_end: float, warmup_fraction: float,
                          weight_decay: float = 0.0, grad_accum_steps: int = 1,
                          clip_grad_norm: float | None = None) -> None:
  """ValueError for a value the schedule or the optimizer cannot use (also the run spec's check)."""
  if not 0.0 <= warmup_fraction <= 1.0:
    raise ValueError(f"lr_schedule: warmup_fraction must be in [0, 1], got {warmup_fraction!r}.")
  for name, value in (("lr", lr), ("lr_start", lr_start), ("lr_end", lr_end)):
    if not (math.isfinite(value) and value >= 0):
      raise ValueError(f"lr_schedule: {name} must be a finite number >= 0, got {value!r}.")
  if not _is_int(grad_accum_steps) or grad_accum_steps < 1:
    raise ValueError(f"grad_accum_steps must be an integer >= 1, got {grad_accum_steps!r}.")
  if clip_grad_norm is not None and not clip_grad_norm > 0:
    raise ValueError(f"clip_grad_norm must be > 0 or None, got {clip_grad_norm!r}.")
  if not weight_decay >= 0:
    raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}.")


def lr_schedule(total_steps: int, lr: float, lr_start: float, lr_end: float,
                warmup_fraction: float) -> optax.Schedule:
  """Linear warmup then cosine decay, exactly `total_steps` optimizer steps long.

  See docs/method.md, "Schedule".

  With W = int(warmup_fraction * total_steps) warmup steps and C = total_steps - W cosine steps:
    t < W (warmup, the reference's inclusive linspace(lr_start, lr, W)):
      lr(t) = lr_start + (lr - lr_start) * t / (W - 1)        (W == 1: lr(0) = lr_start)
    W <= t < total_steps, i = t - W (cosine):
      lr(t) = lr_end + (lr - lr_end) * (1 + cos(pi * i / (C - 1))) / 2   (C == 1: lr(t) = lr)
  so step 0 is lr_start, step W - 1 is lr, step W is lr again (the cosine's start) and the last step
  total_steps - 1 is lr_end. The reference divides by C instead of C - 1 and builds one epoch too
  many steps, so it never reaches lr_end. Steps past the end stay at the last value.
  """
  if not _is_int(total_steps) or total_steps < 1:
    raise ValueError(f"lr_schedule: total_steps must be an integer >= 1, got {total_steps!r}.")
  check_hyperparameters(lr=lr, lr_start=lr_start, lr_end=lr_end, warmup_fraction=warmup_fraction)
  total_steps = int(total_steps)
  warmup = int(warmup_fraction * total_steps)  # int() like the reference, not round()
  cosine = total_steps - warmup
  warmup_denominator = max(warmup - 1, 1)
  cosine_denominator = max(cosine - 1, 1)

  def schedule(step):
    t = jnp.minimum(jnp.asarray(step, jnp.float32), total_steps - 1)
    warm = lr_start + (lr - lr_start) * t / warmup_denominator
    i = jnp.maximum(t - warmup, 0.0)
    cos = lr_end + (lr - lr_end) * 0.5 * (1.0 + jnp.cos(math.pi * i / cosine_denominator))
    if cosine == 1:  # a one-step decay cannot decay: that step runs at the peak
      cos = jnp.full_like(t, lr)
    return jnp.where(t < warmup, warm, cos)

  return schedule


# ---------------------------------------------------------------------------------------------------
# Parameter paths, freezing and weight-decay masks.


def _key_name(key) -> str:
  for attribute in ("key", "name", "idx"):
    if hasattr(key, attribute):
      return str(getattr(key, attribute))
  return str(key)


def param_path(key_path) -> str:
  """'/'-joined names of a jax key path, e.g. 'visual/transformer/resblocks_0/ln_1/scale'."""
  return "/".join(_key_name(k) for k in key_path)


def param_paths(params) -> list[str]:
  return [param_path(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]


def _compile_patterns(freeze: Sequence[str]) -> list[re.Pattern]:
  if isinstance(freeze, str):
    freeze = [freeze]  # a lone string is a common config mistake; treat it as one pattern
  compiled = []
  for pattern in freeze:
    try:
      compiled.append(re.compile(pattern))
    except re.error as error:
      raise ValueError(f"freeze pattern {pattern!r} is not a valid regular expression: {error}. "
                       "Patterns match '/'-joined parameter paths such as 'visual/conv1/kernel'."
                       ) from None
  return compiled


def _is_frozen(path: str, patterns: Sequence[re.Pattern]) -> bool:
  return any(p.search(path) for p in patterns)


def trainable_mask(params, freeze: Sequence[str] = ()):
  """Pytree of bools: False for parameters whose path matches any regex in `freeze` (re.search).

  Every pattern must match at least one parameter, so a typo cannot silently train a tower that the
  config meant to freeze.
  """
  patterns = _compile_patterns(freeze)
  paths = param_paths(params)
  for pattern in patterns:
    if not any(pattern.search(path) for path in paths):
      example = paths[0] if paths else "(no parameters)"
      raise ValueError(f"freeze pattern {pattern.pattern!r} matches no parameter; paths look like "
                       f"{example!r} (e.g. '^visual/' freezes the vision tower).")
  return jax.tree_util.tree_map_with_path(
      lambda path, _: not _is_frozen(param_path(path), patterns), params)


def _decays(path: str, leaf) -> bool:
  return jnp.ndim(leaf) >= 2 and not any(s in path for s in NO_DECAY_SUBSTRINGS)


def weight_decay_mask(params, freeze: Sequence[str] = ()):
  """Pytree of bools: True only for trainable params with ndim >= 2 and no 'bias'/'ln'/'bn' in the path.

  So biases, LayerNorm scales, class_embedding, logit_scale and every frozen parameter get no decay,
  while token_embedding and the positional embeddings (2-d) do, like the reference (docs/method.md,
  "Freezing and optimizer").
  Works on any sub-tree whose leaves keep their full paths (e.g. the trainable half from
  `split_trainable`, or optax's masked trees).
  """
  patterns = _compile_patterns(freeze)

  def decays(path, leaf):
    name = param_path(path)
    return _decays(name, leaf) and not _is_frozen(name, patterns)

  return jax.tree_util.tree_map_with_path(decays, params)


def split_trainable(params, mask):
  """Split a nested dict of params into (trainable, frozen) nested dicts by a bool mask tree.

  Both halves keep the original paths and drop empty sub-dicts, so `merge(trainable, frozen)`
  rebuilds `params`, and the train step can differentiate only `trainable` (the frozen tower then
  costs no backward pass and no optimizer state).
  """
  if not isinstance(params, Mapping):
    raise TypeError(f"split_trainable needs nested dicts of parameters, got {type(params).__name__}.")
  trainable, frozen = {}, {}
  for name, value in params.items():
    flag = mask[name]
    if isinstance(value, Mapping):
      sub_trainable, sub_frozen = split_trainable(value, flag)
      if sub_trainable:
        trainable[name] = sub_trainable
      if sub_frozen:
        frozen[name] = sub_frozen
    elif bool(flag):
      trainable[name] = value
    else:
      frozen[name] = value
  return trainable, frozen


def merge(trainable, frozen):
  """Inverse of `split_trainable`: one nested dict holding the leaves of both halves."""
  merged = dict(trainable)
  for name, value in frozen.items():
    if name not in merged:
      merged[name] = value
    elif isinstance(value, Mapping) and isinstance(merged[name], Mapping):
      merged[name] = merge(merged[name], value)
    else:
      raise ValueError(f"merge: parameter {name!r} is in both the trainable and the frozen half.")
  return merged


# ---------------------------------------------------------------------------------------------------
# The optimizer.


def make_optimizer(params, *, total_steps: int, lr: float, lr_start: float, lr_end: float,
                   warmup_fraction: float, weight_decay: float = 0.1, b1: float = 0.9,
                   b2: float = 0.98, eps: float = 1e-8, freeze: Sequence[str] = (),
                   clip_grad_norm: float | None = None) -> optax.GradientTransformation:
  """AdamW (torch semantics) with the warmup + cosine schedule, on the trainable parameters only.

  `params` is the full parameter tree; it is used to check the config (freeze patterns that match
  nothing, everything frozen). The returned transformation can be used in either of two ways:
    - on the trainable half from `split_trainable(params, trainable_mask(params, freeze))`
      (recommended: the frozen half is then never differentiated), or
    - on the full tree: frozen leaves get zero updates and no optimizer state (optax.partition
      masks them out of AdamW's moments).
  Labels and decay masks are computed from parameter paths, so both trees give the same update.

  `total_steps` counts optimizer updates (gradient accumulation happens inside the train step, so
  every call is one update). `clip_grad_norm` (None = off, like the reference) clips the
  gradient's global norm before AdamW.
  """
  check_hyperparameters(lr=lr, lr_start=lr_start, lr_end=lr_end, warmup_fraction=warmup_fraction,
                        weight_decay=weight_decay, clip_grad_norm=clip_grad_norm)
  patterns = _compile_patterns(freeze)
  mask = trainable_mask(params, freeze)
  if not any(jax.tree_util.tree_leaves(mask)):
    raise ValueError(f"freeze={[p.pattern for p in patterns]!r} freezes every parameter; nothing "
                     "would train.")
  schedule = lr_schedule(total_steps, lr, lr_start, lr_end, warmup_fraction)

  adamw = optax.adamw(learning_rate=schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay,
                      mask=weight_decay_mask)
  inner = adamw if clip_grad_norm is None else optax.chain(
      optax.clip_by_global_norm(clip_grad_norm), adamw)

  def labels(tree):
    return jax.tree_util.tree_map_with_path(
        lambda path, _: "frozen" if _is_frozen(param_path(path), patterns) else "trainable", tree)

  return optax.partition({"trainable": inner, "frozen": optax.set_to_zero()}, labels)


def clamp_logit_scale(params, max_value: float = math.log(100.0)):
  """Return params with the top-level 'logit_scale' leaf clipped to [0, max_value].

  See docs/method.md, "Logit scale".

  Pure; works on the full tree or either half of `split_trainable` (a tree without logit_scale,
  e.g. when it is frozen, comes back unchanged).
  """
  def clamp(path, leaf):
    if param_path(path) == LOGIT_SCALE_PATH:
      return jnp.clip(leaf, 0.0, max_value).astype(leaf.dtype)
    return leaf

  return jax.tree_util.tree_map_with_path(clamp, params)


def count_params(tree: Any) -> int:
  """Number of scalars in a pytree (for logs: trainable vs frozen sizes)."""
  return sum(int(jnp.size(x)) for x in jax.tree_util.tree_leaves(tree))
