"""Caption preparation for the paper's caption sets: a caption table -> the reference CSV.

  python -m clic_jax.data.caption_prep --input=FILES --out=captions.csv \
      [--split_long_captions] [--key_column=url] [--caption_columns=vlm_caption] \
      [--shard_index=K|auto --num_shards=N]

Writes `captions.csv` in the reference layout (docs/method.md, "Dataset format"): no header, the
URL or image path, the first sentence, the extra sentences; and `captions.csv.report.json`: rows
read, kept, dropped by reason (with example row numbers), and what the cleaning changed. With work
shares the share number goes into both names (`captions-00003-of-00008.csv`); the download reads
the set of them as a glob.

With --split_long_captions each caption cell is one long caption (PixelProse's `vlm_caption`, a raw
CogVLM caption), prepared as the authors' `assets/create_dataset.py` prepares theirs
(clic_jax/data/sentences.py; docs/method.md, "Sentence splitting"):
1. opening phrases are stripped from the first sentence. The phrases are the authors' list
   (sentences.PREFIXES), tried in this order, case-sensitively, one after another:
   "The image displays", "The image showcases", "The image shows", "The image is",
   "The image features", "The image depicts", "The image illustrates", the same seven with "This
   image", "a digital representation of", "This image appears to be", "a collection of",
   "a graphic representation of", "a screenshot of";
2. the caption is split into sentences (a period, whitespace, an uppercase letter; abbreviations
   such as "Dr." and "e.g." protected);
3. sentences of fewer than 4 or more than 34 words are dropped;
4. a row needs two surviving sentences: the first sentence and at least one extra.
Without the flag the cells already are sentences (the released CogVLM-LAION CSV): empty cells are
dropped and a row needs a first sentence with a word in it.
Nothing is lowercased here; the training sources lowercase (docs/method.md, "Dataset format").
"""
from __future__ import annotations

import argparse
import collections
import csv
import json
import os
import sys
from typing import Iterable, Iterator

from clic_jax.data import records, sentences, url_tables, work_shares

# Why a row is dropped (the report's "dropped" keys).
NO_KEY = "no_url_or_path"
EMPTY = "empty_caption"
NO_SENTENCE = "no_sentence_of_4_to_34_words"
ONE_SENTENCE = "one_sentence_only"
NO_WORDS = "first_sentence_without_words"
# What the cleaning changed in rows that may still be kept (the report's "cleaning" keys).
OPENING_REMOVED = "opening_phrase_removed"
SENTENCES_OUT_OF_RANGE = "sentences_outside_4_to_34_words"
NO_EXTRA = "kept_without_extra_sentence"

EXAMPLES_PER_REASON = 5


def row_sentences(captions: list[str], *, split_long: bool,
                  cleaning: collections.Counter) -> tuple[list[str], str | None]:
  """(sentences, None) for a kept row, ([], reason) for a dropped one; `cleaning` counts changes."""
  texts = [c.strip() for c in captions if c and c.strip()]
  if not texts:
    return [], EMPTY
  if not split_long:
    if not records.has_words(texts[0]):
      return [], NO_WORDS
    if len(texts) == 1:
      cleaning[NO_EXTRA] += 1
    return texts, None
  found = []
  for text in texts:
    first_piece = next((piece.strip() for piece in text.split(".") if piece.strip()), "")
    if first_piece.startswith(sentences.PREFIXES):
      cleaning[OPENING_REMOVED] += 1
    pieces = sentences.split_sentences(sentences.remove_prefixes(text))
    kept = sentences.split_long_caption(text)
    cleaning[SENTENCES_OUT_OF_RANGE] += len(pieces) - len(kept)
    found.extend(kept)
  if not found:
    return [], NO_SENTENCE
  if not sentences.keep_row(found):
    return [], ONE_SENTENCE
  return found, None


