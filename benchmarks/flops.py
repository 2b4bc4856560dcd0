"""FLOPs of one CLIC or CLIP training step, counted from the architecture.

Used for model FLOPs utilization (MFU = step_flops / step_time / peak FLOP/s). Only matrix
multiplications are counted, as 2 * m * n * k for an (m, k) @ (k, n) product (the usual MFU
convention; LayerNorm, GELU, softmax and the optimizer add a few percent that are not "model FLOPs").

One transformer block, sequence length T, width W, MLP hidden H = mlp_ratio * W, per sequence:

    block(T, W, H) = 2*T*W*3W  (fused q,k,v projection)
                   + 2*T*T*W   (q @ k^T, all heads together)
                   + 2*T*T*W   (attention @ v)
                   + 2*T*W*W   (output projection)
                   + 2*T*W*H   (c_fc)  + 2*T*H*W (c_proj)
                   = 8*T*W^2 + 4*T^2*W + 4*T*W*H

The causal text mask is not subtracted: dense attention kernels compute the full T x T scores.

Each tower's last block runs for its pooled token only (clic_jax's `pooled_last_block`, the
default: the class token, the end-of-text token): keys and values for all T tokens, everything
else for one:

    pooled_block(T, W, H) = 2*T*W*2W + 2*W*W + 4*T*W + 2*W*W + 4*W*H
                          = 4*T*W^2 + 4*W^2 + 4*T*W + 4*W*H

`pooled_last_block=False` counts L full blocks, what open_clip computes.

Vision tower forward, per image (patch p, grid g = image_size / p, T_v = g^2 + 1 tokens, width W_v):
    vision_fwd = 2 * g^2 * (3 p^2) * W_v        (patch-embedding convolution)
               + (L_v - 1) * block(T_v, W_v, H_v) + pooled_block(T_v, W_v, H_v)
               + 2 * W_v * E                   (projection of the class token, E = embed_dim)

Text tower forward, per caption (context C = 77, width W_t):
    text_fwd = (L_t - 1) * block(C, W_t, H_t) + pooled_block(C, W_t, H_t)
             + 2 * W_t * E                                 (pooled EOT token projection)
The token embedding is a gather (0 FLOPs forward; its backward is a scatter-add, also not counted).

Backward = 2 x forward (one product for the input gradient, one for the weight gradient), so a
trained tower costs 3 x its forward. The frozen vision tower costs its forward only.

Loss (embeddings of size E, B images, P positive sets): the logits s * I @ T_i^T are
2 * B * B * E per set; the backward needs only d(texts) (images are constants), another
2 * B * B * E. The hard-negative and uni-modal terms are O(B * E) and ignored.

    CLIC step (K = P + 1 = 5 captions per image, vision frozen):
        B * vision_fwd + 3 * K * B * text_fwd + 4 * P * B^2 * E
    CLIP step (1 caption per image, vision frozen):
        B * vision_fwd + 3 * B * text_fwd + 4 * B^2 * E
    With an unfrozen vision tower, vision_fwd becomes 3 * vision_fwd (input gradient of the
    first layer and the patch conv weight gradient included).

Not model FLOPs, reported separately as `optimizer`: AdamW plus the step's finiteness guard are
elementwise, about OPTIMIZER_FLOPS_PER_PARAM = 27 FLOPs per trainable parameter as XLA counts them
(measured: the batch-independent part of XLA's count for the tiny model). Negligible for ViT-B
(~2 GFLOP of ~800), but half of the tiny model's CLIP step, whose 49408 x 64 token embedding dwarfs
its two 64-wide layers.

Cross-check: `xla_step_flops` compiles the real `make_train_step` and reads XLA's own count
(`compiled.cost_analysis()["flops"]`, which counts every op, elementwise ones at 1 FLOP per element).
Compared quantity: XLA's count vs `total + optimizer`. Measured on this CPU with every block full
(before the pooled last block): tiny batch 4 CLIC 1.32e9 vs 1.19e9 (XLA +11 %, LayerNorm/softmax/
GELU), CLIP 3.50e8 vs 3.22e8 (+9 %); ViT-B-32 batch 8 CLIC 0.801 vs 0.788 TFLOP (+1.7 %), CLIP
0.218 vs 0.216 TFLOP (+1 %). The test checks the tiny model within 20 %, pooled and full (ViT-B-32
compiles take ~30 s each, too slow for the test budget).
"""
from __future__ import annotations

import dataclasses

from clic_jax.models import ClipConfig, get_model_config

NUM_POSITIVES = 4   # p1..p4 (docs/method.md, "Caption variants"); plus one hard negative per image
OPTIMIZER_FLOPS_PER_PARAM = 27


def block_flops(seq: int, width: int, hidden: int) -> int:
  """Forward matmul FLOPs of one pre-LN transformer block for one sequence."""
  return 8 * seq * width * width + 4 * seq * seq * width + 4 * seq * width * hidden


def pooled_block_flops(seq: int, width: int, hidden: int) -> int:
  """Forward matmul FLOPs of a block run for one query (keys and values of all `seq` tokens)."""
  return 4 * seq * width * width + 4 * width * width + 4 * seq * width + 4 * width * hidden


def tower_blocks_flops(layers: int, seq: int, width: int, hidden: int,
                       pooled_last_block: bool = True) -> int:
  if not pooled_last_block:
    return layers * block_flops(seq, width, hidden)
  return (layers - 1) * block_flops(seq, width, hidden) + pooled_block_flops(seq, width, hidden)


