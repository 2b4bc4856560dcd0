"""A small BERT WordPiece tokenizer written locally in the layouts the Hugging Face hub serves.

`bert-base-uncased` on the hub holds vocab.txt, tokenizer.json, tokenizer_config.json and a model
config.json naming model_type "bert"; open_clip's push_to_hf_hub (CLIPA's and CLIPS's repositories)
stores what transformers' save_pretrained writes: tokenizer.json and a tokenizer_config.json with
the tokenizer class and special tokens. The vocabulary keeps BERT's layout of special ids ([PAD] 0,
[UNK] 100, [CLS] 101, [SEP] 102, [MASK] 103) and is learned from the given texts.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
_WORDS = ("a photo of the dog cat red blue green cube ball left right small large two three on in "
          "under above sofa table man woman holding wearing shirt hat sky tree car street").split()


def write_bert_tokenizer(directory: Path, texts: Iterable[str] = (), vocab_size: int = 2000,
                         layout: str = "hub") -> Path:
  """Writes the tokenizer files into `directory`; layout "hub" or "saved"."""
  from tokenizers import BertWordPieceTokenizer
  directory = Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  trainer = BertWordPieceTokenizer(lowercase=True)
  encodable = [t for t in texts if not any("\ud800" <= c <= "\udfff" for c in t)]
  trainer.train_from_iterator(encodable + [" ".join(_WORDS)] * 20, vocab_size=vocab_size,
                              special_tokens=SPECIALS)
  learned = [t for t, _ in sorted(trainer.get_vocab().items(), key=lambda kv: kv[1])
             if t not in SPECIALS]
  vocab = (["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
           + learned)
  (directory / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
  BertWordPieceTokenizer(str(directory / "vocab.txt"), lowercase=True).save(
      str(directory / "tokenizer.json"))
  if layout == "hub":
    (directory / "tokenizer_config.json").write_text(
        json.dumps({"do_lower_case": True, "model_max_length": 512}))
    (directory / "config.json").write_text(json.dumps(
        {"architectures": ["BertForMaskedLM"], "model_type": "bert", "vocab_size": len(vocab)}))
  else:
    (directory / "vocab.txt").unlink()
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "BertTokenizer", "do_lower_case": True, "model_max_length": 512,
        "cls_token": "[CLS]", "sep_token": "[SEP]", "pad_token": "[PAD]", "unk_token": "[UNK]",
        "mask_token": "[MASK]", "strip_accents": None, "tokenize_chinese_chars": True}))
  return directory
