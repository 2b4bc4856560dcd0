"""Two processes as two hosts (jax.distributed with gloo collectives on CPU, 2 devices each): the
trainer's multi-host paths run for real, here the per-step agreement on the token-row length.

Every host cuts its rows to one length per step (the texts form one global array); the hosts agree
on the longest of their own lengths. Measured here: both hosts train every step with the same
lengths, at least one host's own rows were shorter than the agreed length (so the agreement was
needed), and the losses equal those of the same two-host run on full 77-token rows.
"""
from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
WORKER = ROOT / "tests" / "multihost_worker.py"
HOSTS = 2
STEPS = 4


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _train_on_two_hosts(workdir: Path, csv_path, image_root, buckets: str) -> tuple[list, list]:
  """Runs the worker as HOSTS processes; returns their summaries and the primary's metric rows."""
  port = _free_port()
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
  procs = [subprocess.Popen(
      [sys.executable, str(WORKER), f"--process_id={i}", f"--num_processes={HOSTS}",
       f"--port={port}", f"--steps={STEPS}", f"--csv={csv_path}", f"--image_root={image_root}",
       f"--workdir={workdir}", f"--buckets={buckets}"],
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)
      for i in range(HOSTS)]
  outputs = []
  try:
    for proc in procs:
      outputs.append(proc.communicate(timeout=600)[0])
  finally:
    for proc in procs:
      proc.kill()
  summaries = []
  for i, (proc, out) in enumerate(zip(procs, outputs)):
    assert proc.returncode == 0, f"host {i} failed:\n{out[-3000:]}"
    line = next(l for l in out.splitlines() if l.startswith("SUMMARY "))
    summaries.append(json.loads(line[len("SUMMARY "):]))
  with open(workdir / "metrics.jsonl") as f:
    rows = [json.loads(line) for line in f]
  return summaries, rows


def _captions_of_varied_length(csv_path, out: Path) -> Path:
  """The fixture's rows with 0-9 extra words on every sentence of a row, so that one host's
  longest caption of a step often differs from the other's."""
  rows = list(csv.reader(open(csv_path, newline="")))
  with open(out, "w", newline="") as f:
    csv.writer(f).writerows([row[0]] + [f"{s} near the window" if i % 4 == 0 else
                                        f"{s}{' very' * (i % 9)}" for s in row[1:]]
                            for i, row in enumerate(rows))
  return out


def _length_counts(summary: dict) -> dict:
  return {k: v for k, v in summary["pipeline"].items()
          if k.startswith("text_length_") and k != "text_length_raised"}


def test_two_hosts_agree_on_text_lengths_and_match_full_rows(tmp_path, caption_dataset):
  csv_path, images = caption_dataset
  csv_path = _captions_of_varied_length(csv_path, tmp_path / "varied.csv")
  every_length = ",".join(str(n) for n in range(2, 41))   # fine buckets: hosts differ often
  cut, cut_rows = _train_on_two_hosts(tmp_path / "cut", csv_path, images, every_length)
  full, full_rows = _train_on_two_hosts(tmp_path / "full", csv_path, images, "")

  for summary in cut + full:
    assert summary["process_count"] == HOSTS and summary["device_count"] == 2 * HOSTS
    assert summary["step"] == STEPS and not summary["preempted"]
  assert sorted(s["process_index"] for s in cut) == list(range(HOSTS))
  assert (tmp_path / "cut" / "checkpoints").is_dir()

  # The same agreed length on both hosts at every step, and it mattered for at least one host.
  counts = [_length_counts(s) for s in cut]
  assert counts[0] == counts[1] and sum(counts[0].values()) == STEPS, counts
  assert all(int(k.rsplit("_", 1)[1]) < 77 for k in counts[0])
  assert max(s["pipeline"]["text_length_raised"] for s in cut) > 0
  assert not any(_length_counts(s) for s in full)            # "" keeps 77 columns, no agreement

  # Exact: cutting agreed columns changes no loss.
  assert len(cut_rows) == len(full_rows) == STEPS
  np.testing.assert_allclose([r["loss"] for r in cut_rows], [r["loss"] for r in full_rows],
                             rtol=1e-5)
