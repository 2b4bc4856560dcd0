"""Input pipeline speed: the full CLIC pipeline against the bare cost of decoding its images.

  python -m benchmarks.pipeline [--num_images=2000] [--json=FILE]

Generates `num_images` JPEGs of mixed sizes (200-640 px per side) with a reference-format CSV once
into a cache directory, prepares them as ArrayRecord shards (the recommended training input, POS
tags stored), then measures in the same run and with the same thread count:
  (a) pipeline_samples_per_s: CLIC samples/s of the grain pipeline as the trainer runs it: read
      record + partner, decode both, resize halves, concatenate, caption variants + hard negative,
      tokenize, batch, uint8 images (the trainer's `data.image_dtype`; the jitted step normalizes
      them on the device, tested equal to host normalization);
  (b) decode_resize_samples_per_s: samples/s of only reading, decoding and resizing the same two
      images per sample (the floor any CLIC loader pays);
  (c) text_fraction: single-thread time of caption variants + hard negative + tokenization over the
      single-thread time of a whole sample.
pipeline_ratio_vs_decode = (a) / (b). Rates are given per wall second and per CPU second of this
process (all threads): on a shared machine the CPU-time rates and their ratio are the stable numbers.
Also reported: the pipeline with float32 output (normalized on the host, for consumers that want
finished arrays), on shards prepared with --max_short_side (smaller stored images), and, side by
side in alternating rounds, reading the CSV + image files directly and reading the same records
from webdataset tar shards (what `python -m clic_jax.data.download` writes; both compute POS tags on
the fly): webdataset_ratio_vs_csv = shards / CSV, per wall and per CPU second.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import csv
import dataclasses
import json
import os
import sys
import tempfile
import time

import numpy as np
from PIL import Image

from clic_jax.data import (arrayrecord_source, captions, images, pipeline, prepare, sources,
                           webdataset_source)
from clic_jax.train.config import default_config

_ADJ = ["red", "blue", "green", "small", "large", "wooden", "old", "shiny", "striped", "dark"]
_NOUN = ["dog", "cat", "table", "car", "woman", "man", "tree", "boat", "lamp", "bicycle", "cup",
         "house", "horse", "bird", "chair", "window", "child", "bench", "flower", "truck"]
_VERB = ["stands", "sits", "rests", "lies", "waits", "leans", "appears"]
_PREP = ["next to", "behind", "in front of", "under", "near", "beside", "on"]


def _sentence(rng) -> str:
  a, b = rng.choice(_ADJ, 2)
  n1, n2 = rng.choice(_NOUN, 2, replace=False)
  return f"A {a} {n1} {rng.choice(_VERB)} {rng.choice(_PREP)} a {b} {n2}"


def _photo_like(rng, width: int, height: int) -> Image.Image:
  """Smooth colour fields with texture: compresses like a photo (tens of KB), unlike pure noise."""
  coarse = rng.integers(0, 256, (6, 6, 3), np.uint8)
  base = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC),
                    np.int16)
  noise = rng.integers(-12, 13, (height, width, 1), np.int16)
  return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))


def make_dataset(cache_dir: str, num_images: int, seed: int = 0) -> tuple[str, str]:
  """(csv_path, image_root) of num_images generated JPEGs; reused when already there."""
  root = os.path.join(cache_dir, f"images_{num_images}_{seed}")
  csv_path = os.path.join(cache_dir, f"data_{num_images}_{seed}.csv")
  if os.path.exists(csv_path):
    return csv_path, root
  os.makedirs(root, exist_ok=True)
  rng = np.random.default_rng(seed)
  rows = []
  for i in range(num_images):
    width, height = (int(v) for v in rng.integers(200, 641, 2))
    _photo_like(rng, width, height).save(os.path.join(root, f"{i:05d}.jpg"), quality=90)
    rows.append([f"{i:05d}.jpg"] + [_sentence(rng) for _ in range(1 + int(rng.integers(1, 5)))])
  with open(csv_path + ".tmp", "w", newline="") as f:
    csv.writer(f).writerows(rows)
  os.replace(csv_path + ".tmp", csv_path)
  return csv_path, root


def _prepared(csv_path, root, num_workers, max_short_side: int = 0) -> str:
  out = os.path.splitext(csv_path)[0] + f"_arrayrecord_{max_short_side}"
  if not os.path.exists(os.path.join(out, arrayrecord_source.INDEX_FILENAME)):
    prepare.prepare(prepare.parse_args([f"--csv={csv_path}", f"--image_root={root}", f"--out={out}",
                                        f"--num_workers={num_workers}", "--shard_size=500",
                                        "--pos_backend=auto", f"--max_short_side={max_short_side}"]))
  return out


def _webdataset_shards(csv_path, root, shard_size: int = 500) -> str:
  """The CSV's records as webdataset shards in the download's layout (the same image bytes, the
  sentences in the JSON's clic_captions, img2dataset's width/height), written once."""
  out = os.path.splitext(csv_path)[0] + "_webdataset"
  if os.path.exists(os.path.join(out, "done")):
    return out
  os.makedirs(out, exist_ok=True)
  with open(csv_path, newline="") as f:
    rows = list(csv.reader(f))
  for shard, start in enumerate(range(0, len(rows), shard_size)):
    samples = []
    for i, row in enumerate(rows[start:start + shard_size], start):
      data = images.read_bytes(os.path.join(root, row[0]))
      width, height = images.image_size(data)
      meta = {"clic_row": i, "clic_captions": row[1:], "width": width, "height": height}
      samples.append((f"{i:09d}", {"jpg": data, "txt": row[1].encode(),
                                   "json": json.dumps(meta).encode()}))
    webdataset_source.write_shard(os.path.join(out, f"{shard:05d}.tar"), samples)
  open(os.path.join(out, "done"), "w").close()
  return out


class _Timer:
  """Wall-clock and process CPU seconds (all threads) of a block. On a shared machine the CPU time
  is the robust measure of work; the wall time shows serialization (GIL, waits) too."""

  def __enter__(self):
    self._wall, self._cpu = time.perf_counter(), time.process_time()
    return self

  def __exit__(self, *exc):
    self.wall = time.perf_counter() - self._wall
    self.cpu = time.process_time() - self._cpu


def _pipeline_rate(config, source, num_batches: int) -> tuple[float, float]:
  """(samples per wall second, samples per CPU second). The clock starts before the iterator is
  made, so batches prefetched before the first request are not free."""
  with _Timer() as t:
    it = pipeline.make_train_iterator(config, source=source)
    for _ in range(num_batches):
      next(it)
  it.close()  # stop its reader threads: they would keep prefetching during later measurements
  n = num_batches * config.host_batch_size
  return n / t.wall, n / t.cpu


def _pairs(source, config, num_samples: int) -> list[tuple[int, int]]:
  """(record, partner) id pairs drawn exactly like the pipeline's CLIC samples draw them."""
  index = pipeline.PartnerIndex.from_aspects(source.aspects)
  rng = np.random.default_rng(config.seed)
  ids = rng.permutation(index.usable)
  out = []
  for n in range(num_samples):
    rid = int(ids[n % len(ids)])
    out.append((rid, index.draw_partner(rng, rid, int(source.aspects[rid]))))
  return out


