"""Hugging Face tokenizers (BERT WordPiece for CLIPA and CLIPS), token for token equal to
open_clip's HFTokenizer on the same vocabulary files.

open_clip's HFTokenizer cleans each text with its "whitespace" cleaning (ftfy, HTML unescaping,
whitespace collapse, no lowercasing: the tokenizer's own normalizer lowercases), then calls the
transformers tokenizer with padding to `context_length` and right truncation; with
`strip_sep_token` every [SEP] id becomes 0. transformers' fast tokenizers are the Rust `tokenizers`
pipeline of tokenizer.json plus that truncation and padding, so this module runs the same pipeline
through the `tokenizers` package directly (transformers itself is not needed).

Files: tokenizer.json (any layout the hub serves or save_pretrained writes), or vocab.txt alone
(a BERT WordPiece vocabulary; lowercasing from tokenizer_config.json's do_lower_case).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from clic_jax.tokenizer import clean_whitespace, text_list

TOKENIZER_JSON, VOCAB_TXT, TOKENIZER_CONFIG = "tokenizer.json", "vocab.txt", "tokenizer_config.json"
CONFIG_FILES = (TOKENIZER_CONFIG, "special_tokens_map.json")
MODEL_CONFIG = "config.json"        # the hub's bert-base-uncased names its tokenizer class here only
TOKENIZER_FILES = (TOKENIZER_JSON, VOCAB_TXT) + CONFIG_FILES + (MODEL_CONFIG,)
# BERT's special tokens, by transformers' attribute names.
BERT_SPECIAL_TOKENS = {"pad_token": "[PAD]", "sep_token": "[SEP]", "cls_token": "[CLS]",
                       "unk_token": "[UNK]", "mask_token": "[MASK]"}
_TOKENIZER_CLASS = {"bert": "BertTokenizer"}


def _tokenizers():
  try:
    import tokenizers
  except ImportError as e:
    raise ImportError("This model's text tower uses a Hugging Face tokenizer, which needs the "
                      "`tokenizers` package: pip install tokenizers") from e
  return tokenizers


def _special_token(settings: dict[str, Any], name: str, default: str) -> str:
  value = settings.get(name, default)
  return value.get("content", default) if isinstance(value, dict) else str(value)


class HfTokenizer:
  """texts -> int32 (N, context_length): [CLS] ids [SEP] then padding, like open_clip's HFTokenizer."""

  def __init__(self, directory: str | os.PathLike, context_length: int,
               strip_sep_token: bool = False):
    directory = Path(directory)
    files = [name for name in TOKENIZER_FILES if (directory / name).is_file()]
    if TOKENIZER_JSON not in files and VOCAB_TXT not in files:
      raise FileNotFoundError(f"{directory} holds no Hugging Face tokenizer: expected "
                              f"{TOKENIZER_JSON} or {VOCAB_TXT} (with {', '.join(CONFIG_FILES)}).")
    self.directory, self.files = directory, files
    self.context_length, self.strip_sep_token = int(context_length), bool(strip_sep_token)
    settings: dict[str, Any] = {}
    for name in CONFIG_FILES:
      if name in files:
        settings.update(json.loads((directory / name).read_text(encoding="utf-8")))
    self._json = self._pipeline_json(directory, settings)
    backend = _tokenizers().Tokenizer.from_str(self._json)
    self.settings = self._complete_settings(directory, settings, backend)
    self.pad_token = _special_token(settings, "pad_token", "[PAD]")
    self.pad_id = backend.token_to_id(self.pad_token)
    self.sep_id = backend.token_to_id(_special_token(settings, "sep_token", "[SEP]"))
    if self.pad_id is None:
      raise ValueError(f"The tokenizer in {directory} has no padding token {self.pad_token!r}.")
    self.vocab_size = backend.get_vocab_size()
    self._backends: dict[int, Any] = {}   # one configured pipeline per row length

  @staticmethod
  def _complete_settings(directory: Path, settings: dict[str, Any], backend) -> dict[str, Any]:
    """tokenizer_config.json as save_pretrained writes it: the tokenizer class and special tokens
    spelled out, so transformers loads a copy without the hub's model config.json."""
    settings = dict(settings)
    if "tokenizer_class" not in settings and (directory / MODEL_CONFIG).is_file():
      model_type = json.loads((directory / MODEL_CONFIG).read_text()).get("model_type")
      if model_type in _TOKENIZER_CLASS:
        settings["tokenizer_class"] = _TOKENIZER_CLASS[model_type]
    for name, token in BERT_SPECIAL_TOKENS.items():
      if name not in settings and backend.token_to_id(token) is not None:
        settings[name] = token
    return settings

  @staticmethod
  def _pipeline_json(directory: Path, settings: dict[str, Any]) -> str:
    if (directory / TOKENIZER_JSON).is_file():
      return (directory / TOKENIZER_JSON).read_text(encoding="utf-8")
    wordpiece = _tokenizers().BertWordPieceTokenizer(
        str(directory / VOCAB_TXT), lowercase=bool(settings.get("do_lower_case", True)))
    return wordpiece.to_str()

  def _backend(self, context_length: int):
    backend = self._backends.get(context_length)
    if backend is None:               # a fresh pipeline per length: calls never reconfigure one
      backend = _tokenizers().Tokenizer.from_str(self._json)
      backend.enable_truncation(max_length=context_length, stride=0, strategy="longest_first",
                                direction="right")
      backend.enable_padding(length=context_length, direction="right", pad_id=self.pad_id,
                             pad_type_id=0, pad_token=self.pad_token)
      self._backends[context_length] = backend
    return backend

  def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> np.ndarray:
    context_length = self.context_length if context_length is None else int(context_length)
    if context_length < 2:
      raise ValueError(f"context_length must be at least 2, got {context_length}")
    cleaned = [clean_whitespace(text) for text in text_list(texts)]
    if not cleaned:
      return np.zeros((0, context_length), np.int32)
    encodings = self._backend(context_length).encode_batch(cleaned)
    ids = np.array([e.ids for e in encodings], np.int32)
    if self.strip_sep_token and self.sep_id is not None:
      ids[ids == self.sep_id] = 0             # open_clip writes 0, not the padding id
    return ids

  def save(self, directory: str | os.PathLike) -> list[Path]:
    """Writes the tokenizer into `directory` (open_clip's local-dir reads it there): the
    vocabulary files and a complete tokenizer_config.json (never the model's config.json, a name
    a model directory may use for its own config)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name in (TOKENIZER_JSON, VOCAB_TXT):
      if name in self.files:
        if (self.directory / name).resolve() != (directory / name).resolve():
          shutil.copyfile(self.directory / name, directory / name)
        written.append(directory / name)
    (directory / TOKENIZER_CONFIG).write_text(json.dumps(self.settings, indent=2))
    return written + [directory / TOKENIZER_CONFIG]


def hf_tokenizer_directory(name: str, cache_dir: str | None = None) -> Path:
  """A local directory or a Hugging Face repository's tokenizer files (through the hub cache)."""
  local = Path(os.path.expanduser(name))
  if local.is_dir():
    return local
  from clic_jax.interop import hub
  found, errors = [], []
  for filename in TOKENIZER_FILES:
    try:
      found.append(hub.download(name, filename, cache_dir))
    except Exception as e:                       # noqa: BLE001 - optional files may be absent
      errors.append(f"{filename}: {type(e).__name__}: {e}")
  names = {path.name for path in found}
  if TOKENIZER_JSON not in names and VOCAB_TXT not in names:
    raise FileNotFoundError(
        f"Could not get the tokenizer {name!r}: neither a local directory nor a Hugging Face "
        "repository with tokenizer.json or vocab.txt (offline? the hub cache needs it once). "
        "Tried:\n  " + "\n  ".join(errors))
  return found[0].parent
