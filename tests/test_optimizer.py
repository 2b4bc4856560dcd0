"""Schedule, freezing and decay masks, AdamW against a NumPy torch-style AdamW, clamp, step pattern."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from clic_jax.models import create_model
from clic_jax.train import optimizer as opt


@pytest.fixture(scope="module")
def tiny_params():
  _, params = create_model("tiny", seed=0)
  return params


# --- schedule -------------------------------------------------------------------------------------


def _expected_lr(step, total, lr, lr_start, lr_end, fraction):
  """The schedule formula (docs/method.md, "Schedule"), written out independently."""
  warmup = int(fraction * total)
  if step < warmup:
    return float(np.linspace(lr_start, lr, warmup)[step])
  cosine = total - warmup
  i = step - warmup
  return lr_end + 0.5 * (lr - lr_end) * (1 + math.cos(math.pi * i / (cosine - 1)))


def test_schedule_start_warmup_middle_end():
  total, lr, lr_start, lr_end, fraction = 1250, 1e-6, 1e-7, 1e-8, 0.2
  schedule = opt.lr_schedule(total, lr, lr_start, lr_end, fraction)
  warmup = 250
  checks = {0: lr_start, warmup - 1: lr, warmup: lr, total - 1: lr_end}
  for step, value in checks.items():
    np.testing.assert_allclose(float(schedule(step)), value, rtol=1e-5, err_msg=f"step {step}")
  middle_of_cosine = warmup + (total - warmup) // 2
  for step in (1, 100, middle_of_cosine, 700, 1100, total - 2):
    want = _expected_lr(step, total, lr, lr_start, lr_end, fraction)
    np.testing.assert_allclose(float(schedule(step)), want, rtol=1e-5, err_msg=f"step {step}")
  # Exactly halfway through an odd-length cosine the value is the midpoint of lr and lr_end.
  odd = opt.lr_schedule(11, 2.0, 0.0, 0.0, 0.0)
  np.testing.assert_allclose(float(odd(5)), 1.0, rtol=1e-6)
  # Monotone warmup and decay, and steps past the end stay at lr_end.
  values = np.asarray(jax.vmap(schedule)(jnp.arange(total)))
  assert np.all(np.diff(values[:warmup]) > 0) and np.all(np.diff(values[warmup:]) <= 0)
  np.testing.assert_allclose(float(schedule(total + 10)), lr_end, rtol=1e-5)


def test_schedule_edge_cases():
  no_warmup = opt.lr_schedule(10, 1.0, 0.1, 0.01, 0.0)
  assert float(no_warmup(0)) == pytest.approx(1.0)
  assert float(no_warmup(9)) == pytest.approx(0.01)
  assert float(opt.lr_schedule(1, 1.0, 0.1, 0.01, 0.0)(0)) == pytest.approx(1.0)
  assert float(opt.lr_schedule(1, 1.0, 0.1, 0.01, 1.0)(0)) == pytest.approx(0.1)
  one_warmup = opt.lr_schedule(4, 1.0, 0.1, 0.0, 0.25)  # W = 1: linspace(0.1, 1, 1) = [0.1]
  assert [round(float(one_warmup(t)), 6) for t in range(4)] == [0.1, 1.0, 0.5, 0.0]
  all_warmup = opt.lr_schedule(3, 1.0, 0.0, 0.5, 1.0)
  assert [round(float(all_warmup(t)), 6) for t in range(3)] == [0.0, 0.5, 1.0]
  with pytest.raises(ValueError, match="total_steps"):
    opt.lr_schedule(0, 1.0, 0.1, 0.0, 0.1)
  with pytest.raises(ValueError, match="warmup_fraction"):
    opt.lr_schedule(10, 1.0, 0.1, 0.0, 1.5)


# --- masks ----------------------------------------------------------------------------------------


def _flat(tree):
  return {opt.param_path(p): v for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_masks_on_tiny_model(tiny_params):
  trainable = _flat(opt.trainable_mask(tiny_params, ["^visual/"]))
  decay = _flat(opt.weight_decay_mask(tiny_params, ["^visual/"]))
  assert all(not v for k, v in trainable.items() if k.startswith("visual/"))
  assert all(v for k, v in trainable.items() if not k.startswith("visual/"))
  assert trainable["logit_scale"] and trainable["token_embedding/embedding"]
  # Decay: trainable matrices only.
  assert decay["token_embedding/embedding"] and decay["positional_embedding"]
  assert decay["text_projection"] and decay["transformer/resblocks_0/attn/in_proj/kernel"]
  for name in ("logit_scale", "ln_final/scale", "ln_final/bias", "transformer/resblocks_0/ln_1/scale",
               "transformer/resblocks_0/mlp/c_fc/bias", "visual/proj", "visual/conv1/kernel"):
    assert not decay[name], name
  # Without freezing, vision matrices decay but vision LayerNorm / class_embedding do not.
  decay_all = _flat(opt.weight_decay_mask(tiny_params))
  assert decay_all["visual/proj"] and decay_all["visual/conv1/kernel"]
  assert not decay_all["visual/class_embedding"] and not decay_all["visual/ln_pre/scale"]


def test_bad_freeze_patterns(tiny_params):
  with pytest.raises(ValueError, match="matches no parameter"):
    opt.trainable_mask(tiny_params, ["^visaul/"])
  with pytest.raises(ValueError, match="not a valid regular expression"):
    opt.trainable_mask(tiny_params, ["visual/("])
  with pytest.raises(ValueError, match="nothing would train"):
    opt.make_optimizer(tiny_params, total_steps=3, lr=1.0, lr_start=1.0, lr_end=1.0,
                       warmup_fraction=0.0, freeze=[".*"])


def test_split_and_merge_round_trip(tiny_params):
  trainable, frozen = opt.split_trainable(tiny_params, opt.trainable_mask(tiny_params, ["^visual/"]))
  assert set(frozen) == {"visual"} and "visual" not in trainable and "logit_scale" in trainable
  merged = opt.merge(trainable, frozen)
  assert jax.tree_util.tree_structure(merged) == jax.tree_util.tree_structure(tiny_params)
  assert all(a is b for a, b in zip(jax.tree_util.tree_leaves(merged),
                                    jax.tree_util.tree_leaves(tiny_params)))
  with pytest.raises(ValueError, match="both"):
    opt.merge(trainable, {"logit_scale": 1.0})


# --- AdamW ----------------------------------------------------------------------------------------


def _small_tree():
  rng = np.random.default_rng(0)
  return {
      "visual": {"proj": rng.standard_normal((3, 2)).astype(np.float32)},
      "transformer": {"dense": {"kernel": rng.standard_normal((3, 4)).astype(np.float32),
                                "bias": rng.standard_normal(4).astype(np.float32)}},
      "ln_final": {"scale": rng.standard_normal(4).astype(np.float32)},
      "token_embedding": {"embedding": rng.standard_normal((5, 3)).astype(np.float32)},
      "logit_scale": np.float32(4.0),
  }


HYPER = dict(total_steps=5, lr=1e-2, lr_start=1e-3, lr_end=1e-4, warmup_fraction=0.4,
             weight_decay=0.1, b1=0.9, b2=0.98, eps=1e-8)


def _numpy_adamw(params, grads_per_step, decay, trainable, *, lr_at, b1, b2, eps, weight_decay):
  """torch.optim.AdamW step by step, in float64, on the flat dict of trainable params."""
  p = {k: np.asarray(v, np.float64) for k, v in params.items()}
  m = {k: np.zeros_like(v) for k, v in p.items()}
  v2 = {k: np.zeros_like(v) for k, v in p.items()}
  history = []
  for t, grads in enumerate(grads_per_step, start=1):
    lr = lr_at(t - 1)
    for k in p:
      if not trainable[k]:
        continue
      g = np.asarray(grads[k], np.float64)
      if decay[k]:
        p[k] = p[k] * (1 - lr * weight_decay)  # decoupled decay, scaled by lr
      m[k] = b1 * m[k] + (1 - b1) * g
      v2[k] = b2 * v2[k] + (1 - b2) * g * g
      m_hat = m[k] / (1 - b1 ** t)
      v_hat = v2[k] / (1 - b2 ** t)
      p[k] = p[k] - lr * m_hat / (np.sqrt(v_hat) + eps)
    history.append({k: v.copy() for k, v in p.items()})
  return history


def _random_grads(params, steps, seed=1):
  rng = np.random.default_rng(seed)
  return [jax.tree_util.tree_map(lambda x: rng.standard_normal(np.shape(x)).astype(np.float32),
                                 params) for _ in range(steps)]


def _run_optax(tx, params, grads_per_step):
  state = tx.init(params)
  out = []
  for grads in grads_per_step:
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
    out.append(params)
  return out, state


def _adam_moment_leaves(state):
  found = []

  def visit(node):
    if isinstance(node, optax.ScaleByAdamState):
      found.extend(jax.tree_util.tree_leaves(node.mu) + jax.tree_util.tree_leaves(node.nu))
      return
    if isinstance(node, (tuple, list)):
      for child in node:
        visit(child)
    elif isinstance(node, dict):
      for child in node.values():
        visit(child)

  visit(state)
  return found


@pytest.mark.parametrize("on_trainable_half", [True, False])
def test_adamw_matches_torch_semantics_and_frozen_untouched(on_trainable_half):
  params = _small_tree()
  freeze = ["^visual/"]
  tx = opt.make_optimizer(params, freeze=freeze, **HYPER)
  grads = _random_grads(params, 3)
  mask = opt.trainable_mask(params, freeze)
  if on_trainable_half:
    trainable, frozen = opt.split_trainable(params, mask)
    halves = [opt.split_trainable(g, mask)[0] for g in grads]
    history, state = _run_optax(tx, trainable, halves)
    history = [opt.merge(h, frozen) for h in history]
  else:
    history, state = _run_optax(tx, params, grads)

  schedule = opt.lr_schedule(HYPER["total_steps"], HYPER["lr"], HYPER["lr_start"], HYPER["lr_end"],
                             HYPER["warmup_fraction"])
  want = _numpy_adamw(_flat(params), [_flat(g) for g in grads], _flat(opt.weight_decay_mask(params)),
                      _flat(mask), lr_at=lambda t: float(schedule(t)), b1=HYPER["b1"],
                      b2=HYPER["b2"], eps=HYPER["eps"], weight_decay=HYPER["weight_decay"])
  for step, (got, expected) in enumerate(zip(history, want)):
    got = _flat(got)
    for name, value in expected.items():
      np.testing.assert_allclose(np.asarray(got[name], np.float64), value, rtol=1e-5, atol=1e-7,
                                 err_msg=f"{name} after step {step + 1}")
  # Frozen parameters are bit-identical and hold no AdamW moments.
  np.testing.assert_array_equal(np.asarray(_flat(history[-1])["visual/proj"]), params["visual"]["proj"])
  assert not np.array_equal(np.asarray(_flat(history[-1])["logit_scale"]), params["logit_scale"])
  moments = _adam_moment_leaves(state)
  trainable_count = sum(jax.tree_util.tree_leaves(mask))
  assert len(moments) == 2 * trainable_count  # mu and nu, trainable leaves only
  assert all(np.shape(x) != (3, 2) for x in moments)  # no moment shaped like visual/proj


def test_clip_grad_norm_option():
  params = {"w": np.ones((2, 2), np.float32)}
  grads = {"w": np.full((2, 2), 3.0, np.float32)}  # global norm 6
  hyper = dict(HYPER, weight_decay=0.0, eps=1.0)  # large eps makes Adam sensitive to grad scale
  clipped = opt.make_optimizer(params, clip_grad_norm=0.6, **hyper)
  updates, _ = clipped.update(grads, clipped.init(params), params)
  lr0 = HYPER["lr_start"]
  np.testing.assert_allclose(np.asarray(updates["w"]), -lr0 * 0.3 / (0.3 + 1.0), rtol=1e-5)
  with pytest.raises(ValueError, match="clip_grad_norm"):
    opt.make_optimizer(params, clip_grad_norm=0.0, **hyper)
  with pytest.raises(ValueError, match="grad_accum_steps"):
    opt.check_hyperparameters(lr=1e-2, lr_start=1e-3, lr_end=1e-4, warmup_fraction=0.4,
                              grad_accum_steps=0)


# --- logit scale clamp and step pattern -----------------------------------------------------------


def test_clamp_logit_scale():
  params = {"logit_scale": jnp.asarray(5.0), "text_projection": jnp.full((2, 2), 7.0)}
  clamped = opt.clamp_logit_scale(params)
  assert float(clamped["logit_scale"]) == pytest.approx(math.log(100.0))
  np.testing.assert_array_equal(np.asarray(clamped["text_projection"]), 7.0)  # only logit_scale
  assert float(params["logit_scale"]) == 5.0  # pure
  assert float(opt.clamp_logit_scale({"logit_scale": jnp.asarray(-1.0)})["logit_scale"]) == 0.0
  assert float(opt.clamp_logit_scale({"logit_scale": jnp.asarray(3.0)})["logit_scale"]) == 3.0
  jitted = jax.jit(opt.clamp_logit_scale)(params)
  assert float(jitted["logit_scale"]) == pytest.approx(math.log(100.0))
  assert opt.clamp_logit_scale({"a": jnp.asarray(9.0)})["a"] == 9.0  # frozen logit_scale: no-op
