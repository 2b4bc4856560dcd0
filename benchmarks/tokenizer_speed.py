"""Speed of clic_jax.tokenizer against open_clip's tokenizer on the same generated captions.

  python -m benchmarks.tokenizer_speed --num_captions=10000 --json=out.json

Fairness: each side gets a warm-up on a different caption set (imports, ftfy's lazy tables), then a
*fresh* tokenizer instance with its vocabulary already loaded and empty caches tokenizes the
benchmark captions ("cold" caches: the headline ratio). A second pass over the same captions with
the now-filled caches is reported too ("warm"), as seen from the second epoch of training on.
Each time is the best of `repeats` rounds (the machine is shared; the minimum is the least noisy).
Both return the same token ids (checked). About 10% of the captions carry accents, CJK, emoji,
curly quotes or HTML entities, which send part of them through ftfy on both sides.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time

import numpy as np

_SUBJECTS = ["man", "woman", "child", "dog", "cat", "horse", "bird", "group of people", "couple",
             "player", "chef", "skateboarder", "surfer", "cyclist", "train", "bus", "truck", "car",
             "boat", "airplane", "giraffe", "elephant", "zebra", "teddy bear", "pizza", "sandwich"]
_ADJECTIVES = ["young", "old", "small", "large", "red", "blue", "green", "yellow", "white", "black",
               "wooden", "shiny", "happy", "smiling", "busy", "empty", "crowded", "colorful",
               "striped", "fluffy", "brown", "tall", "tiny", "rusty", "modern", "vintage"]
_VERBS = ["standing next to", "sitting on", "holding", "riding", "looking at", "walking along",
          "playing with", "eating", "parked near", "lying on", "jumping over", "carrying",
          "waiting at", "flying above", "leaning against", "running across", "reading"]
_PLACES = ["a busy street", "the beach", "a grassy field", "a kitchen counter", "the living room",
           "a snowy mountain", "a train station", "the park", "a wooden table", "the river bank",
           "a city sidewalk", "an airport runway", "a tennis court", "the zoo", "a parking lot"]
_EXTRAS = ["on a sunny day", "at night", "in the rain", "while the sun sets", "in front of a crowd",
           "with trees in the background", "under a cloudy sky", "during a game",
           "next to a red brick building", "surrounded by flowers", "near some tall buildings"]
_UNICODE_BITS = ["café", "naïve", "crème brûlée", "東京タワー", "北京", "🐶", "😀 smiling",
                 "Zürich", "jalapeño", "Ünïcödé", "“quoted”", "it’s", "&amp;",
                 "&lt;b&gt;bold&lt;/b&gt;",
                 "&quot;fresh&quot;", "l'été", "Ελλάδα", "ñandú", "São Paulo", "garçon"]


def _phrase(rng: random.Random) -> str:
  return (f"{rng.choice(['a', 'the', 'one', 'two', 'some'])} {rng.choice(_ADJECTIVES)} "
          f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_PLACES)}")


def make_captions(num_captions: int, seed: int = 0, unicode_fraction: float = 0.1) -> list[str]:
  """Image-caption-like texts of about 8-40 words (capitalised, punctuated, some numbers), a
  fraction with accents, CJK, emoji, curly quotes or HTML entities."""
  rng = random.Random(seed)
  captions = []
  for _ in range(num_captions):
    words = []
    target = rng.randint(8, 40)
    while len(words) < target:
      part = _phrase(rng)
      if rng.random() < 0.5:
        part += " " + rng.choice(_EXTRAS)
      if rng.random() < 0.2:
        part += f" with {rng.randint(2, 12)} {rng.choice(_SUBJECTS)}s"
      words.extend(part.split())
    words = words[:target]
    if rng.random() < unicode_fraction:
      for _ in range(rng.randint(1, 3)):
        words.insert(rng.randrange(len(words) + 1), rng.choice(_UNICODE_BITS))
    text = " ".join(words)
    text = text[0].upper() + text[1:] + rng.choice([".", ".", "", "!", " .", "..."])
    if rng.random() < 0.3:
      text = text.replace(" ", ", ", 1)
    captions.append(text)
  return captions


def _time(fn, captions) -> tuple[float, np.ndarray]:
  start = time.perf_counter()
  out = fn(captions)
  return time.perf_counter() - start, out


def run(num_captions: int = 10000, seed: int = 0, repeats: int = 3) -> dict:
  """Times both tokenizers on the same captions; each time is the best of `repeats` rounds, and
  every round uses fresh instances (cold caches), then a second pass (warm caches)."""
  import open_clip
  from clic_jax import tokenizer as clic_tokenizer

  captions = make_captions(num_captions, seed)
  warmup = make_captions(200, seed + 1)
  open_clip.get_tokenizer("ViT-B-32")(warmup)
  clic_tokenizer.Tokenizer()(warmup)

  times = {"open_clip": [], "clic_jax": [], "open_clip_warm": [], "clic_jax_warm": []}
  for _ in range(repeats):
    # Fresh instances: vocabularies loaded (not timed), caches empty.
    reference = open_clip.get_tokenizer("ViT-B-32")
    ours = clic_tokenizer.Tokenizer()
    ours.vocab  # noqa: B018 -- loads (or reuses) the shared vocabulary outside the timing
    seconds, ref_tokens = _time(reference, captions)
    times["open_clip"].append(seconds)
    seconds, our_tokens = _time(ours, captions)
    times["clic_jax"].append(seconds)
    times["open_clip_warm"].append(_time(reference, captions)[0])
    times["clic_jax_warm"].append(_time(ours, captions)[0])
    if not np.array_equal(ref_tokens.numpy(), our_tokens):
      raise AssertionError("clic_jax and open_clip tokens differ on the benchmark captions")
  best = {name: min(values) for name, values in times.items()}
  return {
      "num_captions": num_captions,
      "non_ascii_or_html_captions": sum(not c.isascii() or "&" in c for c in captions),
      "repeats": repeats,
      "clic_jax_s": best["clic_jax"],
      "open_clip_s": best["open_clip"],
      "tokenizer_speedup_vs_open_clip": best["open_clip"] / best["clic_jax"],
      "clic_jax_warm_cache_s": best["clic_jax_warm"],
      "open_clip_warm_cache_s": best["open_clip_warm"],
      "tokenizer_speedup_warm_cache": best["open_clip_warm"] / best["clic_jax_warm"],
      "clic_jax_captions_per_s": num_captions / best["clic_jax"],
  }


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--num_captions", type=int, default=10000)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--json", default=None, help="write the results to this JSON file")
  args = parser.parse_args(argv)
  result = run(args.num_captions, args.seed, args.repeats)
  print(f"{'metric':34s} {'value':>12s}")
  for key, value in result.items():
    print(f"{key:34s} {value:12.4f}" if isinstance(value, float) else f"{key:34s} {value:12d}")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(result, f, indent=2)
    print(f"wrote {args.json}", file=sys.stderr)


if __name__ == "__main__":
  main()
