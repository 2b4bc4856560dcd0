"""CLIP in Flax linen, computing exactly what open_clip's `CLIP` computes.

Parameter names mirror open_clip's state-dict names (`visual/conv1`, `visual/transformer/
resblocks_3/attn/in_proj`, `token_embedding`, `ln_final`, ...), so conversion to and from PyTorch is
a short table in `clic_jax.interop`. Images are NHWC, normalized; tokens are int32 (N, L).

Precision: parameters are float32; `Execution.dtype` is the compute dtype (bfloat16 on
accelerators).
LayerNorm, softmax and the final features are computed in float32, like open_clip's LayerNormFp32.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from clic_jax.models.registry import ClipConfig, TextConfig, VisionConfig, rows_trimmable

Dtype = Any


def quick_gelu(x):
  return x * jax.nn.sigmoid(1.702 * x)


def exact_gelu(x):
  # torch.nn.GELU() is the erf form; flax's default is the tanh approximation, which differs ~1e-3.
  return jax.nn.gelu(x, approximate=False)


def tanh_gelu(x):
  # torch.nn.GELU(approximate="tanh"), which CLIPS's text tower uses.
  return jax.nn.gelu(x, approximate=True)


def activation(quick: bool, tanh: bool) -> Callable:
  return quick_gelu if quick else tanh_gelu if tanh else exact_gelu


def _normal(std: float) -> Callable:
  return nn.initializers.normal(stddev=std)


class LayerNorm(nn.Module):
  """torch LayerNorm computed in float32; output in `dtype` (like LayerNormFp32)."""
  dtype: Dtype = jnp.float32
  eps: float = 1e-5

  @nn.compact
  def __call__(self, x):
    features = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (features,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
    x32 = x.astype(jnp.float32)
    mean = x32.mean(-1, keepdims=True)
    var = jnp.square(x32 - mean).mean(-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + self.eps) * scale + bias
    return y.astype(self.dtype)


def attention(q, k, v, causal: bool, implementation: str | None = None, pad_to: int = 1):
  """Scaled dot-product attention over (B, T, H, D); `pad_to` pads T to a multiple, exactly.

  cuDNN's trainable flash attention rejects odd sequence lengths (the text tower's 77; jax checks
  T % 2 whenever the kernel is differentiated), so the "cudnn" path pads T with zero tokens and
  slices them off again. The result is unchanged: with a causal mask no real query sees a later
  (padded) key, and without one `key_value_seq_lengths` masks the padded keys out.
  """
  t = q.shape[1]
  pad = (-t) % pad_to
  if not pad:
    return jax.nn.dot_product_attention(q, k, v, is_causal=causal, implementation=implementation)
  widths = ((0, 0), (0, pad), (0, 0), (0, 0))
  q, k, v = (jnp.pad(a, widths) for a in (q, k, v))
  lengths = None if causal else jnp.full((q.shape[0],), t, jnp.int32)
  out = jax.nn.dot_product_attention(q, k, v, is_causal=causal, key_value_seq_lengths=lengths,
                                     implementation=implementation)
  return out[:, :t]


def _rows_at(x, index):
  """x (B, T, ...) -> (B, 1, ...): row index[b] of each sequence b."""
  return jnp.take_along_axis(x, index.reshape((-1, 1) + (1,) * (x.ndim - 2)), axis=1)


# cuDNN's fused attention wants even lengths for training; 8 keeps the padded tiles aligned.
CUDNN_SEQ_MULTIPLE = 8


@dataclasses.dataclass(frozen=True)
class Execution:
  """How the transformer blocks run. None of it changes the parameters, and the outputs only up to
  float rounding (bfloat16 aside), so one checkpoint serves every combination."""
  dtype: Dtype = jnp.float32          # compute dtype; parameters stay float32
  remat: bool = False                 # rematerialize each block in the backward pass
  attention_impl: str | None = None   # None: XLA picks; "cudnn": flash attention on NVIDIA GPUs
  # None: run the blocks under lax.scan on CPU, unrolled elsewhere. XLA:CPU fuses the elementwise
  # residual-stream chain of an unrolled stack into every block's backward, recomputing it per
  # block (quadratic in depth: a 12-block text backward 1.6x slower than under scan,
  # benchmarks/RESULTS.md); a loop iteration is a fusion boundary. The parameters keep open_clip's
  # per-block layout (resblocks_0, ...) either way: they are stacked for the scan at apply time.
  scan_layers: bool | None = None
  # With a query_index, run the last block for that position only (~7% fewer FLOPs in a 12-block
  # tower); False runs it for every token and then picks the position, as open_clip does.
  pooled_last_block: bool = True


@dataclasses.dataclass(frozen=True)
class Blocks:
  """What a stack of residual attention blocks is: the shapes and the functions that fix its
  parameters and outputs (a tower config plus the two options the tower itself decides)."""
  width: int
  layers: int
  heads: int
  mlp_ratio: float
  causal: bool
  quick_gelu: bool
  gelu_tanh: bool = False
  norm_eps: float = 1e-5

  @classmethod
  def of(cls, tower: VisionConfig | TextConfig, causal: bool, quick_gelu: bool) -> "Blocks":
    return cls(tower.width, tower.layers, tower.heads, tower.mlp_ratio, causal, quick_gelu,
               tower.gelu_tanh, tower.norm_eps)


class MultiHeadAttention(nn.Module):
  """torch.nn.MultiheadAttention with a fused input projection (q, k, v stacked in that order)."""
  width: int
  heads: int
  causal: bool
  init_std: float
  out_std: float
  dtype: Dtype = jnp.float32
  attention_impl: str | None = None   # None: XLA picks; "cudnn": flash attention on GPUs.

  @nn.compact
  def __call__(self, x, query_index=None):
    """x (B, T, W) -> (B, T, W); with `query_index` (B,) only those queries: (B, 1, W).

    Initialization always runs the full path (it creates the parameters the one-query path reads).
    """
    if query_index is not None and not self.is_initializing():
      return self._one_query(x, query_index)
    b, t, _ = x.shape
    head_dim = self.width // self.heads
    qkv = nn.Dense(3 * self.width, dtype=self.dtype, kernel_init=_normal(self.init_std),
                   name="in_proj")(x)
    q, k, v = jnp.split(qkv.reshape(b, t, 3, self.heads, head_dim), 3, axis=2)
    out = attention(q[:, :, 0], k[:, :, 0], v[:, :, 0], self.causal, self.attention_impl,
                    CUDNN_SEQ_MULTIPLE if self.attention_impl == "cudnn" else 1)
    out = nn.Dense(self.width, dtype=self.dtype, kernel_init=_normal(self.out_std),
                   name="out_proj")(out.reshape(b, t, self.width))
    return out if query_index is None else _rows_at(out, query_index)

  def _one_query(self, x, query_index):
    """Attention output at one position per sequence: keys and values of every token, the query
    of one. The same parameters as the full path, read directly (in_proj stacks q, k, v). One
    query row is a small product, so it is written out rather than sent to a fused kernel."""
    b, t, w = x.shape
    head_dim = w // self.heads
    p = jax.tree.map(lambda a: a.astype(self.dtype), self.variables["params"])
    x = x.astype(self.dtype)
    kernel, bias = p["in_proj"]["kernel"], p["in_proj"]["bias"]
    kv = (x @ kernel[:, w:] + bias[w:]).reshape(b, t, 2, self.heads, head_dim)
    q = (_rows_at(x, query_index)[:, 0] @ kernel[:, :w] + bias[:w]).reshape(b, self.heads, head_dim)
    logits = jnp.einsum("bhd,bthd->bht", q, kv[:, :, 0]).astype(jnp.float32) / math.sqrt(head_dim)
    if self.causal:      # the query at position i sees keys 0..i
      visible = jnp.arange(t)[None, None, :] <= query_index[:, None, None]
      logits = jnp.where(visible, logits, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    out = jnp.einsum("bht,bthd->bhd", weights, kv[:, :, 1]).reshape(b, 1, w)
    return out @ p["out_proj"]["kernel"] + p["out_proj"]["bias"]


class Mlp(nn.Module):
  width: int
  hidden: int
  quick_gelu: bool
  fc_std: float
  proj_std: float
  dtype: Dtype = jnp.float32
  gelu_tanh: bool = False

  @nn.compact
  def __call__(self, x):
    x = nn.Dense(self.hidden, dtype=self.dtype, kernel_init=_normal(self.fc_std), name="c_fc")(x)
    x = activation(self.quick_gelu, self.gelu_tanh)(x)
    return nn.Dense(self.width, dtype=self.dtype, kernel_init=_normal(self.proj_std),
                    name="c_proj")(x)


class ResidualAttentionBlock(nn.Module):
  blocks: Blocks          # its `layers` (the depth of the whole stack) sets the init scale
  run: Execution = Execution()

  @nn.compact
  def __call__(self, x, query_index=None):
    """x (B, T, W) -> (B, T, W); with `query_index` (B,) the output at those positions (B, 1, W)."""
    c, dtype = self.blocks, self.run.dtype
    attn_std = c.width ** -0.5
    proj_std = attn_std * (2 * c.layers) ** -0.5
    fc_std = (2 * c.width) ** -0.5
    attn = MultiHeadAttention(c.width, c.heads, c.causal, attn_std, proj_std, dtype,
                              self.run.attention_impl, name="attn")
    mlp = Mlp(c.width, int(c.width * c.mlp_ratio), c.quick_gelu, fc_std, proj_std, dtype,
              c.gelu_tanh, name="mlp")
    attended = attn(LayerNorm(dtype, c.norm_eps, name="ln_1")(x), query_index)
    if query_index is not None:            # one query per sequence: keep its residual row only
      x = _rows_at(x, query_index)
    x = x + attended
    x = x + mlp(LayerNorm(dtype, c.norm_eps, name="ln_2")(x))
    return x


class Transformer(nn.Module):
  blocks: Blocks
  run: Execution = Execution()

  @nn.compact
  def __call__(self, x, query_index=None):
    """x (B, T, W) -> every token's output (B, T, W), or with `query_index` (B,) int only the
    output at one position per sequence (B, W).

    The pooled form is what the towers need (CLIP pools the end-of-text token or the class token):
    the last block then runs its query, attention output and MLP for that one position, while
    keys and values still come from every token. The same numbers up to float rounding
    (tests/test_attention.py), and about 5/6 of one block's FLOPs fewer (7% of a 12-block tower),
    forward and backward.
    """
    run, layers = self.run, self.blocks.layers
    last_index = query_index if run.pooled_last_block else None   # the last block's queries
    scan = jax.default_backend() == "cpu" if run.scan_layers is None else run.scan_layers
    if scan and not self.is_initializing():
      x = self._scanned(x, last_index)
    else:
      block = nn.remat(ResidualAttentionBlock) if run.remat else ResidualAttentionBlock
      for i in range(layers):
        x = block(self.blocks, run, name=f"resblocks_{i}")(
            x, last_index if i == layers - 1 else None)
    if query_index is None:
      return x
    return (x if last_index is not None else _rows_at(x, query_index))[:, 0]

  def _scanned(self, x, query_index):
    params, layers = self.variables["params"], self.blocks.layers
    scanned = layers - (query_index is not None)   # the pooled last block runs after the loop
    template = ResidualAttentionBlock(self.blocks, self.run, parent=None)   # unbound: pure apply

    def body(carry, block_params):
      return template.apply({"params": block_params}, carry), None

    if self.run.remat:
      body = jax.checkpoint(body)
    if scanned:
      stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves),
                             *[params[f"resblocks_{i}"] for i in range(scanned)])
      x, _ = jax.lax.scan(body, x, stacked)
    if query_index is None:
      return x
    last = lambda p, x, i: template.apply({"params": p}, x, i)
    if self.run.remat:
      last = jax.checkpoint(last)
    return last(params[f"resblocks_{layers - 1}"], x, query_index)   # (B, 1, W)


class VisionTransformer(nn.Module):
  cfg: VisionConfig
  output_dim: int
  quick_gelu: bool
  run: Execution = Execution()

  @nn.compact
  def __call__(self, images, patch_tokens: bool = False):
    """images (B, H, W, 3) -> (B, output_dim); with patch_tokens also every patch's output,
    (B, grid*grid, width) (dense features, e.g. for a VLM or dense supervision): after ln_post,
    except where ln_post follows the pooling (final_ln_after_pool), as open_clip returns them."""
    c, dtype = self.cfg, self.run.dtype
    scale = c.width ** -0.5
    x = nn.Conv(c.width, (c.patch_size, c.patch_size), strides=(c.patch_size, c.patch_size),
                padding="VALID", use_bias=False, dtype=dtype, name="conv1")(images.astype(dtype))
    b = x.shape[0]
    x = x.reshape(b, -1, c.width)                       # (B, grid*grid, width), row-major patches
    cls = self.param("class_embedding", _normal(scale), (c.width,), jnp.float32)
    pos = self.param("positional_embedding", _normal(scale), (c.grid * c.grid + 1, c.width),
                     jnp.float32)
    x = jnp.concatenate([jnp.broadcast_to(cls.astype(dtype), (b, 1, c.width)), x], axis=1)
    x = x + pos.astype(dtype)
    if not c.no_ln_pre:                 # CLIPA/CLIPS have no ln_pre (and no ln_pre parameters)
      x = LayerNorm(dtype, c.norm_eps, name="ln_pre")(x)
    transformer = Transformer(Blocks.of(c, causal=False, quick_gelu=self.quick_gelu), self.run,
                              name="transformer")
    ln_post = LayerNorm(jnp.float32, c.norm_eps, name="ln_post")
    proj = self.param("proj", _normal(scale), (c.width, self.output_dim), jnp.float32)
    if c.pool_type == "tok" and not patch_tokens:
      x = transformer(x, jnp.zeros((b,), jnp.int32))     # the class token only: (B, W)
      return ln_post(x) @ proj                           # LN is per token
    x = transformer(x)                                   # every token: (B, 1 + grid*grid, W)
    if not c.final_ln_after_pool:
      x = ln_post(x)
    pooled = x[:, 0] if c.pool_type == "tok" else x[:, 1:].astype(jnp.float32).mean(axis=1)
    if c.final_ln_after_pool:
      pooled = ln_post(pooled)
    return (pooled @ proj, x[:, 1:]) if patch_tokens else pooled @ proj


# The position each text row is pooled at, by open_clip's text pool_type.
TEXT_POOL_INDEX: dict[str, Callable] = {
    # the end-of-text token, which has the largest id in CLIP's vocabulary
    "argmax": lambda tokens: jnp.argmax(tokens, axis=-1),
    # the row's last position (CLIPA/CLIPS: a padding position or the truncated end)
    "last": lambda tokens: jnp.full(tokens.shape[:1], tokens.shape[1] - 1, jnp.int32),
    "first": lambda tokens: jnp.zeros(tokens.shape[:1], jnp.int32),
}


class CLIP(nn.Module):
  """open_clip's CLIP: `visual` tower plus a text tower whose parameters live at the top level."""
  cfg: ClipConfig
  run: Execution = Execution()

  def setup(self):
    c: TextConfig = self.cfg.text
    self.visual = VisionTransformer(self.cfg.vision, self.cfg.embed_dim, self.cfg.quick_gelu,
                                    self.run)
    self.token_embedding = nn.Embed(c.vocab_size, c.width, embedding_init=_normal(0.02),
                                    param_dtype=jnp.float32, dtype=self.run.dtype)
    self.positional_embedding = self.param("positional_embedding", _normal(0.01),
                                           (c.context_length, c.width), jnp.float32)
    self.transformer = Transformer(Blocks.of(c, c.causal, self.cfg.quick_gelu), self.run)
    self.ln_final = LayerNorm(jnp.float32, c.norm_eps)
    self.text_projection = self.param("text_projection", _normal(c.width ** -0.5),
                                      (c.width, self.cfg.embed_dim), jnp.float32)
    self.logit_scale = self.param("logit_scale", nn.initializers.constant(math.log(1 / 0.07)),
                                  (), jnp.float32)

  def running(self, **changes) -> "CLIP":
    """The same model with other Execution options, e.g. `.running(pooled_last_block=False)`."""
    return self.clone(run=dataclasses.replace(self.run, **changes))

  def encode_image(self, images):
    """images: (N, H, W, 3) float, normalized. Returns unnormalized float32 features (N, D)."""
    return self.visual(images)

  def encode_image_patches(self, images):
    """(image features (N, D) as encode_image, patch tokens after ln_post (N, grid*grid, width))."""
    return self.visual(images, patch_tokens=True)

  def encode_text(self, tokens):
    """tokens: (N, L) int, L <= context_length. Returns unnormalized float32 features (N, D).

    Rows shorter than context_length are exact for causal towers pooling the end-of-text token
    (padding columns cut off, see `rows_trimmable`); for the others they are padded back first,
    because every position, padding included, reaches their pooled token.
    """
    c = self.cfg.text
    tokens = jnp.asarray(tokens)
    if not rows_trimmable(self.cfg) and tokens.shape[1] < c.context_length:
      tokens = jnp.pad(tokens, ((0, 0), (0, c.context_length - tokens.shape[1])),
                       constant_values=c.pad_id)
    x = self.token_embedding(tokens)
    x = x + self.positional_embedding[: tokens.shape[1]].astype(self.run.dtype)
    pooled = self.transformer(x, TEXT_POOL_INDEX[c.pool_type](tokens))     # (N, W)
    return self.ln_final(pooled) @ self.text_projection

  def __call__(self, images, tokens):
    """Returns (image_features, text_features, logit_scale multiplier exp(logit_scale))."""
    return self.encode_image(images), self.encode_text(tokens), jnp.exp(self.logit_scale)
