"""Zero-shot classification: ImageNet with OpenAI's 80 prompts, and any image-folder dataset.

Class embedding (docs/method.md, "Zero-shot classification"): embed every "template with class
name" caption, L2-normalize each, average over the templates, normalize again. Prediction: argmax
of the cosine with the image embedding.
Reported: top-1 and top-5 accuracy as fractions.

Image sources, one code path:
- An image folder: one subfolder per class, classes in sorted folder-name order (torchvision's
  ImageFolder order; for ImageNet the sorted WordNet ids, which is the order of the class names).
- A TFDS data source: `tfds.data_source("imagenet2012", data_dir=...)` records {"image", "label"}.
"""
from __future__ import annotations

import functools
import io
import json
import os
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image

from clic_jax.evaluate.embed import Embedder, EvalDataError, SkipCounter, unique

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
_METADATA = os.path.join(os.path.dirname(__file__), "imagenet_classnames.json")


@functools.lru_cache(maxsize=1)
def imagenet_metadata() -> tuple[tuple[str, ...], tuple[str, ...]]:
  """(1000 class names, 80 templates with '{c}' for the class name)."""
  with open(_METADATA, encoding="utf-8") as f:
    data = json.load(f)
  return tuple(data["classnames"]), tuple(data["templates"])


def read_names(path: str) -> list[str]:
  """A JSON list of strings, or a text file with one entry per line."""
  with open(path, encoding="utf-8") as f:
    text = f.read()
  if path.endswith(".json"):
    names = json.loads(text)
    if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
      raise EvalDataError(f"{path} must hold a JSON list of strings")
    return names
  return [line.strip() for line in text.splitlines() if line.strip()]


def fill(template: str, classname: str) -> str:
  """Accepts OpenAI-style '{c}' and clip_benchmark-style '{}' / '{c}' placeholders."""
  return template.replace("{c}", classname).replace("{}", classname)


def class_embeddings(embedder: Embedder, classnames: Sequence[str], templates: Sequence[str]
                     ) -> np.ndarray:
  """(C, D): mean of normalized template embeddings per class, renormalized."""
  prompts = [fill(t, c) for c in classnames for t in templates]
  uniques, index = unique(prompts)
  emb = embedder.embed_texts(uniques)[np.array([index[p] for p in prompts], np.int64)]
  mean = emb.reshape(len(classnames), len(templates), -1).mean(axis=1)
  return mean / np.linalg.norm(mean, axis=-1, keepdims=True)


