"""clic_jax.losses against an independent NumPy implementation of the reference's equations.

The NumPy reference mirrors the PyTorch code's structure rather than ours: W ranks each hold B/W
images and their texts in blocks [p1 | p2 | ... | pP | neg], all texts are "gathered", columns are
picked by index modulo the per-rank text count, labels are rank * B_local + j, each rank averages over
its own anchors and the ranks are averaged (DDP). Log-sum-exp is written by hand, in float64. Equality
with the global-batch JAX loss for W = 1 and W = 2 is the equivalence the design relies on
(docs/method.md, "Embeddings and the global batch").
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clic_jax import losses


def _normalized(rng, *shape):
  x = rng.standard_normal(shape)
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _logsumexp(row):
  top = max(row)
  return top + math.log(sum(math.exp(v - top) for v in row))


def _cross_entropy(row, label):
  return _logsumexp(row) - row[label]


def _first_argmax(row):
  best = 0
  for k, v in enumerate(row):
    if v > row[best]:
      best = k
  return best


def reference_clip(image, text, scale, world=1):
  """The CLIP loss on `world` ranks: returns dict of loss terms, averaged over ranks.

  See docs/method.md, "CLIP loss".
  """
  image, text = np.asarray(image, np.float64), np.asarray(text, np.float64)
  local = image.shape[0] // world
  per_rank = []
  for rank in range(world):
    rows = range(rank * local, (rank + 1) * local)
    i2t = t2i = acc = 0.0
    for j, row in enumerate(rows):
      label = rank * local + j
      logits_img = [scale * float(image[row] @ text[c]) for c in range(len(text))]
      logits_txt = [scale * float(text[row] @ image[c]) for c in range(len(image))]
      i2t += _cross_entropy(logits_img, label)
      t2i += _cross_entropy(logits_txt, label)
      acc += float(_first_argmax(logits_img) == label)
    per_rank.append((i2t / local, t2i / local, 100 * acc / local))
  i2t, t2i, acc = np.mean(per_rank, axis=0)
  return dict(loss=(i2t + t2i) / 2, img_to_txt_loss=i2t, txt_to_img_loss=t2i, accuracy=acc)


def reference_clic(image, pos, neg, scale, cont, sneg, uni, separate, world=1):
  """The CLIC loss terms and accuracy exactly as the reference computes them on `world` ranks.

  See docs/method.md, "Losses".
  """
  image = np.asarray(image, np.float64)
  num_sets, batch, _ = pos.shape
  local = batch // world
  has_neg = neg is not None
  blocks = num_sets + int(has_neg)
  texts_per_rank = blocks * local

  # Each rank's local texts [p1 | ... | pP | neg], then gathered in rank order.
  def local_texts(rank):
    rows = slice(rank * local, (rank + 1) * local)
    parts = [pos[i, rows] for i in range(num_sets)] + ([neg[rows]] if has_neg else [])
    return np.concatenate(parts).astype(np.float64)

  all_texts = np.concatenate([local_texts(r) for r in range(world)])
  terms = {k: [] for k in ("i2t", "t2i", "sneg", "uni", "acc")}
  for rank in range(world):
    texts = local_texts(rank)
    my_images = image[rank * local:(rank + 1) * local]
    logits_per_image = scale * my_images @ all_texts.T  # (local, world * T)
    logits_per_text = scale * texts @ image.T  # (T, world * local)
    i2t = t2i = neg_loss = acc = 0.0
    for i in range(num_sets):
      pos_block = range(i * local, (i + 1) * local)
      neg_block = range(num_sets * local, (num_sets + 1) * local)
      keep = [c for c in range(world * texts_per_rank)
              if c % texts_per_rank in pos_block
              or (not separate and has_neg and c % texts_per_rank in neg_block)]
      for j in range(local):
        label = (2 * local if (not separate and has_neg) else local) * rank + j
        row = [logits_per_image[j, c] for c in keep]
        i2t += _cross_entropy(row, label)
        t2i += _cross_entropy(list(logits_per_text[i * local + j]), rank * local + j)
        correct = _first_argmax(row) == label
        if separate and has_neg:
          two_way = [logits_per_image[j, rank * texts_per_rank + i * local + j],
                     logits_per_image[j, rank * texts_per_rank + num_sets * local + j]]
          neg_loss += _cross_entropy(two_way, 0)
          correct = correct and _first_argmax(two_way) == 0
        acc += float(correct)
    terms["i2t"].append(i2t / (num_sets * local))
    terms["t2i"].append(t2i / (num_sets * local))
    terms["sneg"].append(neg_loss / (num_sets * local))
    terms["acc"].append(100 * acc / (num_sets * local))
    uni_loss = 0.0
    if num_sets > 1 and uni != 0:
      p1, p2 = texts[:local], texts[local:2 * local]
      uni_loss = sum(sum((p1[j, d] - p2[j, d]) ** 2 for d in range(p1.shape[1]))
                     for j in range(local)) / local
    terms["uni"].append(uni_loss)
  m = {k: float(np.mean(v)) for k, v in terms.items()}
  contrastive = (m["i2t"] + m["t2i"]) / 2
  if separate:
    total = cont * contrastive + sneg * m["sneg"] + uni * m["uni"]
  else:
    total = contrastive + uni * m["uni"]
  return dict(loss=total, contrastive_loss=contrastive, img_to_txt_loss=m["i2t"],
              txt_to_img_loss=m["t2i"], sneg_loss=m["sneg"], uni_modal_loss=m["uni"],
              accuracy=m["acc"])


def _assert_metrics_close(got, want):
  for name, value in want.items():
    np.testing.assert_allclose(float(got[name]), value, rtol=1e-5, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("batch,dim,scale,world", [(4, 8, 1.0, 1), (6, 5, 100.0, 2), (8, 16, 14.3, 4)])
def test_clip_loss_matches_reference(batch, dim, scale, world):
  rng = np.random.default_rng(batch)
  image, text = _normalized(rng, batch, dim), _normalized(rng, batch, dim)
  loss, metrics = losses.clip_loss(image.astype(np.float32), text.astype(np.float32), scale)
  want = reference_clip(image, text, scale, world=world)
  _assert_metrics_close(metrics, want)
  np.testing.assert_allclose(float(loss), want["loss"], rtol=1e-5)
  assert float(metrics["sneg_loss"]) == 0.0 and float(metrics["uni_modal_loss"]) == 0.0
  assert set(metrics) == set(losses.METRIC_NAMES)
  assert all(v.dtype == jnp.float32 and v.shape == () for v in metrics.values())
  # METRIC_NAMES are the keys both losses share; CLIC with negatives adds its diagnostics.
  _, clic_metrics = losses.clic_loss(image, np.stack([text, text]), text[::-1], scale)
  assert set(losses.METRIC_NAMES) < set(clic_metrics)
  assert set(clic_metrics) - set(losses.METRIC_NAMES) == set(losses.hard_negative_metric_names(2))
  assert all(v.dtype == jnp.float32 and v.shape == () for v in clic_metrics.values())
  _, no_neg = losses.clic_loss(image, text[None], None, scale)
  assert set(no_neg) == set(losses.METRIC_NAMES)


CLIC_CASES = [
    # batch, dim, num_sets, scale, with_neg, separate, (cont, sneg, uni), world
    (4, 8, 4, 100.0, True, True, (0.5, 0.5, 1.0), 1),
    (6, 6, 4, 100.0, True, True, (0.5, 0.5, 1.0), 2),
    (4, 3, 2, 5.0, True, True, (0.3, 0.9, 0.0), 2),
    (5, 7, 1, 20.0, True, True, (0.5, 0.5, 1.0), 1),
    (6, 4, 3, 100.0, False, True, (1.0, 0.5, 2.0), 3),
    (4, 8, 1, 100.0, True, False, (0.5, 0.5, 1.0), 2),  # NegCLIP: P = 1, unified
    (6, 5, 4, 30.0, True, False, (0.5, 0.5, 1.0), 2),
    (4, 6, 2, 1.0, False, False, (0.5, 0.5, 0.7), 1),
    (8, 4, 4, 100.0, True, True, (0.5, 0.5, 0.0), 4),  # the single-image baseline weights
]


@pytest.mark.parametrize("batch,dim,num_sets,scale,with_neg,separate,weights,world", CLIC_CASES)
def test_clic_loss_matches_reference(batch, dim, num_sets, scale, with_neg, separate, weights, world):
  rng = np.random.default_rng(batch * 100 + dim * 10 + num_sets)
  image = _normalized(rng, batch, dim)
  pos = _normalized(rng, num_sets, batch, dim)
  neg = _normalized(rng, batch, dim) if with_neg else None
  cont, sneg, uni = weights
  loss, metrics = losses.clic_loss(
      image.astype(np.float32), pos.astype(np.float32),
      None if neg is None else neg.astype(np.float32), scale, cont=cont, sneg=sneg, uni=uni,
      separate_negatives=separate)
  want = reference_clic(image, pos, neg, scale, cont, sneg, uni, separate, world=world)
  _assert_metrics_close(metrics, want)
  np.testing.assert_allclose(float(loss), want["loss"], rtol=1e-5, atol=1e-5)


def test_one_set_without_negatives_is_clip_loss():
  rng = np.random.default_rng(0)
  image, text = _normalized(rng, 5, 6), _normalized(rng, 5, 6)
  clip, _ = losses.clip_loss(image, text, 30.0)
  for separate in (True, False):
    clic, _ = losses.clic_loss(image, text[None], None, 30.0, cont=1.0, sneg=1.0, uni=1.0,
                               separate_negatives=separate)
    np.testing.assert_allclose(float(clic), float(clip), rtol=1e-6)


def test_aligned_embeddings_give_full_accuracy_and_small_loss():
  batch, num_sets = 4, 4
  image = np.eye(batch, 8, dtype=np.float32)
  pos = np.stack([image] * num_sets)
  neg = np.roll(np.eye(batch, 8, dtype=np.float32), 4, axis=1)  # orthogonal to every image
  for separate in (True, False):
    loss, metrics = losses.clic_loss(image, pos, neg, 100.0, separate_negatives=separate)
    assert float(metrics["accuracy"]) == 100.0
    assert float(loss) < 1e-3
    assert float(metrics["uni_modal_loss"]) == 0.0  # p1 == p2
  _, clip_metrics = losses.clip_loss(image, image, 100.0)
  assert float(clip_metrics["accuracy"]) == 100.0


def test_tie_between_positive_and_negative_counts_correct():
  image = np.eye(3, 4, dtype=np.float32)
  pos = image[None]
  _, metrics = losses.clic_loss(image, pos, image.copy(), 10.0, separate_negatives=True)
  assert float(metrics["accuracy"]) == 100.0
  np.testing.assert_allclose(float(metrics["sneg_loss"]), math.log(2), rtol=1e-6)


def test_negative_equal_to_positive_raises_sneg_loss():
  rng = np.random.default_rng(3)
  image = _normalized(rng, 6, 8).astype(np.float32)
  pos = np.stack([image + 0.1 * rng.standard_normal(image.shape) for _ in range(2)])
  pos = (pos / np.linalg.norm(pos, axis=-1, keepdims=True)).astype(np.float32)
  far_neg = -image
  # A negative that is the image itself beats every positive.
  _, easy = losses.clic_loss(image, pos, far_neg, 50.0)
  _, hard = losses.clic_loss(image, pos, image, 50.0)
  assert float(hard["sneg_loss"]) > float(easy["sneg_loss"]) + 1.0
  assert float(hard["accuracy"]) == 0.0 and float(easy["accuracy"]) == 100.0


def test_uni_modal_term():
  rng = np.random.default_rng(4)
  image = _normalized(rng, 4, 6).astype(np.float32)
  p1 = _normalized(rng, 4, 6).astype(np.float32)
  p2 = _normalized(rng, 4, 6).astype(np.float32)
  same = np.stack([p1, p1])
  _, metrics = losses.clic_loss(image, same, None, 10.0, uni=1.0)
  assert float(metrics["uni_modal_loss"]) == 0.0
  loss_on, on = losses.clic_loss(image, np.stack([p1, p2]), None, 10.0, uni=1.0)
  loss_off, off = losses.clic_loss(image, np.stack([p1, p2]), None, 10.0, uni=0.0)
  want = np.mean(np.sum((p1.astype(np.float64) - p2) ** 2, axis=-1))
  np.testing.assert_allclose(float(on["uni_modal_loss"]), want, rtol=1e-6)
  assert float(off["uni_modal_loss"]) == 0.0
  np.testing.assert_allclose(float(loss_on) - float(loss_off), want, rtol=1e-5)
  # Logged terms are separate from the total (docs/method.md, "Total loss"): the total includes uni,
  # contrastive does not.
  assert float(on["contrastive_loss"]) == pytest.approx(float(off["contrastive_loss"]))
  assert float(on["loss"]) != pytest.approx(float(on["contrastive_loss"]))


def test_bfloat16_inputs_compute_in_float32():
  rng = np.random.default_rng(5)
  image = _normalized(rng, 4, 8)
  pos = _normalized(rng, 2, 4, 8)
  neg = _normalized(rng, 4, 8)
  loss, metrics = losses.clic_loss(jnp.asarray(image, jnp.bfloat16), jnp.asarray(pos, jnp.bfloat16),
                                   jnp.asarray(neg, jnp.bfloat16), jnp.asarray(100.0, jnp.bfloat16))
  assert loss.dtype == jnp.float32 and metrics["accuracy"].dtype == jnp.float32
  as_fp32 = [np.asarray(jnp.asarray(x, jnp.bfloat16), np.float32) for x in (image, pos, neg)]
  want, _ = losses.clic_loss(*as_fp32, 100.0)
  np.testing.assert_allclose(float(loss), float(want), rtol=1e-6)


def test_gradients_finite_and_jit_matches_eager():
  rng = np.random.default_rng(6)
  image = _normalized(rng, 4, 8).astype(np.float32)
  pos = _normalized(rng, 4, 4, 8).astype(np.float32)
  neg = _normalized(rng, 4, 8).astype(np.float32)

  def total(image, pos, neg, log_scale, separate):
    return losses.clic_loss(image, pos, neg, jnp.exp(log_scale), separate_negatives=separate)[0]

  for separate in (True, False):
    grads = jax.grad(total, argnums=(0, 1, 2, 3))(image, pos, neg, jnp.log(100.0), separate)
    for g in grads:
      assert np.all(np.isfinite(np.asarray(g)))
    assert float(grads[3]) != 0.0  # the logit scale trains

  jitted = jax.jit(losses.clic_loss, static_argnames="separate_negatives")
  loss, metrics = jitted(image, pos, neg, 100.0, cont=0.5, sneg=0.5, uni=1.0)
  want_loss, want_metrics = losses.clic_loss(image, pos, neg, 100.0)
  np.testing.assert_allclose(float(loss), float(want_loss), rtol=1e-6)
  np.testing.assert_allclose(float(metrics["uni_modal_loss"]), float(want_metrics["uni_modal_loss"]),
                             rtol=1e-6)
  clip_loss, _ = jax.jit(losses.clip_loss)(image, pos[0], 100.0)
  np.testing.assert_allclose(float(clip_loss), float(losses.clip_loss(image, pos[0], 100.0)[0]),
                             rtol=1e-6)


def test_l2_normalize_and_mean_cosine():
  x = np.array([[3.0, 4.0], [0.0, 0.0]], np.float32)
  y = losses.l2_normalize(x)
  np.testing.assert_allclose(np.asarray(y), [[0.6, 0.8], [0.0, 0.0]], rtol=1e-6)
  grad = jax.grad(lambda v: jnp.sum(losses.l2_normalize(v)))(x)
  assert np.all(np.isfinite(np.asarray(grad)))
  a = np.array([[2.0, 0.0], [0.0, 1.0]], np.float32)
  b = np.array([[1.0, 0.0], [1.0, 1.0]], np.float32)
  np.testing.assert_allclose(float(losses.mean_cosine(a, b)), (1.0 + 1 / math.sqrt(2)) / 2, rtol=1e-6)


def test_bad_shapes_are_named():
  image = np.zeros((4, 8), np.float32)
  with pytest.raises(ValueError, match="pos_emb"):
    losses.clic_loss(image, np.zeros((4, 8), np.float32), None, 1.0)
  with pytest.raises(ValueError, match="neg_emb"):
    losses.clic_loss(image, np.zeros((2, 4, 8), np.float32), np.zeros((3, 8), np.float32), 1.0)
  with pytest.raises(ValueError, match="clip_loss"):
    losses.clip_loss(image, np.zeros((5, 8), np.float32), 1.0)
  with pytest.raises(TypeError, match="separate_negatives"):
    losses.clic_loss(image, np.zeros((1, 4, 8), np.float32), None, 1.0,
                     separate_negatives=jnp.asarray(True))


# ------------------------------------------------------------------------------------------------
# Hard-negative diagnostics, masking of invalid negatives, and the minimal-pairs hard-negative term.


def _diagnostics_numpy(image, pos, neg, valid=None):
  """pos_over_neg and pos_over_neg_wrong_image per set, by the definition, in float64."""
  image, pos, neg = (np.asarray(x, np.float64) for x in (image, pos, neg))
  batch = image.shape[0]
  valid = np.ones(batch, bool) if valid is None else np.asarray(valid, bool)
  out = {}
  for i in range(pos.shape[0]):
    right = [image[j] @ pos[i, j] > image[j] @ neg[j] for j in range(batch) if valid[j]]
    wrong = [image[(j + 1) % batch] @ pos[i, j] > image[(j + 1) % batch] @ neg[j]
             for j in range(batch) if valid[j]]
    out[f"pos_over_neg/p{i + 1}"] = float(np.mean(right)) if right else 0.0
    out[f"pos_over_neg_wrong_image/p{i + 1}"] = float(np.mean(wrong)) if wrong else 0.0
  out["negative_valid"] = float(np.mean(valid))
  return out


def _unit(x):
  return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def test_diagnostics_reveal_a_text_only_shortcut():
  """p3/p4 beat the negative along a direction every image shares: they win as often with another
  sample's image as with their own. p1/p2 are unrelated to the negative: about half the time."""
  rng = np.random.default_rng(10)
  batch, dim = 64, 32
  shared = np.zeros(dim)
  shared[0] = 1.0                                       # a direction all images point along
  image = _unit(6.0 * shared + np.concatenate(
      [np.zeros((batch, 1)), rng.standard_normal((batch, dim - 1))], axis=1))
  neg = _unit(rng.standard_normal((batch, dim)))
  p12 = _unit(rng.standard_normal((2, batch, dim)))
  p34 = _unit(0.5 * shared + 0.1 * rng.standard_normal((2, batch, dim)))
  pos = np.concatenate([p12, p34])
  for separate in (True, False):
    _, m = losses.clic_loss(image, pos, neg, 100.0, separate_negatives=separate)
    want = _diagnostics_numpy(image, pos, neg)
    for name, value in want.items():
      assert float(m[name]) == pytest.approx(value, abs=1e-6), name
    for p in ("p3", "p4"):   # the shortcut's signature: ~1 with the right and the wrong image
      right, wrong = float(m[f"pos_over_neg/{p}"]), float(m[f"pos_over_neg_wrong_image/{p}"])
      assert right >= 0.95 and wrong >= 0.95 and abs(right - wrong) <= 0.05
    for p in ("p1", "p2"):
      assert 0.3 <= float(m[f"pos_over_neg/{p}"]) <= 0.7
      assert 0.3 <= float(m[f"pos_over_neg_wrong_image/{p}"]) <= 0.7
    assert float(m["negative_valid"]) == 1.0


