"""A URL list -> webdataset shards with each row's captions, through img2dataset.

  python -m clic_jax.data.download --urls=FILES --out=DIR [--split_long_captions] \
      [--key_column=url] [--caption_columns=vlm_caption] [--image_size=256] \
      [--processes=N] [--threads=64] [--timeout=10] [--retries=0] [--shard_size=10000] \
      [--distributor=multiprocessing|pyspark] [--spark_master=spark://HOST:7077]

Input (clic_jax/data/url_tables.py): the CogVLM-LAION CSV (no header: URL, then one sentence a
column), PixelProse parquet files (`--caption_columns=vlm_caption --split_long_captions`), the CSV
that `python -m clic_jax.data.caption_prep` writes, or any CSV/parquet with a URL column and caption
columns; several files as a comma list, a directory or a glob. With --split_long_captions the rows
are cleaned and split as the authors' dataset script does (clic_jax/data/caption_prep.py) before
anything is downloaded, so rows it drops cost no download.

Output in DIR:
- img2dataset's webdataset shards NNNNN.tar: KEY.jpg (re-encoded JPEG, shorter side at most
  --image_size), KEY.txt (the first sentence) and KEY.json (img2dataset's metadata plus `clic_row`,
  the row number in the input, and `clic_captions`, the row's sentences), with img2dataset's
  NNNNN.parquet (a status and error message for every row of the shard) and NNNNN_stats.json;
- NNNNN.tar.index.npz: the member index random access reads (webdataset_source.py);
- report.json: rows read, rows dropped before the download (by reason), images written, failed
  URLs by reason (http_404, timeout, truncated, decode_error, ...) with examples, and rows missing
  (a shard that never finished);
- failures.jsonl: every input row that did not become an image, one JSON object a line
  (row, url, stage "captions" | "download", reason, message);
- _clic_input/: the URL list img2dataset reads (urls.parquet), the job's settings (plan.json), and
  the caption stage's report.
Training reads DIR with `--config.data.webdataset=DIR`.

Resuming: run the same command again. img2dataset skips every shard whose NNNNN_stats.json exists
and redoes the others from the start (a shard is written in one go, so a half-written one is
replaced); the URL list is written once, so the shards hold the same rows on every run. A failed URL
stays failed (its shard is done); to retry failures, download the failed rows into a new DIR.

Many machines: `--distributor=pyspark` runs img2dataset's own Spark mode (one Spark task per shard)
on the session `--spark_master` names, with DIR on storage all workers see (README, "Training on the
paper's data").

Differences from the authors' download script: images are re-encoded as JPEG with the shorter
side at most --image_size (0: full size); transparent pixels are composited over white by
img2dataset (the authors' RGBA resize turns fully transparent pixels black); img2dataset honours
X-Robots-Tag noai/noindex headers (counted as disallowed_by_site).
"""
from __future__ import annotations

import collections
import contextlib
import json
import math
import os
import signal
import sys

from clic_jax.data import caption_prep, url_tables, webdataset_source

INPUT_DIR = "_clic_input"
URLS_FILENAME = "urls.parquet"
PLAN_FILENAME = "plan.json"
CAPTIONS_REPORT_FILENAME = "captions_report.json"
DROPPED_FILENAME = "dropped.jsonl"
REPORT_FILENAME = "report.json"
FAILURES_FILENAME = "failures.jsonl"
SHARD_DIGITS = 5          # img2dataset's oom_shard_count: shard names 00000 .. 99999
ROW_FIELD = "clic_row"
FIRST_FIELD = "clic_first"
EXAMPLES_PER_REASON = 3

# img2dataset's error messages -> our reasons. Its messages are str(exception) of urllib (HTTP
# status, timeouts, connections), http.client (IncompleteRead: the body ended before its announced
# length) and its resizer ("Image decoding error": OpenCV could not decode the bytes, e.g. an HTML
# page, a corrupt file or a file cut at the server).
_MESSAGE_REASONS = (
    ("timed out", "timeout"),
    ("IncompleteRead", "truncated"),
    ("Image decoding error", "decode_error"),
    ("unknown url type", "bad_url"),
    ("no host given", "bad_url"),
    ("X-Robots-Tag", "disallowed_by_site"),
    ("hash mismatch", "hash_mismatch"),
    ("image too small", "image_too_small"),
    ("image area too large", "image_too_large"),
    ("aspect ratio too large", "aspect_ratio_too_large"),
    ("CERTIFICATE", "ssl_error"),
    ("SSL", "ssl_error"),
    ("urlopen error", "connection_error"),
    ("Remote end closed", "connection_error"),
    ("Connection reset", "connection_error"),
)


