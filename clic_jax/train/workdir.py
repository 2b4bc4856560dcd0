"""A workdir knows its run: one writer at a time, the config saved, resumes that say what changed.

  WORKDIR/lock.json    the run writing here now: host, process id and start time, a heartbeat.
  WORKDIR/config.json  {"runs": [...]}: the first entry is the run's start with its full config;
                       each resume appends one (the step it resumed from, the fields it changed,
                       its full config).

`claim(workdir, config)` is the trainer's first act after the run spec, before anything is read,
compiled or written: process 0 takes the lock, then compares the config with the one saved by the
workdir's last run. Fields a checkpoint depends on (the BREAKS_CHECKPOINT table) must match when
there is a checkpoint to resume; any other difference is listed in one warning and recorded. With
several hosts process 0 holds the lock for all of them and tells every host whether to go on.

When is a lock stale (and taken over, with a warning)?
  - Its holder ran on this host (same host name and boot): when that process is gone. The process
    is identified by its id and its start time, so an id reused by another process (a restarted
    container) does not keep a dead run's lock alive.
  - Its holder ran on another host (or before a reboot): when its heartbeat is older than
    `stale_after_s` (config.workdir_lock_timeout_s). A live holder rewrites the heartbeat from a
    background thread every HEARTBEAT_FRACTION of that time (at most every minute), through long
    compiles and evaluations too.
A lock whose process is gone with its host therefore waits out that timeout; delete lock.json by
hand to start sooner once you know the old run is gone.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import logging
import os
import socket
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from etils import epath

from clic_jax.train import remote
from clic_jax.train.config import ConfigError

log = logging.getLogger("clic_jax.train")

LOCK_FILE = "lock.json"
CONFIG_FILE = "config.json"
HEARTBEAT_FRACTION = 0.2
REMOTE_SETTLE_S = 2.0


class WorkdirInUseError(RuntimeError):
  """Another run holds the workdir's lock."""


class ResumeMismatchError(ConfigError):
  """The config changes a field that the workdir's checkpoint depends on."""


# ------------------------------------------------------------------------------------------------
# What a change of config does to a resume.


def _same(value):
  return value


def _patterns(value):
  """freeze as a set of regexes: order and empty entries (`--config.freeze=`) mean nothing."""
  return sorted({p for p in ([value] if isinstance(value, str) else value or ()) if p})


# Config field-path prefix -> the part of its value that a checkpoint depends on (the longest
# matching prefix decides). Where that part differs the checkpoint cannot be restored; a difference
# in any other field (learning rates, duration, data, loss weights, evaluation, logging, dtype,
# remat, mesh.fsdp, optim.grad_accum_steps) is recorded and the run goes on. mesh.fsdp only places
# parameters (orbax restores onto any placement; no mesh option here changes a parameter's shape),
# and gradient accumulation splits the same global batch inside the step: one update a step either
# way, with the same optimizer state.
BREAKS_CHECKPOINT: dict[str, Callable[[Any], Any]] = {
    "model.name": _same,              # the architecture: every parameter's shape
    "freeze": _patterns,              # the trainable/frozen split: the optimizer state's tree
    "optim.clip_grad_norm": bool,     # 0 <-> > 0 adds or removes a stage of the optimizer state
}

_ABSENT = object()                    # a field one of the two configs does not have


@dataclasses.dataclass(frozen=True)
class Change:
  field: str                          # dotted path, e.g. "optim.lr"
  saved: Any
  now: Any
  breaks_checkpoint: bool

  def __str__(self) -> str:
    return f"{self.field}: {_shown(self.saved)} (saved) -> {_shown(self.now)} (now)"


def _shown(value) -> str:
  return "(absent)" if value is _ABSENT else repr(value)


def _rule(field: str) -> Callable[[Any], Any] | None:
  matches = [p for p in BREAKS_CHECKPOINT if field == p or field.startswith(p + ".")]
  return BREAKS_CHECKPOINT[max(matches, key=len)] if matches else None


def config_dict(config) -> dict[str, Any]:
  """The config as plain JSON values (tuples become lists), as config.json stores it."""
  raw = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  return json.loads(json.dumps(raw, default=str))


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  flat: dict[str, Any] = {}
  for key, value in tree.items():
    path = f"{prefix}{key}"
    if isinstance(value, Mapping) and value:
      flat.update(_flatten(value, path + "."))
    else:
      flat[path] = value
  return flat


