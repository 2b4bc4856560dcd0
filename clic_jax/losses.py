"""Contrastive losses of CLIP and CLIC, written over the global batch.

Every function here is pure, jit-friendly (no Python branching on array values) and does its math in
float32 whatever the dtype of its inputs, so a bf16 forward pass still gets fp32 logits and losses
(docs/method.md, "Precision").

Why the global batch: the reference averages each GPU's loss over its local anchors and DDP averages
the gradients, which is exactly the gradient of one loss over all W*B anchors (docs/method.md,
"Embeddings and the global batch"). Writing the loss on the global arrays lets XLA shard it however
the mesh says, and one device with global batch B gives the reference's multi-GPU number.

Notation: B images, D embedding dims, P positive caption sets [p1, p2, p3, p4, ...], s the logit
scale multiplier exp(logit_scale). All embeddings passed in are already L2-normalized.

Every loss returns `(loss, metrics)` where metrics is a dict of fp32 scalars with the same keys for
both losses (so CLIP and CLIC steps log the same columns):
  loss              the total that is differentiated
  contrastive_loss  (img_to_txt_loss + txt_to_img_loss) / 2, before its weight
  img_to_txt_loss   image -> text cross-entropy, averaged over positive sets
  txt_to_img_loss   text -> image cross-entropy, averaged over positive sets
  sneg_loss         the separate 2-way hard-negative loss, before its weight (0 when absent)
  uni_modal_loss    mean_b sum_d (p1 - p2)^2, before its weight (0 when not computed)
  accuracy          percent of anchors ranked correctly (docs/method.md, "Accuracy")
Each term is its own array, never an in-place alias of the total (the reference's logging bug;
docs/method.md, "Total loss").
`clic_loss` with negatives adds hard-negative diagnostics (`hard_negative_metric_names`):
  pos_over_neg/p{i}              fraction of samples j with <I_j, p_ij> > <I_j, n_j>
  pos_over_neg_wrong_image/p{i}  the same with another sample's image I_{(j+1) mod B}; a text-only
                                 shortcut (the positive beats the negative whatever the image) shows
                                 as this being as high as pos_over_neg for the same set
  negative_valid                 fraction of samples whose negative is valid (1 without a mask)
Both fractions count only samples with a valid negative when a mask is given.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# Similarity matmuls run at full fp32 precision: TPUs and GPUs otherwise round fp32 matmul inputs to
# bf16/tf32, and with s = 100 that error is visible in the loss.
_PRECISION = jax.lax.Precision.HIGHEST

# The keys every loss returns (CLIP and CLIC steps log these same columns).
METRIC_NAMES = ("loss", "contrastive_loss", "img_to_txt_loss", "txt_to_img_loss", "sneg_loss",
                "uni_modal_loss", "accuracy")


def hard_negative_metric_names(num_sets: int) -> tuple[str, ...]:
  """The extra keys of `clic_loss` with negatives, for P = num_sets positive sets."""
  return (tuple(f"pos_over_neg/p{i + 1}" for i in range(num_sets))
          + tuple(f"pos_over_neg_wrong_image/p{i + 1}" for i in range(num_sets))
          + ("negative_valid",))


def l2_normalize(x, eps: float = 1e-12, axis: int = -1):
  """x / max(||x||, eps) along `axis`, in float32 (torch.nn.functional.normalize semantics).

  Written with rsqrt(max(|x|^2, eps^2)) so the gradient stays finite for an all-zero row.
  """
  x = jnp.asarray(x, jnp.float32)
  sq_norm = jnp.sum(jnp.square(x), axis=axis, keepdims=True)
  return x * jax.lax.rsqrt(jnp.maximum(sq_norm, eps * eps))


def mean_cosine(image_emb, text_emb):
  """Mean cosine similarity between row-aligned image and text embeddings (need not be normalized).

  The reference logs this (detached) between the images and the first B text rows
  (docs/method.md, "Embeddings and the global batch").
  """
  image = l2_normalize(image_emb)
  text = l2_normalize(text_emb)
  return jnp.mean(jnp.sum(image * text, axis=-1))


def _similarity(a, b, scale):
  """scale * a @ b.T in fp32 at full precision; a (..., N, D), b (..., M, D) -> (..., N, M)."""
  return scale * jnp.einsum("...nd,...md->...nm", a, b, precision=_PRECISION)


def _diagonal_cross_entropy(logits, logsumexp_rows):
  """Mean over rows of CE where row j's label is column j: mean_j (lse_j - logits[j, j])."""
  own = jnp.diagonal(logits, axis1=-2, axis2=-1)
  return jnp.mean(logsumexp_rows - own, axis=-1)


