"""Train (or resume) CLIC fine-tuning; evaluates on the configured schedule.

  python -m clic_jax.main --config=configs/b16.py --workdir=runs/b16 [--config.field=value ...]

Rerunning the same command resumes from the latest checkpoint in --workdir. On several hosts
(TPU pods, SLURM) pass --multihost, or it is detected from the environment; see launch/README.md.

The terminal shows clic_jax's own INFO messages and the libraries' warnings; WORKDIR/logs/train.log
gets every INFO message, the libraries' (orbax, absl, jax, grain) included (logging_setup.py).
"""
from __future__ import annotations

import logging
import os
import sys

from absl import app, flags
from ml_collections import config_flags

from clic_jax import logging_setup

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file (configs/*.py).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and exports.")
_MULTIHOST = flags.DEFINE_bool(
    "multihost", None, "Call jax.distributed.initialize() (default: detect a SLURM job of several "
    "tasks or a multi-worker TPU slice).")


def _is_multihost_environment() -> bool:
  if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
    return True
  hosts = os.environ.get("TPU_WORKER_HOSTNAMES") or os.environ.get("CLOUD_TPU_TASK_ID")
  return bool(hosts and "," in os.environ.get("TPU_WORKER_HOSTNAMES", ""))


def main(argv):
  del argv
  logging_setup.setup_logging()  # terminal only until the workdir and process index are known
  import jax
  multihost = _MULTIHOST.value if _MULTIHOST.value is not None else _is_multihost_environment()
  if multihost:
    jax.distributed.initialize()
  config = _CONFIG.value
  if config is None or not _WORKDIR.value:
    sys.exit("Both --config=configs/FILE.py and --workdir=DIR are required (see --help).")
  # Terminal: our INFO messages, libraries' warnings; WORKDIR/logs/train.log: everything at INFO.
  logging_setup.setup_logging(_WORKDIR.value, jax.process_index())
  from clic_jax.train import config as config_lib
  from clic_jax.train import trainer
  from clic_jax.train import workdir as workdir_lib
  try:
    if config.get("demo"):
      from clic_jax import demo
      demo.run(config, _WORKDIR.value)
    else:
      summary = trainer.train(config, _WORKDIR.value)
      logging.getLogger("clic_jax").info("done: step %d/%d%s", summary["step"],
                                         summary["total_steps"],
                                         " (preempted; rerun to resume)" if summary["preempted"]
                                         else "")
  except (config_lib.ConfigError, FileNotFoundError, trainer.NonFiniteLossError,
          workdir_lib.WorkdirInUseError) as e:
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  app.run(main)
