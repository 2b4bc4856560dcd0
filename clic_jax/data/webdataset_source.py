"""webdataset tar shards (what img2dataset and `python -m clic_jax.data.download` write), read at
random through an index of the tar members, so shuffling, partner draws and exact resume work on
them exactly as on the CSV.

A shard is a plain tar whose members are grouped into samples by key: `KEY.jpg` (or .png, .webp,
...) the image, `KEY.json` its metadata, `KEY.txt` a caption. The sentences of a sample are the
JSON's `clic_captions` list (written by the download: first sentence, extra sentences), else the
`.txt` caption as the only sentence, else the JSON's `caption`. The aspect class comes from the
JSON's `width`/`height` (img2dataset writes the stored image's size), else from the image header.

The index of `NAME.tar` is `NAME.tar.index.npz` beside it: per sample the key and the byte offset
and size of its image, JSON and text members, and its aspect code; it also records the tar's size
and modification time and is rebuilt when they change. Building it reads the tar headers and the
small JSON/text members once; a directory that cannot be written keeps the index in memory. A tar
cut short (an interrupted copy) is indexed up to its last complete member and counted
("truncated_shard"); one that is no tar at all is counted ("unreadable_shard") and holds nothing.
"""
from __future__ import annotations

import collections
import concurrent.futures
import glob
import io
import json
import logging
import os
import posixpath
import tarfile
import threading

import numpy as np

from clic_jax.data import images, records

INDEX_SUFFIX = ".index.npz"
_INDEX_VERSION = 1
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")
CAPTIONS_FIELD = "clic_captions"
_NO_MEMBER = (-1, 0)

log = logging.getLogger(__name__)


def shard_files(spec: str) -> list[str]:
  """A comma list of directories (their *.tar), globs and .tar files -> tar paths, each item's
  files sorted, duplicates dropped."""
  tars = []
  for item in (s.strip() for s in spec.split(",")):
    if not item:
      continue
    if os.path.isdir(item):
      found = sorted(glob.glob(os.path.join(item, "*.tar")))
    elif glob.has_magic(item):
      found = sorted(f for f in glob.glob(item) if f.endswith(".tar"))
    else:
      found = [item] if os.path.isfile(item) and item.endswith(".tar") else []
    if not found:
      raise FileNotFoundError(
          f"no webdataset .tar shards at {item!r}; give the output directory of `python -m "
          "clic_jax.data.download` (or of img2dataset with --output_format=webdataset), a glob "
          "or .tar files, comma-separated (compressed .tar.gz shards cannot be read at random)")
    tars.extend(os.path.abspath(f) for f in found)
  if not tars:
    raise FileNotFoundError("no webdataset shards given")
  return list(dict.fromkeys(tars))


def split_member_name(name: str) -> tuple[str, str]:
  """webdataset's rule: the key is the path up to the first '.' of the file name, the rest the
  extension ('a/b.seg.png' -> ('a/b', 'seg.png'))."""
  directory, base = posixpath.split(name)
  stem, dot, ext = base.partition(".")
  return posixpath.join(directory, stem) if directory else stem, ext.lower() if dot else ""


def sentences_of(meta: dict | None, text: bytes | None) -> list[str]:
  """A sample's sentences, lowercased (the record contract, records.py)."""
  if isinstance(meta, dict) and isinstance(meta.get(CAPTIONS_FIELD), list):
    return records.clean_sentences(meta[CAPTIONS_FIELD])
  if text is not None:
    return records.clean_sentences([text])
  if isinstance(meta, dict) and isinstance(meta.get("caption"), str):
    return records.clean_sentences([meta["caption"]])
  return []


def _parse_json(data: bytes | None) -> dict | None:
  if data is None:
    return None
  try:
    meta = json.loads(data)
  except (ValueError, UnicodeDecodeError):
    return None
  return meta if isinstance(meta, dict) else None


def _pread(fd: int, member) -> bytes | None:
  offset, size = int(member[0]), int(member[1])
  return None if offset < 0 else os.pread(fd, size, offset)


# -- the index of one shard ------------------------------------------------------------------------