def failure_reason(status: str | None, message: str | None) -> str:
  """The report's reason for one failed row of img2dataset's per-shard parquet."""
  message = message or ""
  if message.startswith("HTTP Error "):
    code = message[len("HTTP Error "):].split(":")[0].strip()
    return f"http_{code}" if code.isdigit() else "http_error"
  for needle, reason in _MESSAGE_REASONS:
    if needle.lower() in message.lower():
      return reason
  return "image_error" if status == "failed_to_resize" else "download_error"


def shard_name(shard: int) -> str:
  return f"{shard:0{SHARD_DIGITS}d}"


# -- the URL list img2dataset reads --------------------------------------------------------------

def _plan(args, files: list[str]) -> dict:
  return {"urls": [os.path.abspath(f) for f in files],
          "url_bytes": [os.path.getsize(f) for f in files],
          "key_column": args.key_column, "caption_columns": args.caption_columns,
          "split_long_captions": args.split_long_captions, "shard_size": args.shard_size,
          "image_size": args.image_size}


def _check_plan(input_dir: str, plan: dict) -> bool:
  """True when a finished URL list of this plan exists; raises when another job's is there. A
  plan without its URL list is from an attempt that stopped before downloading: it is replaced."""
  path = os.path.join(input_dir, PLAN_FILENAME)
  if not (os.path.exists(path) and os.path.exists(os.path.join(input_dir, URLS_FILENAME))):
    return False
  with open(path) as f:
    old = json.load(f)
  if old != plan:
    changed = sorted(k for k in plan if old.get(k) != plan[k])
    raise SystemExit(f"error: {os.path.dirname(input_dir)} holds a download with other settings "
                     f"({changed}); re-run with the same flags to finish it, or use a new --out")
  return True


def write_url_list(args, files: list[str], input_dir: str) -> None:
  """Read the input tables, prepare the captions, write urls.parquet (row, url, sentences) and the
  caption stage's report; urls.parquet is renamed into place last, so it exists only complete."""
  import pyarrow as pa
  import pyarrow.parquet as pq
  table_report = collections.Counter()
  tally = caption_prep.Tally(table_report, keep_dropped=True)
  rows = url_tables.read_rows(files, key_column=args.key_column,
                              caption_columns=caption_prep.caption_columns(args.caption_columns),
                              report=table_report)
  schema = pa.schema([("url", pa.string()), (ROW_FIELD, pa.int64()), (FIRST_FIELD, pa.string()),
                      (webdataset_source.CAPTIONS_FIELD, pa.list_(pa.string()))])
  tmp = os.path.join(input_dir, URLS_FILENAME + ".tmp")
  with pq.ParquetWriter(tmp, schema) as writer:
    batch = []

    def flush():
      if batch:
        writer.write_table(pa.Table.from_pylist(batch, schema))
        batch.clear()

    for row, found in caption_prep.prepare_rows(rows, split_long=args.split_long_captions,
                                                tally=tally):
      batch.append({"url": row.key, ROW_FIELD: row.row, FIRST_FIELD: found[0],
                    webdataset_source.CAPTIONS_FIELD: found})
      if len(batch) >= 10_000:
        flush()
    flush()
  _write_json(os.path.join(input_dir, CAPTIONS_REPORT_FILENAME), tally.as_dict())
  with open(os.path.join(input_dir, DROPPED_FILENAME), "w", encoding="utf-8") as f:
    for row, key, reason in tally.dropped_rows:
      f.write(json.dumps({"row": row, "url": key, "stage": "captions", "reason": reason},
                         ensure_ascii=False) + "\n")
  os.replace(tmp, os.path.join(input_dir, URLS_FILENAME))


# -- img2dataset -----------------------------------------------------------------------------------

@contextlib.contextmanager
def _spark_session(master: str | None):
  """The active Spark session img2dataset's pyspark distributor picks up (it makes a local one
  when none is active)."""
  if not master:
    yield
    return
  from pyspark.sql import SparkSession
  spark = SparkSession.builder.master(master).appName("clic_jax.download").getOrCreate()
  try:
    yield
  finally:
    spark.stop()