def compare(saved: Mapping[str, Any], now: Mapping[str, Any]) -> list[Change]:
  """Every field that differs between two config dicts (config_dict's form), sorted by path.

  A field only one side has (a config written by another clic_jax version) is recorded, never a
  break: nothing says what the other side meant.
  """
  a, b = _flatten(saved), _flatten(now)
  changes = []
  for field in sorted(a.keys() | b.keys()):
    old, new = a.get(field, _ABSENT), b.get(field, _ABSENT)
    if old == new:
      continue
    rule = _rule(field)
    breaks = (rule is not None and _ABSENT not in (old, new) and rule(old) != rule(new))
    changes.append(Change(field, old, new, breaks))
  return changes


# ------------------------------------------------------------------------------------------------
# config.json


def _path(workdir, name: str):
  return epath.Path(remote.join(str(workdir), name)) if remote.is_remote(workdir) else \
      Path(workdir) / name


def _write_text(path, text: str) -> None:
  """Whole-file replace: a reader sees the old file or the new one (object stores replace whole
  objects; locally a temporary file is renamed over it)."""
  path.parent.mkdir(parents=True, exist_ok=True)
  if isinstance(path, Path):
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
  else:
    path.write_text(text)


def read_history(workdir) -> list[dict[str, Any]]:
  """config.json's entries, oldest first; [] when the workdir has none."""
  path = _path(workdir, CONFIG_FILE)
  if not path.exists():
    return []
  try:
    runs = json.loads(path.read_text())["runs"]
    if not (isinstance(runs, list) and runs and all("config" in r for r in runs)):
      raise ValueError("no runs")
  except (ValueError, KeyError, TypeError) as e:
    raise ConfigError(f"{path} is not a clic_jax run record ({e}); it cannot say which settings "
                      "the checkpoints were made with. Restore it, or move it away to resume "
                      "without that check.") from None
  return runs


def record_run(workdir, config, resume_step: int | None) -> list[Change]:
  """Compares `config` with the one the workdir's last run saved and appends this run to
  config.json; returns the changes.

  ResumeMismatchError, with nothing written, when there is a checkpoint (`resume_step`) and a
  field it depends on differs. Other changes are logged in one warning and recorded in the new
  entry. With no checkpoint nothing is resumed, so every change is only recorded.
  """
  now = config_dict(config)
  history = read_history(workdir)
  changes = compare(history[-1]["config"], now) if history else []
  path = _path(workdir, CONFIG_FILE)
  if resume_step is not None:
    breaking = [c for c in changes if c.breaks_checkpoint]
    if breaking:
      raise ResumeMismatchError(
          f"The checkpoint of {workdir} (step {resume_step}) cannot be restored with these "
          f"settings: {'; '.join(str(c) for c in breaking)} (saved in {path}). Resume with the "
          "saved values, or start the new settings in another --workdir.")
    if not history:
      log.warning("%s has checkpoints but no %s (written since clic_jax records runs): this "
                  "resume is not checked against the settings they were made with.",
                  workdir, CONFIG_FILE)
  if changes:
    log.warning("%s %s with settings that differ from its last run's (recorded in %s): %s",
                "Resuming" if resume_step is not None else "Restarting", workdir, path,
                "; ".join(str(c) for c in changes))
  history.append({"started": _timestamp(time.time()), "host": socket.gethostname(),
                  "pid": os.getpid(), "resumed_from_step": resume_step,
                  "changed": {c.field: [None if v is _ABSENT else v for v in (c.saved, c.now)]
                              for c in changes},
                  "config": now})
  _write_text(path, json.dumps({"runs": history}, indent=2) + "\n")
  return changes


# ------------------------------------------------------------------------------------------------
# The lock.

_HELD_HERE: set[str] = set()          # tokens of the locks this process holds


def _timestamp(seconds: float) -> str:
  return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).isoformat(
      timespec="seconds")


def _boot_id() -> str | None:
  try:
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
  except OSError:                     # not Linux: the host name alone says "this host"
    return None


def _process_start(pid: int) -> tuple[str, str] | None:
  """(state, start time in clock ticks since boot) from /proc; None where there is no /proc."""
  try:
    stat = Path(f"/proc/{pid}/stat").read_text()
  except OSError:
    return None
  fields = stat[stat.rindex(")") + 2:].split()     # the command name may hold spaces
  return fields[0], fields[19]