def test_diagnostics_of_an_image_dependent_positive():
  """Positives close to their own image and a random negative: the positive wins with the right
  image every time, with a mismatched image (I_{(j+1) mod B}) only about half the time."""
  rng = np.random.default_rng(11)
  batch, dim = 48, 128
  image = _unit(rng.standard_normal((batch, dim)))
  pos = _unit(image[None] + 0.3 * rng.standard_normal((2, batch, dim)))
  neg = _unit(rng.standard_normal((batch, dim)))
  _, m = losses.clic_loss(image, pos, neg, 50.0)
  want = _diagnostics_numpy(image, pos, neg)
  for name, value in want.items():
    assert float(m[name]) == pytest.approx(value, abs=1e-6), name
  for p in ("p1", "p2"):
    assert float(m[f"pos_over_neg/{p}"]) == 1.0
    assert 0.2 <= float(m[f"pos_over_neg_wrong_image/{p}"]) <= 0.8
  # The mismatched image is the next sample's (jnp.roll by -1), not e.g. the previous one's.
  prev = [image[j - 1] @ pos[0, j] > image[j - 1] @ neg[j] for j in range(batch)]
  assert float(m["pos_over_neg_wrong_image/p1"]) == pytest.approx(want[
      "pos_over_neg_wrong_image/p1"]) and np.mean(prev) != want["pos_over_neg_wrong_image/p1"]


