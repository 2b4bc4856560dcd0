"""Logging for the command-line entry points: our messages on the terminal, everything in a file.

Libraries (orbax, absl, jax, grain, tensorflow, ...) log a lot at INFO: every checkpoint save,
every compilation cache hit, every grain worker start. On the terminal that buries the training
progress. `setup_logging` therefore installs two handlers on the root logger:

  terminal  stderr. Records of our own loggers ("clic_jax" and "clic_jax.*", and "__main__") from
            INFO up; records of every other logger from WARNING up. On processes other than the
            first (multi-host runs) everything below WARNING is dropped, as before.
  file      WORKDIR/logs/train.log (other processes: train.<process index>.log), every record from
            INFO up, libraries included, appended across restarts. Skipped for a remote workdir
            (gs://...), which cannot be appended to, and when the file cannot be opened.

absl: `app.run` installs absl's own stderr handler on the root logger; it is removed here (our
terminal handler replaces it), and absl's verbosity is raised to INFO if it is lower (the default,
-1, is WARNING) so that absl INFO records (orbax logs through absl) reach the file. A larger
--verbosity given on the command line is kept.
"""
from __future__ import annotations

import logging
import os
import sys
from typing import IO

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
OWN_LOGGERS = ("clic_jax", "experiments", "__main__")
LOG_DIR = "logs"

# Marks the handlers installed here, so a second call replaces them instead of adding more.
_MARK = "_clic_jax_logging"


def is_own_logger(name: str) -> bool:
  return any(name == own or name.startswith(own + ".") for own in OWN_LOGGERS)


class TerminalFilter(logging.Filter):
  """Passes our loggers' records from `own_level` up and everyone else's from `library_level` up."""

  def __init__(self, own_level: int = logging.INFO, library_level: int = logging.WARNING):
    super().__init__()
    self.own_level = own_level
    self.library_level = library_level

  def filter(self, record: logging.LogRecord) -> bool:
    level = self.own_level if is_own_logger(record.name) else self.library_level
    return record.levelno >= level


def log_file_path(workdir, process_index: int = 0) -> str | None:
  """WORKDIR/logs/train.log (train.<i>.log for process i > 0); None for a remote workdir."""
  if workdir is None or "://" in str(workdir):
    return None
  name = "train.log" if process_index == 0 else f"train.{process_index}.log"
  return os.path.join(os.fspath(workdir), LOG_DIR, name)


def _configure_absl() -> None:
  """Drop absl's root handler and let absl INFO records through to our handlers."""
  try:
    from absl import logging as absl_logging
  except ImportError:
    return
  absl_handler = absl_logging.get_absl_handler()
  root = logging.getLogger()
  if absl_handler in root.handlers:
    root.removeHandler(absl_handler)
  if absl_logging.get_verbosity() < absl_logging.INFO:
    absl_logging.set_verbosity(absl_logging.INFO)  # absl logger -> INFO (its handler is gone)


def setup_logging(workdir=None, process_index: int = 0, *, stream: IO[str] | None = None,
                  level: int = logging.INFO) -> dict[str, logging.Handler]:
  """Configure the root logger as described in the module docstring; returns the handlers.

  Replaces every handler already on the root logger (like `logging.basicConfig(force=True)`).
  `stream` is the terminal (default: sys.stderr); `level` the lowest level shown for our loggers
  and written to the file. Returns {"terminal": handler, "file": handler} ("file" only when a log
  file was opened).
  """
  root = logging.getLogger()
  for handler in list(root.handlers):
    root.removeHandler(handler)
    if getattr(handler, _MARK, False):
      handler.close()
  _configure_absl()
  root.setLevel(level)
  formatter = logging.Formatter(FORMAT)

  terminal = logging.StreamHandler(sys.stderr if stream is None else stream)
  terminal.setFormatter(formatter)
  if process_index == 0:
    terminal.addFilter(TerminalFilter(own_level=level, library_level=logging.WARNING))
  else:
    terminal.setLevel(logging.WARNING)
  setattr(terminal, _MARK, True)
  root.addHandler(terminal)
  handlers = {"terminal": terminal}

  path = log_file_path(workdir, process_index)
  if path is not None:
    try:
      os.makedirs(os.path.dirname(path), exist_ok=True)
      file_handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    except OSError as e:
      logging.getLogger("clic_jax").warning("cannot write the log file %s (%s); logging to the "
                                            "terminal only", path, e)
    else:
      file_handler.setLevel(level)
      file_handler.setFormatter(formatter)
      setattr(file_handler, _MARK, True)
      root.addHandler(file_handler)
      handlers["file"] = file_handler
  return handlers
