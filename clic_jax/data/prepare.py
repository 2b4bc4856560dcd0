"""CSV + image folder, or webdataset shards -> ArrayRecord shards that the training pipeline reads
with random access.

  python -m clic_jax.data.prepare --csv=FILE --image_root=DIR --out=DIR \
      [--split_long_captions] [--num_workers=N] [--shard_size=N] [--pos_backend=auto]
  python -m clic_jax.data.prepare --webdataset=DOWNLOAD_DIR --out=DIR [...]
  ... [--shard_index=K|auto --num_shards=N]     # one of N machines sharing the job

What it does once, so training does not repeat it every epoch:
- optional sentence splitting of a raw [image, long caption] CSV like the reference's dataset
  script (docs/method.md, "Sentence splitting"); without the flag the CSV is already in the
  reference format (docs/method.md, "Dataset format");
- part-of-speech tags of each first sentence (the only sentence hard negatives edit), unless the
  CSV's `.pos.jsonl` sidecar already has them;
- image sizes from file headers (no decode) -> aspect class; the encoded bytes are stored as is,
  or, with --max_short_side=N, larger images are re-encoded with their shorter side N (training
  then decodes and resizes far fewer pixels; the aspect class still comes from the original).

Output: shard-NNNNN-of-MMMMM.array_record (+ .meta.json each), index.json (shards and counts),
aspects.npy (uint8 aspect class per record, the partner index without reading images) and
report.json (rows and images skipped, by reason). Shards are written by a process pool; each is
written under a temporary name and renamed, and its .meta.json is renamed last, so a re-run after an
interruption writes exactly the shards whose .meta.json is missing.

Many machines: with --shard_index=K --num_shards=N (or --shard_index=auto under a scheduler) a
machine writes the output shards s with s % N == K into the shared --out directory. Every machine
reads the same input and plans the same shards, so the parts are disjoint and together complete;
the machine that finds every shard's .meta.json written writes index.json, and the ArrayRecord
source reads a complete set of .meta.json files without it, so no merge step is needed.
"""
from __future__ import annotations

import argparse
import collections
import concurrent.futures
import dataclasses
import io
import json
import multiprocessing
import os
import socket
import sys

import numpy as np

from clic_jax.data import arrayrecord_source, csv_source, images, records, work_shares

PLAN_FILENAME = arrayrecord_source.PLAN_FILENAME
REPORT_FILENAME = "report.json"


def shard_name(shard: int, num_shards: int) -> str:
  return f"shard-{shard:05d}-of-{num_shards:05d}.array_record"


def _split_fn():
  from clic_jax.data import sentences

  def split(text):
    found = sentences.split_long_caption(text)
    return found if sentences.keep_row(found) else []

  return split


@dataclasses.dataclass
class ShardJob:
  shard: int
  num_shards: int
  rows: list            # csv_source.CsvRow / webdataset_source.TarRow: row, id, path, sentences,
                        # tags, image_bytes(image_root)
  image_root: str | None
  out: str
  pos_backend: str
  max_short_side: int = 0


_TAGGERS = {}


def _tagger(backend: str):
  if backend not in _TAGGERS:
    from clic_jax.data import pos_tagging
    _TAGGERS[backend] = pos_tagging.get_tagger(backend)
  return _TAGGERS[backend]


def shrink_image(data: bytes, short_side: int) -> bytes:
  """Re-encode with the shorter side reduced to short_side (bicubic, JPEG quality 95). Decoding
  a stored image is then several times cheaper at train time; the aspect class keeps using the
  original size. Raises images.ImageError for images that do not decode (truncated, corrupt)."""
  img = images.decode_rgb(data)
  width, height = img.size
  scale = short_side / min(width, height)
  img = images.resize(img, max(1, round(width * scale)), max(1, round(height * scale)))
  buffer = io.BytesIO()
  img.save(buffer, "JPEG", quality=95)
  return buffer.getvalue()


