"""Caption tables read row by row: the URL lists the paper's data starts from, and any CSV or
parquet file with a key column (an image URL or path) and caption columns.

Layouts understood:
- the CogVLM-LAION CSV and the reference CSV (docs/method.md, "Dataset format"): no header,
  column 0 the URL or image path, every further column one caption sentence;
- a CSV with a header row (detected by a cell equal to `key_column`, default "url"): the key
  column plus `caption_columns` (default: the column named "caption");
- parquet (PixelProse: `url` plus its long caption `vlm_caption`): `key_column` plus
  `caption_columns`; a cell may be a string or a list of strings.
`.csv.gz` is read too. Several files (a comma list, a directory, or a glob) are read in sorted
order as one table; `row` numbers run over all of them, so a row is named the same way by every
report and by every work share (`work_shares`).
"""
from __future__ import annotations

import collections
import csv
import dataclasses
import glob
import gzip
import os
from typing import Iterator, Sequence

TABLE_SUFFIXES = (".csv", ".csv.gz", ".parquet")


@dataclasses.dataclass
class TableRow:
  row: int               # 0-based position over all input files
  key: str               # the URL (or image path) cell, stripped; "" when the row has none
  captions: list[str]    # caption cells in column order (list cells flattened), unstripped


class TableError(ValueError):
  """An input table that cannot be read as asked (missing file or column)."""


def input_files(spec: str) -> list[str]:
  """A comma list of files, directories (their .csv/.csv.gz/.parquet files) and globs -> files."""
  files = []
  for item in (s.strip() for s in spec.split(",")):
    if not item:
      continue
    if os.path.isdir(item):
      found = sorted(f for f in glob.glob(os.path.join(item, "*")) if f.endswith(TABLE_SUFFIXES))
    elif glob.has_magic(item):
      found = sorted(glob.glob(item))
    else:
      found = [item] if os.path.isfile(item) else []
    if not found:
      raise TableError(f"{item!r}: no such file, or no .csv/.csv.gz/.parquet file there; pass a "
                       "URL list (CSV or parquet), a directory of them or a glob")
    files.extend(found)
  if not files:
    raise TableError("no input table given")
  return files


def read_rows(files: Sequence[str], *, key_column: str = "url",
              caption_columns: Sequence[str] | None = None, report: collections.Counter,
              shares: tuple[int, int] = (0, 1)) -> Iterator[TableRow]:
  """Rows of the files in order; only those of work share shares[0] of shares[1] (row % n == k).

  Rows that cannot be parsed are counted in `report` ("malformed_csv_row") and skipped, never
  raised; a missing file or column raises TableError before the first row.
  """
  start = 0
  for path in files:
    reader = _parquet_rows if path.endswith(".parquet") else _csv_rows
    # Each reader returns the row number after its file's last row: the next file's first.
    start = yield from reader(path, key_column, caption_columns, report, start, shares)


def _in_share(row: int, shares: tuple[int, int]) -> bool:
  return row % shares[1] == shares[0]


def _open_text(path: str):
  if path.endswith(".gz"):
    return gzip.open(path, "rt", newline="", encoding="utf-8", errors="replace")
  return open(path, newline="", encoding="utf-8", errors="replace")


def _csv_rows(path, key_column, caption_columns, report, start, shares):
  csv.field_size_limit(1 << 24)
  with _open_text(path) as f:
    reader = csv.reader(f, strict=True)
    header = None
    row = start
    while True:
      try:
        fields = next(reader)
      except StopIteration:
        return row
      except csv.Error:
        if _in_share(row, shares):
          report["malformed_csv_row"] += 1
        row += 1
        continue
      if header is None and row == start:
        header = _header(fields, key_column, caption_columns, path)
        if header:
          continue            # the header is not a row: row numbers stay those of the data
      this_row, row = row, row + 1
      if not _in_share(this_row, shares):
        continue
      if header:
        key_index, caption_indices = header
        cells = fields + [""] * (max([key_index, *caption_indices]) + 1 - len(fields))
        yield TableRow(this_row, cells[key_index].strip(), [cells[i] for i in caption_indices])
      else:
        yield TableRow(this_row, fields[0].strip() if fields else "", list(fields[1:]))


def _header(fields, key_column, caption_columns, path):
  """(key index, caption indices) when `fields` is a header row, else None (no header)."""
  if key_column not in fields:
    if caption_columns:
      raise TableError(f"{path}: caption columns {list(caption_columns)} are named, but the first "
                       f"row has no {key_column!r} cell to mark a header; without a header the "
                       "layout is: URL or path, then one caption per column")
    return None
  wanted = list(caption_columns or ["caption"])
  missing = [c for c in wanted if c not in fields]
  if missing:
    raise TableError(f"{path}: no column {missing} in the header {fields}; pass "
                     "--caption_columns=NAME[,NAME...]")
  return fields.index(key_column), [fields.index(c) for c in wanted]


def _parquet_rows(path, key_column, caption_columns, report, start, shares):
  try:
    import pyarrow.parquet as pq
  except ImportError:
    raise TableError("reading parquet needs pyarrow: pip install pyarrow") from None
  table = pq.ParquetFile(path)
  names = table.schema_arrow.names
  wanted = list(caption_columns or ["caption"])
  missing = [c for c in [key_column, *wanted] if c not in names]
  if missing:
    raise TableError(f"{path}: no column {missing} among {names}; pass --key_column / "
                     "--caption_columns (PixelProse: --caption_columns=vlm_caption)")
  row = start
  for batch in table.iter_batches(columns=[key_column, *wanted], batch_size=8192):
    columns = batch.to_pydict()
    for i in range(batch.num_rows):
      this_row, row = row, row + 1
      if not _in_share(this_row, shares):
        continue
      key = columns[key_column][i]
      yield TableRow(this_row, str(key).strip() if key is not None else "",
                     [text for c in wanted for text in _cell_texts(columns[c][i])])
  return row


def _cell_texts(value) -> list[str]:
  if value is None:
    return []
  if isinstance(value, (list, tuple)):
    return [str(v) for v in value if v is not None]
  return [str(value)]