def _identity() -> dict[str, Any]:
  start = _process_start(os.getpid())
  return {"host": socket.gethostname(), "boot_id": _boot_id(), "pid": os.getpid(),
          "process_start": start[1] if start else None}


def _on_this_host(holder: Mapping[str, Any]) -> bool:
  if holder.get("host") != socket.gethostname():
    return False
  boot = _boot_id()
  return holder.get("boot_id") == boot or None in (boot, holder.get("boot_id"))


def _process_alive(holder: Mapping[str, Any]) -> bool:
  pid = holder.get("pid")
  if not isinstance(pid, int) or pid <= 0:        # (0 and -1 would signal whole groups)
    return False
  if pid == os.getpid():               # this very process: alive only if it holds that lock
    return holder.get("token") in _HELD_HERE
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:              # exists, another user's
    pass
  current = _process_start(pid)
  if current is None:                  # no /proc: the process id is all there is
    return True
  state, started = current
  return state != "Z" and holder.get("process_start") in (None, started)


def stale_reason(holder: Mapping[str, Any], stale_after_s: float,
                 now: float | None = None) -> str | None:
  """Why the lock of `holder` no longer protects a run (the module docstring's rule); None if it
  does."""
  if _on_this_host(holder):
    if _process_alive(holder):
      return None
    return f"process {holder.get('pid')} is no longer running on this host"
  age = (time.time() if now is None else now) - float(holder.get("heartbeat") or 0)
  if age > stale_after_s:
    return (f"its heartbeat is {age:.0f} s old, over the {stale_after_s:g} s after which a "
            "lock from another host counts as abandoned (config.workdir_lock_timeout_s)")
  return None


def describe(holder: Mapping[str, Any], now: float | None = None) -> str:
  if holder.get("unreadable"):
    return "an unreadable lock file"
  age = (time.time() if now is None else now) - float(holder.get("heartbeat") or 0)
  return (f"process {holder.get('pid')} on host {holder.get('host')} (started "
          f"{holder.get('started')}, last heartbeat {age:.0f} s ago; command: "
          f"{holder.get('command') or '?'})")


