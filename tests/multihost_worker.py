"""One process of a multi-process (multi-host) training run on CPU, for tests/test_multihost.py.

  python tests/multihost_worker.py --process_id=0 --num_processes=2 --port=PORT \
      --csv=DATA/train.csv --image_root=DATA/images --workdir=DIR --buckets="8,10,12" --steps=4

Each process is one "host" with 2 simulated CPU devices; the processes talk through
jax.distributed (gloo collectives on CPU), exactly as hosts of a TPU pod or a GPU cluster do.
Prints the training summary as one JSON line prefixed with "SUMMARY ".
"""
from __future__ import annotations

import argparse
import json
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))   # configs/


def main() -> None:
  parser = argparse.ArgumentParser()
  for flag in ("process_id", "num_processes", "port", "steps"):
    parser.add_argument(f"--{flag}", type=int, required=True)
  for flag in ("csv", "image_root", "workdir"):
    parser.add_argument(f"--{flag}", required=True)
  parser.add_argument("--buckets", default="")
  parser.add_argument("--fsdp", type=int, default=1)
  parser.add_argument("--grad_accum_steps", type=int, default=1)
  parser.add_argument("--sugarcrepe_dir", default="", help="evaluate SugarCrepe at the last step")
  parser.add_argument("--coco_dir", default="")
  parser.add_argument("--export", action="store_true", help="export open_clip weights at the end")
  parser.add_argument("--sigterm_at_step", type=int, default=0, help="preempt every host there")
  args = parser.parse_args()

  import jax
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(f"localhost:{args.port}", args.num_processes, args.process_id)

  from clic_jax.train import trainer
  from configs import tiny
  config = tiny.get_config()
  config.data.csv, config.data.image_root = args.csv, args.image_root
  config.total_steps = args.steps
  config.checkpoint_every_steps = args.steps
  config.data.text_length_buckets = args.buckets
  config.mesh.fsdp = args.fsdp
  config.optim.grad_accum_steps = args.grad_accum_steps
  config.export_open_clip = args.export
  config.debug_sigterm_at_step = args.sigterm_at_step
  if args.sugarcrepe_dir:
    config.evals = {"sugarcrepe": {"data_dir": args.sugarcrepe_dir, "coco_dir": args.coco_dir}}
    config.eval_every_steps, config.eval_batch_size = args.steps, 16
  summary = trainer.train(config, args.workdir)
  summary["process_index"], summary["process_count"] = jax.process_index(), jax.process_count()
  summary["device_count"] = jax.device_count()
  print("SUMMARY " + json.dumps(summary, default=str), flush=True)
  jax.distributed.shutdown()


if __name__ == "__main__":
  main()
