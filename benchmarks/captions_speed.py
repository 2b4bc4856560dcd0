"""Cost of the text side of one training sample: caption variants + hard negative.

  python -m benchmarks.captions_speed [--num_samples=2000] [--json=FILE]

Tags are precomputed (as `prepare` stores them), so this times what the input pipeline does per
sample: sampling extra sentences, building p1..p4, choosing and validating the swap. The tokenizer
column includes the validity check against the positives after tokenization (docs/method.md,
"Hard negative"). The image side costs about 10 ms per sample (decode + resize of two images), so
the target is well under 1 ms.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from clic_jax.data import captions, pos_tagging

COLOURS = ["red", "blue", "green", "yellow", "black", "white", "brown", "pink", "orange", "grey"]
OBJECTS = ["dog", "cat", "car", "table", "chair", "horse", "bicycle", "umbrella", "apple", "boat",
           "lamp", "bird", "truck", "vase", "ball", "woman", "man", "child", "tree", "building"]
RELATIONS = ["on", "under", "next to", "behind", "in front of", "near", "inside", "above"]
VERBS = ["sits", "stands", "sleeps", "rests", "waits", "is parked", "is standing"]
SCENES = ["on a sunny day", "in a busy city street", "in a quiet park", "at night", "near the sea"]
IMAGE_COST_US = 10_000.0  # decode + resize of the two images of one sample, order of magnitude
# Times are CPU time of this process (time.process_time), robust to other jobs on a shared machine.


def _captions(rng: np.random.Generator, n: int) -> list[str]:
  """First/extra sentences of 10-25 words, like CogVLM's after splitting."""
  out = []
  for _ in range(n):
    c = rng.choice(COLOURS, 3)
    o = rng.choice(OBJECTS, 3, replace=False)
    out.append(f"a {c[0]} {o[0]} {rng.choice(VERBS)} {rng.choice(RELATIONS)} a {c[1]} {o[1]} "
               f"{rng.choice(SCENES)}, with a {c[2]} {o[2]} in the background")
  return out


def _time_per_call(fn, n: int) -> float:
  """CPU microseconds per call: process time, so other jobs on a shared machine do not count."""
  fn(0)  # warm caches (regexes, tokenizer BPE)
  start = time.process_time()
  for i in range(n):
    fn(i)
  return (time.process_time() - start) / n * 1e6


def run(num_samples: int = 2000, num_records: int = 500, seed: int = 0) -> dict:
  """Microseconds per call of each caption-set builder, with precomputed (lexicon) tags."""
  rng = np.random.default_rng(seed)
  firsts = _captions(rng, num_records)
  extras = [_captions(rng, int(k)) for k in rng.integers(0, 6, num_records)]
  tagger = pos_tagging.get_tagger("lexicon")
  start = time.process_time()
  tags = tagger.tag_many(firsts)
  tag_us = (time.process_time() - start) / num_records * 1e6
  partners = rng.integers(0, num_records, num_samples)

  try:
    from clic_jax.tokenizer import tokenize  # pylint: disable=import-outside-toplevel
  except ImportError:  # the benchmark still says something without the tokenizer
    tokenize = None

  counters: dict[str, int] = {}
  # One generator for all calls: grain hands each record its own, which is not ours to time.
  sample_rng = np.random.default_rng(seed)

  def clic(i, tokenize_fn=None):
    a, b = i % num_records, int(partners[i % num_samples])
    result = captions.clic_caption_set(sample_rng, firsts[a], extras[a], tags[a],
                                       firsts[b], extras[b], tags[b], tokenize_fn=tokenize_fn)
    for name, count in result.counters.items():
      counters[name] = counters.get(name, 0) + count

  rows = {
      "clic_caption_set (strings)": _time_per_call(clic, num_samples),
      "negclip_caption_set (strings)": _time_per_call(
          lambda i: captions.negclip_caption_set(sample_rng, firsts[i % num_records],
                                                 tags[i % num_records]), num_samples),
      "baseline_caption_set (strings)": _time_per_call(
          lambda i: captions.baseline_caption_set(sample_rng, firsts[i % num_records],
                                                  extras[i % num_records], tags[i % num_records]),
          num_samples),
  }
  if tokenize is not None:
    counters.clear()
    rows["clic_caption_set (tokenizer check)"] = _time_per_call(
        lambda i: clic(i, tokenize), num_samples)
    rows["tokenize 5 texts (reference cost)"] = _time_per_call(
        lambda i: tokenize([firsts[(i + k) % num_records] for k in range(5)]), num_samples)
  rows["lexicon tagging of one caption (prepare time)"] = tag_us
  return {
      "num_samples": num_samples,
      "us_per_call": {name: round(us, 1) for name, us in rows.items()},
      "percent_of_10ms_image_cost": {name: round(100 * us / IMAGE_COST_US, 2)
                                     for name, us in rows.items()},
      "counters_per_1000_clic_samples": {name: round(1000 * c / num_samples, 2)
                                         for name, c in sorted(counters.items())},
  }


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--num_samples", type=int, default=2000)
  parser.add_argument("--json", default=None, help="also write the results to this JSON file")
  args = parser.parse_args()
  result = run(num_samples=args.num_samples)
  print(f"{'step':<48} {'us/call':>9} {'% of 10 ms':>11}")
  for name, us in result["us_per_call"].items():
    print(f"{name:<48} {us:>9.1f} {result['percent_of_10ms_image_cost'][name]:>10.2f}%")
  print("fallback counters per 1000 CLIC samples:", result["counters_per_1000_clic_samples"])
  print(json.dumps(result))
  if args.json:
    with open(args.json, "w", encoding="utf-8") as f:
      json.dump(result, f, indent=2)


if __name__ == "__main__":
  main()
