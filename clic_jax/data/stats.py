"""Counters of skipped records and fallbacks, so bad data is visible instead of silently dropped.

Two kinds of counts exist:
- source reports: counted once when a source is opened or prepared (malformed CSV rows, missing
  image files, unusable captions). Plain `dict[str, int]`.
- per-batch stats: counted while samples are built (a record whose image fails to decode and is
  replaced, a caption fallback). Each sample returns a `dict[str, int]`; a batch carries their sums as
  0-d int64 arrays under fixed key names so the trainer can sum them without special cases.
"""
from __future__ import annotations

import collections
from typing import Iterable, Mapping

import numpy as np

from clic_jax.data import captions, images

# A sample whose own record is unusable is replaced by another record; the reason is counted.
RESAMPLE_PREFIX = "resampled/"
# The partner image failed to load and another partner of the same aspect class was drawn.
PARTNER_PREFIX = "partner_resampled/"
# Counters reported by the caption module (fallbacks of the hard negative and positives).
CAPTION_PREFIX = "caption/"

RECORD_SKIP_REASONS = images.IMAGE_SKIP_REASONS + ("unusable_caption", "caption_error", "no_partner")

# Keys present in every batch's stats, so every batch has the same structure.
BATCH_KEYS = tuple(
    [RESAMPLE_PREFIX + r for r in RECORD_SKIP_REASONS]
    + [PARTNER_PREFIX + r for r in images.IMAGE_SKIP_REASONS]
    + [CAPTION_PREFIX + name for name in captions.COUNTER_NAMES]
    + ["text_truncated"])


def sum_counts(counts: Iterable[Mapping[str, int]]) -> dict[str, int]:
  """Key-wise sum of several count dicts (missing keys count as 0)."""
  total = collections.Counter()
  for c in counts:
    for key, value in c.items():
      total[key] += int(value)
  return dict(total)


def batch_stats(per_sample: Iterable[Mapping[str, int]]) -> dict[str, np.ndarray]:
  """Per-batch stats: every key of BATCH_KEYS (plus any other reported key), as 0-d int64."""
  total = sum_counts(per_sample)
  keys = sorted(set(BATCH_KEYS) | set(total))
  return {k: np.asarray(total.get(k, 0), np.int64) for k in keys}


def accumulate(running: dict[str, int], batch: Mapping[str, np.ndarray]) -> dict[str, int]:
  """Add one batch's stats into a running plain-int dict (for logging / stats.json)."""
  for key, value in batch.items():
    running[key] = running.get(key, 0) + int(value)
  return running


def nonzero(counts: Mapping[str, int]) -> dict[str, int]:
  """The counts worth showing, sorted by name."""
  return {k: int(v) for k, v in sorted(counts.items()) if int(v)}
