"""Tiny architecture on a small dataset, every step logged: tests and quick experiments on a CPU.

  python -m clic_jax.main --config=configs/tiny.py --workdir=/tmp/tiny \
      --config.data.csv=DATA/train.csv --config.data.image_root=DATA/images --config.total_steps=30
"""
from clic_jax.train.config import default_config


def get_config():
  c = default_config()
  c.model.name = "tiny"
  c.model.dtype = "float32"
  c.init_from = ""                # random init: no weights are needed
  c.freeze = ()                   # from scratch the vision tower must learn too
  c.global_batch_size = 16
  c.total_steps = 30
  c.optim.lr = 1e-3
  c.optim.lr_start = 1e-4
  c.optim.lr_end = 1e-5
  c.optim.warmup_fraction = 0.1
  c.data.num_threads = 2
  c.data.prefetch_batches = 2
  c.data.pos_backend = "lexicon"
  c.log_every_steps = 1
  c.checkpoint_every_steps = 10
  c.keep_checkpoints = 2
  c.tensorboard = False
  c.export_open_clip = False
  return c