def _batch_with_invalid(seed=12, batch=8, dim=6, num_sets=4):
  rng = np.random.default_rng(seed)
  image = _unit(rng.standard_normal((batch, dim)))
  pos = _unit(rng.standard_normal((num_sets, batch, dim)))
  neg = _unit(rng.standard_normal((batch, dim)))
  valid = np.array([True, False, True, True, False, True, True, False][:batch])
  return image, pos, neg, valid


def test_all_valid_mask_gives_the_unmasked_numbers_bit_for_bit():
  image, pos, neg, _ = _batch_with_invalid()
  jitted = jax.jit(losses.clic_loss, static_argnames=("separate_negatives", "sneg_sets"))
  for fn in (losses.clic_loss, jitted):
    for separate in (True, False):
      for sneg_sets in ((None, 2) if separate else (None,)):
        kwargs = dict(separate_negatives=separate, sneg_sets=sneg_sets)
        loss, metrics = fn(image, pos, neg, 100.0, **kwargs)
        for mask in (np.ones(8, bool), jnp.ones(8, jnp.int32), jnp.ones(8, jnp.float32)):
          loss_m, metrics_m = fn(image, pos, neg, 100.0, neg_valid=mask, **kwargs)
          assert np.array_equal(np.asarray(loss), np.asarray(loss_m))
          assert set(metrics) == set(metrics_m)
          for name in metrics:
            assert np.array_equal(np.asarray(metrics[name]), np.asarray(metrics_m[name])), name
  # The gradients too (the step differentiates the same function).
  grad = lambda *a, **k: jax.grad(lambda n: losses.clic_loss(image, pos, n, 100.0, *a, **k)[0])(neg)
  for separate in (True, False):
    assert np.array_equal(np.asarray(grad(separate_negatives=separate)),
                          np.asarray(grad(separate_negatives=separate, neg_valid=np.ones(8, bool))))