def topk_correct(logits: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
  """bool (N,): the label is among the k highest logits (ties broken by class order, like torch)."""
  k = min(k, logits.shape[1])
  top = np.argsort(-logits, axis=1, kind="stable")[:, :k]
  return (top == labels[:, None]).any(axis=1)


# -- image sources --------------------------------------------------------------------------------

def image_folder(root: str) -> tuple[list[tuple[str, int]], list[str]]:
  """([(path, label)], class folder names) for a class-per-subfolder layout (`val/` if present)."""
  if os.path.isdir(os.path.join(root, "val")):
    root = os.path.join(root, "val")
  if not os.path.isdir(root):
    raise EvalDataError(f"image folder {root!r} does not exist")
  classes = sorted(d.name for d in os.scandir(root) if d.is_dir())
  if not classes:
    raise EvalDataError(f"{root!r} has no class subfolders; expected one folder per class")
  samples = []
  for label, name in enumerate(classes):
    for dirpath, _, files in sorted(os.walk(os.path.join(root, name), followlinks=True)):
      for file in sorted(files):
        if file.lower().endswith(IMAGE_EXTENSIONS):
          samples.append((os.path.join(dirpath, file), label))
  return samples, classes


def _open_record_image(value: Any) -> Image.Image:
  if isinstance(value, (bytes, bytearray)):
    return Image.open(io.BytesIO(value))
  array = np.asarray(value)
  if array.ndim == 3 and array.shape[-1] == 1:     # grayscale stored as (H, W, 1)
    array = array[..., 0]
  return Image.fromarray(array)


def tfds_source(data_dir: str, name: str = "imagenet2012", split: str = "validation"):
  """A random-access TFDS source (ArrayRecord; TensorFlow is not needed)."""
  try:
    import tensorflow_datasets as tfds
  except ImportError as e:
    raise EvalDataError("reading ImageNet through TFDS needs `tensorflow-datasets`") from e
  try:
    return tfds.data_source(name, split=split, data_dir=data_dir)
  except Exception as e:   # tfds raises several types for a missing/unprepared dataset
    raise EvalDataError(f"cannot open TFDS dataset {name}/{split} in {data_dir!r} ({e}). Prepare "
                        "it with `tfds build imagenet2012 --data_dir=...` or pass an image "
                        "folder.") from e


def records_to_items(source) -> tuple[Callable[[int], Image.Image], dict[int, int]]:
  """(open_image, labels) over a random-access source of {"image", "label"} records.

  Each record is decoded once: the loader thread that opens the image also notes its label.
  """
  labels: dict[int, int] = {}

  def open_image(i: int) -> Image.Image:
    record = source[i]
    labels[i] = int(record["label"])
    return _open_record_image(record["image"])

  return open_image, labels


# -- evaluation -----------------------------------------------------------------------------------

def subsample(n: int, max_examples: int | None, seed: int = 1) -> np.ndarray:
  """All indices, or `max_examples` of them drawn without replacement (NumPy seed 1, as the authors
  do)."""
  if max_examples is None or max_examples >= n:
    return np.arange(n)
  return np.sort(np.random.RandomState(seed).choice(n, max_examples, replace=False))


def evaluate_items(embedder: Embedder, items: Sequence[Any], label_of: Callable[[Any], int],
                   open_image: Callable[[Any], Image.Image], classnames: Sequence[str],
                   templates: Sequence[str], skips: SkipCounter) -> dict[str, Any]:
  """Top-1 / top-5 over items whose images load; the shared path of every classification set."""
  classifier = class_embeddings(embedder, classnames, templates)
  images, failures = embedder.embed_images(items, open_image)
  for row, reason in failures.items():
    skips.skip(reason, str(items[row]))
  keep = np.array([i for i in range(len(items)) if i not in failures], np.int64)
  result: dict[str, Any] = {}
  if len(keep):
    labels = np.array([label_of(items[i]) for i in keep], np.int64)   # known once images loaded
    logits = images[keep] @ classifier.T
    result["top1"] = float(topk_correct(logits, labels, 1).mean())
    result["top5"] = float(topk_correct(logits, labels, 5).mean())
  result["num_examples"] = int(len(keep))
  result["skipped"] = skips.as_dict()
  return result


def run_folder(embedder: Embedder, data_dir: str, classnames: Sequence[str] | str,
               templates: Sequence[str] | str | None = None, max_examples: int | None = None,
               on_missing: str = "skip", benchmark: str = "classification") -> dict[str, Any]:
  """Any class-per-subfolder dataset; classnames/templates may be lists or files (JSON or lines)."""
  if isinstance(classnames, str):
    classnames = read_names(classnames)
  if templates is None:
    templates = imagenet_metadata()[1]
  elif isinstance(templates, str):
    templates = read_names(templates)
  samples, folders = image_folder(data_dir)
  if len(folders) != len(classnames):
    raise EvalDataError(f"{benchmark}: {data_dir!r} has {len(folders)} class folders but "
                        f"{len(classnames)} class names were given")
  chosen = subsample(len(samples), max_examples)
  items = [samples[i][0] for i in chosen]
  skips = SkipCounter(benchmark, on_missing)
  return evaluate_items(embedder, items, dict(samples).__getitem__, Image.open, classnames,
                        templates, skips)


def run_records(embedder: Embedder, source, classnames: Sequence[str], templates: Sequence[str],
                max_examples: int | None = None, on_missing: str = "skip",
                benchmark: str = "zeroshot") -> dict[str, Any]:
  """Any random-access source of {"image": array or encoded bytes, "label": int} (e.g. TFDS)."""
  open_image, labels = records_to_items(source)
  chosen = [int(i) for i in subsample(len(source), max_examples)]
  skips = SkipCounter(benchmark, on_missing)
  return evaluate_items(embedder, chosen, labels.__getitem__, open_image, classnames, templates,
                        skips)


def run_imagenet(embedder: Embedder, imagenet_dir: str, split: str = "validation",
                 max_examples: int | None = None, on_missing: str = "skip") -> dict[str, Any]:
  """ImageNet-1k: an image folder (`val/` or class folders) or a TFDS data_dir with imagenet2012."""
  classnames, templates = imagenet_metadata()
  if os.path.isdir(os.path.join(imagenet_dir, "imagenet2012")):
    source = tfds_source(imagenet_dir, "imagenet2012", split)
    return run_records(embedder, source, classnames, templates, max_examples, on_missing)
  return run_folder(embedder, imagenet_dir, classnames, templates, max_examples, on_missing,
                    benchmark="zeroshot")
