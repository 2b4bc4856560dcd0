r"""Evaluates a clic_jax training workdir or open_clip weights on the compositionality benchmarks.

  python -m clic_jax.evaluate --workdir=/ckpt/clic_b32 \
      --benchmarks=sugarcrepe,sugarcrepe_pp,winoground \
      --sugarcrepe_dir=sugar-crepe/data --sugarcrepe_pp_dir=scpp/data --coco_dir=coco/val2017 \
      --winoground_dir=winoground/data --out=results.json

  python -m clic_jax.evaluate --open_clip=model.safetensors --model=ViT-B-32-quickgelu \
      --benchmarks=zeroshot,retrieval --imagenet_dir=imagenet \
      --retrieval_json=coco_karpathy_test.json --retrieval_image_root=coco

--open_clip also takes a pretrained tag (with --model) and open_clip's `hf-hub:ORG/REPO` and
`local-dir:DIR` names, which carry their own architecture. Without --benchmarks, every benchmark
whose data flags are set runs. The JSON maps benchmark -> metric -> fraction in [0, 1].
"""
from __future__ import annotations

import json
import os
import time
from typing import Callable

from absl import app, flags, logging
from ml_collections import config_flags

_WORKDIR = flags.DEFINE_string("workdir", None, "A clic_jax training workdir to evaluate.")
flags.DEFINE_alias("checkpoint", "workdir")
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Optional training config (configs/*.py): its model.name is the default "
    "--model and its `evals` the benchmarks when no benchmark flags are given.")
_OPEN_CLIP = flags.DEFINE_string(
    "open_clip", None, "open_clip weights: a file (.safetensors/.bin/.pt), a pretrained tag "
    "(e.g. openai), hf-hub:ORG/REPO or local-dir:DIR.")
_MODEL = flags.DEFINE_string("model", None, "Architecture name for --open_clip, e.g. "
                             "ViT-B-32-quickgelu (not needed for hf-hub:/local-dir:).")
_BENCHMARKS = flags.DEFINE_list(
    "benchmarks", [], "Comma list of: sugarcrepe, sugarcrepe_pp, winoground, zeroshot, "
    "classification, retrieval, binding. Default: all whose data flags are set.")
# The benchmarks' data locations: one string flag each (unset = None).
_DATA_FLAGS = {
    "sugarcrepe_dir": "Folder with SugarCrepe's add_obj.json ... swap_att.json.",
    "sugarcrepe_pp_dir": "Folder with SugarCrepe++'s replace_obj.json ... swap_att.json.",
    "coco_dir": "Folder holding the COCO val2017 images (SugarCrepe++ runs text-only without it).",
    "winoground_dir": "Folder with Winoground's examples.jsonl and images/. Unset with "
                      "--benchmarks=winoground: the gated facebook/winoground files through "
                      "huggingface_hub.",
    "imagenet_dir": "ImageNet: an image folder (val/ or class folders in sorted wnid order) or a "
                    "TFDS data_dir holding imagenet2012.",
    "classification_dir": "Any class-per-subfolder dataset for 'classification'.",
    "classnames_file": "Class names for --classification_dir (JSON list or one per line).",
    "templates_file": "Prompt templates with {c} (JSON list or one per line); default: OpenAI's 80.",
    "retrieval_json": "Karpathy test split JSON (coco_karpathy_test.json / flickr30k_test.json).",
    "retrieval_image_root": "Folder the retrieval JSON's image paths are under.",
}
for _name, _help in _DATA_FLAGS.items():
  flags.DEFINE_string(_name, None, _help)
_IMAGENET_SPLIT = flags.DEFINE_string("imagenet_split", "validation", "TFDS split for ImageNet.")
_MAX_EXAMPLES = flags.DEFINE_integer("zeroshot_max_examples", None, "Evaluate a random subset "
                                     "(NumPy seed 1) of this many classification images.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 256, "Global batch size (over all devices).")
_OUT = flags.DEFINE_string("out", None, "Write the results as JSON to this file.")
_ON_MISSING = flags.DEFINE_enum("on_missing", "skip", ["skip", "error"],
                                "Missing images / malformed lines: count and report, or stop.")


def load_model():
  """(model, params) from --workdir or --open_clip; see evaluate.model_source for its name."""
  if bool(_WORKDIR.value) == bool(_OPEN_CLIP.value):
    raise app.UsageError("Pass exactly one of --workdir or --open_clip.")
  if _WORKDIR.value:
    try:
      from clic_jax.train.checkpoint import load_params_for_eval
    except ImportError as e:
      raise app.UsageError(f"--workdir needs clic_jax.train.checkpoint.load_params_for_eval, "
                           f"which this installation lacks ({e}).") from e
    from clic_jax.models import build_model
    name, params = load_params_for_eval(_WORKDIR.value)
    return build_model(name), params
  from clic_jax.interop import load_open_clip
  source = _OPEN_CLIP.value
  has_own_architecture = source.startswith(("hf-hub:", "local-dir:"))
  model_name = _MODEL.value or (_CONFIG.value.model.name if _CONFIG.value else None)
  if model_name is None and not has_own_architecture:
    raise app.UsageError("--open_clip with a file or tag needs --model=NAME "
                         "(e.g. ViT-B-32-quickgelu).")
  return load_open_clip(model_name, source)


def _flag(name: str):
  return flags.FLAGS[name].value


def _retrieval_kwargs() -> dict:
  annotations = _flag("retrieval_json")
  root = _flag("retrieval_image_root") or os.path.dirname(os.path.abspath(annotations))
  return {"annotation_file": annotations, "image_root": root}


# Per benchmark: the data flags it needs, the flag whose presence selects it when --benchmarks is
# not given (None: never selected by default), and its keyword arguments built from the flags.
_BENCHMARK_FLAGS: dict[str, tuple[tuple[str, ...], str | None, Callable[[], dict]]] = {
    "sugarcrepe": (("sugarcrepe_dir", "coco_dir"), "sugarcrepe_dir",
                   lambda: {"data_dir": _flag("sugarcrepe_dir"), "coco_dir": _flag("coco_dir")}),
    "sugarcrepe_pp": (("sugarcrepe_pp_dir",), "sugarcrepe_pp_dir",
                      lambda: {"data_dir": _flag("sugarcrepe_pp_dir"),
                               "coco_dir": _flag("coco_dir")}),
    # Without --winoground_dir: the Hugging Face copy.
    "winoground": ((), "winoground_dir", lambda: {"data_dir": _flag("winoground_dir")}),
    "zeroshot": (("imagenet_dir",), "imagenet_dir",
                 lambda: {"imagenet_dir": _flag("imagenet_dir"), "split": _IMAGENET_SPLIT.value,
                          "max_examples": _MAX_EXAMPLES.value}),
    "classification": (("classification_dir", "classnames_file"), "classification_dir",
                       lambda: {"data_dir": _flag("classification_dir"),
                                "classnames": _flag("classnames_file"),
                                "templates": _flag("templates_file"),
                                "max_examples": _MAX_EXAMPLES.value}),
    "retrieval": (("retrieval_json",), "retrieval_json", _retrieval_kwargs),
    "binding": ((), None, dict),                    # renders its own scenes; no data flags
}


def benchmark_kwargs(names: list[str]) -> dict[str, dict]:
  """Per-benchmark keyword arguments from the flags, with one clear error per missing flag."""
  out = {}
  for name in names:
    if name not in _BENCHMARK_FLAGS:
      from clic_jax.evaluate.registry import BENCHMARKS
      raise app.UsageError(f"Unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}.")
    required, _, kwargs = _BENCHMARK_FLAGS[name]
    missing = [f"--{flag}" for flag in required if not _flag(flag)]
    if missing:
      raise app.UsageError(f"Benchmark {name} needs {', '.join(missing)}.")
    out[name] = kwargs()
  return out


def default_benchmarks() -> list[str]:
  """The benchmarks whose data flags are set."""
  return [name for name, (_, selector, _) in _BENCHMARK_FLAGS.items()
          if selector and _flag(selector)]


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  names = _BENCHMARKS.value or default_benchmarks()
  config_evals = _CONFIG.value.get("evals") if _CONFIG.value else None
  if not names and not config_evals:
    raise app.UsageError("Nothing to evaluate: pass --benchmarks and their data flags.")
  # flag errors before the model loads
  kwargs = benchmark_kwargs(names) if names else {k: dict(v) for k, v in config_evals.items()}
  from clic_jax.evaluate import EvalDataError, evaluate, format_table, model_source
  model, params = load_model()
  import clic_jax
  from clic_jax.interop import preprocess_config
  from clic_jax.models import UnknownModelError
  source = model_source(_WORKDIR.value, _OPEN_CLIP.value,
                        _MODEL.value or (_CONFIG.value.model.name if _CONFIG.value else None))
  try:
    tokenizer, preprocess = clic_jax.get_tokenizer(source), preprocess_config(source)
  except UnknownModelError:    # a workdir of a name this version does not know
    tokenizer, preprocess = None, None       # the saved architecture's tokenizer, CLIP's images
  start = time.time()
  try:
    results = evaluate(model, params, kwargs, batch_size=_BATCH_SIZE.value,
                       on_missing=_ON_MISSING.value, tokenizer=tokenizer, preprocess=preprocess)
  except EvalDataError as e:
    raise SystemExit(f"error: {e}") from None
  logging.info("evaluation took %.1f s", time.time() - start)
  print(format_table(results))
  if _OUT.value:
    os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
    with open(_OUT.value, "w", encoding="utf-8") as f:
      json.dump(results, f, indent=2)
    print(f"wrote {_OUT.value}")


if __name__ == "__main__":
  app.run(main)
