"""Evaluation suite: SugarCrepe, SugarCrepe++, Winoground, zero-shot classification, retrieval,
and toy-world binding probes (any model, no data needed).

Python API (what training calls on a schedule):

  results = evaluate(model, params, {
      "sugarcrepe": {"data_dir": ".../sugar-crepe/data", "coco_dir": ".../val2017"},
      "sugarcrepe_pp": {"data_dir": ".../scpp/data", "coco_dir": ".../val2017"},
      "winoground": {"data_dir": ".../winoground"},
      "zeroshot": {"imagenet_dir": ".../imagenet", "max_examples": 10000},
      "retrieval/coco": {"annotation_file": ".../coco_karpathy_test.json",
                         "image_root": ".../coco"},
      "binding": {"num_train": 2000, "num_twins": 400},   # needs no data (binding.py)
  }, batch_size=256)
  print(format_table(results))

Results map benchmark -> metric -> fraction in [0, 1] (SugarCrepe++: category -> {"itt", "tot"}),
plus "num_examples" and "skipped" (counts by reason) per benchmark. Command line:
`python -m clic_jax.evaluate --help`.
"""
from __future__ import annotations

import logging
from typing import Any, Mapping

from clic_jax.evaluate.embed import Embedder, EvalDataError, SkipCounter
from clic_jax.evaluate.registry import BENCHMARKS, check_arguments, runner_for

log = logging.getLogger("clic_jax.evaluate")
_META_KEYS = ("num_examples", "num_images", "num_captions", "skipped")


def evaluate(model, params, benchmarks: Mapping[str, Mapping[str, Any]], batch_size: int = 256,
             on_missing: str = "skip", tokenizer=None, embedder: Embedder | None = None,
             on_error: str = "raise", preprocess: Mapping[str, Any] | None = None
             ) -> dict[str, dict[str, Any]]:
  """Runs each named benchmark with its kwargs on one shared, jitted Embedder.

  tokenizer / preprocess: the model's (clic_jax.get_tokenizer, interop.preprocess_config); None:
  the tokenizer of model.cfg and OpenAI CLIP's image preprocessing.

  on_error="record" (what training uses): a benchmark that raises is logged with its traceback
  and its result is {"failed": 1}; the others still run.
  """
  if on_error not in ("raise", "record"):
    raise ValueError(f"on_error must be 'raise' or 'record', got {on_error!r}")
  runners = {name: runner_for(name) for name in benchmarks}     # unknown names fail before work
  if embedder is None:
    embedder = Embedder(model, params, batch_size=batch_size, tokenizer=tokenizer,
                        preprocess=preprocess)
  results = {}
  for name, kwargs in benchmarks.items():
    kwargs = dict(kwargs)
    kwargs.setdefault("on_missing", on_missing)
    try:
      results[name] = runners[name](embedder, **kwargs)
    except Exception:                                # noqa: BLE001 - recorded, or raised below
      if on_error == "raise":
        raise
      log.exception("Benchmark %r failed; the others go on.", name)
      results[name] = {"failed": 1}
  return results


def flatten_metrics(result: Mapping[str, Any]) -> list[tuple[str, float | None]]:
  """[(metric name, value)] of one benchmark's result, nested dicts joined with '/'."""
  rows = []
  for key, value in result.items():
    if key in _META_KEYS:
      continue
    if isinstance(value, Mapping):
      rows.extend((f"{key}/{k}", v) for k, v in value.items())
    else:
      rows.append((key, value))
  return rows


def format_table(results: Mapping[str, Mapping[str, Any]]) -> str:
  """A plain-text table: one line per metric, then example counts and skips per benchmark."""
  lines = [f"{'benchmark':<16} {'metric':<24} {'value':>8}", "-" * 50]
  for bench, result in results.items():
    for metric, value in flatten_metrics(result):
      shown = "n/a" if value is None else f"{value:.4f}"
      lines.append(f"{bench:<16} {metric:<24} {shown:>8}")
    skipped = result.get("skipped") or {}
    if skipped:
      detail = ", ".join(f"{reason}={n}" for reason, n in skipped.items())
      lines.append(f"{bench:<16} {'skipped':<24} {detail}")
  return "\n".join(lines)


def model_source(workdir: str | None, open_clip: str | None, model: str | None) -> str:
  """The name the model's tokenizer and image preprocessing are read from: the workdir's model
  name, --open_clip's hf-hub:/local-dir: (their own tokenizer files and preprocess_cfg), else
  --model (or the config's model name)."""
  if workdir:
    from clic_jax.train.checkpoint import read_model_info
    return read_model_info(workdir)[0]
  if open_clip.startswith(("hf-hub:", "local-dir:")):
    return open_clip
  return model


__all__ = ["BENCHMARKS", "Embedder", "EvalDataError", "SkipCounter", "check_arguments", "evaluate",
           "flatten_metrics", "format_table", "model_source", "runner_for"]
