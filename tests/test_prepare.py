"""prepare: CSV -> ArrayRecord shards + index + report; resumable; read back by ArrayRecordSource."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from clic_jax.data import prepare, sources


def _dataset(tmp_path, n=9):
  root = tmp_path / "imgs"
  root.mkdir()
  rows = []
  for i in range(n):
    size = (60, 40) if i % 3 else (30, 50)
    Image.new("RGB", size, (20 * i, 100, 50)).save(root / f"{i}.jpg")
    rows.append([f"{i}.jpg", f"A Red Dog Number {i} Runs", f"extra sentence {i}"])
  rows.append(["missing.jpg", "a cat sits on a mat"])
  (root / "bad.png").write_bytes(b"not a png")
  rows.append(["bad.png", "a broken file"])
  rows.append(["notes.txt", "not an image path"])
  path = tmp_path / "data.csv"
  with open(path, "w", newline="") as f:
    csv.writer(f).writerows(rows)
  return str(path), str(root)


def _args(csv_path, root, out, **kw):
  argv = [f"--csv={csv_path}", f"--image_root={root}", f"--out={out}", "--shard_size=4",
          "--num_workers=0", "--pos_backend=lexicon"]
  argv += [f"--{k}={v}" for k, v in kw.items()]
  return prepare.parse_args(argv)


def test_prepare_writes_shards_report_and_index(tmp_path):
  csv_path, root = _dataset(tmp_path)
  out = tmp_path / "out"
  report = prepare.prepare(_args(csv_path, root, out))
  assert report["records_written"] == 9 and report["num_shards"] == 3  # 11 parsed rows / 4
  assert report["skipped"] == {"missing_image": 1, "not_an_image": 1, "not_image_extension": 1}
  assert json.loads((out / "report.json").read_text()) == report
  assert sorted(p.name for p in out.glob("*.array_record")) == [
      prepare.shard_name(i, 3) for i in range(3)]
  src = sources.ArrayRecordSource(str(out))
  assert len(src) == 9
  expected_aspects = [0 if i % 3 else 1 for i in range(9)]
  assert list(src.aspects) == expected_aspects
  rec = src[4]
  assert rec["sentences"] == ["a red dog number 4 runs", "extra sentence 4"]
  assert rec["path"] == "4.jpg" and rec["aspect"] == "wider"
  words = [w for w, _ in rec["tags"][0]]
  assert words == ["a", "red", "dog", "number", "4", "runs"]
  assert dict(rec["tags"][0])["dog"] == "NOUN"
  assert Image.open(__import__("io").BytesIO(rec["image"])).size == (60, 40)


def test_prepare_is_resumable(tmp_path):
  csv_path, root = _dataset(tmp_path)
  out = tmp_path / "out"
  prepare.prepare(_args(csv_path, root, out))
  first = {p.name: p.read_bytes() for p in out.glob("shard-*")}
  mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*")}
  # Simulate a job killed while writing shard 1: its temp file exists, its meta does not.
  missing = prepare.shard_name(1, 3)
  os.remove(out / missing)
  os.remove(out / (missing + ".meta.json"))
  (out / (missing + ".tmp")).write_bytes(b"partial")
  report = prepare.prepare(_args(csv_path, root, out))
  assert report["records_written"] == 9
  for p in out.glob("shard-*"):
    assert p.read_bytes() == first[p.name]
    if not p.name.startswith(missing):
      assert p.stat().st_mtime_ns == mtimes[p.name], f"{p.name} was rewritten"
  assert not (out / (missing + ".tmp")).exists()
  with pytest.raises(SystemExit, match="different settings"):
    prepare.prepare(_args(csv_path, root, out, shard_size=5))


def test_prepare_splits_long_captions_in_parallel(tmp_path):
  root = tmp_path / "imgs"
  root.mkdir()
  rows = []
  for i in range(4):
    Image.new("RGB", (50, 40), (i, i, i)).save(root / f"{i}.png")
    rows.append([f"{i}.png", "The image shows a small brown dog on the grass. The dog wears a red "
                 f"collar around its neck. Behind it stands tree number {i} in the park."])
  rows.append(["x.png", "Too short. Only one."])
  Image.new("RGB", (50, 40)).save(root / "x.png")
  csv_path = tmp_path / "raw.csv"
  with open(csv_path, "w", newline="") as f:
    csv.writer(f).writerows(rows)
  out = tmp_path / "out"
  cmd = [sys.executable, "-m", "clic_jax.data.prepare", f"--csv={csv_path}", f"--image_root={root}",
         f"--out={out}", "--split_long_captions", "--num_workers=2", "--shard_size=2",
         "--pos_backend=lexicon"]
  result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr
  report = json.loads((out / "report.json").read_text())
  assert report["records_written"] == 4 and report["skipped"] == {"too_few_sentences": 1}
  rec = sources.ArrayRecordSource(str(out))[0]
  assert rec["sentences"][0] == "a small brown dog on the grass"
  assert len(rec["sentences"]) == 3


def test_prepare_help():
  result = subprocess.run([sys.executable, "-m", "clic_jax.data.prepare", "--help"],
                          capture_output=True, text=True, timeout=60)
  assert result.returncode == 0 and "--split_long_captions" in result.stdout


def test_prepare_max_short_side_shrinks_large_images(tmp_path):
  csv_path, root = _dataset(tmp_path)
  Image.new("RGB", (60, 59), (1, 2, 3)).save(os.path.join(root, "0.jpg"))  # nearly square, wider
  noise = np.random.default_rng(0).integers(0, 255, (40, 60, 3), np.uint8)
  Image.fromarray(noise).save(os.path.join(root, "1.jpg"))
  data = open(os.path.join(root, "1.jpg"), "rb").read()
  open(os.path.join(root, "1.jpg"), "wb").write(data[:len(data) // 2])  # truncated: now skipped
  out = tmp_path / "out"
  report = prepare.prepare(_args(csv_path, root, out, max_short_side=20))
  assert report["images_resized"] == 8 and report["skipped"]["truncated_image"] == 1
  src = sources.ArrayRecordSource(str(out))
  sizes = {r["path"]: Image.open(__import__("io").BytesIO(r["image"])).size
           for r in (src[i] for i in range(len(src)))}
  assert sizes["0.jpg"] == (20, 20) and sizes["3.jpg"] == (20, 33) and sizes["2.jpg"] == (30, 20)
  assert src[0]["aspect"] == "wider"  # from the original 60x59, not the stored 20x20


def test_prepare_uses_pos_sidecar_tags(tmp_path):
  csv_path, root = _dataset(tmp_path, n=2)
  lines = []
  for i in range(5):  # one line per CSV row (2 images + 3 bad rows)
    tags = [[["A", "DET"], ["Red", "ADJ"], ["Dog", "PROPN"]], [["extra", "ADJ"]]]
    lines.append(json.dumps({"tags": tags}))
  open(csv_path + ".pos.jsonl", "w").write("\n".join(lines) + "\n")
  out = tmp_path / "out"
  prepare.prepare(_args(csv_path, root, out))
  rec = sources.ArrayRecordSource(str(out))[0]
  assert rec["tags"][0] == [("a", "DET"), ("red", "ADJ"), ("dog", "PROPN")]  # not re-tagged
  assert rec["tags"][1] == [("extra", "ADJ")]


def test_prepare_in_work_shares_needs_no_merge_step(tmp_path):
  """Two machines (work shares 0 and 1 of 2) write into one directory; the ArrayRecord source reads
  the complete set of shards, equal record for record to a one-machine prepare."""
  csv_path, root = _dataset(tmp_path)
  whole, shared = tmp_path / "whole", tmp_path / "shared"
  prepare.prepare(_args(csv_path, root, whole))
  part0 = prepare.prepare(_args(csv_path, root, shared, shard_index=0, num_shards=2))
  assert part0["shards_written_by_this_share"] == 2 and part0["shards_still_missing"] == 1
  assert sorted(p.name for p in shared.glob("*.array_record")) == [
      prepare.shard_name(0, 3), prepare.shard_name(2, 3)]
  with pytest.raises(FileNotFoundError, match="1 of 3 prepared shards"):
    sources.ArrayRecordSource(str(shared))
  # The last share to finish writes the index; without it the shards' .meta.json files suffice.
  report = prepare.prepare(_args(csv_path, root, shared, shard_index=1, num_shards=2))
  assert report == json.loads((whole / "report.json").read_text())
  os.remove(shared / "index.json")
  a, b = sources.ArrayRecordSource(str(whole)), sources.ArrayRecordSource(str(shared))
  assert len(a) == len(b) == 9 and list(a.aspects) == list(b.aspects) and a.report == b.report
  for i in range(9):
    assert a[i]["sentences"] == b[i]["sentences"] and a[i]["image"] == b[i]["image"]
  with pytest.raises(SystemExit, match="not in"):
    prepare.prepare(_args(csv_path, root, shared, shard_index=2, num_shards=2))


def test_prepare_work_share_from_the_scheduler(tmp_path, monkeypatch):
  csv_path, root = _dataset(tmp_path)
  monkeypatch.setenv("SLURM_PROCID", "1")
  monkeypatch.setenv("SLURM_NTASKS", "3")
  report = prepare.prepare(_args(csv_path, root, tmp_path / "out", shard_index="auto"))
  assert report["work_share"] == 1 and report["num_work_shares"] == 3
  assert [p.name for p in (tmp_path / "out").glob("*.array_record")] == [prepare.shard_name(1, 3)]