def test_masked_negatives_give_the_two_way_loss_of_the_batch_without_them():
  image, pos, neg, valid = _batch_with_invalid()
  _, masked = losses.clic_loss(image, pos, neg, 100.0, neg_valid=valid)
  _, kept = losses.clic_loss(image[valid], pos[:, valid], neg[valid], 100.0)
  _, unmasked = losses.clic_loss(image, pos, neg, 100.0)
  np.testing.assert_allclose(float(masked["sneg_loss"]), float(kept["sneg_loss"]), rtol=1e-6)
  assert abs(float(masked["sneg_loss"]) - float(unmasked["sneg_loss"])) > 1e-3
  for i in range(1, 5):
    assert float(masked[f"pos_over_neg/p{i}"]) == pytest.approx(float(kept[f"pos_over_neg/p{i}"]))
  for name, value in _diagnostics_numpy(image, pos, neg, valid).items():
    assert float(masked[name]) == pytest.approx(value, abs=1e-6), name
  assert float(masked["negative_valid"]) == pytest.approx(5 / 8)
  # The contrastive terms still use every sample (their positives are real).
  assert float(masked["contrastive_loss"]) == float(unmasked["contrastive_loss"])


@pytest.mark.parametrize("separate", [True, False])
def test_invalid_negatives_change_nothing(separate):
  """Whatever an invalid negative is (even the positive itself), loss, gradient and every metric
  are the same, and no gradient reaches it."""
  image, pos, neg, valid = _batch_with_invalid()
  other = neg.copy()
  other[~valid] = pos[0, ~valid]                        # the last resort: negative == p1
  def run(n):
    return losses.clic_loss(image, pos, n, 100.0, separate_negatives=separate, neg_valid=valid)
  (loss_a, m_a), (loss_b, m_b) = run(neg), run(other)
  assert float(loss_a) == pytest.approx(float(loss_b), rel=1e-6)
  for name in m_a:
    assert float(m_a[name]) == pytest.approx(float(m_b[name]), rel=1e-6, abs=1e-7), name
  grad = jax.grad(lambda n: run(n)[0])(other)
  assert np.all(np.asarray(grad)[~valid] == 0.0) and np.any(np.asarray(grad)[valid] != 0.0)
  # Unmasked, the same swap does change the loss.
  plain = lambda n: losses.clic_loss(image, pos, n, 100.0, separate_negatives=separate)[0]
  assert abs(float(plain(neg)) - float(plain(other))) > 1e-3


