"""The model decides the training input: its tokenizer (clic_jax.get_tokenizer), whether rows are
cut short (models.rows_trimmable), its context length and its single-image normalization; the
export and the evaluator take its preprocessing."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from PIL import Image

from bert_vocab import write_bert_tokenizer
from clic_jax.data import pipeline as pipeline_lib
from clic_jax.evaluate import preprocess as eval_preprocess
from clic_jax.interop import preprocess_config
from clic_jax.models import registry
from clic_jax.train import config as config_lib
from clic_jax.train import mesh as mesh_lib
from clic_jax.train import trainer
from test_train import tiny_config

CLS_ID = 101    # bert_vocab's [CLS]


@pytest.fixture
def tiny_wordpiece(tmp_path, monkeypatch):
  """'tiny-clipa-wp': tiny-clipa with a local WordPiece tokenizer of 32-token rows, like CLIPA."""
  bert = write_bert_tokenizer(tmp_path / "bert")
  base = registry.MODEL_CONFIGS["tiny-clipa"]
  text = dataclasses.replace(base.text, hf_tokenizer_name=str(bert), strip_sep_token=True,
                             context_length=32, vocab_size=2048)
  monkeypatch.setitem(registry.MODEL_CONFIGS, "tiny-clipa-wp",
                      dataclasses.replace(base, text=text))
  return "tiny-clipa-wp"


def test_buckets_follow_rows_trimmable(caption_dataset):
  """CLIP keeps its buckets (the trainer cuts rows: test_train); CLIPA-shaped towers get none."""
  assert config_lib.run_spec(tiny_config(*caption_dataset)).data.text_length_buckets == (32, 48, 64)
  spec = config_lib.run_spec(tiny_config(*caption_dataset, **{"model.name": "tiny-clipa"}))
  assert spec.data.text_length_buckets == ()


def test_context_length_must_be_the_models_when_rows_are_not_trimmable(caption_dataset):
  with pytest.raises(config_lib.ConfigError, match="data.context_length=32"):
    config_lib.run_spec(tiny_config(*caption_dataset, **{"model.name": "ViT-L-14-CLIPA"}))
  config_lib.run_spec(tiny_config(*caption_dataset, **{"model.name": "ViT-L-14-CLIPA",
                                                       "data.context_length": 32}))
  config_lib.run_spec(tiny_config(*caption_dataset, **{"data.context_length": 40}))   # CLIP: ok
  with pytest.raises(config_lib.ConfigError, match="longer than"):
    config_lib.run_spec(tiny_config(*caption_dataset, **{"data.context_length": 78}))


def test_single_images_get_the_models_normalization(caption_dataset):
  spec = config_lib.run_spec(tiny_config(*caption_dataset, **{"model.name": "ViT-L-14-CLIPA",
                                                              "data.context_length": 32}))
  pcfg = spec.pipeline_config(32)
  assert pcfg.single_image_norm == "imagenet" and pcfg.concat_image_norm == "clip"
  assert config_lib.run_spec(tiny_config(*caption_dataset)).pipeline_config(32).single_image_norm \
      == "clip"
  # The pipeline's CLIP batches of a CLIPA model carry (and with float32 apply) ImageNet's mean/std.
  pcfg = dataclasses.replace(pcfg, step_pattern=("clip",), image_dtype="float32",
                             num_threads=1, prefetch_batches=1)
  batch = next(pipeline_lib.make_train_iterator(pcfg))
  assert batch["kind"] == "clip" and batch["image_norm"] == "imagenet"
  pixels = next(pipeline_lib.make_train_iterator(dataclasses.replace(pcfg, image_dtype="uint8")))
  mean, std = np.array(registry.PREPROCESS["imagenet"]["mean"]), \
      np.array(registry.PREPROCESS["imagenet"]["std"])
  np.testing.assert_allclose(batch["images"], (pixels["images"] / 255.0 - mean) / std, atol=1e-5)


def test_wordpiece_model_trains_on_its_own_full_length_tokens(caption_dataset, tiny_wordpiece,
                                                              tmp_path, monkeypatch):
  seen = []
  global_batch = mesh_lib.global_batch

  def record(mesh, arrays):
    seen.append(np.asarray(arrays["texts"]))
    return global_batch(mesh, arrays)

  monkeypatch.setattr(mesh_lib, "global_batch", record)
  config = tiny_config(*caption_dataset, **{"model.name": tiny_wordpiece, "total_steps": 1,
                                             "checkpoint_every_steps": 1,
                                             "data.context_length": 32})
  summary = trainer.train(config, tmp_path / "wd")
  assert summary["step"] == 1 and len(seen) == 1
  assert not any(k.startswith("text_length_") for k in summary["pipeline"])   # buckets off
  for texts in seen:
    assert texts.shape[-1] == 32                    # not cut to a bucket
    assert (texts[..., 0] == CLS_ID).all()          # WordPiece rows, not CLIP BPE
    assert texts.max() < 2048


def test_preview_uses_the_models_tokenizer(caption_dataset, tiny_wordpiece, tmp_path,
                                           monkeypatch):
  from clic_jax import model_tokenizer
  from clic_jax.data import preview
  calls = []
  make = model_tokenizer.tokenize_fn
  monkeypatch.setattr(model_tokenizer, "tokenize_fn",
                      lambda name, length: calls.append((name, length)) or make(name, length))
  config_file = tmp_path / "wp.py"
  config_file.write_text("from configs import tiny\n\ndef get_config():\n  c = tiny.get_config()\n"
                         f"  c.model.name, c.data.context_length = {tiny_wordpiece!r}, 32\n"
                         "  return c\n")
  csv_path, images = caption_dataset
  assert preview.main(["--config", str(config_file), "--csv", str(csv_path), "--image_root",
                       str(images), "--num", "1", "--out", str(tmp_path / "preview")]) == 0
  assert calls == [(tiny_wordpiece, 32)]


def test_export_and_evaluation_take_the_models_preprocessing(tmp_path):
  import json

  from clic_jax import models
  params = models.init_params(models.build_model("tiny-clipa"), 0)
  out = trainer.export_final("tiny-clipa", params, tmp_path)
  written = json.loads((tmp_path / "open_clip" / "open_clip_config.json").read_text())
  assert out and written["preprocess_cfg"]["mean"] == list(preprocess_config("tiny-clipa")["mean"])
  image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 56, 3), np.uint8))
  # CLIP's preprocess_cfg gives today's transform bit for bit; CLIPA's squashes with ImageNet's.
  np.testing.assert_array_equal(
      eval_preprocess.preprocess_image(image, 32, preprocess_config("ViT-B-32")),
      eval_preprocess.preprocess_image(image, 32))
  clipa = eval_preprocess.preprocess_image(image, 32, preprocess_config("ViT-L-14-CLIPA"))
  expected = (np.asarray(image.resize((32, 32), Image.BILINEAR), np.float32) / np.float32(255)
              - np.float32(registry.PREPROCESS["imagenet"]["mean"])) \
      / np.float32(registry.PREPROCESS["imagenet"]["std"])
  np.testing.assert_allclose(clipa, expected, rtol=1e-6)


def test_evaluate_cli_tokenizes_a_local_dir_export_with_its_own_files(tiny_wordpiece, tmp_path):
  import clic_jax
  from clic_jax import models
  from clic_jax.evaluate import model_source
  params = models.init_params(models.build_model(tiny_wordpiece), 0)
  export = trainer.export_final(tiny_wordpiece, params, tmp_path)
  source = model_source(None, f"local-dir:{export}", None)
  assert source == f"local-dir:{export}"
  tokens = clic_jax.get_tokenizer(source)(["a red cube"])
  assert tokens.shape == (1, 32) and tokens[0, 0] == CLS_ID
  assert model_source(None, "weights.safetensors", "ViT-B-32") == "ViT-B-32"
