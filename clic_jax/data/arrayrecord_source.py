"""ArrayRecord shards written by `python -m clic_jax.data.prepare`: encoded image bytes with their
sentences, tags and aspect class, read at random through grain."""
from __future__ import annotations

import json
import os
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


class ArrayRecordSource:
  """Shards + index written by `python -m clic_jax.data.prepare`; random access through grain."""

  def __init__(self, directory: str):
    index_path = os.path.join(directory, INDEX_FILENAME)
    if not os.path.isfile(index_path):
      raise FileNotFoundError(
          f"{index_path!r} not found: {directory!r} is not a finished prepare output. Run "
          "`python -m clic_jax.data.prepare --csv=... --image_root=... --out=DIR` (re-running it "
          "finishes an interrupted job)")
    import grain
    with open(index_path) as f:
      index = json.load(f)
    self.description = f"arrayrecord:{directory}"
    shard_paths = [os.path.join(directory, s["file"]) for s in index["shards"] if s["num_records"]]
    self._records = grain.sources.ArrayRecordDataSource(shard_paths) if shard_paths else []
    self.aspects = np.load(os.path.join(directory, ASPECTS_FILENAME))
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
