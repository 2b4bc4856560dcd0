"""CLIC on CLIPS ViT-L-14 at 224 pixels, the paper's best compositional model; the method settings
of configs/b32.py.

  python -m clic_jax.main --config=configs/clips_l14.py --workdir=runs/clips_l14 \
      --config.data.csv=data/laion_cogvlm/train.csv --config.data.image_root=data/laion_cogvlm/images

CLIPS's text tower, like CLIPA's, is bidirectional and pools the row's last position, with
bert-base-uncased WordPiece tokens (clic_jax.get_tokenizer("ViT-L-14-CLIPS-224")) in rows of 80:
rows are never cut short (data.text_length_buckets=""). Remat on and FSDP over 8 devices as in
configs/l14.py; on fewer devices: --config.mesh.fsdp=1.
"""
from clic_jax.train.config import default_config


def get_config():
  c = default_config()
  c.model.name = "ViT-L-14-CLIPS-224"
  c.init_from = "hf-hub:UCSC-VLAA/ViT-L-14-CLIPS-224-Recap-DataComp-1B"
  c.model.remat = True
  c.mesh.fsdp = 8
  c.global_batch_size = 800
  c.num_epochs = 1
  c.data.context_length = 80
  c.data.text_length_buckets = ""
  return c
