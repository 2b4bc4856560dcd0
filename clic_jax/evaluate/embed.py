"""Batched, jitted, data-parallel embedding of images and captions for every benchmark.

Every benchmark reduces to "embed these unique images and these unique captions, then score".
`Embedder` does the embedding: batches are sharded over a 1-D ("data",) mesh of all local devices,
the last batch is padded to the full batch size (one compiled shape per tower) and the padding is
dropped; images are decoded and preprocessed in a thread pool while the device works (PIL releases
the GIL). Embeddings come back L2-normalized float32 numpy arrays, so scores are plain cosines.

Problems with the data (a missing image, a line that does not parse, a missing key) are recorded in
a `SkipCounter`: counted and reported by reason with on_missing="skip", or raised as one clear
`EvalDataError` with on_missing="error". A benchmark never silently drops an example.
"""
from __future__ import annotations

import collections
import concurrent.futures
import functools
import os
from typing import Any, Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from PIL import Image

from clic_jax.evaluate import preprocess

ON_MISSING_CHOICES = ("skip", "error")


class EvalDataError(ValueError):
  """A benchmark's files are missing or malformed (raised with on_missing="error")."""


class SkipCounter:
  """Counts skipped examples by reason; with on_missing="error" the first problem raises instead."""

  def __init__(self, benchmark: str, on_missing: str = "skip"):
    if on_missing not in ON_MISSING_CHOICES:
      raise ValueError(f"on_missing must be one of {ON_MISSING_CHOICES}, got {on_missing!r}")
    self.benchmark = benchmark
    self.on_missing = on_missing
    self.counts: collections.Counter[str] = collections.Counter()
    self.examples: dict[str, str] = {}          # first detail seen per reason, for the log

  def skip(self, reason: str, detail: str, count: int = 1) -> None:
    if self.on_missing == "error":
      raise EvalDataError(
          f"{self.benchmark}: {reason}: {detail}. Fix the data, or pass --on_missing=skip to count "
          "and report such examples instead of stopping.")
    self.counts[reason] += count
    self.examples.setdefault(reason, detail)

  def as_dict(self) -> dict[str, int]:
    return dict(sorted(self.counts.items()))


def default_tokenizer(cfg=None) -> Callable[[Sequence[str]], np.ndarray]:
  """The model's own tokenizer (clic_jax.get_tokenizer: CLIP BPE, or CLIPA/CLIPS's WordPiece),
  CLIP's BPE without a model config; imported lazily."""
  if cfg is not None:
    from clic_jax.model_tokenizer import get_tokenizer
    return get_tokenizer(cfg)
  from clic_jax.tokenizer import tokenize
  return tokenize


def unique(items: Iterable[Any]) -> tuple[list[Any], dict[Any, int]]:
  """Distinct items in first-seen order and a map item -> row, so each is embedded once."""
  index: dict[Any, int] = {}
  for item in items:
    index.setdefault(item, len(index))
  return list(index), index


def _l2_normalize(x):
  x = x.astype(jnp.float32)
  return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


@functools.lru_cache(maxsize=8)
def _jitted_encoders(model, devices: tuple):
  """(mesh, encode_image, encode_text) per (model, devices), cached: an evaluation that training
  runs every N steps reuses the compiled functions instead of recompiling each time."""
  mesh = Mesh(np.array(devices), ("data",))
  batch = NamedSharding(mesh, P("data"))
  replicated = NamedSharding(mesh, P())

  def encode(method):
    def fn(p, x):
      return _l2_normalize(model.apply({"params": p}, x, method=method))
    return jax.jit(fn, in_shardings=(replicated, batch), out_shardings=batch)

  return mesh, encode("encode_image"), encode("encode_text")


