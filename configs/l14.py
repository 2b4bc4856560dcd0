"""CLIC on OpenAI ViT-L-14 (QuickGELU). Remat on; FSDP over 8 devices keeps Adam state small.

  python -m clic_jax.main --config=configs/l14.py --workdir=runs/l14 \
      --config.data.csv=data/laion_cogvlm/train.csv --config.data.image_root=data/laion_cogvlm/images

On fewer than 8 devices: --config.mesh.fsdp=1 (or the device count).
"""
from clic_jax.train.config import default_config


def get_config():
  c = default_config()
  c.model.name = "ViT-L-14-quickgelu"
  c.init_from = "openai"
  c.model.remat = True
  c.mesh.fsdp = 8
  c.global_batch_size = 800
  c.num_epochs = 1
  return c
