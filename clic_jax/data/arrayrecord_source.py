"""ArrayRecord shards written by `python -m clic_jax.data.prepare`: encoded image bytes with their
sentences, tags and aspect class, read at random through grain."""
from __future__ import annotations

import glob
import json
import os
import re
import struct

import numpy as np

_RECORD_MAGIC = b"CLIC1"


def encode_record(meta: dict, image_bytes: bytes) -> bytes:
  """One ArrayRecord record: magic, uint32 JSON length, JSON metadata, encoded image bytes."""
  header = json.dumps(meta, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
  return _RECORD_MAGIC + struct.pack("<I", len(header)) + header + image_bytes


def decode_record(data: bytes) -> tuple[dict, bytes]:
  if data[:len(_RECORD_MAGIC)] != _RECORD_MAGIC:
    raise ValueError("not a clic_jax record (bad magic); was the directory written by prepare?")
  start = len(_RECORD_MAGIC) + 4
  (length,) = struct.unpack("<I", data[len(_RECORD_MAGIC):start])
  return json.loads(data[start:start + length].decode("utf-8")), data[start + length:]


INDEX_FILENAME = "index.json"
ASPECTS_FILENAME = "aspects.npy"


PLAN_FILENAME = "plan.json"     # prepare's settings, with the rows its reader skipped
_META_NAME = re.compile(r"shard-(\d+)-of-(\d+)\.array_record\.meta\.json$")


def _index_from_shard_metas(directory: str) -> tuple[dict, np.ndarray]:
  """(index, aspects) from the shards' .meta.json files, when prepare ran as several work shares
  and no machine has written index.json yet: a complete set of shards is the index."""
  metas = {}
  for path in glob.glob(os.path.join(directory, "shard-*-of-*.array_record.meta.json")):
    match = _META_NAME.search(os.path.basename(path))
    if match:
      metas[(int(match.group(1)), int(match.group(2)))] = path
  counts = {count for _, count in metas}
  if len(counts) != 1:
    raise FileNotFoundError(
        f"{os.path.join(directory, INDEX_FILENAME)!r} not found: {directory!r} is not a finished "
        "prepare output. Run `python -m clic_jax.data.prepare --csv=... --image_root=... "
        "--out=DIR` (re-running it finishes an interrupted job)")
  count = counts.pop()
  missing = [s for s in range(count) if (s, count) not in metas]
  if missing:
    raise FileNotFoundError(
        f"{directory}: {len(missing)} of {count} prepared shards are not written yet (e.g. shard "
        f"{missing[0]}); run prepare for the work shares that write them (--shard_index), or "
        "re-run it to finish")
  shards, aspects = [], []
  report = dict(_read_json(os.path.join(directory, PLAN_FILENAME)).get("csv_report", {}))
  for shard in range(count):
    with open(metas[(shard, count)]) as f:
      meta = json.load(f)
    shards.append({"file": meta["file"], "num_records": meta["num_records"]})
    aspects.extend(meta["aspects"])
    for reason, n in meta["report"].items():
      report[reason] = report.get(reason, 0) + n
  return {"shards": shards, "report": report}, np.asarray(aspects, np.uint8)


def _read_json(path: str) -> dict:
  if not os.path.isfile(path):
    return {}
  with open(path) as f:
    return json.load(f)


class ArrayRecordSource:
  """Shards + index written by `python -m clic_jax.data.prepare`; random access through grain."""

  def __init__(self, directory: str):
    index_path = os.path.join(directory, INDEX_FILENAME)
    if os.path.isfile(index_path):
      with open(index_path) as f:
        index = json.load(f)
      self.aspects = np.load(os.path.join(directory, ASPECTS_FILENAME))
    else:
      index, self.aspects = _index_from_shard_metas(directory)
    import grain
    self.description = f"arrayrecord:{directory}"
    shard_paths = [os.path.join(directory, s["file"]) for s in index["shards"] if s["num_records"]]
    self._records = grain.sources.ArrayRecordDataSource(shard_paths) if shard_paths else []
    if len(self.aspects) != len(self._records):
      raise ValueError(f"{directory}: {ASPECTS_FILENAME} has {len(self.aspects)} entries for "
                       f"{len(self._records)} records; re-run prepare into a fresh directory")
    self.report = dict(index.get("report", {}))

  def __len__(self) -> int:
    return len(self._records)

  def __getitem__(self, index: int) -> dict:
    meta, image_bytes = decode_record(self._records[index])
    tags = meta.get("tags")
    return {"image": image_bytes, "sentences": meta["sentences"],
            "tags": [None if t is None else [tuple(wp) for wp in t] for t in tags] if tags else None,
            "aspect": meta["aspect"], "id": meta.get("id", str(index)), "path": meta.get("path", "")}