def run_img2dataset(args, urls_path: str) -> None:
  # albumentations (an img2dataset dependency) asks the network for updates at import; the spawned
  # workers inherit the setting.
  os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
  try:
    import img2dataset
  except ImportError:
    raise SystemExit("error: the download needs img2dataset: pip install -e '.[download]' "
                     "(or pip install -r requirements-download.txt)") from None
  # img2dataset installs its own SIGINT handler, which exits with status 0 without a word: say
  # what happened and fail instead, and put the previous handler back afterwards.
  previous = signal.getsignal(signal.SIGINT)
  try:
    with _spark_session(args.spark_master if args.distributor == "pyspark" else None):
      img2dataset.download(
          url_list=urls_path, input_format="parquet", url_col="url", caption_col=FIRST_FIELD,
          save_additional_columns=[ROW_FIELD, webdataset_source.CAPTIONS_FIELD],
          output_folder=args.out, output_format="webdataset",
          image_size=args.image_size or 256, resize_mode="keep_ratio" if args.image_size else "no",
          resize_only_if_bigger=True, encode_quality=args.encode_quality,
          processes_count=args.processes, thread_count=args.threads, timeout=args.timeout,
          retries=args.retries, number_sample_per_shard=args.shard_size,
          oom_shard_count=SHARD_DIGITS, extract_exif=False, incremental_mode="incremental",
          distributor=args.distributor, enable_wandb=False)
  except SystemExit:
    raise SystemExit("error: download interrupted; re-run the same command to resume it") from None
  finally:
    signal.signal(signal.SIGINT, previous)


# -- the report ------------------------------------------------------------------------------------

def collect(out: str, urls_path: str, shard_size: int) -> tuple[dict, list[dict]]:
  """(report counts, one failure dict per failed row) from img2dataset's per-shard files,
  checked against the URL list so that a row no shard accounts for is counted as missing."""
  import pyarrow.parquet as pq
  urls = pq.read_table(urls_path, columns=["url", ROW_FIELD]).to_pydict()
  num_shards = max(1, math.ceil(len(urls["url"]) / shard_size))
  written, failed, examples, failures = 0, collections.Counter(), collections.defaultdict(list), []
  unfinished, seen = [], set()
  for shard in range(num_shards):
    base = os.path.join(out, shard_name(shard))
    if not (os.path.exists(base + "_stats.json") and os.path.exists(base + ".parquet")):
      unfinished.append(shard)
      continue
    table = pq.read_table(base + ".parquet",
                          columns=[ROW_FIELD, "url", "status", "error_message"]).to_pydict()
    for row, url, status, message in zip(table[ROW_FIELD], table["url"], table["status"],
                                         table["error_message"]):
      seen.add(row)
      if status == "success":
        written += 1
        continue
      reason = failure_reason(status, message)
      failed[reason] += 1
      if len(examples[reason]) < EXAMPLES_PER_REASON:
        examples[reason].append({"row": row, "url": url, "message": message})
      failures.append({"row": row, "url": url, "stage": "download", "reason": reason,
                       "message": message})
  missing = [(row, url) for row, url in zip(urls[ROW_FIELD], urls["url"]) if row not in seen]
  failures += [{"row": row, "url": url, "stage": "download", "reason": "missing",
                "message": "its shard did not finish"} for row, url in missing]
  report = {"urls_to_download": len(urls["url"]), "images_written": written,
            "failed": dict(sorted(failed.items())),
            "failed_examples": dict(sorted(examples.items())),
            "missing_rows": len(missing), "num_shards": num_shards,
            "unfinished_shards": unfinished}
  return report, failures


def _write_json(path: str, content) -> None:
  with open(path + ".tmp", "w") as f:
    json.dump(content, f, indent=1, ensure_ascii=False)
  os.replace(path + ".tmp", path)


def _index_shards(out: str, num_shards: int, unfinished: list[int]) -> int:
  """Build every finished shard's member index now (training then opens the shards at once);
  returns the number of samples the indexes hold."""
  import concurrent.futures
  tars = [os.path.join(out, shard_name(s) + ".tar") for s in range(num_shards)
          if s not in unfinished]
  with concurrent.futures.ThreadPoolExecutor(min(8, max(1, len(tars)))) as pool:
    return sum(len(ix) for ix in pool.map(webdataset_source.load_or_build_index, tars))


