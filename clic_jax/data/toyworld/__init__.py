"""A procedural compositional toy world: coloured shapes, captions with POS tags, and a benchmark.

`generate_world(out_dir, num_train, num_test, seed)` writes, under out_dir:

  train.csv                 reference CSV (no header): image path (relative to images/), first
                            sentence, extra sentences (docs/method.md, "Dataset format")
  train.csv.pos.jsonl       line i = CSV row i: {"tags": [[[word, pos], ...] per sentence column]}
  train.csv.scenes.jsonl    line i = the structured scene of CSV row i
  test.csv (+ .pos.jsonl, .scenes.jsonl)   the same for the held-out scenes
  images/train/*.png, images/test/*.png
  bench/sugarcrepe/*.json   SugarCrepe format; filenames relative to images/test (the "coco_dir")
  bench/sugarcrepe_pp/*.json  SugarCrepe++ format, same images
  bench/retrieval_test.json Karpathy-style list; image paths relative to images/
  manifest.json             the config; a finished world with the same config is not regenerated

Held-out scenes come from a separate random stream and never share a scene key (background plus
each object's colour, shape, size and 3x3 grid cell) with a training scene.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import time

import numpy as np

from clic_jax.data.toyworld import benchmark, captions
from clic_jax.data.toyworld.render import render_scene
from clic_jax.data.toyworld.scenes import ORIENTATIONS, Scene, sample_scene, scene_key

# Bump when the generator's output changes, so old worlds on disk are regenerated.
WORLD_VERSION = 2
IMAGE_FORMATS = ("png", "jpg")
# Frame shapes: "square" (default; what evaluation crops is the whole image) or "mixed" (portrait,
# landscape and square, so both pair layouts of the CLIC pipeline occur).
FRAMES = {"square": ("square",), "mixed": ORIENTATIONS}
_MAX_REDRAWS = 1000       # held-out scene re-draws before concluding the world is too small
# Independent random streams, the first entry after the seed: np.random.default_rng([seed, stream, ...]).
TRAIN_SCENES, TEST_SCENES, BENCHMARK, TRAIN_CAPTIONS, TEST_CAPTIONS = range(5)
# Streams of the demo's pretraining corpus (clic_jax/demo/pretraining.py), apart from the world's.
PRETRAIN_SCENES, PRETRAIN_CAPTIONS = 5, 6


def world_paths(out_dir: str) -> dict[str, str]:
  out_dir = os.path.abspath(out_dir)
  join = lambda *p: os.path.join(out_dir, *p)
  return {
      "out_dir": out_dir,
      "manifest": join("manifest.json"),
      "image_root": join("images"),
      "train_csv": join("train.csv"),
      "train_pos": join("train.csv.pos.jsonl"),
      "train_scenes": join("train.csv.scenes.jsonl"),
      "test_csv": join("test.csv"),
      "test_pos": join("test.csv.pos.jsonl"),
      "test_scenes": join("test.csv.scenes.jsonl"),
      "coco_dir": join("images", "test"),
      "sugarcrepe_dir": join("bench", "sugarcrepe"),
      "sugarcrepe_pp_dir": join("bench", "sugarcrepe_pp"),
      "retrieval_json": join("bench", "retrieval_test.json"),
      "retrieval_image_root": join("images"),
  }


def sample_split(stream: int, count: int, seed: int, image_size: int,
                 excluded_keys: set, frames: str = "square") -> list[Scene]:
  """Scenes of one split; scene i comes from its own stream [seed, stream, i, redraw], so a scene
  does not depend on how many others are generated."""
  scenes = []
  for index in range(count):
    for redraw in range(_MAX_REDRAWS):
      scene = sample_scene(np.random.default_rng([seed, stream, index, redraw]), image_size,
                           FRAMES[frames])
      if scene_key(scene) not in excluded_keys:
        break
    else:
      raise RuntimeError("could not find a held-out scene unlike every training scene; "
                         "use fewer training images")
    scenes.append(scene)
  return scenes


def _write_split(scenes: list[Scene], caption_stream: int, seed: int, paths: dict, name: str,
                 image_format: str) -> list[str]:
  """Images, CSV, POS sidecar and scenes of one split. Returns the image file names."""
  image_dir = os.path.join(paths["image_root"], name)
  os.makedirs(image_dir, exist_ok=True)
  filenames = []
  with open(paths[f"{name}_csv"], "w", newline="", encoding="utf-8") as csv_file, \
       open(paths[f"{name}_pos"], "w", encoding="utf-8") as pos_file, \
       open(paths[f"{name}_scenes"], "w", encoding="utf-8") as scene_file:
    writer = csv.writer(csv_file, lineterminator="\n")
    for index, scene in enumerate(scenes):
      filename = f"{index:06d}.{image_format}"
      image = render_scene(scene)
      if image_format == "png":
        image.save(os.path.join(image_dir, filename), format="PNG", compress_level=1)
      else:
        image.save(os.path.join(image_dir, filename), format="JPEG", quality=95)
      rng = np.random.default_rng([seed, caption_stream, index])
      rendered = [captions.render(s) for s in captions.describe_scene(scene, rng)]
      writer.writerow([f"{name}/{filename}"] + [text for text, _ in rendered])
      pos_file.write(json.dumps({"tags": [[list(t) for t in tokens] for _, tokens in rendered]}) + "\n")
      scene_file.write(json.dumps({"image": f"{name}/{filename}", **scene.to_json()}) + "\n")
      filenames.append(filename)
  return filenames


def _owned_or_empty(out_dir: str, manifest_path: str) -> None:
  if os.path.exists(manifest_path) or not os.path.isdir(out_dir) or not os.listdir(out_dir):
    return
  raise FileExistsError(f"{out_dir} is not empty and holds no toy-world manifest.json; "
                        "give an empty or new directory so nothing of yours is overwritten")


def world_config(num_train: int, num_test: int, seed: int, image_size: int,
                 image_format: str = "png", frames: str = "square") -> dict:
  """What a world is made from (its manifest's "config"): equal configs, equal worlds."""
  return {"version": WORLD_VERSION, "num_train": num_train, "num_test": num_test, "seed": seed,
          "image_size": image_size, "image_format": image_format, "frames": frames}


def generate_world(out_dir: str, num_train: int, num_test: int, seed: int = 0,
                   image_size: int = 64, image_format: str = "png",
                   force: bool = False, frames: str = "square") -> dict[str, str]:
  """Generates the toy world (see the module docstring) and returns its paths.

  Idempotent: when out_dir holds a finished world with the same config, nothing is redone.
  """
  if num_train < 1 or num_test < 1:
    raise ValueError(f"num_train={num_train} and num_test={num_test} must both be at least 1")
  if seed < 0:
    raise ValueError(f"seed={seed} must be non-negative")
  if image_size < 16:
    raise ValueError(f"image_size={image_size} is too small to draw shapes; use 16 or more")
  if frames not in FRAMES:
    raise ValueError(f"frames={frames!r}; use one of {sorted(FRAMES)}")
  if image_format not in IMAGE_FORMATS:
    raise ValueError(f"image_format={image_format!r}; use one of {IMAGE_FORMATS}")
  paths = world_paths(out_dir)
  config = world_config(num_train, num_test, seed, image_size, image_format, frames)
  manifest = _read_manifest(paths["manifest"])
  if (not force and manifest.get("config") == config and manifest.get("complete")
      and all(os.path.exists(p) for p in paths.values())):
    return paths
  _owned_or_empty(paths["out_dir"], paths["manifest"])
  for stale in ("images", "bench"):                    # ours: a manifest says we made this dir
    shutil.rmtree(os.path.join(paths["out_dir"], stale), ignore_errors=True)
  os.makedirs(paths["out_dir"], exist_ok=True)
  _write_manifest(paths["manifest"], {"config": config, "complete": False})

  start = time.perf_counter()
  train = sample_split(TRAIN_SCENES, num_train, seed, image_size, excluded_keys=set(),
                       frames=frames)
  test = sample_split(TEST_SCENES, num_test, seed, image_size,
                      excluded_keys={scene_key(s) for s in train}, frames=frames)
  _write_split(train, TRAIN_CAPTIONS, seed, paths, "train", image_format)
  test_files = _write_split(test, TEST_CAPTIONS, seed, paths, "test", image_format)
  records = benchmark.build_benchmark(test, test_files, [seed, BENCHMARK],
                                      retrieval_images=[f"test/{f}" for f in test_files])
  benchmark.write_benchmark(records, paths["sugarcrepe_dir"], paths["sugarcrepe_pp_dir"],
                            paths["retrieval_json"])
  stats = {"seconds": round(time.perf_counter() - start, 2),
           "sugarcrepe_items": {c: len(v) for c, v in records["sugarcrepe"].items()},
           "sugarcrepe_pp_items": {c: len(v) for c, v in records["sugarcrepe_pp"].items()},
           "scenes_without_item": records["skipped"],
           "retrieval_images": len(records["retrieval"])}
  _write_manifest(paths["manifest"], {"config": config, "complete": True, "stats": stats,
                                      "paths": {k: os.path.relpath(v, paths["out_dir"])
                                                for k, v in paths.items()}})
  return paths


def _read_manifest(path: str) -> dict:
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (OSError, ValueError):
    return {}


def _write_manifest(path: str, data: dict) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(data, f, indent=1)
  os.replace(tmp, path)


__all__ = ["generate_world", "sample_split", "world_paths", "FRAMES", "WORLD_VERSION"]