def _decode_resize_rate(source, pairs, image_size, num_threads) -> tuple[float, float]:
  def one(pair):
    for rid in pair:
      aspect = images.ASPECT_CLASSES[int(source.aspects[rid])]
      width, height = images.half_size(aspect, image_size)
      images.resize(images.decode_rgb(source[rid]["image"], (width, height)), width, height)

  with _Timer() as t:
    with concurrent.futures.ThreadPoolExecutor(num_threads) as pool:
      list(pool.map(one, pairs))
  return len(pairs) / t.wall, len(pairs) / t.cpu


def _warm_up(source, config, pairs) -> None:
  """Load the tokenizer vocabulary, tagger and caption code once, outside every timed block."""
  builder = pipeline.SampleBuilder(source, pipeline.PartnerIndex.from_aspects(source.aspects), config)
  for n, (rid, _) in enumerate(pairs):
    builder.finish(builder.raw_sample("clic", rid, np.random.default_rng(n)))


def _text_fraction(source, config, pairs) -> tuple[float, float, float]:
  """(text seconds/sample, whole-sample seconds/sample, fraction), one thread, CPU time."""
  builder = pipeline.SampleBuilder(source, pipeline.PartnerIndex.from_aspects(source.aspects), config)
  records = {rid: source[rid] for pair in pairs for rid in pair}
  builder.tokenize(["warm up"])
  start = time.process_time()
  for n, (rid, pid) in enumerate(pairs):
    a, b = records[rid], records[pid]
    rng = np.random.default_rng(n)
    memo = pipeline.TokenMemo(builder.tokenize)  # as the pipeline: positives tokenized once
    cs = captions.clic_caption_set(
        rng, a["sentences"][0], a["sentences"][1:], builder.first_tags(a), b["sentences"][0],
        b["sentences"][1:], builder.first_tags(b), num_extra=config.num_extra_positives,
        tokenize_fn=memo)
    memo(cs.positives + [cs.negative])
  text = (time.process_time() - start) / len(pairs)
  start = time.process_time()
  for start_n in range(0, len(pairs), config.host_batch_size):
    pipeline.collate([builder.finish(builder.raw_sample("clic", rid, np.random.default_rng(n)))
                      for n, (rid, _) in enumerate(pairs[start_n:start_n + config.host_batch_size],
                                                   start_n)])
  whole = (time.process_time() - start) / len(pairs)
  return text, whole, text / whole


