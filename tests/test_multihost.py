"""Two processes as two hosts (jax.distributed with gloo collectives on CPU, 2 devices each): the
trainer's multi-host paths run for real.

1. The per-step agreement on the token-row length. Every host cuts its rows to one length per step
   (the texts form one global array); the hosts agree on the longest of their own lengths. Measured
   here: both hosts train every step with the same lengths, at least one host's own rows were
   shorter than the agreed length (so the agreement was needed), and the losses equal those of the
   same two-host run on full 77-token rows.
2. FSDP over both hosts (each holds only slices of the parameters), with each update's batch
   accumulated in 2 micro-batches, through a preemption, a resume, an evaluation and the open_clip
   export, against the same run data-parallel without accumulation: the hosts must gather the
   slices for evaluation and export, a single process must be able to load the pod's checkpoint,
   and exact accumulation across hosts must leave the losses unchanged.
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


def _train_on_two_hosts(workdir: Path, csv_path, image_root, *flags: str) -> tuple[list, list]:
  """Runs the worker as HOSTS processes; returns their summaries and the primary's metric rows."""
  port = _free_port()
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
  procs = [subprocess.Popen(
      [sys.executable, str(WORKER), f"--process_id={i}", f"--num_processes={HOSTS}",
       f"--port={port}", f"--steps={STEPS}", f"--csv={csv_path}", f"--image_root={image_root}",
       f"--workdir={workdir}", *flags],
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
  cut, cut_rows = _train_on_two_hosts(tmp_path / "cut", csv_path, images,
                                      f"--buckets={every_length}")
  full, full_rows = _train_on_two_hosts(tmp_path / "full", csv_path, images, "--buckets=")

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


def _saved_param_shardings(workdir: Path, step: int) -> list:
  """The sharding metadata orbax recorded for each parameter of a checkpoint."""
  import jax
  import orbax.checkpoint as ocp
  metadata = ocp.StandardCheckpointer().metadata(workdir / "checkpoints" / str(step) / "params")
  return [leaf.sharding for leaf in jax.tree.leaves(getattr(metadata, "item_metadata", metadata))]


def test_fsdp_over_two_hosts_resumes_evaluates_and_exports_like_data_parallel(tmp_path,
                                                                               caption_dataset):
  from safetensors.numpy import load_file

  from clic_jax.data.toyworld import generate_world
  from clic_jax.interop.convert import params_to_state_dict
  from clic_jax.train.checkpoint import load_params_for_eval

  csv_path, images = caption_dataset
  world = generate_world(str(tmp_path / "world"), num_train=8, num_test=16, seed=1, image_size=32)
  evals = [f"--sugarcrepe_dir={world['sugarcrepe_dir']}", f"--coco_dir={world['coco_dir']}",
           "--export"]
  fsdp, dp = tmp_path / "fsdp", tmp_path / "dp"
  # The FSDP run also accumulates each update's batch in 2 micro-batches (exact accumulation across
  # hosts): its losses must still be those of the plain data-parallel run.
  sharded = ("--fsdp=4", "--grad_accum_steps=2")
  preempted, _ = _train_on_two_hosts(fsdp, csv_path, images, *sharded, "--sigterm_at_step=2",
                                     *evals)
  resumed, fsdp_rows = _train_on_two_hosts(fsdp, csv_path, images, *sharded, *evals)
  plain, dp_rows = _train_on_two_hosts(dp, csv_path, images, "--fsdp=1", *evals)

  assert [(s["step"], s["preempted"]) for s in preempted] == [(2, True)] * HOSTS
  assert [(s["step"], s["preempted"]) for s in resumed + plain] == [(STEPS, False)] * 2 * HOSTS
  # Each host held only slices: the big parameters were saved split over all four devices.
  shardings = _saved_param_shardings(fsdp, STEPS)
  assert any("fsdp" in str(sh.partition_spec) for sh in shardings)
  assert all(np.asarray(sh.device_mesh.mesh, dtype=object).size == 2 * HOSTS for sh in shardings)
  assert sorted(p.name for p in (fsdp / "checkpoints" / "2" / "data").glob("process_*.json")) == [
      f"process_{i}-of-{HOSTS}.json" for i in range(HOSTS)]     # each host's place in its data

  # Training: the preempted-and-resumed FSDP run logs each step once, with the losses of the
  # uninterrupted data-parallel run.
  train_rows = lambda rows: [r for r in rows if "loss" in r]
  assert [r["step"] for r in train_rows(fsdp_rows)] == list(range(1, STEPS + 1))
  # With accumulation every count is in updates, and each update is of one kind, alternating.
  assert ["clic/loss" in r for r in train_rows(fsdp_rows)] == [True, False] * (STEPS // 2)
  np.testing.assert_allclose([r["loss"] for r in train_rows(fsdp_rows)],
                             [r["loss"] for r in train_rows(dp_rows)], rtol=1e-5)

  # Evaluation ran on the gathered parameters at the last step, on both layouts.
  eval_rows = [[r for r in rows if "eval/sugarcrepe/swap_att" in r]
               for rows in (fsdp_rows, dp_rows)]
  assert [[r["step"] for r in rows] for rows in eval_rows] == [[STEPS], [STEPS]]
  assert eval_rows[0][0].keys() == eval_rows[1][0].keys()
  fsdp_eval = eval_rows[0][0]
  counts = {k: v for k, v in fsdp_eval.items() if "/num_examples/" in k}
  assert counts and all(v > 0 for v in counts.values())
  assert counts == {k: v for k, v in eval_rows[1][0].items() if "/num_examples/" in k}
  assert all(0.0 <= v <= 1.0 for k, v in fsdp_eval.items() if k not in counts and k != "step")

  # Export: exactly the checkpointed parameters (the gather put every slice in its place; the
  # checkpoint loads in this single process whatever mesh wrote it) and, beside data parallel,
  # equal up to Adam's first steps, which turn 1e-7 gradient differences into steps of up to lr.
  exported = load_file(fsdp / "open_clip" / "open_clip_model.safetensors")
  cfg, params = load_params_for_eval(fsdp)
  checkpointed = params_to_state_dict(params, cfg)
  assert exported.keys() == checkpointed.keys()
  for key in exported:
    np.testing.assert_array_equal(exported[key], np.asarray(checkpointed[key]), err_msg=key)
  plain_export = load_file(dp / "open_clip" / "open_clip_model.safetensors")
  for key in exported:
    np.testing.assert_allclose(exported[key], plain_export[key], atol=2e-3, err_msg=key)