class WorkdirLock:
  """WORKDIR/lock.json: held by one run at a time.

  Locally the lock is created with a hard link, which fails if the file exists: exactly one of
  two runs that start together gets it. Object stores reached through fsspec have no atomic
  create, so there the run writes its lock, waits `settle_s` and reads it back: of runs that wrote
  within that window the last writer owns it (the store keeps the last object) and the others see
  that they lost. Runs further apart find the first one's lock when they look.
  """

  def __init__(self, workdir, stale_after_s: float = 600.0, settle_s: float = REMOTE_SETTLE_S):
    self.workdir = str(workdir)
    self.path = _path(workdir, LOCK_FILE)
    self.stale_after_s = float(stale_after_s)
    self.settle_s = settle_s
    self.token = uuid.uuid4().hex
    self._started = _timestamp(time.time())
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None

  @property
  def heartbeat_s(self) -> float:
    return max(0.05, min(60.0, HEARTBEAT_FRACTION * self.stale_after_s))

  def _content(self) -> str:
    return json.dumps({**_identity(), "token": self.token, "started": self._started,
                       "heartbeat": time.time(), "command": " ".join(sys.argv)}, indent=1)

  def read(self) -> dict[str, Any] | None:
    """The holder's record; None when there is no lock."""
    try:
      text = self.path.read_text()
    except FileNotFoundError:
      return None
    try:
      holder = json.loads(text)
      if isinstance(holder, dict):
        return holder
    except ValueError:
      pass
    try:                               # hand-edited or foreign: judged by its age alone
      mtime = self.path.stat().st_mtime if isinstance(self.path, Path) else self.path.stat().mtime
    except (OSError, AttributeError):
      mtime = 0.0
    return {"unreadable": True, "heartbeat": mtime}

  def acquire(self) -> WorkdirLock:
    """Takes the lock (a stale one with a warning) or raises WorkdirInUseError naming the holder."""
    for _ in range(3):
      holder = self.read()
      if holder is not None:
        why = stale_reason(holder, self.stale_after_s)
        if why is None:
          raise WorkdirInUseError(
              f"{self.workdir} is in use by another run: {describe(holder)}. Two runs in one "
              "workdir would overwrite each other's checkpoints and metrics. Wait for it to end "
              "or stop it; a lock whose process is gone is taken over (from another host once "
              f"its heartbeat is {self.stale_after_s:g} s old, config.workdir_lock_timeout_s). "
              f"The lock: {self.path}.")
        log.warning("Taking over the lock of %s, left by %s: %s.", self.workdir,
                    describe(holder), why)
        if not self._discard(holder):
          continue                     # another run moved it first: look again
      if self._create():
        _HELD_HERE.add(self.token)
        self._thread = threading.Thread(target=self._beat, name="clic_jax-workdir-lock",
                                        daemon=True)
        self._thread.start()
        return self
    raise WorkdirInUseError(f"{self.workdir}: other runs kept taking the lock {self.path}; "
                            "check what else is running on this workdir.")

  def _create(self) -> bool:
    if isinstance(self.path, Path):
      self.path.parent.mkdir(parents=True, exist_ok=True)
      tmp = self.path.with_name(f"{self.path.name}.{self.token}.tmp")
      tmp.write_text(self._content())
      try:
        os.link(tmp, self.path)        # atomic, and never replaces an existing lock
        return True
      except FileExistsError:
        return False
      except OSError:                  # a filesystem without hard links: the object-store way
        pass
      finally:
        tmp.unlink(missing_ok=True)
    return self._write_and_confirm()

  def _write_and_confirm(self) -> bool:
    _write_text(self.path, self._content())
    time.sleep(self.settle_s)
    holder = self.read()
    return holder is not None and holder.get("token") == self.token

  def _discard(self, stale: Mapping[str, Any]) -> bool:
    """Removes the stale lock `stale`; False if it was not there any more."""
    if not isinstance(self.path, Path):
      return True                      # object stores: _create writes over it
    moved = self.path.with_name(f"{self.path.name}.{self.token}.stale")
    try:
      os.rename(self.path, moved)      # atomic: of two runs taking over, one moves it
    except FileNotFoundError:
      return False
    try:
      try:
        now = json.loads(moved.read_text())
      except ValueError:
        now = None
      if isinstance(now, dict) and now.get("token") != stale.get("token"):
        with contextlib.suppress(FileExistsError):
          os.link(moved, self.path)    # a new holder's live lock, moved by mistake: put it back
        return False
    finally:
      moved.unlink(missing_ok=True)
    return True

  def _beat(self) -> None:
    while not self._stop.wait(self.heartbeat_s):
      try:
        holder = self.read()
        if holder is None or holder.get("token") != self.token:
          log.error("The lock of %s is no longer this run's (now: %s): another run took the "
                    "workdir over, and both may now write there.", self.workdir,
                    describe(holder) if holder else "none")
          return
        _write_text(self.path, self._content())
      except Exception:                # noqa: BLE001 - a missed heartbeat never ends a run
        log.warning("Refreshing the lock %s failed; retrying in %.0f s.", self.path,
                    self.heartbeat_s, exc_info=True)

  def release(self) -> None:
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
    _HELD_HERE.discard(self.token)
    try:
      holder = self.read()
      if holder is not None and holder.get("token") == self.token:
        self.path.unlink()
    except Exception:                  # noqa: BLE001 - a stale lock is taken over next time
      log.warning("Removing the lock %s failed.", self.path, exc_info=True)


# ------------------------------------------------------------------------------------------------
# The trainer's entry.


@contextlib.contextmanager
def claim(workdir, config, *, stale_after_s: float) -> Iterator[None]:
  """One run in `workdir`, with a config that its latest checkpoint accepts.

  Process 0 takes the lock, then (holding it) finds the latest checkpoint and records the run
  (record_run); every host learns whether that worked and stops together if not. The lock is
  released when the block ends, however it ends.
  """
  import jax

  from clic_jax.train import checkpoint as ckpt_lib
  lock, error = None, None
  if jax.process_index() == 0:
    try:
      lock = WorkdirLock(workdir, stale_after_s).acquire()
      record_run(workdir, config, ckpt_lib.latest_saved_step(workdir))
    except Exception as e:             # noqa: BLE001 - raised below, after the hosts agree
      error = e
  if jax.process_count() > 1:
    import numpy as np
    from jax.experimental import multihost_utils
    failed = int(multihost_utils.broadcast_one_to_all(np.int32(error is not None)))
    if failed and error is None:
      error = WorkdirInUseError(f"process 0 could not claim {workdir} (its log says why).")
  try:
    if error is not None:
      raise error
    yield
  finally:
    if lock is not None:
      lock.release()
