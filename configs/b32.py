"""The reference's main CLIC run: OpenAI ViT-B-32 (QuickGELU), global batch 800, one epoch.

  python -m clic_jax.main --config=configs/b32.py --workdir=runs/b32 \
      --config.data.csv=data/laion_cogvlm/train.csv --config.data.image_root=data/laion_cogvlm/images

Prepared ArrayRecord shards (python -m clic_jax.data.prepare) read faster than the CSV:
  --config.data.csv= --config.data.arrayrecord_dir=data/laion_cogvlm_ar
"""
from clic_jax.train.config import default_config


def get_config():
  c = default_config()
  c.model.name = "ViT-B-32-quickgelu"
  c.init_from = "openai"
  c.global_batch_size = 800
  c.num_epochs = 1
  return c