def write_shard(job: ShardJob) -> dict:
  """Write one shard (temp name, then rename) and its .meta.json; returns the meta dict."""
  from array_record.python.array_record_module import ArrayRecordWriter
  name = shard_name(job.shard, job.num_shards)
  final = os.path.join(job.out, name)
  report = collections.Counter()
  num_resized = 0
  kept = []
  for row in job.rows:
    if not records.has_words(row.sentences[0]):
      report["unusable_caption"] += 1
      continue
    try:
      data = row.image_bytes(job.image_root)
      width, height = images.image_size(data)
      if job.max_short_side and min(width, height) > job.max_short_side:
        data = shrink_image(data, job.max_short_side)
        num_resized += 1
    except images.ImageError as e:
      report[e.reason] += 1
      continue
    kept.append((row, data, width, height))
  untagged = [i for i, (row, *_rest) in enumerate(kept) if not (row.tags and row.tags[0])]
  first_tags = {}
  if untagged:
    tagged = _tagger(job.pos_backend).tag_many([kept[i][0].sentences[0] for i in untagged])
    first_tags = dict(zip(untagged, tagged))
  aspects = []
  tmp = final + ".tmp"
  writer = ArrayRecordWriter(tmp, "group_size:1")  # group size 1: cheap random access.
  for i, (row, data, width, height) in enumerate(kept):
    tags = row.tags or [None] * len(row.sentences)
    if i in first_tags:
      tags = [[list(wp) for wp in first_tags[i]]] + list(tags[1:])
    aspect = images.aspect_class(width, height)
    meta = {"id": row.id, "path": row.path, "width": width, "height": height,
            "aspect": aspect, "sentences": row.sentences,
            "tags": [None if t is None else [list(wp) for wp in t] for t in tags]}
    writer.write(arrayrecord_source.encode_record(meta, data))
    aspects.append(records.aspect_code(aspect))
  writer.close()
  os.replace(tmp, final)
  meta = {"file": name, "num_records": len(kept), "aspects": aspects, "report": dict(report),
          "num_rows": len(job.rows), "num_resized": num_resized}
  meta_path = final + ".meta.json"
  with open(meta_path + ".tmp", "w") as f:
    json.dump(meta, f)
  os.replace(meta_path + ".tmp", meta_path)
  return meta


def _input_plan(args) -> dict:
  if args.webdataset:
    from clic_jax.data import webdataset_source
    tars = webdataset_source.shard_files(args.webdataset)
    return {"webdataset": tars, "webdataset_bytes": sum(os.path.getsize(t) for t in tars)}
  return {"csv": os.path.abspath(args.csv), "csv_bytes": os.stat(args.csv).st_size}


