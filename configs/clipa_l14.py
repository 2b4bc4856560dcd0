"""CLIC on CLIPA ViT-L-14 (UCSC-VLAA's DataComp-1B weights): configs/l14.py (the method settings
of configs/b32.py, remat, FSDP over 8 devices) with CLIPA's weights and its rows of 32 tokens.

  python -m clic_jax.main --config=configs/clipa_l14.py --workdir=runs/clipa_l14 \
      --config.data.csv=data/laion_cogvlm/train.csv --config.data.image_root=data/laion_cogvlm/images

CLIPA's text tower is bidirectional and pools the row's last position, with bert-base-uncased
WordPiece tokens (clic_jax.get_tokenizer("ViT-L-14-CLIPA")): every padding position reaches the
embedding, so rows are never cut short (data.text_length_buckets="", which the run spec also
enforces). Its images are normalized with ImageNet's mean/std (models.image_normalization): the
single images always, the concatenated ones too (data.concat_image_norm="imagenet"). On fewer than
8 devices: --config.mesh.fsdp=1.
"""
from configs import l14


def get_config():
  c = l14.get_config()
  c.model.name = "ViT-L-14-CLIPA"
  c.init_from = "hf-hub:UCSC-VLAA/ViT-L-14-CLIPA-datacomp1B"
  c.data.context_length = 32
  c.data.text_length_buckets = ""
  c.data.concat_image_norm = "imagenet"
  return c
