"""Train state and the jitted update step (one function per step kind of modes.STEP_KINDS).

A batch goes: texts (B, K, L) -> one batched encode_text call over all K*B captions (K = P
positives + 1 negative for CLIC, 1 for CLIP) -> L2-normalize -> loss over the global batch (the
reference's multi-GPU loss; docs/method.md, "Embeddings and the global batch") -> gradient w.r.t.
the trainable half of the parameters only; with gradient accumulation the same gradient, from k
micro-batches at a time (exact: the feature cache below). The frozen half (the vision tower by
default) is a constant of the differentiated function, so XLA runs no backward pass through it and
the optimizer keeps no state for it.
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


def _image_embeddings(model, params, images, image_norm):
  """Normalized image embeddings (B, D); uint8 images are normalized here first (image_norm)."""
  if image_norm is not None:
    scale, offset = (jnp.asarray(v, jnp.float32) for v in image_norm)
    images = images.astype(jnp.float32) * scale + offset
  img = model.apply({"params": params}, images, method="encode_image")
  return losses.l2_normalize(img.astype(jnp.float32))


def _text_embeddings(model, params, texts):
  """Normalized text embeddings (K, B, D) of texts (B, K, L).

  The K caption sets go through the text tower as one batched call of K*B sequences: the fastest
  on GPU and, with the CPU's scanned layers, on CPU too (benchmarks/RESULTS.md measures it against
  one call per set, benchmarks/text_calls.py).
  """
  b, k, length = texts.shape
  flat = jnp.swapaxes(texts, 0, 1).reshape(k * b, length)  # [p1 block | p2 block | ... | neg]
  txt = model.apply({"params": params}, flat, method="encode_text").reshape(k, b, -1)
  return losses.l2_normalize(txt.astype(jnp.float32))


# ------------------------------------------------------------------------------------------------
# Exact gradient accumulation (the feature cache). A contrastive loss over B samples is not a sum of
# per-sample terms: every sample is every other's negative, so averaging the gradients of k losses
# over B/k samples each optimizes a different objective. What does hold is that each embedding
# depends on its own sample only. So: embed the k micro-batches without gradients, compute the loss
# and its gradient with respect to the embeddings on the whole batch, then run each micro-batch
# through the towers again and backpropagate that slice of the embedding gradient (a vector-Jacobian
# product). The sum over micro-batches is the full batch's gradient (chain rule), while only one
# micro-batch's activations are alive at a time. A frozen tower's embeddings come from the first
# pass only: it is never run twice.


def split_micro_batches(x, k: int):
  """(B, ...) -> (k, B/k, ...). Micro-batch i takes rows i, i+k, i+2k, ...: with the batch laid
  out over devices in contiguous blocks of B/devices rows (a multiple of k), every micro-batch
  then holds an equal share on every device, and splitting moves no data between them."""
  return jnp.swapaxes(x.reshape((x.shape[0] // k, k) + x.shape[1:]), 0, 1)


def join_micro_batches(x, axis: int = 0):
  """The inverse of split_micro_batches for arrays whose batch axis is `axis` of each micro-batch:
  (k, ..., B/k, ...) -> (..., B, ...), rows back in the batch's order."""
  x = jnp.moveaxis(x, 0, axis + 1)                 # (..., B/k, k, ...)
  return x.reshape(x.shape[:axis] + (-1,) + x.shape[axis + 2:])


