"""Benchmark name -> runner. Every runner is `run(embedder, **kwargs) -> dict` of fractions.

A benchmark may be requested several times under `name/label` (e.g. "retrieval/coco" and
"retrieval/flickr30k"); the part before the slash picks the runner.
"""
from __future__ import annotations

import inspect
import os
from typing import Any, Callable, Mapping

from clic_jax.evaluate import (binding, retrieval, sugarcrepe, sugarcrepe_pp, winoground,
                               zeroshot)

Runner = Callable[..., dict[str, Any]]

BENCHMARKS: dict[str, Runner] = {
    "sugarcrepe": sugarcrepe.run,            # data_dir, coco_dir
    "sugarcrepe_pp": sugarcrepe_pp.run,      # data_dir, coco_dir (None: text-only TOT)
    "winoground": winoground.run,            # data_dir (None: Hugging Face copy)
    "zeroshot": zeroshot.run_imagenet,       # imagenet_dir, split, max_examples
    "classification": zeroshot.run_folder,   # data_dir, classnames, templates, max_examples
    "retrieval": retrieval.run,              # annotation_file, image_root
    "binding": binding.run,                  # num_train, num_twins, seed, image_size (no data)
}


def runner_for(name: str) -> Runner:
  base = name.split("/", 1)[0]
  if base not in BENCHMARKS:
    raise ValueError(f"Unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)} "
                     "(optionally suffixed with '/label' to run one several times)")
  return BENCHMARKS[base]


# Arguments that name local files or folders (a string with "://" is left to the reader).
PATH_ARGUMENTS = ("data_dir", "coco_dir", "imagenet_dir", "annotation_file", "image_root",
                  "classnames", "templates")


def check_arguments(name: str, kwargs: Mapping[str, Any]) -> None:
  """ValueError naming the benchmark when its arguments cannot work: an unknown name, arguments
  its runner does not take or lacks, or a local path that does not exist. Training calls this
  before its first step, so a typo is not found at the first evaluation, hours in."""
  runner = runner_for(name)
  try:
    inspect.signature(runner).bind(None, **kwargs)
  except TypeError as e:
    taken = [p for p in inspect.signature(runner).parameters if p != "embedder"]
    raise ValueError(f"benchmark {name!r}: {e}; it takes {', '.join(taken)}") from None
  for key in PATH_ARGUMENTS:
    value = kwargs.get(key)
    if isinstance(value, str) and value and "://" not in value and not os.path.exists(value):
      raise ValueError(f"benchmark {name!r}: {key}={value!r} does not exist")