def _own_caption_is_argmax(logits):
  """Row j's argmax (first index on ties, like torch/jnp argmax) is column j; (..., N, N) -> (..., N)."""
  return jnp.argmax(logits, axis=-1) == jnp.arange(logits.shape[-1])


def _metrics(*, loss, contrastive, i2t, t2i, sneg, uni, accuracy):
  values = dict(loss=loss, contrastive_loss=contrastive, img_to_txt_loss=i2t, txt_to_img_loss=t2i,
                sneg_loss=sneg, uni_modal_loss=uni, accuracy=accuracy)
  return {name: jnp.asarray(values[name], jnp.float32) for name in METRIC_NAMES}


def _check_embeddings(image_emb, pos_emb, neg_emb):
  """Shape checks (static, so they cost nothing under jit) with messages that name the argument."""
  if image_emb.ndim != 2:
    raise ValueError(f"image_emb must be (B, D), got shape {image_emb.shape}.")
  batch, dim = image_emb.shape
  if pos_emb.ndim != 3 or pos_emb.shape[1:] != (batch, dim):
    raise ValueError(f"pos_emb must be (P, B, D) = (P, {batch}, {dim}) to match image_emb, got "
                     f"shape {pos_emb.shape}; stack the positive sets on a new leading axis.")
  if pos_emb.shape[0] < 1:
    raise ValueError("pos_emb needs at least one positive set (P >= 1).")
  if neg_emb is not None and neg_emb.shape != (batch, dim):
    raise ValueError(f"neg_emb must be (B, D) = ({batch}, {dim}) or None, got shape "
                     f"{neg_emb.shape}.")


def _valid_mask(neg_valid, batch: int):
  """neg_valid (B,) of bool, or numbers where nonzero means valid -> bool (B,)."""
  valid = jnp.asarray(neg_valid)
  if valid.shape != (batch,):
    raise ValueError(f"neg_valid must be ({batch},) to match image_emb, got shape {valid.shape}.")
  return valid if valid.dtype == jnp.bool_ else valid != 0


def _masked_mean(x, valid):
  """Mean of x (..., B) over its last axis, only where valid (B,) is True; 0 when none is.

  Without a mask this is jnp.mean; with an all-True mask it gives the same bits, whatever the
  backend makes of the mean's constant divisor: the mean of the masked values times B / count, and
  B / count is exactly 1 when every sample is valid.
  """
  mean = jnp.mean(x if valid is None else jnp.where(valid, x, 0.0), axis=-1)
  return mean if valid is None else mean * _all_over_valid(valid)


def _all_over_valid(valid):
  """B / max(#valid, 1) in float32: exactly 1.0 when all are valid, 0-safe when none is."""
  valid = valid.astype(jnp.float32)
  return valid.shape[-1] / jnp.maximum(jnp.sum(valid), 1.0)


