"""Where training records come from: one table maps a source kind to its reader.

Each reader is its own module (csv_source, arrayrecord_source, tfds_source, webdataset_source) and
gives records as clic_jax.data.records describes them. A new format is one new module, its
SourceSpec field(s) and one line in SOURCE_KINDS.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

from clic_jax.data.arrayrecord_source import ArrayRecordSource
from clic_jax.data.csv_source import CsvSource
from clic_jax.data.tfds_source import TfdsSource
from clic_jax.data.webdataset_source import WebDatasetSource


@dataclasses.dataclass(frozen=True)
class SourceSpec:
  """Where the records come from: the fields of exactly one kind of SOURCE_KINDS are set."""
  csv: str | None = None
  image_root: str | None = None
  arrayrecord_dir: str | None = None
  tfds_name: str | None = None
  tfds_data_dir: str | None = None
  tfds_builder_dir: str | None = None
  tfds_split: str = "train"
  tfds_image_key: str = "image"
  tfds_caption_key: str | None = None
  webdataset: str | None = None     # shard directories, globs or .tar files, comma-separated

  def __post_init__(self):
    chosen = [name for name, kind in SOURCE_KINDS.items() if kind.selected(self)]
    if len(chosen) != 1:
      raise ValueError("give exactly one data source: csv (with image_root), arrayrecord_dir, "
                       "webdataset, or tfds_name / tfds_builder_dir (config.data.<field> when "
                       f"training); got {chosen or 'none'}")

  @property
  def kind(self) -> str:
    return next(name for name, kind in SOURCE_KINDS.items() if kind.selected(self))


@dataclasses.dataclass(frozen=True)
class SourceKind:
  selected: Callable[[SourceSpec], bool]     # the spec names a source of this kind
  open: Callable[[SourceSpec, int], Any]     # (spec, header-reading threads) -> the source


# A new format: its reader, its SourceSpec field(s) and one line here.
SOURCE_KINDS: dict[str, SourceKind] = {
    "csv": SourceKind(lambda spec: bool(spec.csv),
                      lambda spec, threads: CsvSource(spec.csv, spec.image_root,
                                                      num_threads=threads)),
    "arrayrecord": SourceKind(lambda spec: bool(spec.arrayrecord_dir),
                              lambda spec, threads: ArrayRecordSource(spec.arrayrecord_dir)),
    "tfds": SourceKind(lambda spec: bool(spec.tfds_name or spec.tfds_builder_dir),
                       lambda spec, threads: TfdsSource(
                           spec.tfds_name, data_dir=spec.tfds_data_dir,
                           builder_dir=spec.tfds_builder_dir, split=spec.tfds_split,
                           image_key=spec.tfds_image_key, caption_key=spec.tfds_caption_key,
                           num_threads=threads)),
    "webdataset": SourceKind(lambda spec: bool(spec.webdataset),
                             lambda spec, threads: WebDatasetSource(spec.webdataset,
                                                                    num_threads=threads)),
}


def open_source(spec: SourceSpec, *, num_threads: int = 16):
  return SOURCE_KINDS[spec.kind].open(spec, num_threads)