def _accumulated_gradients(embed_images, embed_texts, loss_of, trainable, frozen, batch,
                           k: int, micro_sharding=None):
  """(loss, metrics), gradients w.r.t. `trainable` of loss_of over the whole batch, k micro-batches
  at a time (see above). The towers trained are those with a parameter in `trainable`."""
  inputs = {"images": batch["images"], "texts": batch["texts"]}
  micro = jax.tree.map(lambda x: split_micro_batches(x, k), inputs)
  if micro_sharding is not None:
    micro = jax.lax.with_sharding_constraint(micro, micro_sharding)
  params = opt_lib.merge(trainable, frozen)

  def embed_both(micro_batch):
    return (embed_images(params, micro_batch["images"]),
            embed_texts(params, micro_batch["texts"]))

  img_k, txt_k = jax.lax.map(embed_both, micro)            # (k, B/k, D), (k, K, B/k, D)
  img, txt = join_micro_batches(img_k), join_micro_batches(txt_k, axis=1)

  (loss, metrics), (d_img, d_txt, grads) = jax.value_and_grad(
      loss_of, argnums=(0, 1, 2), has_aux=True)(img, txt, trainable)   # grads: the logit scale's

  towers = {name for name in trainable if name != "logit_scale"}
  vision_trains, text_trains = "visual" in towers, bool(towers - {"visual"})
  cotangents = (split_micro_batches(d_img, k), jnp.swapaxes(split_micro_batches(
      jnp.swapaxes(d_txt, 0, 1), k), 1, 2))               # (k, B/k, D), (k, K, B/k, D)

  def add_micro_gradient(total, xs):
    micro_batch, d_img_i, d_txt_i = xs

    def trained_embeddings(t):
      p = opt_lib.merge(t, frozen)
      return (embed_images(p, micro_batch["images"]) if vision_trains else None,
              embed_texts(p, micro_batch["texts"]) if text_trains else None)

    _, vjp = jax.vjp(trained_embeddings, trainable)
    (g,) = vjp((d_img_i if vision_trains else None, d_txt_i if text_trains else None))
    return jax.tree.map(jnp.add, total, g), None

  if vision_trains or text_trains:
    grads, _ = jax.lax.scan(add_micro_gradient, grads, (micro,) + cotangents)
  return (loss, metrics), grads


def loss_and_gradients(model, kind: str | modes.StepKind, loss_options,
                       image_norm: tuple[Any, Any] | None = None, micro_batches: int = 1,
                       micro_sharding=None) -> Callable:
  """(trainable, frozen, batch) -> ((loss, metrics), gradients w.r.t. trainable) for one step kind.

  `kind` is a row of modes.STEP_KINDS (or its name): its loss, with the kind's fixed options
  applied over `loss_options` (the run spec's config.LossSpec). `image_norm` = (scale, offset) per
  channel normalizes uint8 images on the device; None expects normalized floats.
  `micro_batches` = k > 1 gives the same numbers through k micro-batches of B/k samples (exact
  gradient accumulation, above); `micro_sharding` places the (k, B/k, ...) split of the batch
  (mesh.micro_batch_sharding).
  A batch of a kind with negatives may carry "negative_valid" (B,) (bool, or numbers with
  nonzero = valid); the invalid negatives are masked unless loss_options.mask_invalid_negatives
  is False.
  """
  kind = modes.step_kind(kind)
  options = dataclasses.replace(loss_options, **kind.fixed)
  use_mask = kind.has_negative and options.mask_invalid_negatives
  embed_images = lambda params, images: _image_embeddings(model, params, images, image_norm)
  embed_texts = lambda params, texts: _text_embeddings(model, params, texts)

  def loss_of_embeddings(img, txt, trainable, frozen, batch):
    scale = opt_lib.merge(trainable, frozen)["logit_scale"].astype(jnp.float32)
    neg_valid = batch.get("negative_valid") if use_mask else None
    return kind.loss(img, txt, jnp.exp(scale), neg_valid, options)

  def loss_fn(trainable, frozen, batch):
    params = opt_lib.merge(trainable, frozen)
    img, txt = embed_images(params, batch["images"]), embed_texts(params, batch["texts"])
    return loss_of_embeddings(img, txt, trainable, frozen, batch)

  def gradients(trainable, frozen, batch):
    if micro_batches == 1:
      return jax.value_and_grad(loss_fn, has_aux=True)(trainable, frozen, batch)
    loss_of = lambda img, txt, t: loss_of_embeddings(img, txt, t, frozen, batch)
    return _accumulated_gradients(embed_images, embed_texts, loss_of, trainable, frozen, batch,
                                  micro_batches, micro_sharding)

  return gradients


def make_train_step(model, tx: optax.GradientTransformation, kind: str | modes.StepKind,
                    loss_options, clamp_logit_scale: bool = True,
                    schedule: Callable | None = None,
                    image_norm: tuple[Any, Any] | None = None,
                    micro_batches: int = 1, micro_sharding=None):
  """The pure update function (state, batch) -> (state, metrics) for one step kind: the gradients
  of `loss_and_gradients` (same arguments) applied by `tx`.

  A step whose loss or gradient is not finite leaves the state unchanged and reports
  `nonfinite=1`; the loop then stops the run, so no checkpoint ever holds NaNs.
  """
  gradients = loss_and_gradients(model, kind, loss_options, image_norm, micro_batches,
                                 micro_sharding)

  def step(state: TrainState, batch):
    (loss, metrics), grads = gradients(state.trainable, state.frozen, batch)
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
