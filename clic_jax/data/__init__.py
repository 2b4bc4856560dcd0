"""Input data for CLIC: sources, dataset preparation, image pairs, caption variants, POS tagging.

Text side (no heavy imports, usable without jax):
  sentences    long caption -> filtered sentences, like the reference's dataset script (spec A2)
  pos_tagging  coarse Universal POS tags: spaCy when a pipeline is installed, else an offline lexicon
  captions     caption variants p1..pK and hard negatives (spec A8-A9, decisions H6-H8, H11)
"""
