"""The reference CSV (docs/method.md, "Dataset format"): no header, image path then one sentence a
column; part-of-speech tags from a `<csv>.pos.jsonl` sidecar when `prepare` wrote one."""
from __future__ import annotations

import collections
import csv
import dataclasses
import json
import logging
import os

import numpy as np

from clic_jax.data import images, records

# The reference keeps only lowercase .png/.jpg/.jpeg; we also accept other formats PIL decodes, in
# any case.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
POS_SIDECAR_SUFFIX = ".pos.jsonl"


@dataclasses.dataclass
class CsvRow:
  row: int          # 0-based row number in the CSV (also the line of the POS sidecar)
  path: str         # image path as written in the CSV
  sentences: list[str]
  tags: list | None
  columns: list[int] = dataclasses.field(default_factory=list)  # sentence -> CSV column - 1

  @property
  def id(self) -> str:
    return f"row{self.row}"

  def image_bytes(self, image_root: str | None) -> bytes:
    """The encoded image (prepare reads rows of every input kind through this)."""
    return images.read_bytes(resolve_image_path(self.path, image_root))


def read_reference_csv(csv_path: str, *, split_fn=None) -> tuple[list[CsvRow], dict[str, int]]:
  """Parse the reference CSV: no header, [image_path, first_sentence, extra, ...].

  See docs/method.md, "Dataset format".

  Rows that cannot be used are counted by reason, never silently dropped: malformed quoting
  ("malformed_csv_row"), fewer than 2 columns ("too_few_columns"), a path without an image
  extension ("not_image_extension"). split_fn (text -> sentences) turns a raw [id, long caption]
  CSV into sentences (docs/method.md, "Sentence splitting"); rows it rejects return [] and count as
  "too_few_sentences".
  Tags come from `<csv>.pos.jsonl` when it exists and matches the CSV row count.
  """
  if not os.path.isfile(csv_path):
    raise FileNotFoundError(f"CSV file {csv_path!r} does not exist; pass the path of the dataset CSV")
  report = collections.Counter()
  rows: list[CsvRow] = []
  row_number = 0
  csv.field_size_limit(1 << 24)
  with open(csv_path, newline="", encoding="utf-8", errors="replace") as f:
    reader = csv.reader(f, strict=True)
    while True:
      try:
        fields = next(reader)
      except StopIteration:
        break
      except csv.Error:
        report["malformed_csv_row"] += 1
        row_number += 1
        continue
      this_row, row_number = row_number, row_number + 1
      if not fields or all(not x.strip() for x in fields):
        report["empty_row"] += 1
        continue
      if len(fields) < 2:
        report["too_few_columns"] += 1
        continue
      path = fields[0].strip()
      if not path.lower().endswith(IMAGE_EXTENSIONS):
        report["not_image_extension"] += 1
        continue
      if split_fn is not None:
        sentences = [s.lower() for s in split_fn(fields[1])]
        if not sentences:
          report["too_few_sentences"] += 1
          continue
        columns = []
      else:  # empty extra columns are dropped; `columns` keeps the sidecar alignment.
        columns = [0] + [c for c in range(1, len(fields) - 1) if fields[c + 1].strip()]
        sentences = [fields[1].strip().lower()] + [fields[c + 1].strip().lower() for c in columns[1:]]
      rows.append(CsvRow(this_row, path, sentences, None, columns))
  if split_fn is None:
    _attach_sidecar_tags(csv_path + POS_SIDECAR_SUFFIX, rows, row_number, report)
  return rows, dict(report)


def _attach_sidecar_tags(sidecar: str, rows: list[CsvRow], num_csv_rows: int, report) -> None:
  """Line i of the sidecar holds {"tags": [[[word, pos], ...] per sentence column]} for CSV row i."""
  if not os.path.isfile(sidecar):
    return
  with open(sidecar, encoding="utf-8") as f:
    lines = f.read().splitlines()
  if len(lines) != num_csv_rows:
    logging.warning("ignoring %s: %d lines for %d CSV rows", sidecar, len(lines), num_csv_rows)
    report["pos_sidecar_ignored"] += 1
    return
  for r in rows:
    try:
      tags = json.loads(lines[r.row])["tags"]
      r.tags = records.lower_tags([tags[c] if c < len(tags) else None for c in r.columns])
    except (ValueError, KeyError, TypeError, IndexError):
      report["pos_sidecar_bad_line"] += 1


def resolve_image_path(path: str, image_root: str | None) -> str:
  """Relative paths are joined to the image root; an absolute path overrides it.

  See docs/method.md, "Dataset format".
  """
  if os.path.isabs(path) or not image_root:
    return path
  return os.path.join(image_root, path)


class CsvSource:
  """The reference CSV with images on disk. Opening reads every image header once (threads)."""

  def __init__(self, csv_path: str, image_root: str | None = None, *, num_threads: int = 16):
    if image_root is not None and not os.path.isdir(image_root):
      raise FileNotFoundError(f"image root {image_root!r} is not a directory; pass --image_root=DIR"
                              " holding the images the CSV names")
    self.description = f"csv:{csv_path}"
    self.rows, report = read_reference_csv(csv_path)
    self.image_root = image_root
    self.paths = [resolve_image_path(r.path, image_root) for r in self.rows]
    usable_text = np.array([records.has_words(r.sentences[0]) for r in self.rows], bool)
    report = collections.Counter(report)
    report["unusable_caption"] += int((~usable_text).sum())
    to_check = [p for p, ok in zip(self.paths, usable_text) if ok]
    codes, image_report = records.image_aspects(to_check, num_threads, "reading image headers")
    report.update(image_report)
    self.aspects = np.full(len(self.rows), records.UNUSABLE, np.uint8)
    self.aspects[usable_text] = codes
    self.report = dict(report)

  def __len__(self) -> int:
    return len(self.rows)

  def __getitem__(self, index: int) -> dict:
    r = self.rows[index]
    return {"image": self.paths[index], "sentences": list(r.sentences), "tags": r.tags,
            "aspect": records.aspect_name(self.aspects[index]), "id": r.id,
            "path": self.paths[index]}
