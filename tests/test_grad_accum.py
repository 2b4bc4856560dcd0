"""Exact gradient accumulation: k micro-batches give the update of one step at the full batch.

Every case runs on the 8 simulated devices, sharded as the trainer shards: the batch of 32 over all
devices, so each of the 4 micro-batches holds one sample per device.
"""
import jax
import numpy as np
import optax
import pytest

from clic_jax import models
from clic_jax.train import config as config_lib
from clic_jax.train import mesh as mesh_lib
from clic_jax.train import optimizer as opt_lib
from clic_jax.train import step as step_lib

BATCH, K = 32, 4
LR = 1e-3
# Adam's first update is lr * g / (|g| + eps). Gradients whose true value is 0 (the attention key
# bias is softmax-invariant) come out as rounding noise of ~1e-8 whose sign depends on the summation
# order, which the default eps (1e-8) would turn into updates of up to +-lr. With eps = 1e-6 such
# noise moves a parameter by a few percent of lr at most (PARAM_ATOL), while a gradient of the wrong
# sign or size moves it by up to 2 * lr (the naive accumulation below does, in many places).
EPS = 1e-6
PARAM_ATOL = 0.1 * LR
FROZEN_VISION, NOTHING_FROZEN = ("^visual/",), ()


def _batch(kind: str, seed: int = 0) -> dict:
  """A CLIC batch has 4 positives + 1 negative per image, NegCLIP 1 + 1, CLIP 1."""
  rng = np.random.default_rng(seed)
  texts_per_image = {"clip": 1, "negclip": 2, "clic": 5}[kind]
  tokens = np.zeros((BATCH, texts_per_image, 16), np.int32)
  for row in tokens.reshape(-1, 16):
    n = rng.integers(3, 15)
    row[0], row[1:n], row[n] = 49406, rng.integers(1, 49000, n - 1), 49407
  batch = {"images": rng.standard_normal((BATCH, 32, 32, 3)).astype(np.float32), "texts": tokens}
  if kind != "clip":
    batch["negative_valid"] = rng.random(BATCH) > 0.2       # some masked negatives too
  return batch


@pytest.fixture(scope="module")
def tiny():
  return models.create_model("tiny", seed=3)


def _adamw(params, freeze):
  return opt_lib.make_optimizer(params, total_steps=10, lr=LR, lr_start=LR, lr_end=LR,
                                warmup_fraction=0.0, eps=EPS, freeze=freeze)


_COMPILED = {}    # one jitted function per case, reused across tests (compiling is the slow part)


def _jitted(what, model, mesh, tx, kind, micro_batches):
  key = (what, kind, micro_batches, tuple(mesh.shape.items()), id(tx))
  if key not in _COMPILED:
    options = dict(micro_batches=micro_batches,
                   micro_sharding=mesh_lib.micro_batch_sharding(mesh))
    fn = (step_lib.make_train_step(model, tx, kind, config_lib.loss_spec(), **options)
          if what == "update" else
          step_lib.loss_and_gradients(model, kind, config_lib.loss_spec(), **options))
    _COMPILED[key] = jax.jit(fn)
  return _COMPILED[key]


_OPTIMIZERS = {}


def _state(mesh, params, freeze, batch):
  if freeze not in _OPTIMIZERS:
    _OPTIMIZERS[freeze] = _adamw(params, freeze)
  tx = _OPTIMIZERS[freeze]
  state = jax.jit(lambda p: step_lib.create_state(p, tx, freeze))(params)
  state = jax.device_put(state, mesh_lib.tree_shardings(mesh, state))
  return tx, state, mesh_lib.global_batch(mesh, batch)


def _update(mesh, model, params, freeze, kind, batch, micro_batches):
  tx, state, device_batch = _state(mesh, params, freeze, batch)
  new_state, metrics = _jitted("update", model, mesh, tx, kind, micro_batches)(state, device_batch)
  return jax.device_get(new_state.trainable), jax.device_get(metrics)


def _gradients(mesh, model, params, freeze, kind, batch, micro_batches):
  tx, state, device_batch = _state(mesh, params, freeze, batch)
  fn = _jitted("gradients", model, mesh, None, kind, micro_batches)
  (loss, _), grads = fn(state.trainable, state.frozen, device_batch)
  return float(loss), jax.device_get(grads)


