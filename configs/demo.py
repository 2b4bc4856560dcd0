"""Offline demo: toy world -> pretrained toy CLIP -> plain CLIP fine-tuning vs CLIC -> side by side.

  python -m clic_jax.main --config=configs/demo.py --workdir=runs/demo

Needs no download and no accelerator; about 10 minutes on a 2-core CPU. See clic_jax/demo/.
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
  d.binding = dict(num_train=1000, num_twins=200)   # the binding probes (clic_jax.evaluate.binding)
  # The pretrained model (clic_jax/demo/pretraining.py), the recipe that reaches the paper's
  # regime (experiments/README.md): an image tower supervised on the scene structure for 3000
  # steps (24 minutes on a 2-core CPU, so the tower made by exactly these settings ships with
  # clic_jax and is used instead; change a vision_* value and it is trained here), then a text
  # tower aligned to it (LiT) for 100 steps, before it learns to bind.
  d.pretrain = ml_collections.ConfigDict(dict(
      vision_steps=3000, vision_batch=64, vision_lr=2e-3,
      text_steps=100, text_batch=128, text_lr=5e-4))
  # Both fine-tuning runs: same data, budget and optimizer; vision frozen as in the paper.
  finetune = dict(total_steps=150, freeze=("^visual/",),
                  optim=dict(lr=1e-4, lr_start=1e-6, lr_end=1e-6, warmup_fraction=0.1))
  d.clip_finetune = ml_collections.ConfigDict(dict(finetune, step_kinds="clip"))
  # CLIC as in the paper: CLIC and CLIP steps alternating.
  d.clic = ml_collections.ConfigDict(dict(finetune, step_kinds=""))
  return c