class Tally:
  """Counts of one preparation: rows read, kept, dropped by reason with example rows, cleaning."""

  def __init__(self, table_report: collections.Counter | None = None, *, keep_dropped=False):
    self.table_report = table_report if table_report is not None else collections.Counter()
    self.keep_dropped = keep_dropped
    self.dropped_rows: list[tuple[int, str, str]] = []   # (row, key, reason) with keep_dropped
    self.rows_read = 0
    self.rows_kept = 0
    self.dropped = collections.Counter()
    self.examples = collections.defaultdict(list)
    self.cleaning = collections.Counter()

  def drop(self, row: url_tables.TableRow, reason: str) -> None:
    self.dropped[reason] += 1
    if len(self.examples[reason]) < EXAMPLES_PER_REASON:
      self.examples[reason].append(row.row)
    if self.keep_dropped:
      self.dropped_rows.append((row.row, row.key, reason))

  def as_dict(self) -> dict:
    # Rows the table reader could not parse (malformed CSV) are dropped rows too.
    dropped = self.dropped + self.table_report
    return {"rows_read": self.rows_read + sum(self.table_report.values()),
            "rows_kept": self.rows_kept, "dropped": dict(sorted(dropped.items())),
            "dropped_example_rows": dict(sorted(self.examples.items())),
            "cleaning": dict(sorted(self.cleaning.items()))}


def prepare_rows(rows: Iterable[url_tables.TableRow], *, split_long: bool,
                 tally: Tally) -> Iterator[tuple[url_tables.TableRow, list[str]]]:
  """The kept rows with their sentences; dropped rows are only counted in `tally`."""
  for row in rows:
    tally.rows_read += 1
    if not row.key:
      tally.drop(row, NO_KEY)
      continue
    found, reason = row_sentences(row.captions, split_long=split_long, cleaning=tally.cleaning)
    if reason:
      tally.drop(row, reason)
      continue
    tally.rows_kept += 1
    yield row, found


def write_reference_csv(rows: Iterable[tuple[url_tables.TableRow, list[str]]], path: str) -> None:
  """[key, first sentence, extra sentences...] per row, no header; written under a temporary name
  and renamed, so a file with the final name is always complete."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path + ".tmp", "w", newline="", encoding="utf-8") as f:
    writer = csv.writer(f)
    for row, found in rows:
      writer.writerow([row.key, *found])
  os.replace(path + ".tmp", path)


def parse_args(argv=None):
  parser = table_parser(
      "python -m clic_jax.data.caption_prep",
      "Caption table (CSV or parquet) -> reference CSV: URL or path, first sentence, extra "
      "sentences; plus a report of dropped rows by reason.",
      ("--input", "CSV / CSV.gz / parquet files: a comma list, a directory or a glob"),
      ("--out", "output CSV (the share number is added)"))
  work_shares.add_flags(parser, "the input rows (row %% num_shards == shard_index)")
  return parser.parse_args(argv)


def table_parser(prog: str, description: str, source: tuple[str, str],
                 out: tuple[str, str]) -> argparse.ArgumentParser:
  """A CLI that reads caption tables (this one and the download): its required input and output
  flags, each (name, help), and how to read the tables."""
  parser = argparse.ArgumentParser(prog=prog, description=description)
  for name, help_text in (source, out):
    parser.add_argument(name, required=True, help=help_text)
  parser.add_argument("--split_long_captions", action="store_true",
                      help="each caption cell is a long caption (PixelProse): strip the authors' "
                           "opening phrases and split into sentences like their dataset script")
  parser.add_argument("--key_column", default="url",
                      help="URL/path column of a parquet file or a CSV with a header")
  parser.add_argument("--caption_columns", default="",
                      help="comma list of caption columns (default 'caption'; PixelProse: "
                           "vlm_caption); a CSV without header: every column after the first")
  return parser


def caption_columns(flag: str) -> list[str] | None:
  return [c.strip() for c in flag.split(",") if c.strip()] or None


def main(argv=None) -> int:
  args = parse_args(argv)
  try:
    shares = work_shares.resolve(args.shard_index, args.num_shards)
    files = url_tables.input_files(args.input)
    table_report = collections.Counter()
    tally = Tally(table_report)
    rows = url_tables.read_rows(files, key_column=args.key_column,
                                caption_columns=caption_columns(args.caption_columns),
                                report=table_report, shares=shares)
    out = work_shares.share_path(args.out, shares)
    write_reference_csv(prepare_rows(rows, split_long=args.split_long_captions, tally=tally), out)
  except (ValueError, FileNotFoundError) as e:   # url_tables.TableError is a ValueError
    print(f"error: {e}", file=sys.stderr)
    return 2
  report = {"input": files, "output": out, "shard_index": shares[0], "num_shards": shares[1],
            "split_long_captions": args.split_long_captions, **tally.as_dict()}
  with open(out + ".report.json", "w") as f:
    json.dump(report, f, indent=1)
  print(json.dumps(report, indent=1))
  return 0


if __name__ == "__main__":
  sys.exit(main())
