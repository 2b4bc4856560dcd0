"""CLIC on CLIPA ViT-L-14 (UCSC-VLAA's DataComp-1B weights), the method settings of configs/b32.py.

  python -m clic_jax.main --config=configs/clipa_l14.py --workdir=runs/clipa_l14 \
      --config.data.csv=data/laion_cogvlm/train.csv --config.data.image_root=data/laion_cogvlm/images

CLIPA's text tower is bidirectional and pools the row's last position, with bert-base-uncased
WordPiece tokens (clic_jax.get_tokenizer("ViT-L-14-CLIPA")) in rows of 32: every padding position
reaches the embedding, so rows are never cut short (data.text_length_buckets=""). Remat on and
FSDP over 8 devices as in configs/l14.py; on fewer devices: --config.mesh.fsdp=1.
"""
from clic_jax.train.config import default_config


def get_config():
  c = default_config()
  c.model.name = "ViT-L-14-CLIPA"
  c.init_from = "hf-hub:UCSC-VLAA/ViT-L-14-CLIPA-datacomp1B"
  c.model.remat = True
  c.mesh.fsdp = 8
  c.global_batch_size = 800
  c.num_epochs = 1
  c.data.context_length = 32
  c.data.text_length_buckets = ""
  return c