def _hard_negative_diagnostics(image, pos, neg, valid):
  """pos_over_neg / pos_over_neg_wrong_image per set and negative_valid; B*D work per set.

  Unscaled dot products (the logit scale is positive, so it changes no comparison); the wrong image
  of sample j is I_{(j+1) mod B} (jnp.roll by -1), never its own for B > 1.
  """
  wrong = jnp.roll(image, -1, axis=0)
  own_pos = jnp.sum(image[None] * pos, axis=-1)          # (P, B): <I_j, p_ij>
  own_neg = jnp.sum(image * neg, axis=-1)                # (B,):   <I_j, n_j>
  wrong_pos = jnp.sum(wrong[None] * pos, axis=-1)        # (P, B): <I_{j+1}, p_ij>
  wrong_neg = jnp.sum(wrong * neg, axis=-1)              # (B,):   <I_{j+1}, n_j>
  right = _masked_mean((own_pos > own_neg[None]).astype(jnp.float32), valid)
  mismatched = _masked_mean((wrong_pos > wrong_neg[None]).astype(jnp.float32), valid)
  out = {}
  for i in range(pos.shape[0]):
    out[f"pos_over_neg/p{i + 1}"] = right[i]
    out[f"pos_over_neg_wrong_image/p{i + 1}"] = mismatched[i]
  out["negative_valid"] = (jnp.ones((), jnp.float32) if valid is None
                           else jnp.mean(valid.astype(jnp.float32)))
  return {k: jax.lax.stop_gradient(jnp.asarray(v, jnp.float32)) for k, v in out.items()}


def _is_static_zero(weight) -> bool:
  """True only for a concrete Python/NumPy zero, so a traced weight never skips its term."""
  return isinstance(weight, (int, float)) and weight == 0


def clip_loss(image_emb, text_emb, scale):
  """Standard symmetric CLIP loss over the global batch (docs/method.md, "CLIP loss").

  Args:
    image_emb: (B, D) L2-normalized image embeddings.
    text_emb: (B, D) L2-normalized text embeddings; row j is image j's caption.
    scale: scalar logit multiplier exp(logit_scale); gradients flow into it.

  Returns:
    (loss, metrics) with loss = (CE_i2t + CE_t2i) / 2, unweighted, and accuracy = 100 * fraction of
    images whose highest-scoring caption is their own.
  """
  image = jnp.asarray(image_emb, jnp.float32)
  text = jnp.asarray(text_emb, jnp.float32)
  if image.ndim != 2 or text.shape != image.shape:
    raise ValueError(f"clip_loss needs image_emb and text_emb of the same (B, D) shape, got "
                     f"{image.shape} and {text.shape}.")
  scale = jnp.asarray(scale, jnp.float32)
  logits = _similarity(image, text, scale)  # (B, B): rows are images, columns texts
  i2t = _diagonal_cross_entropy(logits, jax.nn.logsumexp(logits, axis=-1))
  t2i = _diagonal_cross_entropy(logits.T, jax.nn.logsumexp(logits.T, axis=-1))
  contrastive = (i2t + t2i) / 2
  accuracy = 100.0 * jnp.mean(_own_caption_is_argmax(logits).astype(jnp.float32))
  zero = jnp.zeros((), jnp.float32)
  return contrastive, _metrics(loss=contrastive, contrastive=contrastive, i2t=i2t, t2i=t2i,
                               sneg=zero, uni=zero, accuracy=accuracy)


def uni_modal_loss(p1, p2):
  """mean over the batch of sum_d (p1 - p2)^2: summed, not averaged, over D.

  See docs/method.md, "Uni-modal loss".
  """
  p1 = jnp.asarray(p1, jnp.float32)
  p2 = jnp.asarray(p2, jnp.float32)
  return jnp.mean(jnp.sum(jnp.square(p1 - p2), axis=-1))