def vision_forward_flops(cfg: ClipConfig, pooled_last_block: bool = True) -> int:
  v = cfg.vision
  tokens = v.grid * v.grid + 1
  patch_embed = 2 * v.grid * v.grid * (3 * v.patch_size * v.patch_size) * v.width
  hidden = int(v.width * v.mlp_ratio)
  # Averaged patch tokens (CLIPA, CLIPS: pool_type "avg") need every token of the last block.
  pooled = pooled_last_block and v.pool_type == "tok"
  return (patch_embed + tower_blocks_flops(v.layers, tokens, v.width, hidden, pooled)
          + 2 * v.width * cfg.embed_dim)


def text_forward_flops(cfg: ClipConfig, length: int | None = None,
                       pooled_last_block: bool = True) -> int:
  """Per caption; `length` = tokens actually run (a batch cut to its longest caption), default C."""
  t = cfg.text
  hidden = int(t.width * t.mlp_ratio)
  return (tower_blocks_flops(t.layers, length or t.context_length, t.width, hidden,
                             pooled_last_block) + 2 * t.width * cfg.embed_dim)


def text_trainable_params(cfg: ClipConfig) -> int:
  """Parameters of the text tower + logit_scale: what trains when the vision tower is frozen."""
  t = cfg.text
  w, h = t.width, int(t.width * t.mlp_ratio)
  block = (3 * w * w + 3 * w) + (w * w + w) + (w * h + h) + (h * w + w) + 4 * w
  return (t.vocab_size * w + t.context_length * w + t.layers * block + 2 * w + w * cfg.embed_dim
          + 1)


@dataclasses.dataclass(frozen=True)
class StepFlops:
  vision: int
  text: int
  loss: int
  optimizer: int = 0   # elementwise, not part of `total` (the model FLOPs used for MFU)

  @property
  def total(self) -> int:
    return self.vision + self.text + self.loss

  def as_dict(self) -> dict:
    return {"vision_flops": self.vision, "text_flops": self.text, "loss_flops": self.loss,
            "optimizer_flops": self.optimizer, "total_flops": self.total}


def step_flops(model: str | ClipConfig, batch_size: int, kind: str = "clic",
               freeze_vision: bool = True, num_positives: int = NUM_POSITIVES,
               text_length: int | None = None, pooled_last_block: bool = True) -> StepFlops:
  """Matmul FLOPs of one training step of `kind` ("clic" or "clip") on `batch_size` images."""
  cfg = get_model_config(model)
  if kind == "clic":
    texts_per_image, sets = num_positives + 1, num_positives
  elif kind == "clip":
    texts_per_image, sets = 1, 1
  else:
    raise ValueError(f"kind must be 'clic' or 'clip', got {kind!r}.")
  vision = batch_size * vision_forward_flops(cfg, pooled_last_block) * (1 if freeze_vision else 3)
  text = 3 * texts_per_image * batch_size * text_forward_flops(cfg, text_length, pooled_last_block)
  loss = 4 * sets * batch_size * batch_size * cfg.embed_dim
  optimizer = OPTIMIZER_FLOPS_PER_PARAM * text_trainable_params(cfg)  # frozen vision: no state
  return StepFlops(vision, text, loss, optimizer)


def xla_step_flops(model: str, batch_size: int, kind: str = "clic",
                   pooled_last_block: bool = True) -> float:
  """XLA's FLOP count of the compiled clic_jax train step (fp32, vision frozen); nothing runs."""
  import jax
  import jax.numpy as jnp

  from clic_jax.models import build_model
  from clic_jax.train import optimizer as opt_lib
  from clic_jax.train import step as step_lib
  from clic_jax.train.config import loss_spec

  # Unrolled blocks: XLA's cost analysis counts a loop body once, not once per iteration.
  module = build_model(model, scan_layers=False).running(pooled_last_block=pooled_last_block)
  cfg = module.cfg
  images = jax.ShapeDtypeStruct((batch_size, cfg.vision.image_size, cfg.vision.image_size, 3),
                                jnp.float32)
  texts_per_image = NUM_POSITIVES + 1 if kind == "clic" else 1
  texts = jax.ShapeDtypeStruct((batch_size, texts_per_image, cfg.text.context_length), jnp.int32)
  params = jax.eval_shape(
      module.init, jax.random.key(0), jnp.zeros((1,) + images.shape[1:]),
      jnp.zeros((1, cfg.text.context_length), jnp.int32))["params"]
  tx = opt_lib.make_optimizer(params, total_steps=10, lr=1e-6, lr_start=1e-7, lr_end=1e-8,
                              warmup_fraction=0.2, freeze=("^visual/",))
  state = jax.eval_shape(lambda p: step_lib.create_state(p, tx, ("^visual/",)), params)
  step = step_lib.make_train_step(module, tx, kind, loss_spec())
  compiled = jax.jit(step).lower(state, {"images": images, "texts": texts}).compile()
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):   # older jax returned one dict per device
    analysis = analysis[0]
  return float(analysis["flops"])


def main() -> None:
  import argparse
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="ViT-B-32-quickgelu")
  parser.add_argument("--batch", type=int, default=200)
  parser.add_argument("--xla", action="store_true", help="also compile the step and print XLA's count")
  args = parser.parse_args()
  for kind in ("clic", "clip"):
    count = step_flops(args.model, args.batch, kind)
    line = (f"{args.model} {kind} step, batch {args.batch}: {count.total / 1e9:.1f} GFLOP "
            f"(vision {count.vision / 1e9:.1f}, text {count.text / 1e9:.1f}, "
            f"loss {count.loss / 1e9:.3f}, optimizer {count.optimizer / 1e9:.2f})")
    if args.xla:
      xla = xla_step_flops(args.model, args.batch, kind)
      line += (f"; XLA {xla / 1e9:.1f} GFLOP = {xla / (count.total + count.optimizer):.3f} x "
               "(count + optimizer)")
    print(line)


if __name__ == "__main__":
  main()