class ShardIndex:
  """Arrays over the samples of one tar, in tar order."""

  FIELDS = ("keys", "image_ext", "image", "meta", "text", "aspects")

  def __init__(self, keys, image_ext, image, meta, text, aspects, report):
    self.keys = np.asarray(keys, dtype=str)
    self.image_ext = np.asarray(image_ext, dtype=str)
    self.image = np.asarray(image, np.int64).reshape(-1, 2)   # (offset, size) of the image member
    self.meta = np.asarray(meta, np.int64).reshape(-1, 2)     # of KEY.json; (-1, 0) if none
    self.text = np.asarray(text, np.int64).reshape(-1, 2)     # of KEY.txt; (-1, 0) if none
    self.aspects = np.asarray(aspects, np.uint8)
    self.report = dict(report)

  def __len__(self) -> int:
    return len(self.keys)


def _signature(tar_path: str) -> np.ndarray:
  stat = os.stat(tar_path)
  return np.array([_INDEX_VERSION, stat.st_size, stat.st_mtime_ns], np.int64)


def load_or_build_index(tar_path: str) -> ShardIndex:
  """The shard's index from NAME.tar.index.npz when it matches the tar, else built (and saved)."""
  signature = _signature(tar_path)
  cached = _load_index(tar_path + INDEX_SUFFIX, signature)
  if cached is not None:
    return cached
  index = build_index(tar_path)
  _save_index(tar_path + INDEX_SUFFIX, index, signature)
  return index


def _load_index(path: str, signature: np.ndarray) -> ShardIndex | None:
  try:
    with np.load(path) as data:
      if not np.array_equal(data["signature"], signature):
        return None
      return ShardIndex(*(data[f] for f in ShardIndex.FIELDS),
                        report=json.loads(str(data["report"])))
  except (OSError, KeyError, ValueError):   # missing, stale layout or damaged: rebuild
    return None


def _save_index(path: str, index: ShardIndex, signature: np.ndarray) -> None:
  tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
  try:
    with open(tmp, "wb") as f:
      np.savez(f, signature=signature, report=json.dumps(index.report),
               **{field: getattr(index, field) for field in ShardIndex.FIELDS})
    os.replace(tmp, path)
  except OSError as e:   # a read-only dataset directory: the index lives in memory this time
    log.info("could not save the shard index %s (%s); it is rebuilt on the next open", path, e)
    if os.path.exists(tmp):
      os.remove(tmp)


def build_index(tar_path: str) -> ShardIndex:
  """Scan the tar's member headers, group members by key, read each sample's JSON/text once."""
  report = collections.Counter()
  members: dict[str, dict[str, tuple[int, int]]] = {}
  file_size = os.path.getsize(tar_path)
  with open(tar_path, "rb") as f:
    try:
      with tarfile.open(fileobj=f, mode="r:") as tar:
        for info in tar:
          if not info.isfile():
            continue
          if info.offset_data + info.size > file_size:
            report["truncated_shard"] += 1
            break
          key, ext = split_member_name(info.name)
          members.setdefault(key, {})[ext] = (info.offset_data, info.size)
    except (tarfile.TarError, EOFError) as e:
      # Cut short or damaged: keep the members before the damage and count the shard, so one bad
      # file among many does not stop a run (no usable record at all does, in the pipeline).
      report["truncated_shard" if members else "unreadable_shard"] += 1
      log.warning("%s: %s after %d samples; indexed up to there", tar_path, e, len(members))
    fd = f.fileno()
    rows = []
    for key, found in members.items():
      ext = next((e for e in IMAGE_EXTENSIONS if e in found), None)
      if ext is None:
        report["no_image_member"] += 1
        continue
      meta_member, text_member = found.get("json", _NO_MEMBER), found.get("txt", _NO_MEMBER)
      meta = _parse_json(_pread(fd, meta_member))
      if meta_member[0] >= 0 and meta is None:
        report["bad_json_member"] += 1
      found_sentences = sentences_of(meta, _pread(fd, text_member))
      if not found_sentences or not records.has_words(found_sentences[0]):
        report["unusable_caption"] += 1
        code = records.UNUSABLE
      else:
        code = _aspect_code(fd, meta, found[ext], report)
      rows.append((key, ext, found[ext], meta_member, text_member, code))
  if not rows:
    return ShardIndex([], [], [], [], [], [], report)
  keys, exts, image, meta, text, codes = zip(*rows)
  return ShardIndex(keys, exts, image, meta, text, codes, report)


