"""COCO / Flickr30k image-text retrieval on the Karpathy test split (docs/method.md, "Retrieval").

Public format (the annotation files of BLIP / ARO, e.g. coco_karpathy_test.json,
flickr30k_test.json): a JSON list of
`{"image": "val2014/COCO_val2014_....jpg", "caption": [str, ...]}` with paths relative to an image
root. Captions are cleaned like ARO's `pre_caption` (lowercase,
`.!"()*#:;~` -> space, whitespace runs collapsed, stripped, at most 30 words).

Scores are cosines of normalized embeddings. image->text R@K: an image is a hit if any of its own
captions ranks in the top K; text->image R@K: a caption is a hit if its image ranks in the top K.
A rank is the number of candidates scoring strictly higher (ties go to the right answer, which only
matters for exactly equal floats).
"""
from __future__ import annotations

import json
import os
import re
from typing import Any

import numpy as np

from clic_jax.evaluate.embed import (Embedder, EvalDataError, SkipCounter, embed_unique_files,
                                     embed_unique_texts)

KS = (1, 5, 10)
MAX_WORDS = 30


def clean_caption(caption: str, max_words: int = MAX_WORDS) -> str:
  caption = re.sub(r"([.!\"()*#:;~])", " ", caption.lower())
  caption = re.sub(r"\s{2,}", " ", caption)
  caption = caption.rstrip("\n").strip(" ")
  words = caption.split(" ")
  return " ".join(words[:max_words]) if len(words) > max_words else caption


def load(annotation_file: str, image_root: str, skips: SkipCounter) -> list[dict[str, Any]]:
  """[{"image": path, "captions": [cleaned, ...]}] from a Karpathy-split JSON."""
  try:
    with open(annotation_file, encoding="utf-8") as f:
      data = json.load(f)
  except FileNotFoundError:
    raise EvalDataError(f"retrieval: annotation file {annotation_file!r} does not exist") from None
  except json.JSONDecodeError as e:
    raise EvalDataError(f"retrieval: {annotation_file!r} is not valid JSON ({e})") from None
  if not isinstance(data, list):
    raise EvalDataError(f"retrieval: {annotation_file!r} must hold a list of "
                        "{image, caption: [...]} objects (the Karpathy test split format)")
  examples = []
  for i, record in enumerate(data):
    where = f"{annotation_file} entry {i}"
    if not isinstance(record, dict):
      skips.skip("malformed_record", f"{where} is not an object")
      continue
    captions = record.get("caption")
    if isinstance(captions, str):
      captions = [captions]
    if not isinstance(record.get("image"), str) or not isinstance(captions, list) or not captions \
        or not all(isinstance(c, str) for c in captions):
      skips.skip("missing_key", f"{where} needs a string 'image' and a non-empty list 'caption'")
      continue
    examples.append({"image": os.path.join(image_root, record["image"]),
                     "captions": [clean_caption(c) for c in captions]})
  return examples


def recall_at_k(image_emb: np.ndarray, text_emb: np.ndarray, text_image: np.ndarray, ks=KS,
                chunk: int = 1024) -> dict[str, float]:
  """Normalized embeddings (N_images, D), (N_texts, D); text_image[j] = image row of caption j.

  Scores are computed in row chunks, so COCO's 5k x 25k matrix never sits in memory at once.
  """
  n_images, n_texts = len(image_emb), len(text_emb)
  # image -> text: best (smallest) rank among the image's own captions.
  best_rank = np.empty(n_images, np.int64)
  for start in range(0, n_images, chunk):
    block = image_emb[start:start + chunk] @ text_emb.T           # (chunk, N_texts)
    own = text_image[None, :] == np.arange(start, start + len(block))[:, None]
    best_own = np.where(own, block, -np.inf).max(axis=1)
    best_rank[start:start + len(block)] = (block > best_own[:, None]).sum(axis=1)
  # text -> image: rank of the caption's own image.
  rank = np.empty(n_texts, np.int64)
  for start in range(0, n_texts, chunk):
    block = text_emb[start:start + chunk] @ image_emb.T           # (chunk, N_images)
    own = block[np.arange(len(block)), text_image[start:start + chunk]]
    rank[start:start + len(block)] = (block > own[:, None]).sum(axis=1)
  out = {f"image_to_text_R@{k}": float(np.mean(best_rank < k)) for k in ks}
  out.update({f"text_to_image_R@{k}": float(np.mean(rank < k)) for k in ks})
  return out


def run(embedder: Embedder, annotation_file: str, image_root: str, on_missing: str = "skip"
        ) -> dict[str, Any]:
  """R@1/5/10 in both directions (fractions), counts, and skips by reason."""
  skips = SkipCounter("retrieval", on_missing)
  examples = load(annotation_file, image_root, skips)
  images, image_row, failed = embed_unique_files(embedder, (e["image"] for e in examples), skips)
  kept = []
  for e in examples:
    if e["image"] in failed:
      skips.skip(failed[e["image"]], e["image"])
    else:
      kept.append(e)
  # Images stay distinct per entry (as in the split files); captions are embedded as listed, so a
  # caption shared by two images counts as two candidates, like the reference evaluation.
  captions = [c for e in kept for c in e["captions"]]
  text_image = np.array([i for i, e in enumerate(kept) for _ in e["captions"]], np.int64)
  result: dict[str, Any] = {}
  if kept:
    text_emb, text_row = embed_unique_texts(embedder, captions)
    text_emb = text_emb[np.array([text_row[c] for c in captions], np.int64)]
    image_emb = images[np.array([image_row[e["image"]] for e in kept], np.int64)]
    result.update(recall_at_k(image_emb, text_emb, text_image))
  result["num_images"] = len(kept)
  result["num_captions"] = len(captions)
  result["skipped"] = skips.as_dict()
  return result
