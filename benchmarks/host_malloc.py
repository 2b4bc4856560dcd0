"""glibc malloc settings that keep XLA:CPU's per-run buffers inside the process (Linux only).

Why: XLA:CPU allocates each executable run's temporaries as one block (3.5 GB for the ViT-B-32
CLIC step at batch 8) with posix_memalign on a worker thread. glibc serves a block that large with
a fresh mmap and unmaps it when the run ends, so every step page-faults the whole block again:
~850k minor faults and 1.6 CPU-s of kernel time per step on the project's CPU machine, and 4 CPU-s
right after PyTorch ran in the same process (benchmarks/RESULTS.md). With one arena, no mmap and
no trimming, the freed block stays in the heap and the next step reuses it (0 faults once warm).

The same settings as environment variables, for any process (they must be set before it starts):
  MALLOC_ARENA_MAX=1 MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=68719476736 python ...
`kept_freed_memory()` applies them from inside a running process with mallopt(3); that works for
threads that have not allocated yet, so enter it before the first jax computation (XLA's worker
threads pick their arena on their first allocation). Both frameworks of a comparison run inside
it, so the setting is the same for each.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import resource

# mallopt parameter numbers from glibc's malloc.h. glibc stores the trim threshold as a size_t, so
# -1 is the largest value: never trim. Leaving restores what it can of glibc's defaults: the arena
# limit cannot be set back to "unset" (8 per core is what unset means on 64-bit), and any mallopt
# turns off glibc's dynamic mmap threshold for good, so the threshold is set to where the dynamic
# one ends up (32 MiB) and trimming to twice that. Left at 128 KiB, every decoded image would be
# mmap'ed and faulted afresh (the pipeline benchmark lost a third of its speed that way).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -3, -4, -8
_KEEP = {_M_ARENA_MAX: 1, _M_MMAP_MAX: 0, _M_TRIM_THRESHOLD: -1}
_DEFAULTS = {_M_ARENA_MAX: 8 * (os.cpu_count() or 1), _M_MMAP_MAX: 65536,
             _M_MMAP_THRESHOLD: 32 << 20, _M_TRIM_THRESHOLD: 64 << 20}


def _mallopt():
  name = ctypes.util.find_library("c")
  if name is None:
    return None
  mallopt = getattr(ctypes.CDLL(name), "mallopt", None)   # glibc only (not musl or macOS)
  if mallopt is not None:
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
  return mallopt


def _apply(settings: dict) -> bool:
  mallopt = _mallopt()
  if mallopt is None:
    return False
  return all(mallopt(param, value) == 1 for param, value in settings.items())


@contextlib.contextmanager
def kept_freed_memory(enabled: bool = True):
  """Inside: freed memory stays in the process. Yields True when the settings took effect."""
  applied = enabled and _apply(_KEEP)
  try:
    yield applied
  finally:
    if applied:
      _apply(_DEFAULTS)


def minor_faults() -> int:
  """Minor page faults of this process so far (a step's count shows whether its buffers are new)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
