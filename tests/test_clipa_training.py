"""A CLIPA-shaped model (bidirectional text pooled at the last position, averaged patch tokens, no
ln_pre) trains for a few CLIC steps and exports to open_clip with the same embeddings."""
from __future__ import annotations

import numpy as np
import open_clip

import clic_jax
from clic_jax.export import export_workdir
from clic_jax.models import rows_trimmable
from clic_jax.train import trainer
from clic_jax.train.checkpoint import load_params_for_eval
from configs import tiny
from test_backbones import embeddings, relative_error


def test_tiny_clipa_trains_clic_steps_and_exports(tmp_path, caption_dataset):
  csv_path, images = caption_dataset
  config = tiny.get_config()
  config.data.csv, config.data.image_root = str(csv_path), str(images)
  config.model.name, config.total_steps, config.checkpoint_every_steps = "tiny-clipa", 4, 4
  config.data.text_length_buckets = ""       # not exact for this tower (rows_trimmable)
  model, init = clic_jax.create_model("tiny-clipa", seed=config.seed)
  assert not rows_trimmable(model.cfg)
  summary = trainer.train(config, tmp_path / "wd")
  assert summary["step"] == 4
  _, params = load_params_for_eval(tmp_path / "wd")
  assert not np.allclose(np.asarray(init["text_projection"]), params["text_projection"])
  export_workdir(str(tmp_path / "wd"), str(tmp_path / "out"))
  tmodel = open_clip.create_model(f"local-dir:{tmp_path / 'out'}").eval()
  rng = np.random.default_rng(0)
  pixels = rng.standard_normal((2, 32, 32, 3)).astype(np.float32)
  tokens = clic_jax.get_tokenizer("tiny-clipa")(["a red cube", "a blue ball left of a cube"])
  for ours, theirs in embeddings(model, params, tmodel, pixels, tokens):
    assert relative_error(ours, theirs) < 1e-4
