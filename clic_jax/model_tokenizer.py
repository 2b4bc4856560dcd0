"""The tokenizer a model was trained with, by model name, like open_clip's `get_tokenizer`.

  tok = get_tokenizer("ViT-B-32")                    # CLIP BPE, 77 tokens
  tok = get_tokenizer("ViT-L-14-CLIPA")              # bert-base-uncased WordPiece, 32 tokens
  tok = get_tokenizer("hf-hub:UCSC-VLAA/ViT-L-14-CLIPS-224-Recap-DataComp-1B")
  tok = get_tokenizer("local-dir:DIR")               # the tokenizer files inside DIR
  tokens = tok(["a dog."])                           # np.int32 (N, context_length)

The choice follows open_clip: a text config naming `hf_tokenizer_name` gets a Hugging Face
tokenizer (from that hub repository or local directory; for `local-dir:` always from the
directory itself), every other model CLIP's BPE tokenizer; the context length is the model's.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from clic_jax.models.registry import ClipConfig, get_model_config

TokenizerFn = Callable[..., np.ndarray]


def _from_text_options(context_length: int, hf_tokenizer_name: str | None,
                       strip_sep_token: bool, directory: Path | None,
                       cache_dir: str | None) -> TokenizerFn:
  if not hf_tokenizer_name:
    from clic_jax.tokenizer import Tokenizer
    return Tokenizer(context_length=context_length)
  from clic_jax.hf_tokenizer import HfTokenizer, hf_tokenizer_directory
  directory = directory or hf_tokenizer_directory(hf_tokenizer_name, cache_dir)
  return HfTokenizer(directory, context_length, strip_sep_token)


def tokenizer_for_config(cfg: ClipConfig, context_length: int | None = None,
                         directory: str | Path | None = None,
                         cache_dir: str | None = None) -> TokenizerFn:
  """The tokenizer of an architecture; `directory` holds its tokenizer files, if it has any."""
  t = cfg.text
  return _from_text_options(context_length or t.context_length, t.hf_tokenizer_name,
                            t.strip_sep_token, Path(directory) if directory else None, cache_dir)


def _text_cfg(config: Mapping[str, Any]) -> Mapping[str, Any]:
  return config.get("model_cfg", config).get("text_cfg", {})


def get_tokenizer(name: str | ClipConfig, context_length: int | None = None,
                  cache_dir: str | None = None) -> TokenizerFn:
  """The tokenizer for a model name, 'hf-hub:ORG/REPO', 'local-dir:DIR' or a ClipConfig.

  Only the text config is read for hub and local models, so a model whose image tower clic_jax
  cannot build still gets its tokenizer. The result is called as tok(texts[, context_length]).
  """
  if isinstance(name, ClipConfig):
    return tokenizer_for_config(name, context_length, cache_dir=cache_dir)
  from clic_jax.interop import hub
  schema, identifier = hub.split_schema(name)
  if schema is None:
    return tokenizer_for_config(get_model_config(name), context_length, cache_dir=cache_dir)
  from clic_jax.interop.files import read_open_clip_config
  config_path = hub.config_file(schema, identifier, cache_dir)
  text_cfg = _text_cfg(read_open_clip_config(config_path))
  kwargs = dict(text_cfg.get("tokenizer_kwargs") or {})
  return _from_text_options(
      int(context_length or text_cfg.get("context_length", 77)),
      text_cfg.get("hf_tokenizer_name"), bool(kwargs.get("strip_sep_token", False)),
      config_path.parent if schema == "local-dir" else None, cache_dir)


def tokenize_fn(name: str | ClipConfig, context_length: int | None = None,
                cache_dir: str | None = None) -> Callable[[Sequence[str]], np.ndarray]:
  """get_tokenizer's tokenizer with the row length fixed: the data pipeline's TokenizeFn
  (picklable, so process workers get their own copy)."""
  tokenizer = get_tokenizer(name, context_length, cache_dir)
  return functools.partial(tokenizer, context_length=context_length or tokenizer.context_length)
