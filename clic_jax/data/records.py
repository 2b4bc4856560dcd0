"""What every record source gives the pipeline, and the helpers the readers share.

Every source has `len(source)`, `source[i]` and two attributes the pipeline relies on:
- `aspects`: uint8 array (len,) with 0 = "wider", 1 = "higher" and UNUSABLE for records known to be
  bad before any pixel is decoded (missing file, unreadable header, caption without words). The
  pipeline builds the partner index (docs/method.md, "Aspect classes and partners") from it
  without opening images.
- `report`: dict reason -> count of rows/records skipped or found unusable when the source was opened.

A record is the dict
  {"image": bytes | path | array, "sentences": [first, extra, ...], "tags": per-sentence POS tags
   (list of [(word, pos), ...] or None entries) or None, "aspect": "wider" | "higher" | None,
   "id": str, "path": str}
with all text lowercased: the reference lowercases before spaCy and the tokenizer
(docs/method.md, "Dataset format").
"""
from __future__ import annotations

import collections
import concurrent.futures
import sys
from typing import Any, Sequence

import numpy as np
import regex

from clic_jax.data import images

UNUSABLE = 255
_WORD = regex.compile(r"\w")


def has_words(text: str) -> bool:
  """A caption is usable only if it has a word character (not empty, not punctuation only)."""
  return bool(text) and _WORD.search(text) is not None


def aspect_code(aspect: str) -> int:
  return images.ASPECT_CLASSES.index(aspect)


def aspect_name(code: int) -> str | None:
  return None if code == UNUSABLE else images.ASPECT_CLASSES[int(code)]


def clean_sentences(values: Sequence[Any]) -> list[str]:
  out = []
  for v in values:
    if isinstance(v, bytes):
      v = v.decode("utf-8", errors="replace")
    v = str(v).strip().lower()
    if v:
      out.append(v)
  return out


def lower_tags(tags):
  if tags is None:
    return None
  return [None if t is None else [(str(w).lower(), str(p)) for w, p in t] for t in tags]


def image_aspects(paths: Sequence[Any], num_threads: int, desc: str) -> tuple[np.ndarray, dict]:
  """Aspect codes from image headers (threads: the work is file I/O), and failures by reason."""
  codes = np.full(len(paths), UNUSABLE, np.uint8)
  report = collections.Counter()

  def one(i):
    try:
      w, h = images.image_size(paths[i])
      return i, aspect_code(images.aspect_class(w, h)), None
    except images.ImageError as e:
      return i, UNUSABLE, e.reason

  with concurrent.futures.ThreadPoolExecutor(max(1, num_threads)) as pool:
    for i, code, reason in _progress(pool.map(one, range(len(paths))), len(paths), desc):
      codes[i] = code
      if reason:
        report[reason] += 1
  return codes, dict(report)


def _progress(iterable, total, desc):
  if total < 20_000:  # a bar for small jobs is noise in test logs.
    return iterable
  import tqdm
  return tqdm.tqdm(iterable, total=total, desc=desc, file=sys.stderr)