def _aspect_code(fd: int, meta: dict | None, image_member, report) -> int:
  width, height = (meta or {}).get("width"), (meta or {}).get("height")
  if not (isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0):
    try:   # not from img2dataset: read the size from the image header
      width, height = images.image_size(_pread(fd, image_member))
    except images.ImageError as e:
      report[e.reason] += 1
      return records.UNUSABLE
  return records.aspect_code(images.aspect_class(width, height))


# -- the source ------------------------------------------------------------------------------------

class WebDatasetSource:
  """webdataset shards as a record source (records.py): len, [i], aspects, report."""

  def __init__(self, spec: str, *, num_threads: int = 16):
    self.description = f"webdataset:{spec}"
    self.tars = shard_files(spec)
    with concurrent.futures.ThreadPoolExecutor(max(1, min(num_threads, len(self.tars)))) as pool:
      indexes = list(pool.map(load_or_build_index, self.tars))
    report = collections.Counter()
    for index in indexes:
      report.update(index.report)
    self.report = dict(report)
    self._shard = np.concatenate([np.full(len(ix), s, np.int32) for s, ix in enumerate(indexes)])
    for field in ShardIndex.FIELDS:
      setattr(self, "_" + field, np.concatenate([getattr(ix, field) for ix in indexes]))
    self.aspects = self._aspects
    self._fds: dict[int, int] = {}
    self._lock = threading.Lock()

  def __len__(self) -> int:
    return len(self._keys)

  def _fd(self, shard: int) -> int:
    fd = self._fds.get(shard)
    if fd is None:
      with self._lock:
        fd = self._fds.get(shard)
        if fd is None:
          fd = self._fds[shard] = os.open(self.tars[shard], os.O_RDONLY)
    return fd

  def _sentences(self, fd: int, index: int) -> list[str]:
    return sentences_of(_parse_json(_pread(fd, self._meta[index])), _pread(fd, self._text[index]))

  def _path(self, shard: int, index: int) -> str:
    """The image member as a path: the tar's path, then the member's name."""
    return f"{self.tars[shard]}/{self._keys[index]}.{self._image_ext[index]}"

  def __getitem__(self, index: int) -> dict:
    shard = int(self._shard[index])
    fd = self._fd(shard)   # os.pread keeps no file position: reader threads share the descriptor
    return {"image": _pread(fd, self._image[index]), "sentences": self._sentences(fd, index),
            "tags": None, "aspect": records.aspect_name(self.aspects[index]),
            "id": str(self._keys[index]), "path": self._path(shard, index)}

  def row(self, index: int) -> "TarRow":
    """The record as prepare reads it: sentences now, the image bytes when its worker asks."""
    shard = int(self._shard[index])
    offset, size = (int(v) for v in self._image[index])
    return TarRow(index, self._path(shard, index), self._sentences(self._fd(shard), index),
                  self.tars[shard], offset, size, str(self._keys[index]))

  # Open descriptors do not travel to grain's worker processes; each process opens its own.
  def __getstate__(self):
    state = dict(self.__dict__)
    state["_fds"], state["_lock"] = {}, None
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._lock = threading.Lock()

  def close(self) -> None:
    for fd in self._fds.values():
      os.close(fd)
    self._fds = {}

  def __del__(self):
    try:
      self.close()
    except Exception:   # interpreter shutdown: os may be gone already
      pass


class TarRow:
  """One sample for `prepare` (the fields of csv_source.CsvRow it reads), image read on demand."""

  def __init__(self, row, path, sentences, tar, offset, size, key):
    self.row, self.path, self.sentences, self.tags = row, path, sentences, None
    self.tar, self.offset, self.size, self.id = tar, offset, size, key

  def image_bytes(self, image_root=None) -> bytes:
    with open(self.tar, "rb") as f:
      return images.read_bytes(os.pread(f.fileno(), self.size, self.offset))


def write_shard(path: str, samples) -> None:
  """A webdataset tar of (key, {extension: bytes}) samples, in the layout img2dataset writes
  (tests and benchmarks make shards with it; written under a temporary name, then renamed)."""
  with tarfile.open(path + ".tmp", "w") as tar:
    for key, members in samples:
      for ext, data in members.items():
        info = tarfile.TarInfo(f"{key}.{ext}")
        info.size = len(data)
        info.mode = 0o444
        tar.addfile(info, io.BytesIO(data))
  os.replace(path + ".tmp", path)