def test_unified_mask_removes_the_invalid_columns_from_every_row():
  image, pos, neg, valid = _batch_with_invalid(num_sets=2)
  scale = 20.0
  loss, m = losses.clic_loss(image, pos, neg, scale, separate_negatives=False, neg_valid=valid,
                             uni=0.0)
  x = lambda v: np.asarray(v, np.float64)
  i2t = []
  correct = []
  for i in range(pos.shape[0]):
    for j in range(image.shape[0]):
      row = list(scale * x(pos[i]) @ x(image[j])) + list(scale * x(neg[valid]) @ x(image[j]))
      i2t.append(_cross_entropy(row, j))
      correct.append(_first_argmax(row) == j)
  np.testing.assert_allclose(float(m["img_to_txt_loss"]), np.mean(i2t), rtol=1e-5)
  assert float(m["accuracy"]) == pytest.approx(100 * np.mean(correct))
  # No valid negative at all: the i2t of the loss without negatives, finite gradients.
  none_valid = np.zeros(8, bool)
  _, alone = losses.clic_loss(image, pos, None, scale, separate_negatives=False, uni=0.0)
  _, m0 = losses.clic_loss(image, pos, neg, scale, separate_negatives=False, neg_valid=none_valid,
                           uni=0.0)
  assert float(m0["img_to_txt_loss"]) == pytest.approx(float(alone["img_to_txt_loss"]), rel=1e-6)
  g = jax.grad(lambda i, n: losses.clic_loss(i, pos, n, scale, separate_negatives=False,
                                             neg_valid=none_valid)[0], argnums=(0, 1))(image, neg)
  assert all(np.all(np.isfinite(np.asarray(v))) for v in g)


