"""SugarCrepe (Hsieh et al., 2023): does the image prefer its caption to a hard negative?

Public format (github.com/RAIVNLab/sugar-crepe, data/*.json): one JSON file per category,
`{id: {"filename": "000000xxxxxx.jpg", "caption": ..., "negative_caption": ...}}` with
non-contiguous string ids; the images are COCO val2017. An example is correct iff
cos(I, pos) > cos(I, neg) (strict). Reported: accuracy per category in [0, 1] and the add /
replace / swap averages. An early release of the repository named the object files *_ent.json;
both names load.
"""
from __future__ import annotations

import json
import os
from typing import Any, Callable, Iterator

import numpy as np

from clic_jax.evaluate.embed import (Embedder, EvalDataError, SkipCounter, embed_unique_files,
                                     embed_unique_texts)

CATEGORIES = ("add_obj", "add_att", "replace_obj", "replace_att", "replace_rel", "swap_obj",
              "swap_att")
GROUPS = {"avg_add": ("add_obj", "add_att"),
          "avg_replace": ("replace_obj", "replace_att", "replace_rel"),
          "avg_swap": ("swap_obj", "swap_att")}
FIELDS = ("filename", "caption", "negative_caption")


def category_file(data_dir: str, category: str) -> str | None:
  for name in (category, category.replace("_obj", "_ent")):
    path = os.path.join(data_dir, f"{name}.json")
    if os.path.isfile(path):
      return path
  return None


def read_json(path: str, benchmark: str, skips: SkipCounter) -> Any | None:
  """json.load, with a malformed file counted (or raised) instead of a traceback."""
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    skips.skip("malformed_file", f"{path} is not valid JSON ({e})")
    return None


def valid_record(record: Any, fields: tuple[str, ...], where: str, skips: SkipCounter) -> bool:
  """True if record is a dict with a string in every field; otherwise counted as missing_key."""
  if not isinstance(record, dict):
    skips.skip("malformed_record", f"{where} is a {type(record).__name__}, expected an object")
    return False
  for field in fields:
    if not isinstance(record.get(field), str):
      skips.skip("missing_key", f"{where} has no string field {field!r}")
      return False
  return True


def category_files(data_dir: str, categories: tuple[str, ...],
                   locate: Callable[[str, str], str | None], container: type, expected: str,
                   benchmark: str, skips: SkipCounter) -> Iterator[tuple[str, str, Any]]:
  """(category, path, parsed JSON) of each category file that exists, parses and holds a
  `container`; a missing or malformed file is counted in skips (or raised, by its policy)."""
  for category in categories:
    path = locate(data_dir, category)
    if path is None:
      skips.skip("missing_file", f"{os.path.join(data_dir, category + '.json')} does not exist")
      continue
    data = read_json(path, benchmark, skips)
    if data is None:
      continue
    if not isinstance(data, container):
      skips.skip("malformed_file", f"{path} holds a {type(data).__name__}, expected {expected}")
      continue
    yield category, path, data


def load(data_dir: str, coco_dir: str, skips: SkipCounter) -> dict[str, list[dict[str, str]]]:
  """{category: [{"image": path, "caption": ..., "negative_caption": ...}]} for files present."""
  examples: dict[str, list[dict[str, str]]] = {}
  for category, path, data in category_files(
      data_dir, CATEGORIES, category_file, dict,
      "an object {id: {filename, caption, negative_caption}}", "sugarcrepe", skips):
    rows = []
    for key, record in data.items():
      if valid_record(record, FIELDS, f"{path} id {key}", skips):
        rows.append({"image": os.path.join(coco_dir, record["filename"]),
                     "caption": record["caption"], "negative_caption": record["negative_caption"]})
    examples[category] = rows
  if not examples:
    raise EvalDataError(f"sugarcrepe: no readable category files in {data_dir!r}; expected "
                        f"{', '.join(c + '.json' for c in CATEGORIES)}")
  return examples


def add_group_averages(metrics: dict[str, float]) -> dict[str, float]:
  """The add / replace / swap averages, each only when all of its categories were evaluated."""
  out = dict(metrics)
  for name, members in GROUPS.items():
    if all(m in metrics for m in members):
      out[name] = float(np.mean([metrics[m] for m in members]))
  return out


def run(embedder: Embedder, data_dir: str, coco_dir: str, on_missing: str = "skip"
        ) -> dict[str, Any]:
  """Accuracy per category (fractions), group averages, example counts and skips by reason."""
  skips = SkipCounter("sugarcrepe", on_missing)
  examples = load(data_dir, coco_dir, skips)
  all_rows = [row for rows in examples.values() for row in rows]
  images, image_row, failed = embed_unique_files(embedder, (r["image"] for r in all_rows), skips)
  texts, text_row = embed_unique_texts(
      embedder, (t for r in all_rows for t in (r["caption"], r["negative_caption"])))

  metrics, counts = {}, {}
  for category, rows in examples.items():
    correct = []
    for row in rows:
      if row["image"] in failed:
        skips.skip(failed[row["image"]], row["image"])
        continue
      image = images[image_row[row["image"]]]
      pos = texts[text_row[row["caption"]]] @ image
      neg = texts[text_row[row["negative_caption"]]] @ image
      correct.append(pos > neg)
    counts[category] = len(correct)
    if correct:
      metrics[category] = float(np.mean(correct))
  result: dict[str, Any] = add_group_averages(metrics)
  result["num_examples"] = counts
  result["skipped"] = skips.as_dict()
  return result
