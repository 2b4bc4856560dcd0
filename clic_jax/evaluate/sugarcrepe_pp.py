"""SugarCrepe++ (Dumpala et al., 2024): two paraphrased positives against one hard negative.

Public format (github.com/Sri-Harsha/scpp, data/*.json): one JSON file per category, a list of
`{"id", "filename", "caption", "caption2", "negative_caption"}`; images are COCO val2017.
- ITT (image-to-text): cos(I, p1) > cos(I, n) and cos(I, p2) > cos(I, n).
- TOT (text-only):     cos(p1, p2) > cos(p1, n) and cos(p1, p2) > cos(p2, n).
TOT needs no image, so it is computed over every well-formed example (and is the only metric when
no COCO folder is given); ITT over the examples whose image loads. Both counts are reported.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from clic_jax.evaluate.embed import (Embedder, EvalDataError, SkipCounter, embed_unique_files,
                                     embed_unique_texts)
from clic_jax.evaluate.sugarcrepe import category_files, valid_record

CATEGORIES = ("replace_obj", "replace_att", "replace_rel", "swap_obj", "swap_att")
FIELDS = ("filename", "caption", "caption2", "negative_caption")


def _category_file(data_dir: str, category: str) -> str | None:
  path = os.path.join(data_dir, f"{category}.json")
  return path if os.path.isfile(path) else None


def load(data_dir: str, skips: SkipCounter) -> dict[str, list[dict[str, str]]]:
  examples: dict[str, list[dict[str, str]]] = {}
  for category, path, data in category_files(
      data_dir, CATEGORIES, _category_file, list,
      "a list of {id, filename, caption, caption2, negative_caption}", "sugarcrepe_pp", skips):
    examples[category] = [
        {field: record[field] for field in FIELDS} for i, record in enumerate(data)
        if valid_record(record, FIELDS, f"{path} entry {i}", skips)]
  if not examples:
    raise EvalDataError(f"sugarcrepe_pp: no readable category files in {data_dir!r}; expected "
                        f"{', '.join(c + '.json' for c in CATEGORIES)}")
  return examples


def itt_correct(image: np.ndarray, p1: np.ndarray, p2: np.ndarray, neg: np.ndarray) -> np.ndarray:
  """Rows of normalized embeddings (N, D) -> bool (N,)."""
  s_neg = np.sum(image * neg, -1)
  return (np.sum(image * p1, -1) > s_neg) & (np.sum(image * p2, -1) > s_neg)


def tot_correct(p1: np.ndarray, p2: np.ndarray, neg: np.ndarray) -> np.ndarray:
  s_pos = np.sum(p1 * p2, -1)
  return (s_pos > np.sum(p1 * neg, -1)) & (s_pos > np.sum(p2 * neg, -1))


def run(embedder: Embedder, data_dir: str, coco_dir: str | None = None, on_missing: str = "skip"
        ) -> dict[str, Any]:
  """{category: {"itt": x or None, "tot": y}}, counts and skips. coco_dir=None: text only."""
  skips = SkipCounter("sugarcrepe_pp", on_missing)
  examples = load(data_dir, skips)
  all_rows = [row for rows in examples.values() for row in rows]
  texts, text_row = embed_unique_texts(
      embedder, (row[f] for row in all_rows for f in ("caption", "caption2", "negative_caption")))
  if coco_dir is not None:
    images, image_row, failed = embed_unique_files(
        embedder, (os.path.join(coco_dir, row["filename"]) for row in all_rows), skips)

  result: dict[str, Any] = {}
  counts = {}
  for category, rows in examples.items():
    p1, p2, neg = (texts[np.array([text_row[row[f]] for row in rows], np.int64)]
                   for f in ("caption", "caption2", "negative_caption"))
    tot = tot_correct(p1, p2, neg)
    metrics = {"itt": None, "tot": float(tot.mean()) if len(rows) else None}
    count = {"tot": len(rows)}
    if coco_dir is not None:
      keep = []
      for i, row in enumerate(rows):
        path = os.path.join(coco_dir, row["filename"])
        if path in failed:
          skips.skip(failed[path] + " (itt)", path)
        else:
          keep.append(i)
      if keep:
        image = images[[image_row[os.path.join(coco_dir, rows[i]["filename"])] for i in keep]]
        metrics["itt"] = float(itt_correct(image, p1[keep], p2[keep], neg[keep]).mean())
      count["itt"] = len(keep)
    result[category] = metrics
    counts[category] = count
  result["num_examples"] = counts
  result["skipped"] = skips.as_dict()
  return result
