"""From URL lists to training: img2dataset downloads a CogVLM-layout CSV and a PixelProse-shaped
parquet file from a local HTTP server that also serves failures; a tiny model trains on the shards.

The server runs on 127.0.0.1 and serves generated JPEGs and PNGs (each row's image has the row's
colour and size, so a test can tell that an image arrived with its own captions), 404s, HTML pages
where an image should be, transfers cut short, files cut short at the server, and responses slower
than the download timeout. img2dataset itself is real; it runs with one process, so its start-up
(two spawned processes importing it) dominates the cost.
"""
from __future__ import annotations

import csv
import http.server
import io
import json
import os
import tarfile
import threading

import numpy as np
import pytest
from PIL import Image

from clic_jax.data import download, sentences, webdataset_source

STORED_SHORT_SIDE = 32
TIMEOUT_S = 3
_COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30),
            "yellow": (230, 230, 30), "purple": (150, 30, 180), "orange": (250, 140, 20)}
_SIZES = ((64, 40), (40, 64), (48, 48))


def _colour(row: int) -> str:
  return list(_COLOURS)[row % len(_COLOURS)]


def _image(row: int, fmt: str) -> bytes:
  buffer = io.BytesIO()
  Image.new("RGB", _SIZES[row % 3], _COLOURS[_colour(row)]).save(buffer, fmt)
  return buffer.getvalue()


class _Server(http.server.ThreadingHTTPServer):
  daemon_threads = True
  request_queue_size = 128       # img2dataset opens many connections at once


