"""A workdir knows its run: the lock (one writer), config.json (the run's config and what each
resume changed), the resume check against the checkpoint, and one metrics row per step after a
kill.

The lock and the comparison are tested as functions; the end-to-end scenario runs real trainers:
a trainer process is SIGKILLed after a checkpoint, a resume (with another learning rate) takes its
lock over while a third trainer process started on the same workdir is refused, and a resume with
another model is refused before anything compiles.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import pytest
from etils import epath

from clic_jax.train import config as config_lib
from clic_jax.train import metrics as metrics_lib
from clic_jax.train import trainer
from clic_jax.train import workdir as workdir_lib
from test_remote_workdir import fake_gcs  # noqa: F401 - the fixture
from test_train import read_metrics, tiny_config

ROOT = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------------------------------------
# The comparison.


def test_each_changed_field_is_classified_by_the_table(caption_dataset):
  saved = workdir_lib.config_dict(tiny_config(*caption_dataset))
  now = workdir_lib.config_dict(tiny_config(
      *caption_dataset, freeze=("^visual/",), total_steps=99, **{
          "model.name": "tiny-64", "model.dtype": "bfloat16", "optim.lr": 5e-4,
          "optim.clip_grad_norm": 1.0, "optim.grad_accum_steps": 2, "mesh.fsdp": 2,
          "data.csv": "/elsewhere.csv"}))
  now["added_by_a_later_version"] = 1
  changes = {c.field: c for c in workdir_lib.compare(saved, now)}
  assert {f for f, c in changes.items() if c.breaks_checkpoint} == {
      "model.name", "freeze", "optim.clip_grad_norm"}
  assert {f for f, c in changes.items() if not c.breaks_checkpoint} == {
      "model.dtype", "optim.lr", "optim.grad_accum_steps", "total_steps", "mesh.fsdp", "data.csv",
      "added_by_a_later_version"}
  assert str(changes["optim.lr"]) == "optim.lr: 0.001 (saved) -> 0.0005 (now)"
  assert str(changes["added_by_a_later_version"]).startswith("added_by_a_later_version: (absent)")
  # What the checkpoint depends on, not the spelling: a clipping threshold, pattern order and an
  # empty pattern leave the optimizer state's tree as it was.
  a = dict(saved, freeze=["^visual/", "^logit"], optim=dict(saved["optim"], clip_grad_norm=1.0))
  b = dict(saved, freeze=["", "^logit", "^visual/"], optim=dict(saved["optim"], clip_grad_norm=2.0))
  assert [c.breaks_checkpoint for c in workdir_lib.compare(a, b)] == [False, False]
  # Every rule names a field that exists: a renamed field would silently lose its check.
  fields = workdir_lib._flatten(workdir_lib.config_dict(config_lib.default_config()))
  assert all(prefix in fields for prefix in workdir_lib.BREAKS_CHECKPOINT)


def test_config_json_records_the_start_and_each_resume(tmp_path, caption_dataset, caplog):
  first = tiny_config(*caption_dataset)
  assert workdir_lib.record_run(tmp_path, first, resume_step=None) == []
  with caplog.at_level(logging.WARNING, logger="clic_jax.train"):
    workdir_lib.record_run(tmp_path, tiny_config(*caption_dataset, **{"optim.lr": 2e-3}), 4)
  assert "optim.lr: 0.001 (saved) -> 0.002 (now)" in caplog.text
  runs = workdir_lib.read_history(tmp_path)
  assert [r["resumed_from_step"] for r in runs] == [None, 4]
  assert runs[0]["config"]["optim"]["lr"] == 1e-3 and runs[1]["changed"] == {
      "optim.lr": [1e-3, 2e-3]}
  before = (tmp_path / "config.json").read_text()
  # Another model with a checkpoint to resume: refused, naming both values; nothing recorded.
  other_model = tiny_config(*caption_dataset, **{"model.name": "tiny-64", "optim.lr": 2e-3})
  with pytest.raises(workdir_lib.ResumeMismatchError,
                     match=r"model.name: 'tiny' \(saved\) -> 'tiny-64' \(now\)"):
    workdir_lib.record_run(tmp_path, other_model, resume_step=4)
  assert (tmp_path / "config.json").read_text() == before
  # With no checkpoint nothing is resumed: the same change is a restart, recorded.
  assert [c.field for c in workdir_lib.record_run(tmp_path, other_model, None)] == ["model.name"]
  (tmp_path / "config.json").write_text("{not json")
  with pytest.raises(config_lib.ConfigError, match="is not a clic_jax run record"):
    workdir_lib.record_run(tmp_path, first, resume_step=4)


# ------------------------------------------------------------------------------------------------
# The lock.


def _holder(**fields) -> dict:
  return {"host": socket.gethostname(), "boot_id": workdir_lib._boot_id(), "pid": os.getpid(),
          "process_start": None, "token": "x", "started": "earlier", "heartbeat": time.time(),
          "command": "python -m clic_jax.main", **fields}


def test_a_held_lock_refuses_a_second_run_and_is_released(tmp_path):
  lock = workdir_lib.WorkdirLock(tmp_path).acquire()
  with pytest.raises(workdir_lib.WorkdirInUseError,
                     match=f"in use by another run: process {os.getpid()} on host "
                           f"{socket.gethostname()}"):
    workdir_lib.WorkdirLock(tmp_path).acquire()
  lock.release()
  assert not (tmp_path / "lock.json").exists()
  workdir_lib.WorkdirLock(tmp_path).acquire().release()
  assert sorted(p.name for p in tmp_path.iterdir()) == []            # no temporary files left


def test_stale_locks_are_taken_over_and_live_ones_are_not(tmp_path, caplog):
  dead = subprocess.Popen(["true"])
  dead.wait()
  parent_start = workdir_lib._process_start(os.getppid())[1]
  live_elsewhere = _holder(host="another-host", pid=1)
  cases = [  # (holder, stale?)
      (_holder(pid=dead.pid), True),                              # gone from this host
      (_holder(pid=os.getppid(), process_start=parent_start), False),   # alive here
      (_holder(pid=os.getppid(), process_start="1"), True),       # its id now names another process
      (_holder(), True),                                          # this process, not holding it
      (live_elsewhere, False),                                    # fresh heartbeat elsewhere
      (dict(live_elsewhere, heartbeat=time.time() - 700), True),  # abandoned elsewhere
  ]
  for holder, stale in cases:
    assert (workdir_lib.stale_reason(holder, stale_after_s=600) is not None) == stale, holder
  path = tmp_path / "lock.json"
  path.write_text(json.dumps(_holder(pid=dead.pid)))
  with caplog.at_level(logging.WARNING, logger="clic_jax.train"):
    lock = workdir_lib.WorkdirLock(tmp_path).acquire()
  assert f"process {dead.pid} is no longer running on this host" in caplog.text
  assert json.loads(path.read_text())["pid"] == os.getpid()
  lock.release()
  path.write_text(json.dumps(live_elsewhere))
  with pytest.raises(workdir_lib.WorkdirInUseError, match="process 1 on host another-host"):
    workdir_lib.WorkdirLock(tmp_path).acquire()
  assert json.loads(path.read_text()) == live_elsewhere             # untouched


def test_the_holder_refreshes_its_heartbeat(tmp_path):
  lock = workdir_lib.WorkdirLock(tmp_path, stale_after_s=0.5)        # a beat every 0.1 s
  lock.acquire()
  first = lock.read()["heartbeat"]
  time.sleep(0.6)
  assert lock.read()["heartbeat"] > first
  assert workdir_lib.stale_reason(dict(lock.read(), host="another-host"), 0.5) is None
  lock.release()


def test_a_remote_lock_is_written_then_confirmed(fake_gcs, monkeypatch):  # noqa: F811
  run = "gs://bucket/runs/locked"
  lock = workdir_lib.WorkdirLock(run, settle_s=0).acquire()
  assert json.loads(epath.Path(f"{run}/lock.json").read_text())["token"] == lock.token
  with pytest.raises(workdir_lib.WorkdirInUseError, match=f"process {os.getpid()}"):
    workdir_lib.WorkdirLock(run, settle_s=0).acquire()
  lock.release()
  assert not epath.Path(f"{run}/lock.json").exists()
  # Two runs that both found no lock: the one whose write landed last owns it, the other sees
  # that when it reads its lock back.
  real_write = workdir_lib._write_text

  def rival_writes_next(path, text):
    real_write(path, text)
    real_write(path, json.dumps(_holder(host="another-host", pid=7, token="rival")))

  monkeypatch.setattr(workdir_lib, "_write_text", rival_writes_next)
  with pytest.raises(workdir_lib.WorkdirInUseError, match="process 7 on host another-host"):
    workdir_lib.WorkdirLock(run, settle_s=0).acquire()


# ------------------------------------------------------------------------------------------------
# metrics.jsonl


def test_a_resumed_writer_drops_the_rows_it_redoes(tmp_path, fake_gcs):  # noqa: F811
  rows = "".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in range(1, 6))
  (tmp_path / "metrics.jsonl").write_text(rows + '{"step": 6, "lo')       # killed mid-write
  writer = metrics_lib.MetricsWriter(tmp_path, tensorboard=False, start_step=3)
  writer.write(4, {"loss": 0.5})
  writer.close()
  assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3, 4]
  run = "gs://bucket/runs/metrics"
  epath.Path(f"{run}/metrics.jsonl").write_text(rows)
  writer = metrics_lib.MetricsWriter(run, tensorboard=False, start_step=2)
  writer.write(3, {"loss": 0.5})
  writer.close()
  remote_rows = epath.Path(f"{run}/metrics.jsonl").read_text().splitlines()
  assert [json.loads(r)["step"] for r in remote_rows] == [1, 2, 3]


# ------------------------------------------------------------------------------------------------
# Real trainers on one workdir.

STEPS, EVERY = 8, 4
RUN = dict(step_kinds="clip", global_batch_size=8, checkpoint_every_steps=EVERY,
           async_checkpointing=False)


def _command(workdir: Path, csv_path, images, **overrides) -> list[str]:
  flags = dict(RUN, **overrides, **{"data.csv": csv_path, "data.image_root": images})
  return [sys.executable, "-m", "clic_jax.main", "--config=configs/tiny.py",
          f"--workdir={workdir}", *(f"--config.{k}={v}" for k, v in flags.items())]


def _rows(metrics: Path) -> list[dict]:
  """The whole rows of a metrics file that a killed process may have left half a line in."""
  rows = []
  for line in metrics.read_text().splitlines() if metrics.exists() else []:
    try:
      rows.append(json.loads(line))
    except ValueError:
      pass
  return rows


def _wait_for_row(proc: subprocess.Popen, metrics: Path, step: int, output: Path,
                  timeout_s: float = 600):
  deadline = time.monotonic() + timeout_s
  while time.monotonic() < deadline:
    if any(r["step"] >= step for r in _rows(metrics)):
      return
    assert proc.poll() is None, f"the run ended early:\n{output.read_text()[-3000:]}"
    time.sleep(0.02)
  raise AssertionError(f"no row for step {step} in {timeout_s} s")


@pytest.fixture(scope="module")
def resumed(tmp_path_factory, caption_dataset):
  """A run SIGKILLed past its first checkpoint, resumed in this process with another learning
  rate and total_steps; while the resume holds the workdir a third trainer process is started on
  it. Returns what each of them left."""
  workdir = tmp_path_factory.mktemp("workdir")
  csv_path, images = caption_dataset
  # One device: the killed run's checkpoint is restored onto this process's eight.
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
  output = tmp_path_factory.mktemp("killed") / "output.txt"   # a file: a full pipe would stall it
  with open(output, "w") as f:
    killed = subprocess.Popen(_command(workdir, csv_path, images, total_steps=1000), cwd=ROOT,
                              env=env, stdout=f, stderr=subprocess.STDOUT)
  try:
    _wait_for_row(killed, workdir / "metrics.jsonl", EVERY + 1, output)
  finally:
    killed.send_signal(signal.SIGKILL)
    killed.wait()
  out = {"killed_pid": killed.pid, "rows_at_kill": _rows(workdir / "metrics.jsonl"),
         "saved_at_kill": sorted(int(p.name) for p in (workdir / "checkpoints").iterdir()
                                 if p.name.isdigit()),
         "lock_at_kill": json.loads((workdir / "lock.json").read_text())}

  # The third trainer starts once the resume holds the workdir (its first step after the claim
  # is the mesh) and starts up while the resume compiles; the resume lets go of the lock only
  # after the third has exited, so the third always finds it held.
  real_make_mesh, real_release = trainer.mesh_lib.make_mesh, workdir_lib.WorkdirLock.release

  def start_second_writer(*args, **kwargs):
    if "second" not in out:
      out["second"] = subprocess.Popen(_command(workdir, csv_path, images, total_steps=STEPS),
                                       cwd=ROOT, text=True, stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT)
    return real_make_mesh(*args, **kwargs)

  def release_after_second_writer(lock):
    if "second" in out:
      out["second_output"] = out["second"].communicate(timeout=600)[0]
    real_release(lock)

  records: list[logging.LogRecord] = []
  handler = logging.Handler(logging.WARNING)
  handler.emit = records.append
  logger = logging.getLogger("clic_jax.train")
  logger.addHandler(handler)
  try:
    with pytest.MonkeyPatch.context() as patch:
      patch.setattr(trainer.mesh_lib, "make_mesh", start_second_writer)
      patch.setattr(workdir_lib.WorkdirLock, "release", release_after_second_writer)
      config = tiny_config(csv_path, images, total_steps=STEPS, **RUN, **{"optim.lr": 2e-3})
      out["summary"] = trainer.train(config, workdir)
  finally:
    logger.removeHandler(handler)
  out["warnings"] = [r.getMessage() for r in records]
  out["workdir"], out["data"] = workdir, (csv_path, images)
  return out


def test_a_second_trainer_on_a_busy_workdir_stops_before_compiling(resumed):
  output = resumed["second_output"]
  assert resumed["second"].returncode == 1, output[-3000:]
  assert (f"error: {resumed['workdir']} is in use by another run: process {os.getpid()} on host "
          f"{socket.gethostname()}") in output
  assert "model tiny:" not in output              # logged once the train state is compiled
  assert resumed["summary"]["step"] == STEPS and not resumed["summary"]["preempted"]
  assert not (resumed["workdir"] / "lock.json").exists()


def test_a_killed_runs_lock_is_taken_over_and_the_changes_recorded(resumed):
  assert resumed["lock_at_kill"]["pid"] == resumed["killed_pid"]
  warnings = "\n".join(resumed["warnings"])
  assert (f"left by process {resumed['killed_pid']} on host {socket.gethostname()}" in warnings
          and "is no longer running on this host" in warnings)
  assert "optim.lr: 0.001 (saved) -> 0.002 (now)" in warnings
  assert f"total_steps: 1000 (saved) -> {STEPS} (now)" in warnings
  runs = workdir_lib.read_history(resumed["workdir"])
  assert [r["resumed_from_step"] for r in runs] == [None, EVERY]
  assert runs[1]["changed"]["optim.lr"] == [1e-3, 2e-3] and runs[1]["config"]["optim"]["lr"] == 2e-3


def test_after_a_sigkill_and_a_resume_each_step_has_one_row(resumed):
  at_kill = [r["step"] for r in resumed["rows_at_kill"]]
  assert max(resumed["saved_at_kill"]) == EVERY < at_kill[-1]      # rows past the checkpoint
  rows = read_metrics(resumed["workdir"])
  assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
  assert rows[:EVERY] == resumed["rows_at_kill"][:EVERY]             # the kept rows, as written


def test_resume_with_another_model_fails_before_compiling(resumed, monkeypatch):
  workdir = resumed["workdir"]
  before = (workdir / "config.json").read_text(), (workdir / "model.json").read_text()

  def no_compiling(*args, **kwargs):
    raise AssertionError("compiled before the resume was checked")

  monkeypatch.setattr(jax, "jit", no_compiling)
  config = tiny_config(*resumed["data"], total_steps=STEPS, **RUN,
                       **{"optim.lr": 2e-3, "model.name": "tiny-64"})
  with pytest.raises(config_lib.ConfigError,
                     match=r"model.name: 'tiny' \(saved\) -> 'tiny-64' \(now\)"):
    trainer.train(config, workdir)
  assert ((workdir / "config.json").read_text(), (workdir / "model.json").read_text()) == before
  assert not (workdir / "lock.json").exists()
