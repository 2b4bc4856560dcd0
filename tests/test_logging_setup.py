"""clic_jax.logging_setup: our INFO on the terminal, libraries' INFO only in WORKDIR/logs/train.log."""
from __future__ import annotations

import io
import logging

import pytest
from absl import logging as absl_logging

from clic_jax import logging_setup


@pytest.fixture(autouse=True)
def restore_logging():
  """setup_logging replaces the root handlers and changes levels: put everything back."""
  root = logging.getLogger()
  handlers, level = list(root.handlers), root.level
  absl_verbosity = absl_logging.get_verbosity()
  absl_level = logging.getLogger("absl").level
  yield
  for handler in list(root.handlers):
    root.removeHandler(handler)
    if getattr(handler, logging_setup._MARK, False):
      handler.close()
  for handler in handlers:
    root.addHandler(handler)
  root.setLevel(level)
  absl_logging.set_verbosity(absl_verbosity)
  logging.getLogger("absl").setLevel(absl_level)


def _log_all():
  logging.getLogger("orbax").info("orbax info record")
  logging.getLogger("orbax.checkpoint").warning("orbax warning record")
  absl_logging.info("absl info record")
  logging.getLogger("jax._src.dispatch").info("jax info record")
  logging.getLogger("clic_jax.train").info("clic_jax train info record")
  logging.getLogger("clic_jax_other").info("lookalike info record")


def _flush(handlers):
  for handler in handlers.values():
    handler.flush()


def test_libraries_info_only_in_file_ours_on_terminal(tmp_path):
  terminal = io.StringIO()
  handlers = logging_setup.setup_logging(tmp_path, stream=terminal)
  assert set(handlers) == {"terminal", "file"}
  _log_all()
  _flush(handlers)
  shown = terminal.getvalue()
  written = (tmp_path / "logs" / "train.log").read_text()

  assert "clic_jax train info record" in shown
  assert "orbax warning record" in shown
  for library_info in ("orbax info record", "absl info record", "jax info record",
                       "lookalike info record"):
    assert library_info not in shown
    assert library_info in written
  assert "clic_jax train info record" in written and "orbax warning record" in written
  assert "INFO clic_jax.train: clic_jax train info record" in shown  # the format main.py had


def test_terminal_filter_on_records():
  terminal_filter = logging_setup.TerminalFilter()

  def record(name, level):
    return logging.LogRecord(name, level, __file__, 1, "message", None, None)

  assert not terminal_filter.filter(record("orbax", logging.INFO))
  assert terminal_filter.filter(record("orbax", logging.WARNING))
  assert terminal_filter.filter(record("clic_jax.train", logging.INFO))
  assert terminal_filter.filter(record("clic_jax", logging.INFO))
  assert terminal_filter.filter(record("__main__", logging.INFO))
  assert not terminal_filter.filter(record("clic_jax.train", logging.DEBUG))


def test_absl_handler_removed_and_called_twice_keeps_one_pair(tmp_path):
  root = logging.getLogger()
  absl_logging.use_absl_handler()   # what app.run does before main() runs
  logging_setup.setup_logging(tmp_path, stream=io.StringIO())
  handlers = logging_setup.setup_logging(tmp_path, stream=io.StringIO())
  assert absl_logging.get_absl_handler() not in root.handlers
  assert sorted(root.handlers, key=id) == sorted(handlers.values(), key=id)
  assert absl_logging.get_verbosity() >= absl_logging.INFO


def test_other_processes_show_warnings_only_and_write_their_own_file(tmp_path):
  terminal = io.StringIO()
  handlers = logging_setup.setup_logging(tmp_path, process_index=3, stream=terminal)
  _log_all()
  _flush(handlers)
  assert "clic_jax train info record" not in terminal.getvalue()
  assert "orbax warning record" in terminal.getvalue()
  written = (tmp_path / "logs" / "train.3.log").read_text()
  assert "clic_jax train info record" in written and "orbax info record" in written


def test_remote_workdir_has_no_log_file(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  terminal = io.StringIO()
  handlers = logging_setup.setup_logging("gs://bucket/run", stream=terminal)
  assert set(handlers) == {"terminal"}
  logging.getLogger("clic_jax.train").info("still on the terminal")
  assert "still on the terminal" in terminal.getvalue()
  assert not any(tmp_path.iterdir())   # nothing written to a local "gs:" folder
