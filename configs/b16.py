"""CLIC on OpenAI ViT-B-16 (QuickGELU), the reference's recipe at global batch 800.

  python -m clic_jax.main --config=configs/b16.py --workdir=runs/b16 \
      --config.data.csv=data/laion_cogvlm/train.csv --config.data.image_root=data/laion_cogvlm/images

Other open_clip weights: --config.init_from=laion2b_s34b_b88k --config.model.name=ViT-B-16
"""
from clic_jax.train.config import default_config


def get_config():
  c = default_config()
  c.model.name = "ViT-B-16-quickgelu"
  c.init_from = "openai"
  c.global_batch_size = 800
  c.num_epochs = 1
  return c
