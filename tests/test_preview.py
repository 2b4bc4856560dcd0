"""preview CLI: contact sheet, samples.json keys and content, stats.json, --help, clear errors."""
from __future__ import annotations

import csv
import json
import subprocess
import sys

from PIL import Image

from clic_jax.data import preview


def _dataset(tmp_path):
  root = tmp_path / "imgs"
  root.mkdir()
  rows = []
  for i in range(8):
    size = (60, 30) if i < 4 else (30, 60)
    Image.new("RGB", size, (i * 30, 80, 160)).save(root / f"{i}.jpg")
    rows.append([f"{i}.jpg", f"a red dog sits on chair {i}", f"the dog looks at a cat {i}",
                 f"sunlight falls on floor {i}"])
  rows.append(["gone.jpg", "a missing image"])
  path = tmp_path / "d.csv"
  with open(path, "w", newline="") as f:
    csv.writer(f).writerows(rows)
  return str(path), str(root)


def test_preview_writes_sheet_samples_and_stats(tmp_path):
  csv_path, root = _dataset(tmp_path)
  out = tmp_path / "out"
  argv = [f"--csv={csv_path}", f"--image_root={root}", "--num=6", "--seed=1", f"--out={out}",
          "--image_size=32", "--pos_backend=lexicon"]
  assert preview.main(argv) == 0
  samples = json.loads((out / "samples.json").read_text())
  assert len(samples) == 6
  for s in samples:
    assert set(s) == {"positives", "negative", "single_caption", "sources", "layout"}
    assert len(s["positives"]) == 4 and s["negative"] not in s["positives"]
    first_image = int(s["sources"][0].rsplit("/", 1)[1].split(".")[0])
    assert s["positives"][0].startswith(s["single_caption"])  # p1 starts with c1 of record one
    assert s["single_caption"].endswith(str(first_image))
    assert s["layout"] == ("stacked" if first_image < 4 else "side_by_side")
    assert s["sources"][0] != s["sources"][1]
  assert {s["layout"] for s in samples} == {"stacked", "side_by_side"}
  sheet = Image.open(out / "preview.png")
  assert sheet.size[0] >= 4 * 256
  stats = json.loads((out / "stats.json").read_text())
  assert stats["skipped_when_opened"] == {"missing_image": 1} and stats["num_samples"] == 6
  # Same seed, same samples.
  assert preview.main(argv[:-1] + [f"--out={tmp_path / 'again'}", "--pos_backend=lexicon"]) == 0
  assert json.loads((tmp_path / "again" / "samples.json").read_text()) == samples


def test_preview_cli_help_and_errors(tmp_path):
  result = subprocess.run([sys.executable, "-m", "clic_jax.data.preview", "--help"],
                          capture_output=True, text=True, timeout=60)
  assert result.returncode == 0 and "--num" in result.stdout
  bad = tmp_path / "bad.csv"
  bad.write_text("x.jpg,a missing image\n")
  assert preview.main([f"--csv={bad}", f"--out={tmp_path / 'o'}"]) == 1
  assert preview.main([f"--csv={tmp_path / 'nope.csv'}", f"--out={tmp_path / 'o'}"]) == 1