def test_no_valid_negative_gives_zero_two_way_loss_and_full_negative_condition():
  rng = np.random.default_rng(3)
  image = _normalized(rng, 6, 8).astype(np.float32)
  pos = np.stack([image + 0.1 * rng.standard_normal(image.shape) for _ in range(2)])
  pos = (pos / np.linalg.norm(pos, axis=-1, keepdims=True)).astype(np.float32)
  none_valid = np.zeros(6, bool)
  # The negative is the image itself: it beats every positive, but it is marked invalid.
  loss, m = losses.clic_loss(image, pos, image, 50.0, neg_valid=none_valid)
  _, easy = losses.clic_loss(image, pos, -image, 50.0)
  assert float(m["sneg_loss"]) == 0.0 and float(m["negative_valid"]) == 0.0
  assert float(m["accuracy"]) == float(easy["accuracy"]) == 100.0
  assert float(m["pos_over_neg/p1"]) == 0.0             # no valid sample to count
  grads = jax.grad(lambda i, n: losses.clic_loss(i, pos, n, 50.0, neg_valid=none_valid)[0],
                   argnums=(0, 1))(image, image)
  assert all(np.all(np.isfinite(np.asarray(g))) for g in grads)
  assert np.all(np.asarray(grads[1]) == 0.0)


