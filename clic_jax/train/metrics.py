"""What a run shows: a progress line, WORKDIR/metrics.jsonl and TensorBoard events (process 0 only)."""
from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Mapping

import numpy as np

from clic_jax.train import remote

log = logging.getLogger("clic_jax.train")
METRICS_FILE = "metrics.jsonl"


def _scalar(value) -> float | int:
  value = np.asarray(value)
  return value.item() if value.size == 1 else float(value.mean())


class MetricsWriter:
  """Appends one JSON row per write to WORKDIR/metrics.jsonl and the same scalars to TensorBoard.

  A remote workdir (gs://...) cannot be appended to: the rows and events are written to a local
  staging folder, which starts from the remote metrics.jsonl when a run resumes, and copied up
  whole every `sync_every_s` and on close. A failed copy is logged and retried at the next one;
  it never stops training.

  `start_step`: the step the run starts from (its checkpoint's; 0 for a new run). Rows an earlier
  run wrote for later steps, which this run redoes, are dropped first (drop_rows_after), so the
  file holds one row per step of the run.
  """

  def __init__(self, workdir, enabled: bool = True, tensorboard: bool = True,
               sync_every_s: float = 60.0, start_step: int | None = None):
    self.enabled = enabled
    self._tb = None
    self._remote = str(workdir) if remote.is_remote(workdir) else None
    if not enabled:
      return
    if self._remote:
      self.local_dir = Path(tempfile.mkdtemp(prefix="clic_jax_metrics_"))
      if remote.download_if_exists(remote.join(self._remote, METRICS_FILE),
                                   self.local_dir / METRICS_FILE):
        log.info("Resuming the metrics of %s.", self._remote)
      log.info("Remote workdir %s: metrics and TensorBoard are staged in %s and copied there "
               "every %.0f s.", self._remote, self.local_dir, sync_every_s)
    else:
      self.local_dir = Path(workdir)
      self.local_dir.mkdir(parents=True, exist_ok=True)
    if start_step is not None:       # remote: the staged copy, which replaces the bucket's
      drop_rows_after(self.local_dir / METRICS_FILE, start_step)
    self._sync_every_s, self._synced_at = sync_every_s, time.monotonic()
    self._jsonl = open(self.local_dir / METRICS_FILE, "a", buffering=1)   # line-buffered: tail -f
    if tensorboard:
      from tensorboardX import SummaryWriter
      # A unique suffix: the events file is named by the second it opened, so a run resumed
      # within the same second would otherwise overwrite the previous file in the bucket.
      self._tb = SummaryWriter(str(self.local_dir / "tensorboard"),
                               filename_suffix=f".{uuid.uuid4().hex[:8]}")

  def write(self, step: int, metrics: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    row = {"step": int(step), **{k: _scalar(v) for k, v in metrics.items()}}
    self._jsonl.write(json.dumps(row) + "\n")
    if self._tb is not None:
      for key, value in row.items():
        if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
          self._tb.add_scalar(key, value, step)
    if self._remote and time.monotonic() - self._synced_at >= self._sync_every_s:
      self.sync()

  def sync(self) -> bool:
    """Copies the staged files up to the remote workdir; False if that failed."""
    if not (self.enabled and self._remote):
      return True
    self._synced_at = time.monotonic()
    if not self._jsonl.closed:
      self._jsonl.flush()
    if self._tb is not None:
      self._tb.flush()
    try:
      remote.upload_tree(self.local_dir, self._remote)
      return True
    except Exception:                                # noqa: BLE001 - metrics never end a run
      log.exception("Copying metrics to %s failed; retrying at the next sync (kept in %s).",
                    self._remote, self.local_dir)
      return False

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      if self._tb is not None:
        self._tb.close()
        self._tb = None
      if self.sync() and self._remote:
        shutil.rmtree(self.local_dir, ignore_errors=True)     # all of it is in the bucket


def drop_rows_after(path: Path, step: int) -> int:
  """Rewrites the metrics file `path` without its rows past `step` and without lines that are not
  whole rows (a process killed mid-write leaves half a line); returns how many lines went.

  The file is replaced in one rename, so a kill during the rewrite leaves the old file.
  """
  if not path.is_file():
    return 0
  text = path.read_text()
  lines = text.splitlines()
  kept = []
  for line in lines:
    try:
      row_step = json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
      continue
    if isinstance(row_step, int) and row_step <= step:
      kept.append(line)
  if len(kept) == len(lines) and (not text or text.endswith("\n")):
    return 0
  tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex[:8]}.tmp")
  tmp.write_text("".join(line + "\n" for line in kept))
  tmp.replace(path)
  log.info("%s: dropped %d rows past step %d, which this run redoes.", path,
           len(lines) - len(kept), step)
  return len(lines) - len(kept)


class Progress:
  """Throughput and ETA over the steps since the last report."""

  def __init__(self, total_steps: int, first_step: int):
    self.total, self._step, self._time = total_steps, first_step, time.perf_counter()

  def update(self, step: int, examples_per_step: int) -> dict[str, float]:
    now = time.perf_counter()
    steps = max(step - self._step, 1)
    seconds = max(now - self._time, 1e-9)
    self._step, self._time = step, now
    return {"examples_per_s": steps * examples_per_step / seconds, "steps_per_s": steps / seconds,
            "eta_s": (self.total - step) * seconds / steps}

  @staticmethod
  def line(step: int, total: int, metrics: Mapping[str, float]) -> str:
    eta = int(metrics.get("eta_s", 0))
    parts = [f"step {step}/{total} ({100.0 * step / max(total, 1):5.1f}%)",
             f"{metrics.get('examples_per_s', 0):8.1f} ex/s",
             f"ETA {eta // 3600:d}:{eta % 3600 // 60:02d}:{eta % 60:02d}",
             f"loss {metrics.get('loss', float('nan')):.4f}"]
    for key in ("contrastive_loss", "sneg_loss", "uni_modal_loss", "accuracy", "lr",
                "logit_scale"):
      if key in metrics:
        parts.append(f"{key.replace('_loss', '')} {metrics[key]:.4g}")
    return " | ".join(parts)
