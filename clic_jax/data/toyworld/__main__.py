"""Generates the toy world on disk.

  python -m clic_jax.data.toyworld --out=DIR --num_train=2000 --num_test=500 --seed=0 --image_size=64

Prints the paths the pipeline and the evaluators need (train CSV, image root, SugarCrepe folders).
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from clic_jax.data.toyworld import IMAGE_FORMATS, generate_world


def _parse(argv: list[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog="python -m clic_jax.data.toyworld", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--out", required=True, help="output directory (created if missing)")
  parser.add_argument("--num_train", type=int, default=2000, help="training images")
  parser.add_argument("--num_test", type=int, default=500, help="held-out benchmark images")
  parser.add_argument("--seed", type=int, default=0, help="non-negative random seed")
  parser.add_argument("--image_size", type=int, default=64, help="shorter image side in pixels")
  parser.add_argument("--image_format", choices=IMAGE_FORMATS, default="png")
  parser.add_argument("--force", action="store_true", help="regenerate even if up to date")
  return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
  args = _parse(sys.argv[1:] if argv is None else argv)
  start = time.perf_counter()
  try:
    paths = generate_world(args.out, args.num_train, args.num_test, seed=args.seed,
                           image_size=args.image_size, image_format=args.image_format,
                           force=args.force)
  except (ValueError, FileExistsError) as error:
    print(f"error: {error}", file=sys.stderr)
    return 2
  print(json.dumps(paths, indent=1))
  print(f"toy world ready in {time.perf_counter() - start:.1f} s", file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
