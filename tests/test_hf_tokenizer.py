"""clic_jax.get_tokenizer against open_clip's get_tokenizer: CLIP BPE or the model's Hugging Face
WordPiece tokenizer (CLIPA, CLIPS), by name, 'local-dir:' and 'hf-hub:', token for token."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import open_clip
import pytest

import clic_jax
from clic_jax import tokenizer as clip_bpe
from clic_jax.hf_tokenizer import HfTokenizer

from bert_vocab import write_bert_tokenizer
from hf_cache import fake_hf_cache
from test_tokenizer import _varied_strings

OPEN_CLIP_CONFIGS = Path(open_clip.__file__).parent / "model_configs"
# The text_cfg of UCSC-VLAA's CLIPS repositories (open_clip_config.json on the hub).
CLIPS_TEXT_CFG = {"context_length": 80, "vocab_size": 32000, "hf_tokenizer_name": "bert-base-uncased",
                  "tokenizer_kwargs": {"strip_sep_token": True}, "width": 768, "heads": 12,
                  "layers": 12, "pool_type": "last", "no_causal_mask": True,
                  "act_kwargs": {"approximate": "tanh"}, "norm_kwargs": {"eps": 1e-6}}
EXTRA = ["Ünïcödé café, 東京 and emojis 🐶🐱", "naïve Zürich São Paulo jalapeño crème brûlée",
         "Ελλάδα Москва 한국어 ภาษาไทย العربية", "[CLS] a [SEP] b [PAD] c [MASK] [UNK]",
         "ＡＢＣ ﬁne ﬂuﬀy", "&amp; &lt;b&gt; cafÃ©", " ".join(["a very long caption"] * 40),
         "dog " * 200, "supercalifragilisticexpialidocious" * 5]


@pytest.fixture(scope="module")
def strings():
  return _varied_strings(1500) + EXTRA


def _model_dir(root: Path, strings, text_cfg=None, layout="hub") -> Path:
  """A local-dir model as open_clip reads it: open_clip_config.json and the tokenizer files."""
  config = json.loads((OPEN_CLIP_CONFIGS / "ViT-L-14-CLIPA.json").read_text())
  if text_cfg is not None:
    config["text_cfg"] = text_cfg
  write_bert_tokenizer(root, strings[:1000], layout=layout)
  (root / "open_clip_config.json").write_text(json.dumps({"model_cfg": config}))
  return root


def _assert_equal(ours: np.ndarray, theirs: np.ndarray, texts):
  assert ours.dtype == np.int32 and ours.shape == theirs.shape
  bad = np.flatnonzero((ours != theirs).any(axis=1))
  assert bad.size == 0, f"{bad.size} rows differ; first {texts[bad[0]]!r}: {ours[bad[0]]} " \
                        f"vs {theirs[bad[0]]}"


@pytest.mark.parametrize("layout,text_cfg", [("hub", None), ("saved", CLIPS_TEXT_CFG)])
def test_local_dir_equals_open_clip(tmp_path, strings, layout, text_cfg):
  directory = _model_dir(tmp_path, strings, text_cfg, layout)
  ours, theirs = (get(f"local-dir:{directory}") for get in (clic_jax.get_tokenizer,
                                                           open_clip.get_tokenizer))
  assert isinstance(ours, HfTokenizer) and ours.context_length == (text_cfg or {}).get(
      "context_length", 32)
  expected = theirs(strings).numpy()
  _assert_equal(ours(strings), expected, strings)
  _assert_equal(ours(strings[::-1]), expected[::-1], strings[::-1])
  _assert_equal(ours(strings[:200], 12), theirs(strings[:200], 12).numpy(), strings[:200])
  # The check has teeth: a real vocabulary, rows cut at the context length, [SEP] stripped.
  assert len(np.unique(expected)) > 200 and (expected[:, -2] != 0).sum() > 50
  assert not (expected == ours.sep_id).any() and (expected[:, 0] == 101).all()


def test_vocab_txt_alone_gives_the_same_tokens(tmp_path, strings):
  full = HfTokenizer(write_bert_tokenizer(tmp_path / "full", strings[:1000]), 32, True)
  (tmp_path / "vocab").mkdir()
  (tmp_path / "vocab" / "vocab.txt").write_bytes((tmp_path / "full" / "vocab.txt").read_bytes())
  vocab_only = HfTokenizer(tmp_path / "vocab", 32, True)
  assert vocab_only.files == ["vocab.txt"]
  _assert_equal(vocab_only(strings), full(strings), strings)


def test_hf_hub_and_registry_names(tmp_path, monkeypatch, strings):
  import huggingface_hub.constants
  monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
  config = {"model_cfg": {"embed_dim": 768, "vision_cfg": {"layers": 24, "width": 1024},
                          "text_cfg": CLIPS_TEXT_CFG}}
  fake_hf_cache(tmp_path, "someone/clips-like", {
      "open_clip_config.json": lambda p: p.write_text(json.dumps(config))})
  bert = tmp_path / "bert-files"
  write_bert_tokenizer(bert, strings[:1000])
  fake_hf_cache(tmp_path, "bert-base-uncased", {
      name: (lambda p, name=name: p.write_bytes((bert / name).read_bytes()))
      for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "config.json")})
  cache = str(tmp_path)
  ours = clic_jax.get_tokenizer("hf-hub:someone/clips-like", cache_dir=cache)
  theirs = open_clip.get_tokenizer("hf-hub:someone/clips-like", cache_dir=cache)
  _assert_equal(ours(strings), theirs(strings).numpy(), strings)
  assert ours(["a dog"]).shape == (1, 80)
  # A registry name reads the same tokenizer from the hub cache, at the model's context length.
  by_name = clic_jax.get_tokenizer("ViT-L-14-CLIPA", cache_dir=cache)
  np.testing.assert_array_equal(by_name(strings[:50]), ours(strings[:50], 32))


def test_clip_models_get_clip_bpe(tmp_path):
  for name in ("ViT-B-32", "ViT-H-14-quickgelu", "tiny-clipa"):
    tok = clic_jax.get_tokenizer(name)
    assert isinstance(tok, clip_bpe.Tokenizer) and tok.context_length == 77
    np.testing.assert_array_equal(tok(["a red cube"]), clip_bpe.tokenize(["a red cube"]))
  assert clic_jax.get_tokenizer("ViT-B-32", context_length=16)(["a"]).shape == (1, 16)
  config = json.loads((OPEN_CLIP_CONFIGS / "ViT-bigG-14.json").read_text())
  config["text_cfg"]["context_length"] = 20
  (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": config}))
  tok = clic_jax.get_tokenizer(f"local-dir:{tmp_path}")
  np.testing.assert_array_equal(tok(["a dog"]), open_clip.get_tokenizer(
      f"local-dir:{tmp_path}")(["a dog"]).numpy())


def test_errors(tmp_path):
  (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": {
      "embed_dim": 8, "vision_cfg": {}, "text_cfg": {"hf_tokenizer_name": "bert-base-uncased"}}}))
  with pytest.raises(FileNotFoundError, match="no Hugging Face tokenizer"):
    clic_jax.get_tokenizer(f"local-dir:{tmp_path}")
  with pytest.raises(ValueError, match="Unknown model"):
    clic_jax.get_tokenizer("ViT-B-33")
  with pytest.raises(TypeError, match="index 1 is a int"):
    HfTokenizer(write_bert_tokenizer(tmp_path / "t", ["a b"], 200), 8)(["a", 3])


def test_export_puts_the_tokenizer_beside_the_weights(tmp_path, strings):
  """open_clip's local-dir reads an HF tokenizer from the model directory: export copies it there
  (here from a local folder named by hf_tokenizer_name)."""
  import dataclasses
  bert = write_bert_tokenizer(tmp_path / "bert", strings[:1000])
  from clic_jax.models import get_model_config
  cfg = get_model_config("tiny-clipa")
  cfg = dataclasses.replace(cfg, text=dataclasses.replace(
      cfg.text, hf_tokenizer_name=str(bert), strip_sep_token=True, context_length=24,
      vocab_size=2000))
  _, params = clic_jax.create_model(cfg)
  out = clic_jax.export_open_clip(cfg, params, tmp_path / "export")
  assert (out / "tokenizer.json").is_file()
  ours = clic_jax.get_tokenizer(f"local-dir:{out}")
  theirs = open_clip.get_tokenizer(f"local-dir:{out}")
  _assert_equal(ours(strings[:300]), theirs(strings[:300]).numpy(), strings[:300])
  assert ours(["a"]).shape == (1, 24)
  # Evaluation embeds captions with the model's own tokenizer.
  from clic_jax.evaluate.embed import Embedder
  model, _ = clic_jax.create_model(cfg)
  embedder = Embedder(model, params, batch_size=8)
  assert isinstance(embedder.tokenizer, HfTokenizer)
  texts = ["a red cube", "two blue balls"]
  expected = model.apply({"params": params}, theirs(texts).numpy(), method="encode_text")
  expected /= np.linalg.norm(expected, axis=-1, keepdims=True)
  np.testing.assert_allclose(embedder.embed_texts(texts), expected, rtol=1e-4, atol=1e-5)
