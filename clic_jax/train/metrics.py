"""What a run shows: a progress line, WORKDIR/metrics.jsonl and TensorBoard events (process 0 only)."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Mapping

import numpy as np


def _scalar(value) -> float | int:
  value = np.asarray(value)
  return value.item() if value.size == 1 else float(value.mean())


class MetricsWriter:
  def __init__(self, workdir: str | Path, enabled: bool = True, tensorboard: bool = True):
    self.enabled = enabled
    self._tb = None
    if not enabled:
      return
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    self._jsonl = open(workdir / "metrics.jsonl", "a", buffering=1)   # line-buffered: tail -f
    if tensorboard:
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(str(workdir / "tensorboard"))

  def write(self, step: int, metrics: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    row = {"step": int(step), **{k: _scalar(v) for k, v in metrics.items()}}
    self._jsonl.write(json.dumps(row) + "\n")
    if self._tb is not None:
      for key, value in row.items():
        if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
          self._tb.add_scalar(key, value, step)

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      if self._tb is not None:
        self._tb.close()


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
