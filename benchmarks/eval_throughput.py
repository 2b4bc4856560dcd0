"""Evaluation throughput: the batched, jitted, data-parallel path vs a one-at-a-time loop.

Both paths embed the same generated image files (decode + open_clip preprocessing included) and the
same captions (tokenization included) in the same process. Compile time is measured separately
and excluded from the rates. The one-at-a-time loop is how the reference scripts evaluate
(one example per forward pass; docs/method.md, "Image preprocessing for evaluation"); it uses the
same jitted encoder at batch size 1.

  python -m benchmarks.eval_throughput --model=tiny --images=256 --captions=1024 --json=out.json
  python -m benchmarks.eval_throughput --model=ViT-B-32 --images=512 --captions=2048 \
      --batch_size=256
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from clic_jax.evaluate import preprocess
from clic_jax.evaluate.embed import Embedder, default_tokenizer
from clic_jax.models import create_model

_WORDS = "a the dog cat red blue small man woman on under next to riding holding tree car".split()


def _make_images(directory: str, count: int, rng) -> list[str]:
  paths = []
  for i in range(count):   # COCO-like sizes, so decode and resize cost what they cost in practice
    w, h = int(rng.integers(320, 640)), int(rng.integers(240, 480))
    pixels = rng.integers(0, 256, (h // 8, w // 8, 3), np.uint8).repeat(8, 0).repeat(8, 1)
    path = os.path.join(directory, f"{i:06d}.jpg")
    Image.fromarray(pixels).save(path, quality=90)
    paths.append(path)
  return paths


def _make_captions(count: int, rng) -> list[str]:
  return [" ".join(rng.choice(_WORDS, size=int(rng.integers(5, 20)))) + f" {i}."
          for i in range(count)]


def _timed(fn):
  start = time.perf_counter()
  out = fn()
  return out, time.perf_counter() - start


def run(model_name: str = "tiny", images: int = 64, captions: int = 256, batch_size: int = 64,
        loop_images: int | None = None, loop_captions: int | None = None, seed: int = 0) -> dict:
  """Embeddings per second for both paths; the loop may run on a prefix (slow at full size)."""
  rng = np.random.default_rng(seed)
  model, params = create_model(model_name, seed=seed)
  tokenize = default_tokenizer()
  size = model.cfg.vision.image_size
  loop_images = min(loop_images or images, images)
  loop_captions = min(loop_captions or captions, captions)
  with tempfile.TemporaryDirectory() as tmp:
    paths = _make_images(tmp, images, rng)
    texts = _make_captions(captions, rng)

    embedder = Embedder(model, params, batch_size=batch_size, tokenizer=tokenize)
    _, compile_s = _timed(lambda: (embedder.embed_image_files(paths[:1]),
                                   embedder.embed_texts(texts[:1])))
    (img_batched, _), img_batched_s = _timed(lambda: embedder.embed_image_files(paths))
    txt_batched, txt_batched_s = _timed(lambda: embedder.embed_texts(texts))

    def normalized(method):
      def fn(p, x):
        y = model.apply({"params": p}, x, method=method).astype(jnp.float32)
        return y / jnp.linalg.norm(y, axis=-1, keepdims=True)
      return jax.jit(fn)

    encode_image, encode_text = normalized("encode_image"), normalized("encode_text")
    np.asarray(encode_image(params, preprocess.load_image(paths[0], size)[None]))   # compile
    np.asarray(encode_text(params, np.asarray(tokenize(texts[:1]))))

    def image_loop():
      return np.stack([np.asarray(encode_image(params, preprocess.load_image(p, size)[None]))[0]
                       for p in paths[:loop_images]])

    def text_loop():
      return np.stack([np.asarray(encode_text(params, np.asarray(tokenize([t]))))[0]
                       for t in texts[:loop_captions]])

    img_loop, img_loop_s = _timed(image_loop)
    txt_loop, txt_loop_s = _timed(text_loop)

  result = {
      "model": model_name, "devices": jax.device_count(), "platform": jax.devices()[0].platform,
      "batch_size": embedder.batch_size, "images": images, "captions": captions,
      "loop_images": loop_images, "loop_captions": loop_captions,
      "compile_s": compile_s,
      "batched_images_per_s": images / img_batched_s,
      "loop_images_per_s": loop_images / img_loop_s,
      "batched_captions_per_s": captions / txt_batched_s,
      "loop_captions_per_s": loop_captions / txt_loop_s,
      # The two paths must agree, or the speed-up means nothing.
      "max_abs_diff_images": float(np.abs(img_batched[:loop_images] - img_loop).max()),
      "max_abs_diff_captions": float(np.abs(txt_batched[:loop_captions] - txt_loop).max()),
  }
  result["image_speedup"] = result["batched_images_per_s"] / result["loop_images_per_s"]
  result["caption_speedup"] = result["batched_captions_per_s"] / result["loop_captions_per_s"]
  return result


def format_table(r: dict) -> str:
  lines = [f"eval throughput: {r['model']} on {r['devices']} {r['platform']} device(s), "
           f"batch {r['batch_size']}",
           f"{'':<10} {'batched/s':>12} {'one-at-a-time/s':>16} {'speed-up':>9}"]
  for kind in ("images", "captions"):
    lines.append(f"{kind:<10} {r[f'batched_{kind}_per_s']:>12.1f} {r[f'loop_{kind}_per_s']:>16.1f} "
                 f"{r[f'{kind[:-1]}_speedup']:>8.1f}x")
  lines.append(f"max |batched - loop|: images {r['max_abs_diff_images']:.2e}, "
               f"captions {r['max_abs_diff_captions']:.2e}; compile {r['compile_s']:.1f} s")
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="tiny")
  parser.add_argument("--images", type=int, default=64)
  parser.add_argument("--captions", type=int, default=256)
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--loop_images", type=int, default=None)
  parser.add_argument("--loop_captions", type=int, default=None)
  parser.add_argument("--json", default=None, help="write the result dict here")
  args = parser.parse_args()
  result = run(args.model, args.images, args.captions, args.batch_size, args.loop_images,
               args.loop_captions)
  print(format_table(result))
  print(json.dumps(result, indent=2))
  if args.json:
    with open(args.json, "w") as f:
      json.dump(result, f, indent=2)


if __name__ == "__main__":
  main()
