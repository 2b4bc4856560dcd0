"""A remote workdir (gs://...): metrics, TensorBoard events and the export end up in the bucket.

gs:// is served from memory by an fsspec filesystem registered under that scheme (etils.epath,
which the code uses, reaches gs:// through fsspec when TensorFlow is not installed), so the real
copy code runs with no network. Checkpoints to gs:// go through orbax/tensorstore and are not
covered here.
"""
from __future__ import annotations

import importlib
import json
import logging

import pytest
from etils import epath
from fsspec.implementations.memory import MemoryFileSystem

from clic_jax.train import metrics as metrics_lib
from clic_jax.train import remote, trainer

RUN = "gs://bucket/runs/b32"


class FakeGCS(MemoryFileSystem):
  protocol = ("gs", "gcs")
  store: dict = {}
  pseudo_dirs = [""]

  def __init__(self, *args, finalize_on_close=True, **kwargs):   # gcsfs's argument, ignored
    super().__init__(*args, **kwargs)


@pytest.fixture
def fake_gcs(monkeypatch):
  from etils.epath import backend
  FakeGCS.store.clear()
  registry = importlib.import_module("fsspec.registry")._registry   # (fsspec.registry: a view)
  for name in ("gs", "gcs"):
    monkeypatch.setitem(registry, name, FakeGCS)
  backend.fsspec_backend._get_filesystem.cache_clear()
  yield
  backend.fsspec_backend._get_filesystem.cache_clear()
  FakeGCS.store.clear()


def remote_rows(path: str) -> list[dict]:
  return [json.loads(line) for line in epath.Path(path).read_text().splitlines()]


def test_metrics_reach_the_bucket_and_a_resumed_run_appends(fake_gcs):
  writer = metrics_lib.MetricsWriter(RUN, sync_every_s=0)          # copy up at every write
  writer.write(1, {"loss": 2.5})
  assert remote_rows(f"{RUN}/metrics.jsonl") == [{"step": 1, "loss": 2.5}]
  writer.write(2, {"loss": 2.0})
  writer.close()
  assert not writer.local_dir.exists()                          # staging removed once copied
  events = list(epath.Path(f"{RUN}/tensorboard").iterdir())
  assert len(events) == 1 and events[0].name.startswith("events.out.tfevents")
  assert events[0].stat().length > 0

  resumed = metrics_lib.MetricsWriter(RUN, sync_every_s=3600)      # copies up only on close
  resumed.write(3, {"loss": 1.5})
  assert [r["step"] for r in remote_rows(f"{RUN}/metrics.jsonl")] == [1, 2]
  resumed.close()
  assert [r["step"] for r in remote_rows(f"{RUN}/metrics.jsonl")] == [1, 2, 3]
  assert len(list(epath.Path(f"{RUN}/tensorboard").iterdir())) == 2      # one events file per run


def test_a_failed_copy_is_logged_and_training_goes_on(fake_gcs, monkeypatch, caplog):
  def unreachable(local, remote_dir):
    raise OSError("bucket unreachable")
  monkeypatch.setattr(remote, "upload_tree", unreachable)
  writer = metrics_lib.MetricsWriter(RUN, tensorboard=False, sync_every_s=0)
  with caplog.at_level(logging.ERROR, logger="clic_jax.train"):
    writer.write(1, {"loss": 1.0})
    writer.close()
  assert sum("Copying metrics" in r.message for r in caplog.records) == 2
  assert (writer.local_dir / "metrics.jsonl").read_text().count("\n") == 1   # kept locally
  assert not epath.Path(f"{RUN}/metrics.jsonl").exists()


def test_export_lands_in_the_bucket_byte_for_byte(fake_gcs, tmp_path):
  from clic_jax import models
  cfg = models.get_model_config("tiny")
  params = models.init_params(models.build_model(cfg), 0)
  local = trainer.export_final(cfg, params, tmp_path / "run")
  uploaded = trainer.export_final(cfg, params, RUN)
  assert uploaded == f"{RUN}/open_clip"
  names = sorted(p.name for p in (tmp_path / "run" / "open_clip").iterdir())
  assert names == ["open_clip_config.json", "open_clip_model.safetensors"]
  assert local == str(tmp_path / "run" / "open_clip")
  for name in names:
    assert epath.Path(f"{uploaded}/{name}").read_bytes() == (tmp_path / "run" / "open_clip" /
                                                             name).read_bytes()
