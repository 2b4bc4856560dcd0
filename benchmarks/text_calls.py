"""Ablation: the caption sets of a step through the text tower as K calls of B rows each.

The trainer always encodes all K*B caption rows of a step in one batched call (clic_jax/train/
step.py), measured the faster on GPU and CPU (benchmarks/RESULTS.md). The benchmarks compare it with
K separate calls by wrapping the model, so the production step carries no switch for it.
"""
from __future__ import annotations


class SeparateTextCalls:
  """A CLIP module whose encode_text runs as `calls` calls, one per caption set.

  The step lays its rows out as [p1 block | p2 block | ... | negatives], so splitting the batched
  rows into `calls` equal chunks gives exactly one caption set per call.
  """

  def __init__(self, module, calls: int):
    self.module, self.calls = module, calls

  def apply(self, variables, x, method):
    import jax.numpy as jnp
    if method != "encode_text" or self.calls == 1:
      return self.module.apply(variables, x, method=method)
    return jnp.concatenate([self.module.apply(variables, chunk, method=method)
                            for chunk in jnp.split(x, self.calls)])
