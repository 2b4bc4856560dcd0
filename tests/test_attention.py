"""Model execution paths that must equal the plain one: padded cuDNN attention, scanned layers.

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
  scanned, unrolled = (clip.Transformer(16, 3, 2, 4.0, True, True, scan_layers=s)
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
  remat = clip.Transformer(16, 3, 2, 4.0, True, True, remat=True, scan_layers=True)
  np.testing.assert_allclose(jax.grad(loss(remat))(params, x)["params"]["resblocks_1"]["mlp"]
                             ["c_fc"]["kernel"],
                             want[0]["params"]["resblocks_1"]["mlp"]["c_fc"]["kernel"], atol=1e-5)
