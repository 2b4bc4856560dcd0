"""Train (or resume) CLIC fine-tuning; evaluates on the configured schedule.

  python -m clic_jax.main --config=configs/b16.py --workdir=runs/b16 [--config.field=value ...]

Rerunning the same command resumes from the latest checkpoint in --workdir. On several hosts
(TPU pods, SLURM) pass --multihost, or it is detected from the environment; see launch/README.md.
"""
from __future__ import annotations

import logging
import os
import sys

from absl import app, flags
from ml_collections import config_flags

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
  import jax
  multihost = _MULTIHOST.value if _MULTIHOST.value is not None else _is_multihost_environment()
  if multihost:
    jax.distributed.initialize()
  logging.basicConfig(level=logging.INFO if jax.process_index() == 0 else logging.WARNING,
                      format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
  config = _CONFIG.value
  if config is None or not _WORKDIR.value:
    sys.exit("Both --config=configs/FILE.py and --workdir=DIR are required (see --help).")
  from clic_jax.train import trainer
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
  except (trainer.ConfigError, FileNotFoundError) as e:
    sys.exit(f"error: {e}")
  except trainer.NonFiniteLossError as e:
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  app.run(main)
