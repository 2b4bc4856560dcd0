"""TFDS image-caption datasets stored as ArrayRecord, read without TensorFlow."""
from __future__ import annotations

import collections

import numpy as np

from clic_jax.data import records


def _get_path(example: dict, path: str):
  value = example
  for key in path.split("/"):
    value = value[key]
  return value


def _text_leaves(value) -> list[str] | None:
  """A string, bytes, or a list/array of them -> list of str; anything else -> None."""
  if isinstance(value, (str, bytes)):
    return records.clean_sentences([value])
  if isinstance(value, np.ndarray) and value.dtype.kind in "OSU":
    value = value.tolist()
  if isinstance(value, (list, tuple)) and value and all(isinstance(v, (str, bytes)) for v in value):
    return records.clean_sentences(value)
  return None


def find_caption_key(example: dict, image_key: str) -> str:
  """The first text feature of a TFDS example, preferring names with "caption" or "text"."""
  found = []

  def walk(value, prefix):
    if isinstance(value, dict):
      for k, v in value.items():
        walk(v, f"{prefix}/{k}" if prefix else k)
    elif prefix != image_key and _text_leaves(value) is not None:
      found.append(prefix)

  walk(example, "")
  if not found:
    raise ValueError(f"no text feature found in the TFDS examples (keys {sorted(example)}); "
                     "pass caption_key=PATH, e.g. 'captions/text'")
  preferred = [k for k in found if "caption" in k.lower() or "text" in k.lower()]
  return (preferred or found)[0]


class TfdsSource:
  """A TFDS dataset prepared in ArrayRecord format (e.g. coco_captions), via tfds data sources.

  Give `data_dir` + `name` (resolved like tfds.data_source) or `builder_dir` (a dataset version
  directory, opened with tfds.builder_from_directory). The first caption is the "first sentence";
  further captions of the same example are the extra sentences. Images are read as encoded bytes
  (SkipDecoding), so opening the source only reads their headers.
  """

  def __init__(self, name: str | None = None, *, data_dir: str | None = None,
               builder_dir: str | None = None, split: str = "train", image_key: str = "image",
               caption_key: str | None = None, num_threads: int = 16):
    import tensorflow_datasets as tfds
    decoders = {}
    node = decoders
    parts = image_key.split("/")
    for key in parts[:-1]:
      node = node.setdefault(key, {})
    node[parts[-1]] = tfds.decode.SkipDecoding()
    try:
      if builder_dir:
        builder = tfds.builder_from_directory(builder_dir)
        self._records = builder.as_data_source(split, decoders=decoders)
      elif name:
        self._records = tfds.data_source(name, split=split, data_dir=data_dir, decoders=decoders,
                                         download=False)
      else:
        raise ValueError("TfdsSource needs a dataset name (with data_dir) or builder_dir")
    except (FileNotFoundError, tfds.core.registered.DatasetNotFoundError, AssertionError) as e:
      raise FileNotFoundError(
          f"TFDS dataset {name or builder_dir!r} (split {split!r}, data_dir {data_dir!r}) is not "
          f"prepared in ArrayRecord format there: {e}. Prepare it with file_format='array_record'"
      ) from None
    self.description = f"tfds:{name or builder_dir}/{split}"
    self.image_key = image_key
    if len(self._records) == 0:
      raise ValueError(f"TFDS split {split!r} of {name or builder_dir!r} is empty")
    self.caption_key = caption_key or find_caption_key(self._records[0], image_key)

    report = collections.Counter()
    encoded_images = _LazyImages(self._records, image_key)
    self.aspects, image_report = records.image_aspects(encoded_images, num_threads,
                                                       "reading TFDS image headers")
    report.update(image_report)
    for i in range(len(self._records)):  # cheap: captions only, images stay encoded.
      sentences = self._sentences(i) if self.aspects[i] != records.UNUSABLE else ["skip"]
      if not sentences or not records.has_words(sentences[0]):
        self.aspects[i] = records.UNUSABLE
        report["unusable_caption"] += 1
    self.report = dict(report)

  def _sentences(self, index: int, example: dict | None = None) -> list[str]:
    example = self._records[index] if example is None else example
    return _text_leaves(_get_path(example, self.caption_key)) or []

  def __len__(self) -> int:
    return len(self._records)

  def __getitem__(self, index: int) -> dict:
    example = self._records[index]
    sentences = self._sentences(index, example)
    if not sentences or not records.has_words(sentences[0]):
      sentences = [""] + sentences[1:]
    return {"image": _get_path(example, self.image_key), "sentences": sentences, "tags": None,
            "aspect": records.aspect_name(self.aspects[index]), "id": f"{self.description}/{index}",
            "path": f"{self.description}/{index}"}


class _LazyImages:
  """Sequence view of the encoded images of a TFDS source (for the header pass)."""

  def __init__(self, records, image_key):
    self._records, self._key = records, image_key

  def __len__(self):
    return len(self._records)

  def __getitem__(self, i):
    return _get_path(self._records[i], self._key)
