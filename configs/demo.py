"""Offline demo: toy world -> CLIP pretraining from scratch -> CLIC fine-tuning -> before/after table.

  python -m clic_jax.main --config=configs/demo.py --workdir=runs/demo

Needs no download and no accelerator; about 10 minutes on a 2-core CPU. See clic_jax/demo.py.
"""
import ml_collections

from clic_jax.train.config import default_config


def get_config():
  c = default_config()
  c.demo = True
  c.model.name = "tiny-64"
  c.model.dtype = "float32"
  c.init_from = ""
  c.global_batch_size = 64
  c.data.num_threads = 2
  c.data.pos_backend = "lexicon"
  c.data.context_length = 32      # toy captions are short; text cost scales with the length
  c.log_every_steps = 25
  c.checkpoint_every_steps = 1000
  c.keep_checkpoints = 1
  c.tensorboard = True

  d = c.demo_settings = ml_collections.ConfigDict()
  d.num_train = 3000
  d.num_test = 400
  d.world_seed = 0
  d.image_size = 64
  d.eval_batch_size = 256
  # Stage 1: plain CLIP from scratch, everything trainable (stands in for OpenAI's pretraining).
  d.pretrain = ml_collections.ConfigDict(dict(
      total_steps=300, step_kinds="clip", freeze=(),
      optim=dict(lr=3e-4, lr_start=1e-6, lr_end=1e-5, warmup_fraction=0.1)))
  # Stage 2: CLIC as in the paper: vision frozen, CLIC and CLIP steps alternating.
  d.clic = ml_collections.ConfigDict(dict(
      total_steps=150, step_kinds="", freeze=("^visual/",),
      optim=dict(lr=1e-4, lr_start=1e-6, lr_end=1e-6, warmup_fraction=0.1)))
  return c