def run(num_images: int = 2000, image_size: int = 224, batch_size: int = 32,
        num_samples: int = 1536, num_threads: int | None = None, cache_dir: str | None = None,
        include_csv: bool = True, seed: int = 0, rounds: int = 2) -> dict:
  num_threads = num_threads or pipeline.default_num_threads()   # the trainer's default, both sides
  cache_dir = cache_dir or os.path.join(tempfile.gettempdir(), "clic_jax_bench_pipeline")
  os.makedirs(cache_dir, exist_ok=True)
  t0 = time.perf_counter()
  csv_path, root = make_dataset(cache_dir, num_images, seed)
  prepared = _prepared(csv_path, root, num_workers=os.cpu_count() or 1)
  shrunk = _prepared(csv_path, root, os.cpu_count() or 1, max_short_side=image_size + 32)
  setup_s = time.perf_counter() - t0
  source = sources.ArrayRecordSource(prepared)
  data = default_config().data     # the trainer's options, CLIC steps only
  config = pipeline.PipelineConfig(
      source=sources.SourceSpec(arrayrecord_dir=prepared), global_batch_size=batch_size,
      image_size=image_size, num_extra_positives=data.num_extra_positives, step_pattern=("clic",),
      mode=data.mode, seed=seed, concat_image_norm=data.concat_image_norm,
      image_dtype=data.image_dtype, context_length=data.context_length,
      pos_backend=data.pos_backend, num_threads=num_threads, prefetch_batches=2 * num_threads)
  num_batches = max(1, num_samples // batch_size)
  pairs = _pairs(source, config, num_batches * batch_size)
  _warm_up(source, config, pairs[:8])
  # Alternate the two measurements and keep the best of each: on a shared machine the load
  # changes during a run, and interleaving exposes both to the same conditions.
  decode_wall = decode_cpu = pipe_wall = pipe_cpu = 0.0
  for _ in range(rounds):
    wall, cpu = _decode_resize_rate(source, pairs, image_size, num_threads)
    decode_wall, decode_cpu = max(decode_wall, wall), max(decode_cpu, cpu)
    wall, cpu = _pipeline_rate(config, source, num_batches)
    pipe_wall, pipe_cpu = max(pipe_wall, wall), max(pipe_cpu, cpu)
  wall, cpu = _pipeline_rate(dataclasses.replace(config, image_dtype="float32"), source,
                             num_batches)
  extra_rates = {"pipeline_float32_samples_per_s": wall, "pipeline_float32_samples_per_cpu_s": cpu}
  shrunk_config = dataclasses.replace(config, source=sources.SourceSpec(arrayrecord_dir=shrunk))
  wall, cpu = _pipeline_rate(shrunk_config, sources.ArrayRecordSource(shrunk), num_batches)
  extra_rates.update({"pipeline_short_side_samples_per_s": wall,
                      "pipeline_short_side_samples_per_cpu_s": cpu,
                      "prepare_max_short_side": image_size + 32})
  text_s, sample_s, fraction = _text_fraction(source, config, pairs[:256])
  result = {
      "pipeline_samples_per_s": pipe_wall,
      "decode_resize_samples_per_s": decode_wall,
      "pipeline_ratio_vs_decode": pipe_wall / decode_wall,
      "pipeline_samples_per_cpu_s": pipe_cpu,
      "decode_resize_samples_per_cpu_s": decode_cpu,
      "pipeline_ratio_vs_decode_cpu": pipe_cpu / decode_cpu,
      "text_fraction": fraction,
      "text_ms_per_sample": 1e3 * text_s,
      "sample_ms_single_thread": 1e3 * sample_s,
      "num_images": num_images, "image_size": image_size, "batch_size": batch_size,
      "num_samples_timed": num_batches * batch_size, "num_threads": num_threads,
      **extra_rates,
      "cpu_count": os.cpu_count(), "setup_s": setup_s, "rounds": rounds,
      "load_average_1min": os.getloadavg()[0],
  }
  if include_csv:
    result.update(_csv_and_webdataset_rates(config, csv_path, root, num_threads, num_batches,
                                            rounds))
  return result


def _csv_and_webdataset_rates(config, csv_path, root, num_threads, num_batches, rounds) -> dict:
  """The pipeline on the CSV + image files and on the same records as webdataset shards, measured
  in alternating rounds (best of each kept), with their ratios."""
  shards = _webdataset_shards(csv_path, root)
  t0 = time.perf_counter()
  opened = {"csv": sources.CsvSource(csv_path, root, num_threads=num_threads)}
  open_s = {"csv": time.perf_counter() - t0}
  t0 = time.perf_counter()
  opened["webdataset"] = sources.WebDatasetSource(shards, num_threads=num_threads)
  open_s["webdataset"] = time.perf_counter() - t0   # index built on the first run, loaded after
  specs = {"csv": sources.SourceSpec(csv=csv_path, image_root=root),
           "webdataset": sources.SourceSpec(webdataset=shards)}
  best = {name: (0.0, 0.0) for name in specs}
  for _ in range(rounds):
    for name, spec in specs.items():
      wall, cpu = _pipeline_rate(dataclasses.replace(config, source=spec), opened[name],
                                 num_batches)
      best[name] = (max(best[name][0], wall), max(best[name][1], cpu))
  out = {}
  for name in specs:
    out[f"{name}_pipeline_samples_per_s"], out[f"{name}_pipeline_samples_per_cpu_s"] = best[name]
    out[f"{name}_source_open_s"] = open_s[name]
  out["webdataset_ratio_vs_csv"] = best["webdataset"][0] / best["csv"][0]
  out["webdataset_ratio_vs_csv_cpu"] = best["webdataset"][1] / best["csv"][1]
  return out


def _table(result: dict) -> str:
  rows = [
      ("full CLIC pipeline (ArrayRecord, uint8 out)", f"{result['pipeline_samples_per_s']:.0f}",
       f"{result['pipeline_samples_per_cpu_s']:.0f}"),
      ("decode + resize only, same 2 images", f"{result['decode_resize_samples_per_s']:.0f}",
       f"{result['decode_resize_samples_per_cpu_s']:.0f}"),
      ("ratio pipeline / decode+resize", f"{result['pipeline_ratio_vs_decode']:.2f}",
       f"{result['pipeline_ratio_vs_decode_cpu']:.2f}"),
  ]
  rows.append(("same, float32 images (normalized on the host)",
               f"{result['pipeline_float32_samples_per_s']:.0f}",
               f"{result['pipeline_float32_samples_per_cpu_s']:.0f}"))
  rows.append((f"same, prepared --max_short_side={result['prepare_max_short_side']}",
               f"{result['pipeline_short_side_samples_per_s']:.0f}",
               f"{result['pipeline_short_side_samples_per_cpu_s']:.0f}"))
  if "csv_pipeline_samples_per_s" in result:
    rows.append(("full CLIC pipeline (CSV + image files)",
                 f"{result['csv_pipeline_samples_per_s']:.0f}",
                 f"{result['csv_pipeline_samples_per_cpu_s']:.0f}"))
    rows.append(("full CLIC pipeline (webdataset shards)",
                 f"{result['webdataset_pipeline_samples_per_s']:.0f}",
                 f"{result['webdataset_pipeline_samples_per_cpu_s']:.0f}"))
    rows.append(("ratio webdataset / CSV", f"{result['webdataset_ratio_vs_csv']:.2f}",
                 f"{result['webdataset_ratio_vs_csv_cpu']:.2f}"))
  rows = [("measure", "samples/s (wall)", "samples per CPU-s")] + rows
  widths = [max(len(r[i]) for r in rows) for i in range(3)]
  lines = ["| " + " | ".join(f"{c:<{w}}" for c, w in zip(r, widths)) + " |" for r in rows]
  lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
  lines.append("")
  rows = [("captions + negative + tokenize share",
           f"{100 * result['text_fraction']:.1f} % ({result['text_ms_per_sample']:.2f} of "
           f"{result['sample_ms_single_thread']:.2f} ms per sample, one thread)")]
  rows.append(("threads / cores / image size / batch",
               f"{result['num_threads']} / {result['cpu_count']} / {result['image_size']} / "
               f"{result['batch_size']}"))
  if "webdataset_source_open_s" in result:
    rows.append(("source open: CSV (image headers) / webdataset (index)",
                 f"{result['csv_source_open_s']:.2f} s / "
                 f"{result['webdataset_source_open_s']:.2f} s"))
  rows.append(("1-min load average during the run", f"{result['load_average_1min']:.1f}"))
  width = max(len(name) for name, _ in rows)
  lines += [f"| {name:<{width}} | {value} |" for name, value in rows]
  return "\n".join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m benchmarks.pipeline", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--num_images", type=int, default=2000)
  parser.add_argument("--image_size", type=int, default=224)
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--num_samples", type=int, default=1536)
  parser.add_argument("--num_threads", type=int, default=None)
  parser.add_argument("--cache_dir", default=None)
  parser.add_argument("--rounds", type=int, default=2, help="alternating rounds, best kept")
  parser.add_argument("--no_csv", action="store_true",
                      help="skip the CSV and webdataset measurements")
  parser.add_argument("--json", default=None, help="write the result dict here")
  args = parser.parse_args(argv)
  result = run(num_images=args.num_images, image_size=args.image_size, batch_size=args.batch_size,
               num_samples=args.num_samples, num_threads=args.num_threads,
               cache_dir=args.cache_dir, include_csv=not args.no_csv, rounds=args.rounds)
  print(_table(result))
  if args.json:
    with open(args.json, "w") as f:
      json.dump(result, f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