def test_minimal_sets_average_the_two_way_loss_over_p1_p2_only():
  rng = np.random.default_rng(13)
  batch, dim, scale = 6, 8, 30.0
  image = _unit(rng.standard_normal((batch, dim)))
  pos = _unit(rng.standard_normal((4, batch, dim)))
  neg = _unit(rng.standard_normal((batch, dim)))
  x = lambda v: np.asarray(v, np.float64)
  two_way = np.array([[np.logaddexp(scale * x(image[j]) @ x(pos[i, j]),
                                    scale * x(image[j]) @ x(neg[j])) - scale * x(image[j]) @ x(pos[i, j])
                       for j in range(batch)] for i in range(4)])
  loss_all, m_all = losses.clic_loss(image, pos, neg, scale)
  loss_min, m_min = losses.clic_loss(image, pos, neg, scale, sneg_sets=2)
  np.testing.assert_allclose(float(m_all["sneg_loss"]), two_way.mean(), rtol=1e-5)
  np.testing.assert_allclose(float(m_min["sneg_loss"]), two_way[:2].mean(), rtol=1e-5)
  assert abs(two_way[:2].mean() - two_way.mean()) > 1e-2   # the two forms differ on this batch
  np.testing.assert_allclose(
      float(loss_min), 0.5 * float(m_min["contrastive_loss"]) + 0.5 * two_way[:2].mean()
      + float(m_min["uni_modal_loss"]), rtol=1e-5)
  for name in m_all:                                    # accuracy and diagnostics: all sets still
    if name not in ("sneg_loss", "loss"):
      assert float(m_min[name]) == float(m_all[name]), name
  # With a mask: the mean over p1, p2 of the valid samples only.
  valid = np.array([True, False, True, True, True, False])
  _, m_mask = losses.clic_loss(image, pos, neg, scale, sneg_sets=2, neg_valid=valid)
  np.testing.assert_allclose(float(m_mask["sneg_loss"]), two_way[:2, valid].mean(), rtol=1e-5)
  # Gradients reach only p1, p2 through the 2-way term: with cont = uni = 0, none reaches p3/p4.
  grad = jax.grad(lambda p: losses.clic_loss(image, p, neg, scale, cont=0.0, uni=0.0,
                                             sneg_sets=2)[0])(pos)
  assert np.all(np.asarray(grad)[2:] == 0.0) and np.any(np.asarray(grad)[:2] != 0.0)


def test_bad_sneg_sets_and_mask_are_named():
  image, pos, neg, valid = _batch_with_invalid()
  with pytest.raises(ValueError, match="separate_negatives=True"):
    losses.clic_loss(image, pos, neg, 1.0, separate_negatives=False, sneg_sets=2)
  for bad in (0, 5):
    with pytest.raises(ValueError, match="sneg_sets"):
      losses.clic_loss(image, pos, neg, 1.0, sneg_sets=bad)
  with pytest.raises(TypeError, match="sneg_sets"):
    losses.clic_loss(image, pos, neg, 1.0, sneg_sets="minimal")
  with pytest.raises(ValueError, match="neg_valid"):
    losses.clic_loss(image, pos, neg, 1.0, neg_valid=valid[:5])
