"""Look at what training will see: concatenated pairs with their caption variants and negatives.

  python -m clic_jax.data.preview --csv=FILE [--image_root=DIR] [--num=N] [--seed=S] --out=DIR
  python -m clic_jax.data.preview --arrayrecord_dir=DIR --out=DIR
  python -m clic_jax.data.preview --webdataset=SHARD_DIR --out=DIR

Writes
  DIR/preview.png    contact sheet: each concatenated image (un-normalized) with p1..pP under it and
                     the hard negative marked "NEG" in red;
  DIR/samples.json   [{positives (p1 first), negative, single_caption, sources (indexed record
                     first), layout ("side_by_side" | "stacked")}, ...];
  DIR/stats.json     records skipped when the source was opened, and per-sample resamples and
                     caption fallbacks, by reason.
The samples are built by the training pipeline's own SampleBuilder, so they are exactly the kind of
sample a CLIC step trains on.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from clic_jax import modes
from clic_jax.data import pipeline, sources
from clic_jax.data import stats as stats_lib

TILE_TEXT_LINES = 14
COLUMNS = 4


def build_samples(config: pipeline.PipelineConfig, num: int, source=None, tokenize_fn=None):
  """num CLIC samples (RawSample) from distinct records drawn with config.seed, plus the source.

  tokenize_fn: the model's tokenizer, as the trainer passes it (RunSpec.tokenize_fn; None: CLIP
  BPE); the negative check compares token rows, so it decides which samples exist."""
  if source is None:
    source = sources.open_source(config.source, num_threads=config.num_threads or 16)
  index = pipeline.PartnerIndex.from_aspects(source.aspects)
  pipeline.check_usable(source, index, config)
  builder = pipeline.SampleBuilder(source, index, config, tokenize_fn)
  order = np.random.default_rng(config.seed).permutation(index.usable)
  samples = []
  for n in range(num):
    record_id = int(order[n % len(order)])
    samples.append(builder.raw_sample("clic", record_id, np.random.default_rng([config.seed, n])))
  return samples, source


def sample_json(raw: pipeline.RawSample) -> dict:
  return {"positives": raw.texts[:-1], "negative": raw.texts[-1],
          "single_caption": raw.single_caption, "sources": raw.sources, "layout": raw.layout}


def _font(size: int):
  try:
    return ImageFont.load_default(size=size)
  except TypeError:  # Pillow built without FreeType
    return ImageFont.load_default()


def contact_sheet(samples, tile: int = 256) -> Image.Image:
  font = _font(11)
  line_height = 13
  chars_per_line = max(20, tile // 6)
  text_height = TILE_TEXT_LINES * line_height + 6
  columns = min(COLUMNS, max(1, len(samples)))
  rows = -(-len(samples) // columns)
  sheet = Image.new("RGB", (columns * (tile + 8), rows * (tile + text_height + 8)), "white")
  draw = ImageDraw.Draw(sheet)
  for n, raw in enumerate(samples):
    x = (n % columns) * (tile + 8) + 4
    y = (n // columns) * (tile + text_height + 8) + 4
    sheet.paste(Image.fromarray(raw.pixels).resize((tile, tile), Image.Resampling.BICUBIC), (x, y))
    lines = []
    for i, text in enumerate(raw.texts[:-1]):
      lines += [(line, "black") for line in textwrap.wrap(f"p{i + 1}: {text}", chars_per_line)]
    lines += [(line, "red") for line in textwrap.wrap(f"NEG: {raw.texts[-1]}", chars_per_line)]
    if len(lines) > TILE_TEXT_LINES:
      lines = lines[:TILE_TEXT_LINES - 1] + [("...", "gray")] + [lines[-1]]
    for k, (line, color) in enumerate(lines):
      draw.text((x, y + tile + 3 + k * line_height), line, fill=color, font=font)
  return sheet


def parse_args(argv=None):
  parser = argparse.ArgumentParser(
      prog="python -m clic_jax.data.preview",
      description="Write a contact sheet, samples.json and stats.json of CLIC training samples.")
  parser.add_argument("--config", help="a training config (configs/*.py): its data source, model "
                      "image size, extra positives and seed are used unless given below")
  group = parser.add_mutually_exclusive_group()
  group.add_argument("--csv", help="reference-format CSV (image path, first sentence, extras...)")
  group.add_argument("--arrayrecord_dir", help="output directory of clic_jax.data.prepare")
  group.add_argument("--tfds_builder_dir", help="TFDS dataset version directory (ArrayRecord)")
  group.add_argument("--webdataset", help="webdataset shards: the download's DIR, globs or .tar "
                                          "files, comma-separated")
  parser.add_argument("--image_root", default=None, help="directory relative CSV paths start in")
  parser.add_argument("--out", required=True, help="output directory")
  parser.add_argument("--num", type=int, default=16, help="number of samples")
  parser.add_argument("--seed", type=int, default=None, help="default: the config's")
  parser.add_argument("--image_size", type=int, default=None, help="default: the config model's")
  parser.add_argument("--num_extra_positives", type=int, default=None,
                      help="default: the config's")
  parser.add_argument("--pos_backend", default=None, choices=("auto", "spacy", "lexicon"))
  args = parser.parse_args(argv)
  _fill_from_config(args)
  if not (args.csv or args.arrayrecord_dir or args.tfds_builder_dir or args.webdataset):
    parser.error("give a source: --csv, --arrayrecord_dir, --webdataset or --tfds_builder_dir (or "
                 "a --config whose data.csv / data.arrayrecord_dir / data.webdataset is set)")
  return args


def _fill_from_config(args) -> None:
  """The fields the command line left unset, from a training config file (default_config()
  without one, where every default is written)."""
  from clic_jax.models import get_model_config
  from clic_jax.train.config import default_config
  config = default_config()
  if args.config:
    import importlib.util
    spec = importlib.util.spec_from_file_location("preview_config", args.config)
    if spec is None or not os.path.isfile(args.config):
      raise SystemExit(f"error: --config={args.config!r} is not a config file")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
  data = config.data
  if not (args.csv or args.arrayrecord_dir or args.tfds_builder_dir or args.webdataset):
    args.csv = data.csv or None
    args.arrayrecord_dir = None if args.csv else (data.arrayrecord_dir or None)
    args.webdataset = None if args.csv or args.arrayrecord_dir else (data.webdataset or None)
    args.image_root = args.image_root or data.image_root or None
  defaults = dict(seed=config.seed, num_extra_positives=data.num_extra_positives,
                  pos_backend=data.pos_backend,
                  image_size=get_model_config(config.model.name).vision.image_size)
  for key, value in defaults.items():
    if getattr(args, key) is None:
      setattr(args, key, value)
  # Not on the command line: as the config trains.
  args.concat_image_norm, args.context_length = data.concat_image_norm, data.context_length
  args.image_dtype = data.image_dtype
  args.model_name = config.model.name


def main(argv=None) -> int:
  from clic_jax import model_tokenizer
  from clic_jax.models import image_normalization
  args = parse_args(argv)
  if args.num < 1:
    print("error: --num must be >= 1", file=sys.stderr)
    return 2
  try:
    spec = sources.SourceSpec(csv=args.csv, image_root=args.image_root,
                              arrayrecord_dir=args.arrayrecord_dir,
                              tfds_builder_dir=args.tfds_builder_dir, webdataset=args.webdataset)
    config = pipeline.PipelineConfig(
        source=spec, global_batch_size=1, image_size=args.image_size,
        num_extra_positives=args.num_extra_positives, step_pattern=(modes.HARD_STEP,),
        mode="clic", seed=args.seed, concat_image_norm=args.concat_image_norm,
        image_dtype=args.image_dtype, context_length=args.context_length,
        pos_backend=args.pos_backend,
        single_image_norm=image_normalization(args.model_name))
    samples, source = build_samples(
        config, args.num, tokenize_fn=model_tokenizer.tokenize_fn(args.model_name,
                                                                  args.context_length))
  except (pipeline.DataError, FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  os.makedirs(args.out, exist_ok=True)
  contact_sheet(samples).save(os.path.join(args.out, "preview.png"))
  with open(os.path.join(args.out, "samples.json"), "w") as f:
    json.dump([sample_json(s) for s in samples], f, indent=1, ensure_ascii=False)
  stats = {"source": source.description, "num_records": len(source),
           "skipped_when_opened": stats_lib.nonzero(source.report),
           "per_sample": stats_lib.nonzero(stats_lib.sum_counts(s.counts for s in samples)),
           "num_samples": len(samples)}
  with open(os.path.join(args.out, "stats.json"), "w") as f:
    json.dump(stats, f, indent=1)
  print(f"wrote {len(samples)} samples to {args.out}/preview.png, samples.json, stats.json")
  return 0


if __name__ == "__main__":
  sys.exit(main())