def _plan(args, num_rows: int, csv_report: dict) -> dict:
  # Not the work share: every machine of a shared job writes (and checks) the same plan.
  return {**_input_plan(args),
          "image_root": os.path.abspath(args.image_root) if args.image_root else None,
          "split_long_captions": bool(args.split_long_captions), "shard_size": args.shard_size,
          "max_short_side": args.max_short_side,
          "num_rows": num_rows, "num_shards": max(1, -(-num_rows // args.shard_size)),
          "csv_report": csv_report}


def _check_or_write_plan(out: str, plan: dict) -> None:
  path = os.path.join(out, PLAN_FILENAME)
  if os.path.exists(path):
    with open(path) as f:
      old = json.load(f)
    if old != plan:
      changed = sorted(k for k in plan if old.get(k) != plan[k])
      raise SystemExit(f"error: {out} holds a prepare job with different settings ({changed}); "
                       "re-run with the same flags to finish it, or use a fresh --out directory")
    return
  _write_json(path, plan)


def _write_json(path: str, content) -> None:
  # Machines of a shared job may write the same file at once: each through its own temporary name.
  tmp = f"{path}.{socket.gethostname()}.{os.getpid()}.tmp"
  with open(tmp, "w") as f:
    json.dump(content, f, indent=1)
  os.replace(tmp, path)


def _read_rows(args) -> tuple[list, dict]:
  """(rows, report of rows skipped while reading) of the --csv or --webdataset input."""
  if args.webdataset:
    from clic_jax.data import webdataset_source
    source = webdataset_source.WebDatasetSource(args.webdataset)
    # Records the index found unusable are already in the source's report, by reason.
    rows = [source.row(i) for i in np.flatnonzero(source.aspects != records.UNUSABLE)]
    source.close()
    return rows, source.report
  return csv_source.read_reference_csv(
      args.csv, split_fn=_split_fn() if args.split_long_captions else None)


def prepare(args) -> dict:
  """Run (or finish) a prepare job; returns the report dict (also written to report.json)."""
  if args.image_root and not os.path.isdir(args.image_root):
    raise SystemExit(f"error: --image_root {args.image_root!r} is not a directory")
  if args.shard_size < 1:
    raise SystemExit("error: --shard_size must be >= 1")
  if bool(args.csv) == bool(args.webdataset):
    raise SystemExit("error: give exactly one input: --csv (with --image_root) or --webdataset")
  if args.webdataset and args.split_long_captions:
    raise SystemExit("error: --split_long_captions applies to --csv; the download splits captions "
                     "before the images are fetched (its --split_long_captions)")
  try:
    part, num_parts = work_shares.resolve(args.shard_index, args.num_shards)
  except ValueError as e:
    raise SystemExit(f"error: {e}") from None
  os.makedirs(args.out, exist_ok=True)
  try:
    rows, csv_report = _read_rows(args)
  except FileNotFoundError as e:
    raise SystemExit(f"error: {e}") from None
  plan = _plan(args, len(rows), csv_report)
  _check_or_write_plan(args.out, plan)
  num_shards = plan["num_shards"]
  jobs = []
  for shard in range(part, num_shards, num_parts):
    if not os.path.exists(_meta_path(args.out, shard, num_shards)):
      chunk = rows[shard * args.shard_size:(shard + 1) * args.shard_size]
      jobs.append(ShardJob(shard, num_shards, chunk, args.image_root, args.out, args.pos_backend,
                           args.max_short_side))
  _run_jobs(jobs, args.num_workers, total_rows=sum(len(j.rows) for j in jobs))
  missing = [s for s in range(num_shards)
             if not os.path.exists(_meta_path(args.out, s, num_shards))]
  if missing:   # other machines' parts are not written yet: the last one to finish writes the index
    return {"work_share": part, "num_work_shares": num_parts, "num_shards": num_shards,
            "shards_written_by_this_share": len(range(part, num_shards, num_parts)),
            "shards_still_missing": len(missing)}
  return _finish(args.out, plan, num_shards)


def _meta_path(out: str, shard: int, num_shards: int) -> str:
  return os.path.join(out, shard_name(shard, num_shards) + ".meta.json")


def _run_jobs(jobs: list[ShardJob], num_workers: int, total_rows: int) -> None:
  import tqdm
  bar = tqdm.tqdm(total=total_rows, desc="prepare", unit="row", file=sys.stderr,
                  disable=total_rows == 0)
  if num_workers <= 1 or len(jobs) <= 1:
    for job in jobs:
      write_shard(job)
      bar.update(len(job.rows))
  else:
    # spawn: safe even when the caller has threads (jax, grain); workers import only PIL/numpy.
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(num_workers, mp_context=context) as pool:
      futures = {pool.submit(write_shard, job): job for job in jobs}
      for future in concurrent.futures.as_completed(futures):
        future.result()
        bar.update(len(futures[future].rows))
  bar.close()


def _finish(out: str, plan: dict, num_shards: int) -> dict:
  shards, aspects = [], []
  skipped = collections.Counter(plan["csv_report"])
  num_resized = 0
  for shard in range(num_shards):
    with open(_meta_path(out, shard, num_shards)) as f:
      meta = json.load(f)
    shards.append({"file": meta["file"], "num_records": meta["num_records"]})
    aspects.extend(meta["aspects"])
    skipped.update(meta["report"])
    num_resized += meta.get("num_resized", 0)
  aspects = np.asarray(aspects, np.uint8)
  np.save(os.path.join(out, arrayrecord_source.ASPECTS_FILENAME), aspects)
  report = {"rows_read": plan["num_rows"] + sum(plan["csv_report"].values()),
            "records_written": int(len(aspects)), "num_shards": num_shards,
            "aspect_counts": {name: int((aspects == i).sum())
                              for i, name in enumerate(images.ASPECT_CLASSES)},
            "images_resized": num_resized, "skipped": dict(sorted(skipped.items()))}
  index = {"num_records": int(len(aspects)), "shards": shards, "report": report["skipped"]}
  for name, content in ((REPORT_FILENAME, report), (arrayrecord_source.INDEX_FILENAME, index)):
    _write_json(os.path.join(out, name), content)
  return report


def parse_args(argv=None):
  parser = argparse.ArgumentParser(
      prog="python -m clic_jax.data.prepare",
      description="Write ArrayRecord shards (images, sentences, POS tags, aspect index) from a "
                  "reference-format CSV or webdataset shards. Re-running with the same flags "
                  "finishes an interrupted job.")
  parser.add_argument("--csv", default=None, help="CSV: image path, first sentence, extras...")
  parser.add_argument("--webdataset", default=None,
                      help="instead of --csv: webdataset shards (the download's DIR, globs or "
                           ".tar files, comma-separated)")
  parser.add_argument("--image_root", default=None, help="directory relative image paths start in")
  parser.add_argument("--out", required=True, help="output directory")
  parser.add_argument("--split_long_captions", action="store_true",
                      help="CSV is [image, long caption]: split into sentences like the "
                           "reference's dataset script")
  parser.add_argument("--num_workers", type=int, default=os.cpu_count() or 1,
                      help="worker processes (default: all cores)")
  parser.add_argument("--shard_size", type=int, default=10_000, help="rows per shard")
  parser.add_argument("--max_short_side", type=int, default=0,
                      help="re-encode images whose shorter side is larger than this (e.g. 256 for "
                           "224-px training) so training decodes less; 0 keeps the original bytes")
  parser.add_argument("--pos_backend", default="auto", choices=("auto", "spacy", "lexicon"),
                      help="tagger for first sentences without sidecar tags")
  work_shares.add_flags(parser, "the output shards (shard %% num_shards == shard_index)")
  return parser.parse_args(argv)


def main(argv=None) -> int:
  args = parse_args(argv)
  report = prepare(args)
  print(json.dumps(report, indent=1))
  return 0


if __name__ == "__main__":
  sys.exit(main())
