"""CLIC on CLIPS ViT-L-14 at 224 pixels, the paper's best compositional model: configs/clipa_l14.py
(the method settings of configs/b32.py) with CLIPS's weights and its rows of 80 tokens.

  python -m clic_jax.main --config=configs/clips_l14.py --workdir=runs/clips_l14 \
      --config.data.csv=data/laion_cogvlm/train.csv --config.data.image_root=data/laion_cogvlm/images

CLIPS's text tower, like CLIPA's, is bidirectional and pools the row's last position, with
bert-base-uncased WordPiece tokens (clic_jax.get_tokenizer("ViT-L-14-CLIPS-224")): rows are never
cut short. On fewer than 8 devices: --config.mesh.fsdp=1.
"""
from configs import clipa_l14


def get_config():
  c = clipa_l14.get_config()
  c.model.name = "ViT-L-14-CLIPS-224"
  c.init_from = "hf-hub:UCSC-VLAA/ViT-L-14-CLIPS-224-Recap-DataComp-1B"
  c.data.context_length = 80
  return c
