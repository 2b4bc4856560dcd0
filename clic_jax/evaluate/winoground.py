"""Winoground (Thrush et al., 2022): two images, two captions with the same words reordered.

Public layout (huggingface.co/datasets/facebook/winoground, data/): `examples.jsonl`, one object per
line with "id", "caption_0", "caption_1", "image_0", "image_1" (image names without extension), and
`images.zip`, which unpacks to `images/<name>.png`. `--winoground_dir` is the folder holding
examples.jsonl and images/ (or its parent holding data/). When no such folder is given and the
Hugging Face `datasets` package is installed, the `facebook/winoground` test split is used instead.

With s(c, i) the cosine of caption c and image i (E5):
text score: s(c0,i0) > s(c1,i0) and s(c1,i1) > s(c0,i1); image score: s(c0,i0) > s(c0,i1) and
s(c1,i1) > s(c1,i0); group score: both.
"""
from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from clic_jax.evaluate.embed import (Embedder, EvalDataError, SkipCounter, embed_unique_files,
                                     embed_unique_texts)

FIELDS = ("caption_0", "caption_1", "image_0", "image_1")


def find_root(winoground_dir: str) -> str:
  for root in (winoground_dir, os.path.join(winoground_dir, "data")):
    if os.path.isfile(os.path.join(root, "examples.jsonl")):
      return root
  raise EvalDataError(f"winoground: no examples.jsonl in {winoground_dir!r} or its data/ folder. "
                      "Download data/examples.jsonl and data/images.zip from "
                      "huggingface.co/datasets/facebook/winoground and unzip the images there.")


def load(winoground_dir: str, skips: SkipCounter) -> list[dict[str, str]]:
  """[{"caption_0", "caption_1", "image_0": path, "image_1": path}] from examples.jsonl."""
  root = find_root(winoground_dir)
  path = os.path.join(root, "examples.jsonl")
  examples = []
  with open(path, encoding="utf-8") as f:
    for line_number, line in enumerate(f, 1):
      if not line.strip():
        continue
      where = f"{path} line {line_number}"
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        skips.skip("malformed_line", f"{where} is not valid JSON ({e})")
        continue
      if not isinstance(record, dict):
        skips.skip("malformed_line", f"{where} is not a JSON object")
        continue
      missing = [k for k in FIELDS if not isinstance(record.get(k), str)]
      if missing:
        skips.skip("missing_key", f"{where} lacks {missing}")
        continue
      example = {k: record[k] for k in ("caption_0", "caption_1")}
      for k in ("image_0", "image_1"):
        name = record[k] if os.path.splitext(record[k])[1] else record[k] + ".png"
        example[k] = os.path.join(root, "images", name)
      examples.append(example)
  return examples


def scores(c0i0, c0i1, c1i0, c1i1) -> dict[str, float]:
  """Winoground's three scores from per-example cosine arrays."""
  text = (c0i0 > c1i0) & (c1i1 > c0i1)
  image = (c0i0 > c0i1) & (c1i1 > c1i0)
  return {"text": float(np.mean(text)), "image": float(np.mean(image)),
          "group": float(np.mean(text & image))}


def _score_embeddings(cap0, cap1, img0, img1) -> dict[str, float]:
  dot = lambda a, b: np.sum(a * b, -1)
  return scores(dot(cap0, img0), dot(cap0, img1), dot(cap1, img0), dot(cap1, img1))


def run_hf(embedder: Embedder, on_missing: str = "skip") -> dict[str, Any]:
  """The Hugging Face copy (needs `datasets`, access to the gated repo or a local cache)."""
  import datasets
  ds = datasets.load_dataset("facebook/winoground", split="test")
  examples = list(ds)
  captions = [e["caption_0"] for e in examples] + [e["caption_1"] for e in examples]
  text = embedder.embed_texts(captions)
  images = [e["image_0"] for e in examples] + [e["image_1"] for e in examples]
  img, failures = embedder.embed_images(images, lambda im: im.convert("RGB"))
  if failures:
    raise EvalDataError(f"winoground: {len(failures)} Hugging Face images failed to decode")
  n = len(examples)
  result: dict[str, Any] = _score_embeddings(text[:n], text[n:], img[:n], img[n:])
  result["num_examples"] = n
  result["skipped"] = {}
  return result


def run(embedder: Embedder, data_dir: str | None = None, on_missing: str = "skip"
        ) -> dict[str, Any]:
  """{"text", "image", "group"} scores as fractions, the example count and skips by reason."""
  if data_dir is None:
    try:
      import datasets  # noqa: F401
    except ImportError:
      raise EvalDataError("winoground: pass --winoground_dir (examples.jsonl + images/), or "
                          "install `datasets` to use the Hugging Face copy") from None
    return run_hf(embedder, on_missing)
  skips = SkipCounter("winoground", on_missing)
  examples = load(data_dir, skips)
  images, image_row, failed = embed_unique_files(
      embedder, (e[k] for e in examples for k in ("image_0", "image_1")), skips)
  texts, text_row = embed_unique_texts(
      embedder, (e[k] for e in examples for k in ("caption_0", "caption_1")))
  kept = []
  for e in examples:
    bad = [e[k] for k in ("image_0", "image_1") if e[k] in failed]
    if bad:
      skips.skip(failed[bad[0]], bad[0])
    else:
      kept.append(e)
  result: dict[str, Any] = {}
  if kept:
    rows = lambda table, index, key: table[np.array([index[e[key]] for e in kept], np.int64)]
    result.update(_score_embeddings(rows(texts, text_row, "caption_0"),
                                    rows(texts, text_row, "caption_1"),
                                    rows(images, image_row, "image_0"),
                                    rows(images, image_row, "image_1")))
  result["num_examples"] = len(kept)
  result["skipped"] = skips.as_dict()
  return result
