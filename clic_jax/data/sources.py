"""Random-access record sources: the reference CSV, prepared ArrayRecord shards, and TFDS datasets.

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
import csv
import dataclasses
import json
import logging
import os
import struct
import sys
from typing import Any, Sequence

import numpy as np
import regex

from clic_jax.data import images

UNUSABLE = 255
# The reference keeps only lowercase .png/.jpg/.jpeg; we also accept other formats PIL decodes, in
# any case.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
POS_SIDECAR_SUFFIX = ".pos.jsonl"
_WORD = regex.compile(r"\w")


def has_words(text: str) -> bool:
  """A caption is usable only if it has a word character (not empty, not punctuation only)."""
  return bool(text) and _WORD.search(text) is not None


def aspect_code(aspect: str) -> int:
  return images.ASPECT_CLASSES.index(aspect)


def aspect_name(code: int) -> str | None:
  return None if code == UNUSABLE else images.ASPECT_CLASSES[int(code)]


def _clean_sentences(values: Sequence[Any]) -> list[str]:
  out = []
  for v in values:
    if isinstance(v, bytes):
      v = v.decode("utf-8", errors="replace")
    v = str(v).strip().lower()
    if v:
      out.append(v)
  return out


def _lower_tags(tags):
  if tags is None:
    return None
  return [None if t is None else [(str(w).lower(), str(p)) for w, p in t] for t in tags]


def _image_aspects(paths: Sequence[Any], num_threads: int, desc: str) -> tuple[np.ndarray, dict]:
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


# ------------------------------------------------------------------------------------------------
# Reference CSV
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class CsvRow:
  row: int          # 0-based row number in the CSV (also the line of the POS sidecar)
  path: str         # image path as written in the CSV
  sentences: list[str]
  tags: list | None
  columns: list[int] = dataclasses.field(default_factory=list)  # sentence -> CSV column - 1


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
      r.tags = _lower_tags([tags[c] if c < len(tags) else None for c in r.columns])
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
    usable_text = np.array([has_words(r.sentences[0]) for r in self.rows], bool)
    report = collections.Counter(report)
    report["unusable_caption"] += int((~usable_text).sum())
    to_check = [p for p, ok in zip(self.paths, usable_text) if ok]
    codes, image_report = _image_aspects(to_check, num_threads, "reading image headers")
    report.update(image_report)
    self.aspects = np.full(len(self.rows), UNUSABLE, np.uint8)
    self.aspects[usable_text] = codes
    self.report = dict(report)

  def __len__(self) -> int:
    return len(self.rows)

  def __getitem__(self, index: int) -> dict:
    r = self.rows[index]
    return {"image": self.paths[index], "sentences": list(r.sentences), "tags": r.tags,
            "aspect": aspect_name(self.aspects[index]), "id": f"row{r.row}", "path": self.paths[index]}


# ------------------------------------------------------------------------------------------------
# ArrayRecord shards written by clic_jax.data.prepare
# ------------------------------------------------------------------------------------------------

_RECORD_MAGIC = b"CLIC1"


def encode_record(meta: dict, image_bytes: bytes) -> bytes:
  """One ArrayRecord record: magic, uint32 JSON length, JSON metadata, encoded image bytes."""
  header = json.dumps(meta, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
  return _RECORD_MAGIC + struct.pack("<I", len(header)) + header + image_bytes


def decode_record(data: bytes) -> tuple[dict, bytes]:
  if data[:len(_RECORD_MAGIC)] != _RECORD_MAGIC:
    raise ValueError("not a clic_jax record (bad magic); was the directory written by prepare?")
  start = len(_RECORD_MAGIC) + 4
  (length,) = struct.unpack("<I", data[len(_RECORD_MAGIC):start])
  return json.loads(data[start:start + length].decode("utf-8")), data[start + length:]


INDEX_FILENAME = "index.json"
ASPECTS_FILENAME = "aspects.npy"


class ArrayRecordSource:
  """Shards + index written by `python -m clic_jax.data.prepare`; random access through grain."""

  def __init__(self, directory: str):
    index_path = os.path.join(directory, INDEX_FILENAME)
    if not os.path.isfile(index_path):
      raise FileNotFoundError(
          f"{index_path!r} not found: {directory!r} is not a finished prepare output. Run "
          "`python -m clic_jax.data.prepare --csv=... --image_root=... --out=DIR` (re-running it "
          "finishes an interrupted job)")
    import grain
    with open(index_path) as f:
      index = json.load(f)
    self.description = f"arrayrecord:{directory}"
    shard_paths = [os.path.join(directory, s["file"]) for s in index["shards"] if s["num_records"]]
    self._records = grain.sources.ArrayRecordDataSource(shard_paths) if shard_paths else []
    self.aspects = np.load(os.path.join(directory, ASPECTS_FILENAME))
    if len(self.aspects) != len(self._records):
      raise ValueError(f"{directory}: {ASPECTS_FILENAME} has {len(self.aspects)} entries for "
                       f"{len(self._records)} records; re-run prepare into a fresh directory")
    self.report = dict(index.get("report", {}))

  def __len__(self) -> int:
    return len(self._records)

  def __getitem__(self, index: int) -> dict:
    meta, image_bytes = decode_record(self._records[index])
    tags = meta.get("tags")
    return {"image": image_bytes, "sentences": meta["sentences"],
            "tags": [None if t is None else [tuple(wp) for wp in t] for t in tags] if tags else None,
            "aspect": meta["aspect"], "id": meta.get("id", str(index)), "path": meta.get("path", "")}


# ------------------------------------------------------------------------------------------------
# TFDS datasets stored as ArrayRecord (read without TensorFlow)
# ------------------------------------------------------------------------------------------------


def _get_path(example: dict, path: str):
  value = example
  for key in path.split("/"):
    value = value[key]
  return value


def _text_leaves(value) -> list[str] | None:
  """A string, bytes, or a list/array of them -> list of str; anything else -> None."""
  if isinstance(value, (str, bytes)):
    return _clean_sentences([value])
  if isinstance(value, np.ndarray) and value.dtype.kind in "OSU":
    value = value.tolist()
  if isinstance(value, (list, tuple)) and value and all(isinstance(v, (str, bytes)) for v in value):
    return _clean_sentences(value)
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
    records = _LazyImages(self._records, image_key)
    self.aspects, image_report = _image_aspects(records, num_threads, "reading TFDS image headers")
    report.update(image_report)
    for i in range(len(self._records)):  # cheap: captions only, images stay encoded.
      sentences = self._sentences(i) if self.aspects[i] != UNUSABLE else ["skip"]
      if not sentences or not has_words(sentences[0]):
        self.aspects[i] = UNUSABLE
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
    if not sentences or not has_words(sentences[0]):
      sentences = [""] + sentences[1:]
    return {"image": _get_path(example, self.image_key), "sentences": sentences, "tags": None,
            "aspect": aspect_name(self.aspects[index]), "id": f"{self.description}/{index}",
            "path": f"{self.description}/{index}"}


class _LazyImages:
  """Sequence view of the encoded images of a TFDS source (for the header pass)."""

  def __init__(self, records, image_key):
    self._records, self._key = records, image_key

  def __len__(self):
    return len(self._records)

  def __getitem__(self, i):
    return _get_path(self._records[i], self._key)


# ------------------------------------------------------------------------------------------------
# One entry point
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SourceSpec:
  """Exactly one of csv, arrayrecord_dir, tfds_name / tfds_builder_dir."""
  csv: str | None = None
  image_root: str | None = None
  arrayrecord_dir: str | None = None
  tfds_name: str | None = None
  tfds_data_dir: str | None = None
  tfds_builder_dir: str | None = None
  tfds_split: str = "train"
  tfds_image_key: str = "image"
  tfds_caption_key: str | None = None


def open_source(spec: SourceSpec, *, num_threads: int = 16):
  chosen = [bool(spec.csv), bool(spec.arrayrecord_dir), bool(spec.tfds_name or spec.tfds_builder_dir)]
  if sum(chosen) != 1:
    raise ValueError("give exactly one data source: csv (+ image_root), arrayrecord_dir, or "
                     f"tfds_name / tfds_builder_dir; got {spec}")
  if spec.csv:
    return CsvSource(spec.csv, spec.image_root, num_threads=num_threads)
  if spec.arrayrecord_dir:
    return ArrayRecordSource(spec.arrayrecord_dir)
  return TfdsSource(spec.tfds_name, data_dir=spec.tfds_data_dir, builder_dir=spec.tfds_builder_dir,
                    split=spec.tfds_split, image_key=spec.tfds_image_key,
                    caption_key=spec.tfds_caption_key, num_threads=num_threads)