def download(args) -> dict:
  """Run (or finish) a download; returns the report (also written to DIR/report.json)."""
  if args.shard_size < 1 or args.processes < 1 or args.threads < 1 or args.timeout <= 0:
    raise SystemExit("error: --shard_size, --processes, --threads and --timeout must be positive")
  try:
    files = url_tables.input_files(args.urls)
  except url_tables.TableError as e:
    raise SystemExit(f"error: {e}") from None
  input_dir = os.path.join(args.out, INPUT_DIR)
  os.makedirs(input_dir, exist_ok=True)
  plan = _plan(args, files)
  urls_path = os.path.join(input_dir, URLS_FILENAME)
  if not _check_plan(input_dir, plan):
    _write_json(os.path.join(input_dir, PLAN_FILENAME), plan)
    try:
      write_url_list(args, files, input_dir)
    except url_tables.TableError as e:
      raise SystemExit(f"error: {e}") from None
  # img2dataset reads every DIR/*.json as NNNNN_stats.json (its shard number before the "_"); our
  # report would stop it, and it is rewritten below anyway.
  report_path = os.path.join(args.out, REPORT_FILENAME)
  if os.path.exists(report_path):
    os.remove(report_path)
  run_img2dataset(args, urls_path)

  counts, failures = collect(args.out, urls_path, args.shard_size)
  with open(os.path.join(input_dir, CAPTIONS_REPORT_FILENAME)) as f:
    captions = json.load(f)
  with open(os.path.join(input_dir, DROPPED_FILENAME), encoding="utf-8") as f:
    failures += [json.loads(line) for line in f]
  failures.sort(key=lambda entry: entry["row"])
  with open(os.path.join(args.out, FAILURES_FILENAME + ".tmp"), "w", encoding="utf-8") as f:
    for entry in failures:
      f.write(json.dumps(entry, ensure_ascii=False) + "\n")
  os.replace(os.path.join(args.out, FAILURES_FILENAME + ".tmp"),
             os.path.join(args.out, FAILURES_FILENAME))
  report = {"input": plan["urls"], "rows_read": captions["rows_read"],
            "dropped_before_download": captions["dropped"],
            "caption_cleaning": captions["cleaning"],
            **counts,
            "samples_in_shards": _index_shards(args.out, counts["num_shards"],
                                               counts["unfinished_shards"]),
            "complete": not counts["unfinished_shards"] and not counts["missing_rows"]}
  _write_json(report_path, report)
  return report


def parse_args(argv=None):
  parser = caption_prep.table_parser(
      "python -m clic_jax.data.download",
      "Download a URL list with captions into webdataset shards (img2dataset). Re-running the "
      "same command finishes an interrupted download.",
      ("--urls", "CSV / CSV.gz / parquet URL list(s): comma list, directory or glob"),
      ("--out", "output directory (shards + report.json)"))
  parser.add_argument("--image_size", type=int, default=256,
                      help="shorter side of the stored images at most this (0: keep full size)")
  parser.add_argument("--encode_quality", type=int, default=95, help="JPEG quality")
  parser.add_argument("--processes", type=int, default=os.cpu_count() or 1,
                      help="download processes (each downloads one shard at a time)")
  parser.add_argument("--threads", type=int, default=64, help="download threads per process")
  parser.add_argument("--timeout", type=float, default=10,
                      help="seconds a connection may wait for the server (each socket operation)")
  parser.add_argument("--retries", type=int, default=0, help="retries of a failed URL")
  parser.add_argument("--shard_size", type=int, default=10_000, help="rows per shard")
  parser.add_argument("--distributor", default="multiprocessing",
                      choices=("multiprocessing", "pyspark"),
                      help="img2dataset's distributor; pyspark for many machines")
  parser.add_argument("--spark_master", default=None,
                      help="with --distributor=pyspark: the Spark master URL (spark://HOST:7077, "
                           "yarn, ...); default: an active session, else local[processes]")
  return parser.parse_args(argv)


def main(argv=None) -> int:
  args = parse_args(argv)
  report = download(args)
  print(json.dumps({k: v for k, v in report.items() if k != "failed_examples"}, indent=1))
  if not report["complete"]:
    print(f"error: {report['missing_rows']} rows were not downloaded (shards "
          f"{report['unfinished_shards']} did not finish); re-run the same command to finish "
          "them", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