def _handler(release: threading.Event):
  class Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
      pass

    def _send(self, body: bytes, content_type: str, length: int | None = None):
      self.send_response(200)
      self.send_header("Content-Type", content_type)
      self.send_header("Content-Length", str(len(body) if length is None else length))
      self.end_headers()
      self.wfile.write(body)

    def do_GET(self):
      # /<kind>/<row>.<ext>
      kind, name = self.path.strip("/").split("/", 1)
      row, ext = name.split(".")
      image = _image(int(row), "PNG" if ext == "png" else "JPEG")
      try:
        if kind == "ok":
          self._send(image, f"image/{ext}")
        elif kind == "missing":
          self.send_error(404)
        elif kind == "html":
          self._send(b"<html><body>This page moved.</body></html>", "text/html")
        elif kind == "cut_transfer":     # announces the whole file, sends half, hangs up
          self._send(image[:len(image) // 2], f"image/{ext}", length=len(image))
        elif kind == "cut_file":         # a file that is itself cut short at the server
          self._send(image[:len(image) // 2], f"image/{ext}")
        elif kind == "slow":             # answers only after the client has given up
          release.wait(60)
          self._send(image, f"image/{ext}")
      except (BrokenPipeError, ConnectionResetError):
        pass                             # the client timed out or gave up: expected here
  return Handler


@pytest.fixture(scope="module")
def server():
  release = threading.Event()
  httpd = _Server(("127.0.0.1", 0), _handler(release))
  thread = threading.Thread(target=httpd.serve_forever, daemon=True)
  thread.start()
  yield f"http://127.0.0.1:{httpd.server_address[1]}"
  release.set()
  httpd.shutdown()
  httpd.server_close()


# The reasons failed rows must be reported with, by the kind of URL the server gives them.
EXPECTED_REASON = {"missing": "http_404", "html": "decode_error", "cut_transfer": "truncated",
                   "cut_file": "decode_error", "slow": "timeout"}


def _cogvlm_kind(row: int) -> str:
  if row % 20 in (1, 5, 9, 13):
    return {1: "missing", 5: "html", 9: "cut_transfer", 13: "cut_file"}[row % 20]
  # All slow rows in the first shard: its timeouts then overlap instead of adding up per shard.
  return "slow" if row in (17, 37, 57, 77, 97) else "ok"


def _download(out, urls, *extra):
  return download.main([f"--urls={urls}", f"--out={out}", "--processes=1", "--threads=16",
                        f"--timeout={TIMEOUT_S}", f"--image_size={STORED_SHORT_SIDE}", *extra])


def _read_shards(out) -> dict[int, dict]:
  """clic_row -> {"json": meta, "image": bytes, "txt": str}, read with tarfile, independently of
  the source's own index."""
  found = {}
  for name in sorted(os.listdir(out)):
    if not name.endswith(".tar"):
      continue
    members = {}
    with tarfile.open(os.path.join(out, name)) as tar:
      for info in tar:
        key, ext = webdataset_source.split_member_name(info.name)
        members.setdefault(key, {})[ext] = tar.extractfile(info).read()
    for key, member in members.items():
      meta = json.loads(member["json"])
      found[meta["clic_row"]] = {"json": meta, "image": member["jpg"],
                                 "txt": member["txt"].decode(), "key": key}
  return found


def _failures(out) -> dict[int, dict]:
  with open(os.path.join(out, download.FAILURES_FILENAME)) as f:
    return {entry["row"]: entry for entry in map(json.loads, f)}


def _assert_image_of_row(data: bytes, row: int):
  img = Image.open(io.BytesIO(data)).convert("RGB")
  width, height = _SIZES[row % 3]
  assert min(img.size) == STORED_SHORT_SIDE                  # resized to the short side
  assert (img.size[0] >= img.size[1]) == (width >= height)   # aspect kept
  mean = np.asarray(img, np.float32).reshape(-1, 3).mean(0)
  np.testing.assert_allclose(mean, _COLOURS[_colour(row)], atol=12)


# --- the CogVLM-LAION layout: CSV, no header, URL then one sentence per column --------------------

@pytest.fixture(scope="module")
def cogvlm(server, tmp_path_factory):
  root = tmp_path_factory.mktemp("cogvlm")
  captions, kinds = {}, {}
  with open(root / "cogvlm.csv", "w", newline="") as f:
    writer = csv.writer(f)
    for row in range(200):
      kinds[row] = _cogvlm_kind(row)
      colour, ext = _colour(row), ("png" if (row // 3) % 2 else "jpg")
      captions[row] = [f"A {colour} box number {row} on a table", f"The box is {colour}",
                       "It stands alone"]
      if row in (50, 100):
        captions[row] = ["", ""]                 # no caption at all
      if row == 150:
        captions[row] = ["...", "the rest"]      # a first sentence without a word
      writer.writerow([f"{server}/{kinds[row]}/{row}.{ext}", *captions[row]])
  out = root / "shards"
  assert _download(out, root / "cogvlm.csv", "--shard_size=100") == 0
  return out, captions, kinds


def test_cogvlm_csv_every_good_row_arrives_with_its_captions(cogvlm):
  out, captions, kinds = cogvlm
  dropped = {50: "empty_caption", 100: "empty_caption", 150: "first_sentence_without_words"}
  good = [r for r in range(200) if kinds[r] == "ok" and r not in dropped]
  shards = _read_shards(out)
  assert sorted(shards) == good
  for row in good:
    got = shards[row]
    assert got["json"]["clic_captions"] == captions[row]
    assert got["txt"] == captions[row][0]
    _assert_image_of_row(got["image"], row)
  # The training source gives the same records through its index.
  source = webdataset_source.WebDatasetSource(str(out))
  assert len(source) == len(good) and source.report == {}
  by_key = {shards[row]["key"]: row for row in good}
  for i in range(len(source)):
    record = source[i]
    row = by_key[record["id"]]
    assert record["sentences"] == [s.lower() for s in captions[row]]
    assert record["image"] == shards[row]["image"]


def test_cogvlm_csv_every_bad_row_is_reported_with_its_reason(cogvlm):
  out, captions, kinds = cogvlm
  with open(out / download.REPORT_FILENAME) as f:
    report = json.load(f)
  failures = _failures(out)
  dropped = {50: "empty_caption", 100: "empty_caption", 150: "first_sentence_without_words"}
  expected = {r: EXPECTED_REASON[k] for r, k in kinds.items() if k != "ok" and r not in dropped}
  expected.update(dropped)
  assert {r: f["reason"] for r, f in failures.items()} == expected
  assert all(failures[r]["stage"] == "captions" for r in dropped)
  assert report["rows_read"] == 200 and report["dropped_before_download"] == {
      "empty_caption": 2, "first_sentence_without_words": 1}
  assert report["failed"] == {"decode_error": 20, "http_404": 10, "timeout": 5, "truncated": 10}
  assert report["images_written"] == report["samples_in_shards"] == 200 - 3 - 45
  assert report["missing_rows"] == 0 and report["complete"] is True
  assert report["failed_examples"]["http_404"][0]["message"] == "HTTP Error 404: Not Found"


# --- PixelProse: parquet, a long vlm_caption per row, cleaned and split before the download -------

_PIXELPROSE_CAPTIONS = (
    "This image displays a {c} kite flying over a sandy beach. The kite has a long {c} tail "
    "that curls in the wind. Two children are running along the shore below it.",
    "The image shows a {c} bicycle leaning against a brick wall. Its basket holds a loaf of "
    "bread and some flowers.",
    "This image appears to be a {c} teapot on a kitchen counter. Steam rises from its spout "
    "in thin wisps. A cup stands beside it.",
)


def _pixelprose_row(row: int, server: str) -> dict:
  colour = _colour(row)
  caption = _PIXELPROSE_CAPTIONS[row % 3].format(c=colour)
  kind = {7: "missing", 11: "html", 23: "cut_transfer"}.get(row, "ok")
  if row == 5:
    caption = "This image shows a single short scene of a lonely red chair."   # one sentence
  if row == 9:
    caption = "Red. Blue cat. Tiny."                       # no sentence of 4..34 words
  if row == 13:
    caption = None
  return {"uid": f"uid{row}", "url": f"{server}/{kind}/{row}.jpg", "key": f"{row:09d}",
          "status": "success", "original_caption": f"reddit title {row}",
          "vlm_model": "gemini-pro-vision", "vlm_caption": caption, "toxicity": 0.001,
          "watermark_class_id": 1, "aesthetic_score": 5.0, "kind": kind}


@pytest.fixture(scope="module")
def pixelprose(server, tmp_path_factory):
  import pyarrow as pa
  import pyarrow.parquet as pq
  root = tmp_path_factory.mktemp("pixelprose")
  rows = [_pixelprose_row(r, server) for r in range(40)]
  table = pa.Table.from_pylist([{k: v for k, v in r.items() if k != "kind"} for r in rows])
  pq.write_table(table.slice(0, 25), root / "part-00000.parquet")   # PixelProse comes in parts
  pq.write_table(table.slice(25), root / "part-00001.parquet")
  out = root / "shards"
  flags = ("--caption_columns=vlm_caption", "--split_long_captions", "--shard_size=12")
  assert _download(out, root, *flags) == 0
  return out, rows, root, flags


def test_pixelprose_parquet_rows_arrive_cleaned_and_split(pixelprose):
  out, rows, _, _ = pixelprose
  dropped = {5: "one_sentence_only", 9: "no_sentence_of_4_to_34_words", 13: "empty_caption"}
  good = [r for r in range(40) if rows[r]["kind"] == "ok" and r not in dropped]
  shards = _read_shards(out)
  assert sorted(shards) == good
  for row in good:
    want = sentences.split_long_caption(rows[row]["vlm_caption"])
    got = shards[row]["json"]["clic_captions"]
    assert got == want and len(got) >= 2
    # The authors' opening phrases are gone from the first sentence.
    assert got[0] == f"a {_colour(row)} " + ("kite flying over a sandy beach",
                                             "bicycle leaning against a brick wall",
                                             "teapot on a kitchen counter")[row % 3]
    _assert_image_of_row(shards[row]["image"], row)
  failures = _failures(out)
  assert {r: f["reason"] for r, f in failures.items()} == {
      **dropped, 7: "http_404", 11: "decode_error", 23: "truncated"}
  with open(out / download.REPORT_FILENAME) as f:
    report = json.load(f)
  assert report["caption_cleaning"]["opening_phrase_removed"] == 40 - 2   # all but rows 9, 13
  assert report["images_written"] == len(good) and report["complete"]


def test_an_interrupted_download_resumes_its_unfinished_shard_only(pixelprose):
  out, _, urls, flags = pixelprose
  before = _read_shards(out)
  with open(out / download.REPORT_FILENAME) as f:
    report_before = json.load(f)
  # What an interruption in the middle of shard 1 leaves: a partial tar, no stats file.
  os.remove(out / "00001_stats.json")
  with open(out / "00001.tar", "r+b") as f:
    f.truncate(os.path.getsize(out / "00001.tar") // 2)
  kept = {name: os.stat(out / name).st_mtime_ns for name in ("00000.tar", "00002.tar")}
  assert _download(out, urls, *flags) == 0
  assert {name: os.stat(out / name).st_mtime_ns for name in kept} == kept   # not downloaded again
  with open(out / download.REPORT_FILENAME) as f:
    assert json.load(f) == report_before
  after = _read_shards(out)
  assert sorted(after) == sorted(before)
  assert all(after[r]["json"]["clic_captions"] == before[r]["json"]["clic_captions"] for r in after)
  assert len(webdataset_source.WebDatasetSource(str(out))) == len(after)   # stale index rebuilt
  # Other settings in the same directory are refused before anything is downloaded.
  with pytest.raises(SystemExit, match="shard_size"):
    _download(out, urls, *flags[:-1], "--shard_size=5")


# --- training on the downloaded shards ------------------------------------------------------------

def test_tiny_model_trains_on_both_downloads(cogvlm, pixelprose, tmp_path):
  from clic_jax.train import trainer
  from configs import tiny
  config = tiny.get_config()
  config.data.webdataset = f"{cogvlm[0]},{pixelprose[0]}"
  config.total_steps = 4
  config.checkpoint_every_steps = 4
  summary = trainer.train(config, tmp_path)
  with open(tmp_path / "metrics.jsonl") as f:
    rows = [json.loads(line) for line in f]
  assert [r["step"] for r in rows] == [1, 2, 3, 4] and summary["step"] == 4
  assert all(np.isfinite(r["loss"]) for r in rows)
  assert [k for r in rows for k in r if k.startswith("clic/")] and \
         [k for r in rows for k in r if k.startswith("clip/")]
  # Every downloaded record decoded: nothing was resampled.
  resampled = {k: v for k, v in rows[-1].items() if "resampled/" in k and v}
  assert resampled == {}


def test_failure_reasons_from_img2dataset_messages():
  cases = {("failed_to_download", "HTTP Error 503: Service Unavailable"): "http_503",
           ("failed_to_download", "<urlopen error timed out>"): "timeout",
           ("failed_to_download", "The read operation timed out"): "timeout",
           ("failed_to_download", "IncompleteRead(10 bytes read, 5 more expected)"): "truncated",
           ("failed_to_resize", "Image decoding error"): "decode_error",
           ("failed_to_download", "<urlopen error [Errno 111] Connection refused>"):
               "connection_error",
           ("failed_to_download", "unknown url type: 'images/0.jpg'"): "bad_url",
           ("failed_to_download", "Use of image disallowed by X-Robots-Tag directive"):
               "disallowed_by_site",
           ("failed_to_resize", "something new"): "image_error",
           ("failed_to_download", None): "download_error"}
  for (status, message), reason in cases.items():
    assert download.failure_reason(status, message) == reason, message
