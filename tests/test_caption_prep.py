"""Caption preparation: caption tables (CSV with or without header, parquet) -> the reference CSV,
the authors' opening-phrase cleaning and sentence split, drop reasons, and work shares."""
from __future__ import annotations

import collections
import csv
import json

import pytest

from clic_jax.data import caption_prep, url_tables, work_shares

LONG = ("This image displays a wooden boat resting on a calm lake. The boat is painted a bright "
        "blue color. Dr. Smith stands on the dock nearby holding a rope. It is dusk.")


def _prepare(captions, split_long=True):
  cleaning = collections.Counter()
  return (*caption_prep.row_sentences(captions, split_long=split_long, cleaning=cleaning),
          cleaning)


def test_long_captions_are_cleaned_and_split_like_the_authors_script():
  found, reason, cleaning = _prepare([LONG])
  assert reason is None
  # Opening removed, "Dr." kept inside its sentence, "It is dusk" (3 words) dropped.
  assert found == ["a wooden boat resting on a calm lake",
                   "The boat is painted a bright blue color",
                   "Dr. Smith stands on the dock nearby holding a rope"]
  assert cleaning == {caption_prep.OPENING_REMOVED: 1, caption_prep.SENTENCES_OUT_OF_RANGE: 1}
  # Several openings go one after another, case-sensitively (the authors' quirks, kept).
  found, _, _ = _prepare(["The image is a digital representation of a red cat on a mat. The cat "
                          "sleeps on a soft mat."])
  assert found[0] == "a red cat on a mat"
  found, _, _ = _prepare(["the image shows a red cat on a mat. The cat sleeps on a soft mat."])
  assert found[0] == "the image shows a red cat on a mat"
  assert _prepare(["This image shows one single sentence of words."])[1] == \
      caption_prep.ONE_SENTENCE
  assert _prepare(["Tiny. Also tiny. Short one."])[1] == caption_prep.NO_SENTENCE
  assert _prepare(["", "  "])[1] == caption_prep.EMPTY


def test_sentence_cells_are_kept_as_they_are():
  found, reason, _ = _prepare(["The Image Shows a dog", "", "a second one"], split_long=False)
  assert (found, reason) == (["The Image Shows a dog", "a second one"], None)
  assert _prepare(["...", "words here"], split_long=False)[1] == caption_prep.NO_WORDS
  assert _prepare(["just one"], split_long=False)[2] == {caption_prep.NO_EXTRA: 1}


def _raw_csv(path, rows):
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerows(rows)
  return str(path)


def test_cli_writes_the_reference_csv_and_a_report(tmp_path):
  rows = [[f"https://example.com/{i}.jpg", LONG.replace("wooden", f"wooden {i}")] for i in range(6)]
  rows[2][1] = "One short sentence only here."
  rows[4][0] = ""
  path = _raw_csv(tmp_path / "raw.csv", rows)
  with open(path, "a") as f:
    f.write('https://example.com/x.jpg,"broken "quote" cell\n')
  out = tmp_path / "captions.csv"
  assert caption_prep.main([f"--input={path}", f"--out={out}", "--split_long_captions"]) == 0
  with open(out, newline="") as f:
    written = list(csv.reader(f))
  assert [r[0] for r in written] == [f"https://example.com/{i}.jpg" for i in (0, 1, 3, 5)]
  assert written[0][1:] == ["a wooden 0 boat resting on a calm lake",
                            "The boat is painted a bright blue color",
                            "Dr. Smith stands on the dock nearby holding a rope"]
  report = json.loads((tmp_path / "captions.csv.report.json").read_text())
  assert report["rows_read"] == 7 and report["rows_kept"] == 4
  assert report["dropped"] == {"malformed_csv_row": 1, "no_url_or_path": 1,
                               "one_sentence_only": 1}
  assert report["dropped_example_rows"] == {"no_url_or_path": [4], "one_sentence_only": [2]}


def test_parquet_and_header_csv_inputs_and_their_errors(tmp_path):
  import pyarrow as pa
  import pyarrow.parquet as pq
  pq.write_table(pa.table({"url": ["u0", "u1", None], "vlm_caption": [LONG, None, LONG],
                           "key": ["0", "1", "2"]}), tmp_path / "a.parquet")
  _raw_csv(tmp_path / "b.csv", [["id", "url", "caption", "other"], ["7", "u3", LONG, "x"]])
  report = collections.Counter()
  rows = list(url_tables.read_rows(url_tables.input_files(f"{tmp_path}/a.parquet"),
                                   caption_columns=["vlm_caption"], report=report))
  assert [(r.row, r.key, r.captions) for r in rows] == [(0, "u0", [LONG]), (1, "u1", []),
                                                         (2, "", [LONG])]
  # A header row names the columns and is not a row itself.
  (header_row,) = url_tables.read_rows([str(tmp_path / "b.csv")], report=report)
  assert (header_row.row, header_row.key, header_row.captions) == (0, "u3", [LONG])
  # Row numbers run over all files in order.
  files = url_tables.input_files(f"{tmp_path}/a.parquet,{tmp_path}/a.parquet")
  assert [r.row for r in url_tables.read_rows(files, caption_columns=["vlm_caption"],
                                              report=report)] == [0, 1, 2, 3, 4, 5]
  with pytest.raises(url_tables.TableError, match="vlm_caption"):
    list(url_tables.read_rows([str(tmp_path / "a.parquet")], report=report))
  with pytest.raises(url_tables.TableError, match="no such file"):
    url_tables.input_files(str(tmp_path / "missing.parquet"))
  assert caption_prep.main([f"--input={tmp_path}/b.csv", f"--out={tmp_path}/o.csv",
                            "--caption_columns=nope"]) == 2


def test_work_shares_are_disjoint_and_complete(tmp_path, monkeypatch):
  rows = [[f"u{i}", f"caption number {i} here", "extra"] for i in range(10)]
  path = _raw_csv(tmp_path / "raw.csv", rows)
  whole = tmp_path / "whole.csv"
  assert caption_prep.main([f"--input={path}", f"--out={whole}"]) == 0
  parts = []
  for k in range(3):
    monkeypatch.setenv("SLURM_PROCID", str(k))
    monkeypatch.setenv("SLURM_NTASKS", "3")
    assert caption_prep.main([f"--input={path}", f"--out={tmp_path}/part.csv",
                              "--shard_index=auto"]) == 0
    with open(tmp_path / f"part-{k:05d}-of-00003.csv", newline="") as f:
      parts.append(list(csv.reader(f)))
    report = json.loads((tmp_path / f"part-{k:05d}-of-00003.csv.report.json").read_text())
    assert report["rows_read"] == len(parts[-1]) and report["shard_index"] == k
  with open(whole, newline="") as f:
    expected = list(csv.reader(f))
  assert sorted(r for part in parts for r in part) == sorted(expected)
  assert [r[0] for r in parts[1]] == ["u1", "u4", "u7"]
  with pytest.raises(ValueError, match="not in"):
    work_shares.resolve("3", 3)
  monkeypatch.delenv("SLURM_PROCID")
  monkeypatch.setenv("JOB_COMPLETION_INDEX", "2")
  with pytest.raises(ValueError, match="--num_shards"):
    work_shares.resolve("auto", 0)
  assert work_shares.resolve("auto", 4) == (2, 4)
