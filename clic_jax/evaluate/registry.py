"""Benchmark name -> runner. Every runner is `run(embedder, **kwargs) -> dict` of fractions.

A benchmark may be requested several times under `name/label` (e.g. "retrieval/coco" and
"retrieval/flickr30k"); the part before the slash picks the runner.
"""
from __future__ import annotations

from typing import Any, Callable

from clic_jax.evaluate import retrieval, sugarcrepe, sugarcrepe_pp, winoground, zeroshot

Runner = Callable[..., dict[str, Any]]

BENCHMARKS: dict[str, Runner] = {
    "sugarcrepe": sugarcrepe.run,            # data_dir, coco_dir
    "sugarcrepe_pp": sugarcrepe_pp.run,      # data_dir, coco_dir (None: text-only TOT)
    "winoground": winoground.run,            # data_dir (None: Hugging Face copy)
    "zeroshot": zeroshot.run_imagenet,       # imagenet_dir, split, max_examples
    "classification": zeroshot.run_folder,   # data_dir, classnames, templates, max_examples
    "retrieval": retrieval.run,              # annotation_file, image_root
}


def runner_for(name: str) -> Runner:
  base = name.split("/", 1)[0]
  if base not in BENCHMARKS:
    raise ValueError(f"Unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)} "
                     "(optionally suffixed with '/label' to run one several times)")
  return BENCHMARKS[base]
