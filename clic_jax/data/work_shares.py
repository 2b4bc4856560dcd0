"""Which part of a data job this machine does, so any cluster scheduler can run it on many machines.

`--shard_index=K --num_shards=N` selects work share K of N; `--shard_index=auto` reads the task
index (and count) the scheduler gives every task: SLURM (SLURM_PROCID / SLURM_NTASKS), MPI launchers
(OMPI_COMM_WORLD_RANK / _SIZE, PMI_RANK / PMI_SIZE) or a Kubernetes indexed Job
(JOB_COMPLETION_INDEX, with --num_shards). A share is a fixed, disjoint part of the input, and each
share writes files with its number in the name, so the outputs of all shares are a set of files
that the next step reads as a glob or list: there is no merge step.
"""
from __future__ import annotations

import argparse
import os

# (index variable, count variable or "": the count must come from --num_shards)
_SCHEDULER_VARIABLES = (
    ("SLURM_PROCID", "SLURM_NTASKS"),
    ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"),
    ("PMI_RANK", "PMI_SIZE"),
    ("JOB_COMPLETION_INDEX", ""),
)


def add_flags(parser: argparse.ArgumentParser, what: str) -> None:
  parser.add_argument("--shard_index", default="0",
                      help=f"this machine's work share of {what}: 0..num_shards-1, or 'auto' for "
                           "the scheduler's task index (SLURM, MPI, Kubernetes indexed Job)")
  parser.add_argument("--num_shards", type=int, default=0,
                      help="number of work shares (machines); 0: 1, or the scheduler's task count "
                           "with --shard_index=auto")


def resolve(shard_index: str | int, num_shards: int) -> tuple[int, int]:
  """(index, count) of this machine's work share; raises ValueError with what to pass."""
  if str(shard_index) == "auto":
    for index_var, count_var in _SCHEDULER_VARIABLES:
      if index_var in os.environ:
        index = int(os.environ[index_var])
        count = num_shards
        if not count and count_var in os.environ:
          count = int(os.environ[count_var])
        if count < 1:
          raise ValueError(f"--shard_index=auto read {index_var}={index}; pass --num_shards=N "
                           "(this scheduler does not give the task count)")
        return _checked(index, count)
    raise ValueError("--shard_index=auto: no scheduler task index found (SLURM_PROCID, "
                     "OMPI_COMM_WORLD_RANK, PMI_RANK, JOB_COMPLETION_INDEX); pass "
                     "--shard_index=K --num_shards=N")
  try:
    index = int(shard_index)
  except ValueError:
    raise ValueError(f"--shard_index={shard_index!r}: an integer or 'auto'") from None
  return _checked(index, num_shards or 1)


def _checked(index: int, count: int) -> tuple[int, int]:
  if count < 1 or not 0 <= index < count:
    raise ValueError(f"--shard_index={index} is not in [0, --num_shards={count})")
  return index, count


def share_suffix(shares: tuple[int, int]) -> str:
  """'-00003-of-00008' for share 3 of 8; '' for a job done in one piece."""
  index, count = shares
  return "" if count == 1 else f"-{index:05d}-of-{count:05d}"


def share_path(path: str, shares: tuple[int, int]) -> str:
  """captions.csv -> captions-00003-of-00008.csv (the share number before the extension)."""
  stem, ext = os.path.splitext(path)
  return f"{stem}{share_suffix(shares)}{ext}"
