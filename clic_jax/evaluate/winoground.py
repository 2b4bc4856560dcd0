"""Winoground (Thrush et al., 2022): two images, two captions with the same words reordered.

Public layout (huggingface.co/datasets/facebook/winoground, data/): `examples.jsonl`, one object per
line with "id", "caption_0", "caption_1", "image_0", "image_1" (image names without extension), and
`images.zip`, which unpacks to `images/<name>.png`. `--winoground_dir` is the folder holding
examples.jsonl and images/ (or its parent holding data/). When no folder is given, those two files
are fetched from that (gated) repository through huggingface_hub, whose cache, HF_TOKEN and
HF_HUB_OFFLINE apply, and the images are unzipped once beside examples.jsonl in the cache.

With s(c, i) the cosine of caption c and image i (docs/method.md, "Winoground"):
text score: s(c0,i0) > s(c1,i0) and s(c1,i1) > s(c0,i1); image score: s(c0,i0) > s(c0,i1) and
s(c1,i1) > s(c1,i0); group score: both.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import zipfile
from typing import Any

import numpy as np

from clic_jax.evaluate.embed import (Embedder, EvalDataError, SkipCounter, embed_unique_files,
                                     embed_unique_texts)

FIELDS = ("caption_0", "caption_1", "image_0", "image_1")
HF_REPO = "facebook/winoground"
HF_FILES = ("data/examples.jsonl", "data/images.zip")


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


def download(cache_dir: str | None = None) -> str:
  """The Hugging Face copy as a folder `load` reads: examples.jsonl beside the unzipped images/."""
  try:
    from huggingface_hub import hf_hub_download
    examples, archive = (hf_hub_download(HF_REPO, name, repo_type="dataset", cache_dir=cache_dir)
                         for name in HF_FILES)
  except Exception as e:                           # noqa: BLE001 - one message for every cause
    raise EvalDataError(
        f"winoground: could not get {' and '.join(HF_FILES)} from huggingface.co/datasets/"
        f"{HF_REPO} ({type(e).__name__}: {e}). The repository is gated: accept its terms on that "
        "page and log in (`huggingface-cli login` or HF_TOKEN), or pass data_dir / "
        "--winoground_dir to a local copy.") from e
  root = os.path.dirname(examples)
  unzip_images_once(archive, os.path.join(root, "images"))
  return root


def unzip_images_once(archive: str, images_dir: str) -> None:
  """Unpacks the images (entries `images/<name>.png` or bare `<name>.png`) into images_dir.

  Unpacked into a temporary folder and renamed into place, so that an interrupted unzip is never
  taken for a complete one.
  """
  if os.path.isdir(images_dir):
    return
  parent = os.path.dirname(images_dir)
  staging = tempfile.mkdtemp(prefix=".images-", dir=parent)
  try:
    with zipfile.ZipFile(archive) as z:
      for info in z.infolist():
        name = info.filename.removeprefix("images/")
        if info.is_dir() or not name:
          continue
        if os.path.isabs(name) or ".." in name.split("/"):
          raise EvalDataError(f"winoground: {archive} holds an unsafe path {info.filename!r}")
        target = os.path.join(staging, name)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with z.open(info) as src, open(target, "wb") as dst:
          shutil.copyfileobj(src, dst)
    try:
      os.replace(staging, images_dir)
    except OSError:
      if not os.path.isdir(images_dir):              # else another process (host) got there first
        raise
  except zipfile.BadZipFile as e:
    raise EvalDataError(f"winoground: {archive} is not a readable zip ({e}); delete it from the "
                        "Hugging Face cache to download it again.") from e
  finally:
    shutil.rmtree(staging, ignore_errors=True)


def run(embedder: Embedder, data_dir: str | None = None, on_missing: str = "skip",
        cache_dir: str | None = None) -> dict[str, Any]:
  """{"text", "image", "group"} scores as fractions, the example count and skips by reason.

  Without data_dir, the Hugging Face copy (see `download`; cache_dir is huggingface_hub's).
  """
  if data_dir is None:
    data_dir = download(cache_dir)
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