def _assert_trees_close(got, want, rtol, atol_of):
  for (path, g), w in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(g, w, rtol=rtol, atol=atol_of(w), err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("freeze", [FROZEN_VISION, NOTHING_FROZEN], ids=["vision_frozen",
                                                                         "all_trainable"])
@pytest.mark.parametrize("kind", ["clip", "clic", "negclip"])
def test_four_micro_batches_make_the_full_batch_update(tiny, kind, freeze):
  """Parameters after one AdamW update, the loss and the gradient norm agree."""
  model, params = tiny
  mesh = mesh_lib.make_mesh(1)
  batch = _batch(kind)
  (full_params, full), (accum_params, accum) = (
      _update(mesh, model, params, freeze, kind, batch, k) for k in (1, K))
  assert np.isclose(accum["loss"], full["loss"], rtol=1e-5)
  assert np.isclose(accum["grad_norm"], full["grad_norm"], rtol=1e-4)
  _assert_trees_close(accum_params, full_params, rtol=0, atol_of=lambda w: PARAM_ATOL)   # see EPS
  assert ("visual" in full_params) == (freeze == NOTHING_FROZEN)


def test_accumulated_gradient_equals_the_full_batch_gradient(tiny):
  """The gradient itself, leaf by leaf, both towers trained (AdamW's first update is close to
  lr * sign(g), so the parameters alone would hide a gradient of the wrong size)."""
  model, params = tiny
  mesh = mesh_lib.make_mesh(1)
  batch = _batch("clic")
  (full_loss, full_grads), (accum_loss, accum_grads) = (
      _gradients(mesh, model, params, NOTHING_FROZEN, "clic", batch, k) for k in (1, K))
  assert np.isclose(accum_loss, full_loss, rtol=1e-5)
  _assert_trees_close(accum_grads, full_grads, rtol=1e-4,
                      atol_of=lambda w: 1e-4 * float(np.max(np.abs(w))) + 1e-9)


def test_averaging_micro_batch_losses_is_not_the_full_batch_update(tiny):
  """What the cache is for: the mean of the 4 micro-batch losses' gradients (each micro-batch its
  own contrastive problem over 8 samples) misses the full-batch gradient, and the AdamW update from
  it misses the full-batch update, by far more than the tolerances the accumulated ones meet."""
  model, params = tiny
  mesh = mesh_lib.make_mesh(1)
  batch = _batch("clic")
  full_loss, full_grads = _gradients(mesh, model, params, NOTHING_FROZEN, "clic", batch, 1)
  # Micro-batch i = rows i, i+4, ... (step_lib.split_micro_batches), each on the 8 devices.
  micro = [jax.tree.map(lambda x: np.asarray(x)[i::K], batch) for i in range(K)]
  outcomes = [_gradients(mesh, model, params, NOTHING_FROZEN, "clic", m, 1) for m in micro]
  naive_loss = np.mean([loss for loss, _ in outcomes])
  naive_grads = jax.tree.map(lambda *g: np.mean(g, axis=0), *[g for _, g in outcomes])
  assert abs(naive_loss - full_loss) > 0.05 * abs(full_loss)
  difference = optax.global_norm(jax.tree.map(np.subtract, naive_grads, full_grads))
  assert float(difference) > 0.05 * float(optax.global_norm(full_grads))
  tx = _adamw(params, NOTHING_FROZEN)
  after = {name: optax.apply_updates(params, tx.update(g, tx.init(params), params)[0])
           for name, g in (("naive", naive_grads), ("full", full_grads))}
  off = [np.abs(a - b) > PARAM_ATOL for a, b in zip(jax.tree.leaves(after["naive"]),
                                                     jax.tree.leaves(after["full"]))]
  assert sum(int(o.sum()) for o in off) > 1000


def test_fsdp_mesh_accumulates_exactly(tiny):
  """Parameters sharded over a 4 x 2 (data, fsdp) mesh: the same full-batch update."""
  model, params = tiny
  batch = _batch("clic", seed=1)
  (full_params, full), (accum_params, accum) = (
      _update(mesh_lib.make_mesh(fsdp), model, params, NOTHING_FROZEN, "clic", batch, k)
      for fsdp, k in ((1, 1), (2, K)))
  assert np.isclose(accum["loss"], full["loss"], rtol=1e-5)
  assert np.isclose(accum["grad_norm"], full["grad_norm"], rtol=1e-4)
  _assert_trees_close(accum_params, full_params, rtol=0, atol_of=lambda w: PARAM_ATOL)


def test_micro_batch_split_round_trips():
  x = np.arange(32 * 3).reshape(32, 3)
  micro = step_lib.split_micro_batches(x, 4)
  assert micro.shape == (4, 8, 3)
  np.testing.assert_array_equal(micro[1], x[1::4])
  np.testing.assert_array_equal(step_lib.join_micro_batches(micro), x)
  sets = np.arange(5 * 32 * 2).reshape(5, 32, 2)                    # (K, B, D) text embeddings
  split = np.stack([sets[:, i::4] for i in range(4)])              # (k, K, B/k, D)
  np.testing.assert_array_equal(step_lib.join_micro_batches(split, axis=1), sets)