def clic_loss(image_emb, pos_emb, neg_emb, scale, cont=0.5, sneg=0.5, uni=1.0,
              separate_negatives: bool = True, neg_valid=None, sneg_sets: int | None = None):
  """CLIC multi-positive contrastive loss with hard negatives, over the global batch.

  Args:
    image_emb: (B, D) L2-normalized image embeddings (the concatenated images in a CLIC step).
    pos_emb: (P, B, D) L2-normalized positive captions, sets in the order [p1, p2, p3, p4, ...];
      pos_emb[i, j] is a positive of image j.
    neg_emb: (B, D) L2-normalized hard negative of each image, or None for no negatives.
    scale: scalar logit multiplier exp(logit_scale); gradients flow into it.
    cont, sneg, uni: weights of the contrastive, separate hard-negative and uni-modal terms. They may
      be Python floats or traced scalars. A Python 0 for `uni` (or P == 1) skips the uni-modal term.
    separate_negatives: must be a Python bool (static under jit).
      True (the CLIC default; docs/method.md, "Multi-positive contrastive loss", "Uni-modal loss"):
        for set i the image->text CE runs over the B captions of set i only (negatives excluded),
        text->image over the B images; the hard negative enters through a 2-way CE on
        [s<I_j, p_ij>, s<I_j, n_j>] with target 0. Each term is averaged over the P sets, and
          loss = cont * (i2t + t2i) / 2 + sneg * L_sneg + uni * L_uni.
      False (the unified variant used by NegCLIP; docs/method.md, "Unified variant"): for set i the
        image->text CE runs over the B captions of set i plus all B negatives (2B columns);
        text->image as above; there is no 2-way term, and like the reference
          loss = (i2t + t2i) / 2 + uni * L_uni,
        i.e. `cont` and `sneg` are NOT applied in this variant; pass them anyway, they are ignored.

    neg_valid: None (every negative is used, like the reference) or (B,) bool (or numbers, nonzero =
      valid): False marks a sample whose negative is not a real hard negative (the pipeline's
      `negative_valid`: no swap gave a caption unlike every positive, so it may equal p1). Separate
      variant: the 2-way term is the mean over valid samples only (0 when none is valid), and an
      invalid sample's accuracy drops the negative condition. Unified variant: invalid negatives'
      columns leave every row's image->text softmax (logits -> -inf) and the accuracy's max.
      An all-True mask gives the same numbers, bit for bit, as None.
    sneg_sets: a static Python int k, or None for all P sets: the separate 2-way term averages over
      the first k sets only (2: the minimal pairs p1, p2, the positives that hold the same words as
      the negative). Needs separate_negatives=True. The diagnostics and accuracy still use all sets.

  The uni-modal term is mean_b sum_d (p1 - p2)^2 on the first two sets (docs/method.md, "Uni-modal
  loss"). The single-image baseline (docs/method.md, "Training variants") is this function with
  uni=0.

  Returns:
    (loss, metrics); accuracy (docs/method.md, "Accuracy") is, per set, the percent of images whose
    i2t argmax is their own caption and (separate variant, with negatives) whose positive scores >=
    their negative (a tie counts as correct, like argmax picking index 0); in the unified variant,
    the argmax over the combined 2B columns must be the own caption. It is averaged over the P sets.
    With negatives the metrics also hold `hard_negative_metric_names(P)` (see the module docstring).
  """
  if not isinstance(separate_negatives, bool):
    raise TypeError("separate_negatives must be a Python bool (mark it static under jax.jit), got "
                    f"{type(separate_negatives).__name__}.")
  if sneg_sets is not None:
    if isinstance(sneg_sets, bool) or not isinstance(sneg_sets, int):
      raise TypeError("sneg_sets must be a Python int or None (mark it static under jax.jit), got "
                      f"{type(sneg_sets).__name__}.")
    if not separate_negatives:
      raise ValueError("sneg_sets needs separate_negatives=True: the unified variant has no "
                       "separate hard-negative term to restrict.")
  image = jnp.asarray(image_emb, jnp.float32)
  pos = jnp.asarray(pos_emb, jnp.float32)
  neg = None if neg_emb is None else jnp.asarray(neg_emb, jnp.float32)
  _check_embeddings(image, pos, neg)
  scale = jnp.asarray(scale, jnp.float32)
  num_sets = pos.shape[0]
  if sneg_sets is not None and not 1 <= sneg_sets <= num_sets:
    raise ValueError(f"sneg_sets={sneg_sets} must be between 1 and the number of positive sets "
                     f"({num_sets}).")
  valid = None if neg is None or neg_valid is None else _valid_mask(neg_valid, image.shape[0])

  # logits[i, j, k] = s <I_j, p_ik>: set i's image->text logits; its transpose is text->image.
  pos_logits = _similarity(image[None], pos, scale)  # (P, B, B)
  own_pos = jnp.diagonal(pos_logits, axis1=-2, axis2=-1)  # (P, B): s <I_j, p_ij>
  i2t_logsumexp = jax.nn.logsumexp(pos_logits, axis=-1)  # (P, B)
  t2i_logsumexp = jax.nn.logsumexp(pos_logits, axis=-2)  # (P, B): column j = caption j's row
  correct = _own_caption_is_argmax(pos_logits)  # (P, B)
  zero = jnp.zeros((), jnp.float32)

  sneg_loss = zero
  diagnostics = {}
  if neg is not None:
    diagnostics = _hard_negative_diagnostics(image, pos, neg, valid)
    if separate_negatives:
      own_neg = scale * jnp.sum(image * neg, axis=-1)  # (B,): s <I_j, n_j>
      # 2-way CE with target 0: lse(pos, neg) - pos = softplus(neg - pos).
      two_way = jax.nn.softplus(own_neg[None] - own_pos)  # (P, B)
      if sneg_sets is not None:
        two_way = two_way[:sneg_sets]
      if valid is None:
        sneg_loss = jnp.mean(two_way)
      else:  # every set has the same mask: one mean over (sets, samples), rescaled as _masked_mean
        sneg_loss = jnp.mean(jnp.where(valid[None], two_way, 0.0)) * _all_over_valid(valid)
      neg_ok = own_pos >= own_neg[None]
      correct = correct & (neg_ok if valid is None else neg_ok | ~valid[None])
    else:
      neg_logits = _similarity(image, neg, scale)  # (B, B): s <I_j, n_k>, shared by every set
      if valid is not None:  # invalid negatives leave every row's softmax (and the accuracy's max)
        neg_logits = jnp.where(valid[None, :], neg_logits, -jnp.inf)
      # lse over the concatenated columns [set i | all negatives] without materializing the concat.
      i2t_logsumexp = jnp.logaddexp(i2t_logsumexp, jax.nn.logsumexp(neg_logits, axis=-1)[None])
      # argmax over [set i | negatives] is the own caption iff it is the first max of set i and no
      # negative beats it (negatives come after, so a tie resolves to the caption).
      correct = correct & (own_pos >= jnp.max(neg_logits, axis=-1)[None])

  i2t = jnp.mean(i2t_logsumexp - own_pos)  # mean over sets of per-set mean CE
  t2i = jnp.mean(t2i_logsumexp - own_pos)
  contrastive = (i2t + t2i) / 2

  uni_loss = zero
  if num_sets > 1 and not _is_static_zero(uni):
    uni_loss = uni_modal_loss(pos[0], pos[1])

  if separate_negatives:
    total = cont * contrastive + sneg * sneg_loss + uni * uni_loss
  else:
    # The reference applies no cont/sneg here (docs/method.md, "Unified variant").
    total = contrastive + uni * uni_loss
  total = jnp.asarray(total, jnp.float32)
  accuracy = 100.0 * jnp.mean(correct.astype(jnp.float32))
  metrics = _metrics(loss=total, contrastive=contrastive, i2t=i2t, t2i=t2i, sneg=sneg_loss,
                     uni=uni_loss, accuracy=accuracy)
  return total, {**metrics, **diagnostics}