class Embedder:
  """Embeds images and captions with a clic_jax CLIP on all local devices, in fixed-size batches."""

  def __init__(self, model, params, batch_size: int = 256, tokenizer=None, num_threads: int = 16,
               devices: Sequence[jax.Device] | None = None, preprocess=None):
    # preprocess: the model's open_clip preprocess_cfg (interop.preprocess_config(name)); None:
    # OpenAI CLIP's mean/std and resizing.
    devices = tuple(devices or jax.local_devices())
    self.mesh, self._encode_image, self._encode_text = _jitted_encoders(model, devices)
    # Every batch is split evenly over the devices, so round the batch size up to a multiple.
    self.batch_size = -(-max(int(batch_size), 1) // len(devices)) * len(devices)
    self.image_size = model.cfg.vision.image_size
    self.context_length = model.cfg.text.context_length
    self.embed_dim = model.cfg.embed_dim
    self._model_cfg = model.cfg
    self.num_threads = num_threads
    self._tokenizer = tokenizer
    self.preprocess = preprocess
    self._batch_sharding = NamedSharding(self.mesh, P("data"))
    self.set_params(params)

  def set_params(self, params) -> None:
    """Replaces the weights (e.g. after more training steps); nothing is recompiled."""
    self.params = jax.device_put(params, NamedSharding(self.mesh, P()))

  @property
  def tokenizer(self):
    if self._tokenizer is None:
      self._tokenizer = default_tokenizer(self._model_cfg)
    return self._tokenizer

  # -- device side ---------------------------------------------------------------------------------

  def _run_batches(self, fn, batches: Iterable[np.ndarray], total: int) -> np.ndarray:
    """Runs fn on full-size batches (the last one padded) and returns the first `total` rows."""
    out = np.zeros((total, self.embed_dim), np.float32)
    pending, start = None, 0
    for batch in batches:
      n = len(batch)
      if n < self.batch_size:                   # pad to the compiled shape; dropped below
        pad = np.zeros((self.batch_size - n,) + batch.shape[1:], batch.dtype)
        batch = np.concatenate([batch, pad])
      result = fn(self.params, jax.device_put(batch, self._batch_sharding))   # async dispatch
      if pending is not None:                   # copy back the previous batch while this one runs
        prev, prev_start, prev_n = pending
        out[prev_start:prev_start + prev_n] = np.asarray(prev)[:prev_n]
      pending, start = (result, start, n), start + n
    if pending is not None:
      prev, prev_start, prev_n = pending
      out[prev_start:prev_start + prev_n] = np.asarray(prev)[:prev_n]
    return out

  # -- captions ------------------------------------------------------------------------------------

  def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
    """(N, D) normalized caption embeddings, in order. Tokenized batch by batch."""
    texts = list(texts)

    def batches():
      for i in range(0, len(texts), self.batch_size):
        tokens = np.asarray(self.tokenizer(texts[i:i + self.batch_size]), np.int32)
        if tokens.ndim != 2 or tokens.shape[1] > self.context_length:
          raise ValueError(f"tokenizer returned shape {tokens.shape}; the model's context length "
                           f"is {self.context_length}")
        yield tokens

    return self._run_batches(self._encode_text, batches(), len(texts))

  # -- images --------------------------------------------------------------------------------------

  def embed_images(self, items: Sequence[Any], open_image: Callable[[Any], Image.Image]
                   ) -> tuple[np.ndarray, dict[int, str]]:
    """Embeds `open_image(item)` for every item; decoding and preprocessing run in threads.

    Returns (N, D) normalized embeddings (rows of failed items are NaN) and {row: reason} for the
    items that could not be loaded ("missing_image" or "unreadable_image").
    """
    items = list(items)
    failures: dict[int, str] = {}
    size = self.image_size

    def load(i):
      try:
        image = open_image(items[i])
        try:
          return preprocess.preprocess_image(image, size, self.preprocess)
        finally:
          image.close()
      except FileNotFoundError:
        return "missing_image"
      except (OSError, ValueError, SyntaxError):  # PIL's errors for truncated or non-image files
        return "unreadable_image"

    def batches(pool):
      chunks = [range(i, min(i + self.batch_size, len(items)))
                for i in range(0, len(items), self.batch_size)]
      # Keep two chunks of loads in flight: bounded memory, and the pool never waits on the device.
      futures = collections.deque()
      for chunk in chunks[:2]:
        futures.append((chunk, [pool.submit(load, i) for i in chunk]))
      next_chunk = 2
      while futures:
        chunk, chunk_futures = futures.popleft()
        if next_chunk < len(chunks):
          c = chunks[next_chunk]
          futures.append((c, [pool.submit(load, i) for i in c]))
          next_chunk += 1
        arrays = []
        for i, future in zip(chunk, chunk_futures):
          result = future.result()
          if isinstance(result, str):
            failures[i] = result
            result = np.zeros((size, size, 3), np.float32)
          arrays.append(result)
        yield np.stack(arrays)

    with concurrent.futures.ThreadPoolExecutor(self.num_threads) as pool:
      out = self._run_batches(self._encode_image, batches(pool), len(items))
    for i in failures:
      out[i] = np.nan
    return out, failures

  def embed_image_files(self, paths: Sequence[str | os.PathLike]
                        ) -> tuple[np.ndarray, dict[int, str]]:
    """`embed_images` over image files."""
    return self.embed_images(paths, Image.open)


def embed_unique_files(embedder: Embedder, paths: Iterable[str], skips: SkipCounter
                       ) -> tuple[np.ndarray, dict[str, int], dict[str, str]]:
  """Embeds each distinct image path once.

  Returns (embeddings, path -> row, path -> failure reason). With on_missing="error" a missing file
  raises before any image is decoded, so a bad path costs no compute.
  """
  uniques, index = unique(paths)
  if skips.on_missing == "error":
    for path in uniques:
      if not os.path.isfile(path):
        skips.skip("missing_image", f"image file {path} does not exist")
  embeddings, failures = embedder.embed_image_files(uniques)
  if skips.on_missing == "error" and failures:
    row, reason = next(iter(failures.items()))
    skips.skip(reason, f"cannot read image {uniques[row]}")
  return embeddings, index, {uniques[row]: reason for row, reason in failures.items()}


def embed_unique_texts(embedder: Embedder, texts: Iterable[str]
                       ) -> tuple[np.ndarray, dict[str, int]]:
  """Embeds each distinct caption once; returns (embeddings, caption -> row)."""
  uniques, index = unique(texts)
  return embedder.embed_texts(uniques), index
