"""Train state and the jitted update step (one function per step kind of modes.STEP_KINDS).

A batch goes: texts (B, K, L) -> one batched encode_text call over all K*B captions (K = P
positives + 1 negative for CLIC, 1 for CLIP) -> L2-normalize -> loss over the global batch (the
reference's multi-GPU loss; docs/method.md, "Embeddings and the global batch") -> gradient w.r.t.
the trainable half of the parameters only. The frozen half (the vision tower by default) is a
constant of the differentiated function, so XLA runs no backward pass through it and the optimizer
keeps no state for it.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax

from clic_jax import losses, modes
from clic_jax.train import optimizer as opt_lib


@flax.struct.dataclass
class TrainState:
  step: jax.Array            # int32 scalar: optimizer updates done
  trainable: Any             # parameters that receive gradients
  frozen: Any                # parameters that never change (same tree shape, disjoint leaves)
  opt_state: Any

  @property
  def params(self):
    return opt_lib.merge(self.trainable, self.frozen)


def create_state(params, tx: optax.GradientTransformation, freeze) -> TrainState:
  trainable, frozen = opt_lib.split_trainable(params, opt_lib.trainable_mask(params, freeze))
  return TrainState(step=jnp.zeros((), jnp.int32), trainable=trainable, frozen=frozen,
                    opt_state=tx.init(trainable))


def _embed(model, params, batch):
  """Normalized image (B, D) and text (K, B, D) embeddings.

  The K caption sets go through the text tower as one batched call of K*B sequences: the fastest
  on GPU and, with the CPU's scanned layers, on CPU too (benchmarks/RESULTS.md measures it against
  one call per set, benchmarks/text_calls.py).
  """
  texts = batch["texts"]
  b, k, length = texts.shape
  img = model.apply({"params": params}, batch["images"], method="encode_image")
  flat = jnp.swapaxes(texts, 0, 1).reshape(k * b, length)  # [p1 block | p2 block | ... | neg]
  txt = model.apply({"params": params}, flat, method="encode_text").reshape(k, b, -1)
  img = losses.l2_normalize(img.astype(jnp.float32))
  txt = losses.l2_normalize(txt.astype(jnp.float32))
  return img, txt


def make_train_step(model, tx: optax.GradientTransformation, kind: str | modes.StepKind,
                    loss_options, clamp_logit_scale: bool = True,
                    schedule: Callable | None = None,
                    image_norm: tuple[Any, Any] | None = None):
  """The pure update function (state, batch) -> (state, metrics) for one step kind.

  `kind` is a row of modes.STEP_KINDS (or its name): its loss, with the kind's fixed options
  applied over `loss_options` (the run spec's config.LossSpec).
  `image_norm` = (scale, offset) per channel normalizes uint8 images on the device (the pipeline
  then ships 4x fewer bytes and skips the float conversion); None expects normalized floats.
  A step whose loss or gradient is not finite leaves the state unchanged and reports
  `nonfinite=1`; the loop then stops the run, so no checkpoint ever holds NaNs.
  A batch of a kind with negatives may carry "negative_valid" (B,) (bool, or numbers with
  nonzero = valid); the invalid negatives are masked unless loss_options.mask_invalid_negatives
  is False.
  """
  kind = modes.step_kind(kind)
  options = dataclasses.replace(loss_options, **kind.fixed)
  use_mask = kind.has_negative and options.mask_invalid_negatives

  def loss_fn(trainable, frozen, batch):
    params = opt_lib.merge(trainable, frozen)
    if image_norm is not None:
      scale, offset = (jnp.asarray(v, jnp.float32) for v in image_norm)
      batch = dict(batch, images=batch["images"].astype(jnp.float32) * scale + offset)
    img, txt = _embed(model, params, batch)
    neg_valid = batch.get("negative_valid") if use_mask else None
    return kind.loss(img, txt, jnp.exp(params["logit_scale"].astype(jnp.float32)), neg_valid,
                     options)

  def step(state: TrainState, batch):
    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.trainable, state.frozen, batch)
    updates, opt_state = tx.update(grads, state.opt_state, state.trainable)
    trainable = optax.apply_updates(state.trainable, updates)
    if clamp_logit_scale:
      trainable = opt_lib.clamp_logit_scale(trainable)
    grad_norm = optax.global_norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    keep_if_finite = lambda n, o: jnp.where(finite, n, o)
    new = TrainState(step=state.step + 1,
                     trainable=jax.tree.map(keep_if_finite, trainable, state.trainable),
                     frozen=state.frozen,
                     opt_state=jax.tree.map(keep_if_finite, opt_state, state.opt_state))
    params = opt_lib.merge(new.trainable, new.frozen)
    metrics = dict(metrics, loss=loss, grad_norm=grad_norm,
                   logit_scale=jnp.exp(params["logit_scale"]),
                   nonfinite=(~finite).astype(jnp.int32))
    if schedule is not None:
      metrics["lr"] = schedule(state.step)
    return new, metrics

  return step
