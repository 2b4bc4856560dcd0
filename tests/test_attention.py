"""Model execution paths that must equal the plain one: padded cuDNN attention, scanned layers,
the pooled last block.

cuDNN itself needs a GPU; here the same padding runs through XLA's attention and must give the
unpadded result, forward and backward, with and without the causal mask.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clic_jax.models import clip


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("length", [13, 77])
def test_padded_attention_equals_unpadded(causal, length):
  q, k, v = (jax.random.normal(key, (2, length, 3, 8)) for key in jax.random.split(
      jax.random.key(length), 3))
  padded = lambda q, k, v: clip.attention(q, k, v, causal, None, pad_to=8)
  plain = lambda q, k, v: clip.attention(q, k, v, causal, None, pad_to=1)
  assert (length % 8) != 0     # the padding path really runs
  np.testing.assert_allclose(padded(q, k, v), plain(q, k, v), atol=1e-5)
  loss = lambda fn: lambda *a: jnp.sum(jnp.sin(fn(*a)))
  got = jax.grad(loss(padded), argnums=(0, 1, 2))(q, k, v)
  want = jax.grad(loss(plain), argnums=(0, 1, 2))(q, k, v)
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, atol=1e-5)


def test_padding_without_causal_mask_needs_the_length_mask():
  """Guards the test above: padding the keys unmasked would change the result."""
  q, k, v = (jax.random.normal(key, (1, 5, 1, 4)) for key in jax.random.split(jax.random.key(0), 3))
  widths = ((0, 0), (0, 3), (0, 0), (0, 0))
  unmasked = jax.nn.dot_product_attention(*(jnp.pad(a, widths) for a in (q, k, v)))[:, :5]
  assert not np.allclose(unmasked, clip.attention(q, k, v, False, None, pad_to=8), atol=1e-3)


def test_scanned_layers_equal_unrolled_layers():
  """The CPU default (blocks under lax.scan, parameters stacked at apply time) computes what the
  unrolled stack computes, forward and backward, from the same per-block parameters."""
  x = jax.random.normal(jax.random.key(0), (3, 9, 16))
  blocks = clip.Blocks(width=16, layers=3, heads=2, mlp_ratio=4.0, causal=True, quick_gelu=True)
  scanned, unrolled = (clip.Transformer(blocks, clip.Execution(scan_layers=s))
                       for s in (True, False))
  params = unrolled.init(jax.random.key(1), x)
  assert set(params["params"]) == {"resblocks_0", "resblocks_1", "resblocks_2"}
  assert jax.tree.structure(scanned.init(jax.random.key(1), x)) == jax.tree.structure(params)
  loss = lambda module: lambda p, x: jnp.sum(jnp.sin(module.apply(p, x)))
  np.testing.assert_allclose(scanned.apply(params, x), unrolled.apply(params, x), atol=1e-5)
  got = jax.grad(loss(scanned), argnums=(0, 1))(params, x)
  want = jax.grad(loss(unrolled), argnums=(0, 1))(params, x)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(g, w, atol=1e-5)
  remat = clip.Transformer(blocks, clip.Execution(remat=True, scan_layers=True))
  np.testing.assert_allclose(jax.grad(loss(remat))(params, x)["params"]["resblocks_1"]["mlp"]
                             ["c_fc"]["kernel"],
                             want[0]["params"]["resblocks_1"]["mlp"]["c_fc"]["kernel"], atol=1e-5)


def _tiny_tokens(lengths, width):
  tokens = np.zeros((len(lengths), width), np.int32)
  for row, n in enumerate(lengths):        # start, ids, end-of-text at position n, zero padding
    tokens[row, 0], tokens[row, 1:n], tokens[row, n] = 49406, np.arange(1, n) * 17, 49407
  return tokens


@pytest.mark.parametrize("scan", [True, False])
@pytest.mark.parametrize("remat", [False, True])
def test_pooled_last_block_equals_the_full_last_block(scan, remat):
  """Both towers run their last block for the pooled token only (class token, end-of-text token).
  Embeddings and every parameter's gradient equal those of the full last block (open_clip's way),
  for captions whose end-of-text sits anywhere, the last position included."""
  from clic_jax.models import get_model_config
  cfg = get_model_config("tiny")
  images = jax.random.normal(jax.random.key(0), (3, cfg.vision.image_size,
                                                 cfg.vision.image_size, 3))
  tokens = _tiny_tokens([3, 7, 11, 1], width=12)
  pooled = clip.CLIP(cfg, clip.Execution(scan_layers=scan, remat=remat))
  full = pooled.running(pooled_last_block=False)
  params = pooled.init(jax.random.key(1), images, tokens)
  assert jax.tree.structure(full.init(jax.random.key(1), images, tokens)) == \
      jax.tree.structure(params)
  for method, inputs in (("encode_image", images), ("encode_text", tokens)):
    embed = lambda module, p: module.apply(p, inputs, method=method)
    np.testing.assert_allclose(embed(pooled, params), embed(full, params), rtol=1e-5, atol=1e-6)
    loss = lambda module: lambda p: jnp.sum(jnp.sin(embed(module, p)))
    got, want = jax.grad(loss(pooled))(params), jax.grad(loss(full))(params)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5 * float(np.max(np.abs(w))) + 1e-7)


def test_one_query_attention_masks_later_keys():
  """Guards the test above: the single-query path must apply the causal mask (a query that saw
  the keys after it would differ), and without the mask it sees every key."""
  x = jax.random.normal(jax.random.key(0), (2, 6, 16))
  index = jnp.array([2, 5])
  causal = clip.MultiHeadAttention(16, 2, True, 0.2, 0.2)
  params = causal.init(jax.random.key(1), x)
  full = causal.apply(params, x)
  one = causal.apply(params, x, index)
  np.testing.assert_allclose(one[:, 0], full[jnp.arange(2), index], atol=1e-6)
  open_mask = clip.MultiHeadAttention(16, 2, False, 0.2, 0.2)
  assert not np.allclose(open_mask.apply(params, x, index)[0, 0], one[0, 0], atol=1e-3)
  np.testing.assert_allclose(open_mask.apply(params, x, index)[:, 0],
                             open_mask.apply(params, x)[jnp.arange(2), index], atol=1e-6)


def test_patch_tokens_come_with_the_same_image_embedding():
  """encode_image_patches: the class-token embedding equals encode_image's, and the patch tokens
  are the ln_post outputs of the full last block (one per patch, row-major)."""
  from clic_jax.models import get_model_config
  cfg = get_model_config("tiny")
  images = jax.random.normal(jax.random.key(0), (2, cfg.vision.image_size,
                                                 cfg.vision.image_size, 3))
  model = clip.CLIP(cfg)
  params = model.init(jax.random.key(1), images, _tiny_tokens([3, 5], width=8))
  pooled, patches = model.apply(params, images, method="encode_image_patches")
  np.testing.assert_allclose(pooled, model.apply(params, images, method="encode_image"),
                             rtol=1e-5, atol=1e-6)
  assert patches.shape == (2, cfg.vision.grid ** 2, cfg.vision.width)
  np.testing.assert_allclose(np.mean(patches, -1), 0, atol=1e-4)        # after a LayerNorm
  shifted = images.at[1, :cfg.vision.patch_size, :cfg.vision.patch_size].add(1.0)
  _, moved = model.apply(params, shifted, method="encode_image_patches")
  assert not np.allclose(moved[1], patches[1]) and np.allclose(moved[0], patches[0])
