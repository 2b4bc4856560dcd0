"""The grain training pipeline: deterministic, resumable batches of CLIC / CLIP / NegCLIP steps.

Dataset graph (all random access until the last steps, so grain's iterator state is exact):

  usable record ids (partner index: ids by aspect class)
    -> [process_index::process_count]        host slice (equal sizes on every host)
    -> shuffle(seed) -> repeat(num_epochs)   reshuffled every epoch
    -> (position, record id)                 position p belongs to step p // host_batch
    -> random_map(SampleBuilder)             rng fixed by (seed, host, position): partner, coin
                                             flips, caption variants are reproducible
    -> to_iter_dataset(threads) -> batch     one batch per step, its kind from the step pattern
       (with mp_prefetch workers: batch -> to_iter_dataset -> mp_prefetch, see make_train_dataset)

A sample builds only the view its step needs (docs/method.md, "Alternating steps"). Step t has kind
pattern[t % len(pattern)], so position p of the host stream is built as kind
pattern[(p // host_batch) % len(pattern)], and batch t holds exactly positions [t*B, (t+1)*B):
every sample of a batch has the batch's kind. A kind is a row of modes.STEP_KINDS: its image view
(a glued pair or the single image) and its caption builder are read from there.

Batches (numpy):
  CLIC    {"kind": "clic", "images": f32 (B,S,S,3), "texts": i32 (B,P+1,L),
           "negative_valid": bool (B,), "image_norm": "clip"|"imagenet", "stats": {name: i64}}
          texts[:, :P] are the positives p1..pP (p1, p2 = swapped order, then the extra pairs) and
          texts[:, P] the hard negative; negative_valid is False where no swap gave a negative
          unlike every positive (the loss may mask it).
  Baseline {"kind": "baseline", as CLIC but the single view and p2 = p1 (docs/method.md,
           "Training variants")}
  CLIP    {"kind": "clip", "images": f32 (B,S,S,3), "texts": i32 (B,1,L), "image_norm", "stats"}
  NegCLIP {"kind": "negclip", "images": single view, "texts": i32 (B,2,L) [caption, negative],
           "negative_valid", "image_norm", "stats"}
With image_dtype="uint8" the images are uint8 and the consumer normalizes them on device with
images.normalization_constants(batch["image_norm"]).
Bad records never stop the pipeline: the sample is rebuilt from another record drawn from the
same rng and the reason is counted in "stats".
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import logging
import os
from typing import Any, Callable, Sequence

import numpy as np

from clic_jax import modes
from clic_jax.data import images, records, sources
from clic_jax.data import stats as stats_lib


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
  """Everything the training pipeline needs; the trainer makes it from its run spec.

  The options the training config also has carry no default here: default_config() writes them.
  """
  source: sources.SourceSpec
  global_batch_size: int
  image_size: int
  num_extra_positives: int
  step_pattern: tuple[str, ...]     # written with modes.HARD_STEP / modes.CLIP_STEP_NAME
  # See docs/method.md, "Training variants" (mode) and "Concatenated image" (concat_image_norm).
  mode: str                         # a key of modes.MODES
  seed: int
  concat_image_norm: str            # "clip" | "imagenet" (reference)
  image_dtype: str                  # "uint8": images left unnormalized, batch["image_norm"] names
                                    # the statistics (images.normalization_constants) for the device
  context_length: int
  pos_backend: str                  # tagger for records without stored tags
  process_index: int = 0
  process_count: int = 1
  num_epochs: int | None = None     # None: repeat forever
  num_threads: int | None = None    # grain reader threads (PIL releases the GIL); None: one per
                                    # core. With mp_workers: threads per worker, each builds a batch
  prefetch_batches: int | None = None  # batches read ahead (default 2)
  mp_workers: int = 0               # >0: grain mp_prefetch worker processes
  max_resample_tries: int = 100
  single_image_norm: str = "clip"   # the model's own (models.image_normalization): CLIPA "imagenet"

  def __post_init__(self):
    modes.mode(self.mode).pattern(self.step_pattern)   # fails early on an unknown mode or kind
    if self.image_size <= 0 or self.image_size % 2:
      raise ValueError(
          f"image_size must be a positive even number (two halves), got {self.image_size}")
    if self.process_count < 1 or not 0 <= self.process_index < self.process_count:
      raise ValueError(f"process_index {self.process_index} is not in [0, {self.process_count})")
    if self.global_batch_size % self.process_count:
      raise ValueError(f"global_batch_size {self.global_batch_size} is not divisible by "
                       f"process_count {self.process_count}")
    if self.global_batch_size < self.process_count:
      raise ValueError("global_batch_size must be at least one sample per host")
    if self.num_extra_positives < 0:
      raise ValueError("num_extra_positives must be >= 0")
    if self.image_dtype not in ("float32", "uint8"):
      raise ValueError(f"image_dtype must be 'float32' or 'uint8', got {self.image_dtype!r}")
    images.normalization_constants(self.concat_image_norm)  # fails early on an unknown name
    images.normalization_constants(self.single_image_norm)

  @property
  def host_batch_size(self) -> int:
    return self.global_batch_size // self.process_count

  @property
  def pattern(self) -> tuple[modes.StepKind, ...]:
    return modes.mode(self.mode).pattern(self.step_pattern)

  def kind_of_step(self, step: int) -> modes.StepKind:
    return self.pattern[step % len(self.pattern)]


class DataError(RuntimeError):
  """The dataset has no usable records (or too few for CLIC pairs)."""


@dataclasses.dataclass
class RawSample:
  """A sample before normalization and tokenization (also what the preview shows)."""
  kind: str
  pixels: np.ndarray                   # uint8 (S, S, 3)
  texts: list[str]                     # positives..., negative last (CLIC / NegCLIP); [c1] (CLIP)
  sources: list[str]                   # image paths / ids, the indexed record first
  layout: str                          # "side_by_side" | "stacked" | "single"
  single_caption: str
  counts: collections.Counter
  negative_valid: bool | None = None   # steps with a negative: False where no swap gave one
                                       # unlike every positive
  tokens: np.ndarray | None = None     # int32 (len(texts), L) when already computed


@dataclasses.dataclass(frozen=True)
class PartnerIndex:
  """Usable record ids grouped by aspect class; built from source.aspects, no image is opened."""
  usable: np.ndarray                   # int64 ids of usable records, ascending
  by_class: tuple[np.ndarray, ...]     # per aspect code: ids of that class, ascending

  @classmethod
  def from_aspects(cls, aspects: np.ndarray) -> "PartnerIndex":
    aspects = np.asarray(aspects)
    usable = np.flatnonzero(aspects != records.UNUSABLE)
    by_class = tuple(np.flatnonzero(aspects == code) for code in range(len(images.ASPECT_CLASSES)))
    return cls(usable, by_class)

  def draw_partner(self, rng: np.random.Generator, record_id: int, code: int) -> int | None:
    """A uniformly drawn id of the same class other than record_id; None if there is none."""
    ids = self.by_class[code]
    if len(ids) < 2:
      return None
    k = int(rng.integers(len(ids) - 1))
    # Draw among the n-1 others: the slot of record_id itself stands for the last id.
    return int(ids[-1]) if ids[k] == record_id else int(ids[k])


def _source_summary(source) -> str:
  report = stats_lib.nonzero(getattr(source, "report", {}))
  return f"{getattr(source, 'description', type(source).__name__)} ({len(source)} records; " \
         f"skipped/unusable when opened: {report or 'none'})"


class SampleBuilder:
  """Builds one sample of a given kind from a record id and a numpy Generator (grain random_map).

  Thread-safe and picklable (the tokenizer and tagger are created lazily in each process).
  """

  def __init__(self, source, index: PartnerIndex, config: PipelineConfig,
               tokenize_fn: Callable[[Sequence[str]], np.ndarray] | None = None):
    self.source = source
    self.index = index
    self.config = config
    self._tokenize_fn = tokenize_fn
    self._aspects = np.asarray(source.aspects)

  # -- text helpers ------------------------------------------------------------------------------

  def tokenize(self, texts: Sequence[str]) -> np.ndarray:
    if self._tokenize_fn is None:
      from clic_jax import tokenizer
      self._tokenize_fn = functools.partial(tokenizer.tokenize,
                                            context_length=self.config.context_length)
    return self._tokenize_fn(list(texts))

  def first_tags(self, record: dict):
    """Stored tags of the first sentence (prepare, sidecar), else tagged now (cached per text)."""
    tags = record.get("tags")
    if tags and tags[0] is not None:
      return list(tags[0])
    return list(_tag_cached(self.config.pos_backend, record["sentences"][0]))

  # -- record loading ----------------------------------------------------------------------------

  def _load(self, record_id: int, min_size) -> tuple[dict, Any]:
    """(record, RGB image); raises images.ImageError or _Unusable."""
    record = self.source[record_id]
    if not record["sentences"] or not records.has_words(record["sentences"][0]):
      raise _Unusable("unusable_caption")
    return record, images.decode_rgb(record["image"], min_size)

  def _draw_replacement(self, rng: np.random.Generator) -> int:
    usable = self.index.usable
    return int(usable[rng.integers(len(usable))])

  def _retrying(self, rng, record_id, counts, build):
    """Run build(record_id) until it succeeds, replacing bad records deterministically."""
    for _ in range(self.config.max_resample_tries):
      try:
        return build(record_id)
      except images.ImageError as e:
        counts[stats_lib.RESAMPLE_PREFIX + e.reason] += 1
      except _Unusable as e:
        counts[stats_lib.RESAMPLE_PREFIX + e.reason] += 1
      record_id = self._draw_replacement(rng)
    raise DataError(
        f"no usable record found in {self.config.max_resample_tries} attempts (reasons: "
        f"{stats_lib.nonzero(counts)}); the data seems unusable: {_source_summary(self.source)}")

  # -- one sample: the image view and the caption set of its step kind (modes.STEP_KINDS) ----------

  def raw_sample(self, kind: str | modes.StepKind, record_id: int,
                 rng: np.random.Generator) -> RawSample:
    counts = collections.Counter()
    build = functools.partial(self._sample, kind=modes.step_kind(kind), rng=rng, counts=counts)
    return self._retrying(rng, record_id, counts, build)

  def _sample(self, record_id: int, *, kind: modes.StepKind, rng, counts) -> RawSample:
    view = self._pair_view if kind.image == modes.PAIR else self._single_view
    record, partner, pixels, layout = view(record_id, rng, counts)
    paths = [record["path"]] + ([partner["path"]] if partner else [])
    if kind.captions is None:
      # The raw first sentence, no period, no partner (docs/method.md, "Caption variants").
      first = record["sentences"][0]
      return RawSample(kind.name, pixels, [first], paths, layout, first, counts)
    caption_set, memo = self._caption_set(kind, rng, record, partner)
    counts.update({stats_lib.CAPTION_PREFIX + k: v for k, v in caption_set.counters.items()})
    texts = list(caption_set.positives) + [caption_set.negative]
    return RawSample(kind.name, pixels, texts, paths, layout, caption_set.single_caption, counts,
                     caption_set.negative_is_valid, memo(texts))

  def _single_view(self, record_id: int, rng, counts):
    """(record, no partner, CLIP's evaluation view, layout) (docs/method.md, "Single image")."""
    size = self.config.image_size
    record, img = self._load(record_id, (size, size))
    return record, None, images.clip_val_view(img, size), "single"

  def _pair_view(self, record_id: int, rng, counts):
    """(record, partner, the two images glued, layout) (docs/method.md, "Concatenated image")."""
    size = self.config.image_size
    code = int(self._aspects[record_id])
    aspect = images.ASPECT_CLASSES[code]
    half = images.half_size(aspect, size)
    record, img = self._load(record_id, half)
    for _ in range(self.config.max_resample_tries):
      partner_id = self.index.draw_partner(rng, record_id, code)
      if partner_id is None:
        raise _Unusable("no_partner")
      try:
        partner, partner_img = self._load(partner_id, half)
        break
      except images.ImageError as e:
        counts[stats_lib.PARTNER_PREFIX + e.reason] += 1
      except _Unusable:  # excluded by the index already; kept for sources without a text check.
        counts[stats_lib.PARTNER_PREFIX + "unusable_caption"] += 1
    else:
      raise _Unusable("no_partner")
    # Random spatial order, independent of caption order (docs/method.md, "Concatenated image").
    swap_order = bool(rng.integers(2))
    first_img, second_img = (partner_img, img) if swap_order else (img, partner_img)
    layout = "side_by_side" if aspect == images.HIGHER else "stacked"
    return record, partner, images.concat_pair(first_img, second_img, aspect, size), layout

  def _caption_set(self, kind: modes.StepKind, rng, record, partner):
    """(the caption module's CaptionSet, a per-sample token memo): the negative check tokenizes
    the positives once, and the memo gives their rows to the batch without tokenizing again."""
    memo = TokenMemo(self.tokenize)
    try:
      result = kind.captions(rng, self._sentences(record), partner and self._sentences(partner),
                             self.config.num_extra_positives, memo)
      return result, memo
    except Exception as e:  # a caption the text code cannot handle must not stop training.
      logging.debug("caption variants failed for %s: %r", record.get("id"), e)
      raise _Unusable("caption_error") from None

  def _sentences(self, record: dict) -> modes.Sentences:
    sentences = record["sentences"]
    return modes.Sentences(sentences[0], sentences[1:], self.first_tags(record))

  # -- grain entry point ---------------------------------------------------------------------------

  def finish(self, raw: RawSample) -> dict:
    """Tokens and uint8 pixels of one sample; collate normalizes the whole batch at once."""
    tokens = raw.tokens if raw.tokens is not None else self.tokenize(raw.texts)
    counts = raw.counts
    truncated = int(np.count_nonzero(tokens[:, -1]))
    if truncated:
      counts["text_truncated"] += truncated
    # The single image uses the model's own (CLIP) statistics (docs/method.md, "Single image");
    # the pair's are configurable (docs/method.md, "Concatenated image").
    norm = self.config.single_image_norm if raw.layout == "single" else self.config.concat_image_norm
    sample = {"pixels": raw.pixels, "norm": norm, "texts": tokens, "stats": dict(counts),
              "kind": raw.kind, "normalize": self.config.image_dtype == "float32"}
    if raw.negative_valid is not None:
      sample["negative_valid"] = raw.negative_valid
    return sample

  def __call__(self, element: tuple[int, int], rng: np.random.Generator) -> dict:
    position, record_id = element
    kind = self.config.kind_of_step(position // self.config.host_batch_size)
    return self.finish(self.raw_sample(kind, int(record_id), rng))


@functools.lru_cache(maxsize=None)
def _normalizer(name: str):
  return images.normalizer(name)


class TokenMemo:
  """tokenize_fn that remembers the rows of the texts it has seen (one sample's texts)."""

  def __init__(self, tokenize_fn):
    self._tokenize_fn = tokenize_fn
    self._rows: dict[str, np.ndarray] = {}

  def __call__(self, texts: Sequence[str]) -> np.ndarray:
    missing = list(dict.fromkeys(t for t in texts if t not in self._rows))
    if missing:
      self._rows.update(zip(missing, self._tokenize_fn(missing)))
    return np.stack([self._rows[t] for t in texts])


@functools.lru_cache(maxsize=1 << 16)
def _tag_cached(backend: str, text: str) -> tuple:
  from clic_jax.data import pos_tagging
  return tuple(pos_tagging.get_tagger(backend).tag(text))


class _Unusable(Exception):
  def __init__(self, reason: str):
    super().__init__(reason)
    self.reason = reason


def collate(samples: Sequence[dict]) -> dict:
  """Stack samples of one step into a fixed-shape batch."""
  kinds = {(s["kind"], s["norm"]) for s in samples}
  if len(kinds) != 1:  # cannot happen: positions of one batch share a step.
    raise AssertionError(f"mixed step kinds in one batch: {kinds}")
  kind, norm = kinds.pop()
  pixels = np.stack([s["pixels"] for s in samples])
  batch = {"kind": kind,
           "images": _normalizer(norm)(pixels) if samples[0]["normalize"] else pixels,
           "image_norm": norm,
           "texts": np.stack([s["texts"] for s in samples]),
           "stats": stats_lib.batch_stats(s["stats"] for s in samples)}
  if "negative_valid" in samples[0]:
    batch["negative_valid"] = np.array([s["negative_valid"] for s in samples], bool)
  return batch


def text_length_for(texts: np.ndarray, buckets: Sequence[int]) -> int:
  """The shortest bucket holding every row's tokens up to its end-of-text; the full width if none.

  CLIP's text tower is causal and pools at the end-of-text token, so the padding columns after a
  batch's longest caption change nothing: cutting them off is exact, and the text tower's cost
  falls in proportion (ViT-L-14 CLIC step 1.30x faster on an H200 with rows of 48 tokens instead
  of 77, benchmarks/RESULTS.md). A few fixed lengths bound the number of compiled step shapes.
  """
  width = texts.shape[-1]
  used = np.flatnonzero(texts.reshape(-1, width).any(axis=0))
  needed = int(used[-1]) + 1 if used.size else 1
  return next((b for b in sorted(buckets) if needed <= b < width), width)


def _with_position(position: int, record_id) -> tuple[int, int]:
  return position, int(record_id)


def host_record_ids(index: PartnerIndex, process_index: int, process_count: int) -> np.ndarray:
  """This host's slice of the usable ids. The list is cut to a multiple of process_count first so
  every host has the same number of samples (and therefore of steps) per epoch."""
  usable = index.usable[:len(index.usable) - len(index.usable) % process_count]
  return usable[process_index::process_count]


def _sample_seed(seed: int, process_index: int) -> int:
  """Hosts get different random streams (partners, flips) from one config seed."""
  return int(np.random.SeedSequence([seed, process_index]).generate_state(1)[0])


def check_usable(source, index: PartnerIndex, config: PipelineConfig) -> None:
  if len(index.usable) == 0:
    raise DataError(f"no usable records in {_source_summary(source)}; check the image root and "
                    "the CSV paths (see the skip counts)")
  if len(index.usable) < config.process_count:
    raise DataError(f"only {len(index.usable)} usable records for {config.process_count} hosts")
  needs_pairs = any(kind.image == modes.PAIR for kind in config.pattern)
  if needs_pairs and max(len(ids) for ids in index.by_class) < 2:
    raise DataError(f"CLIC pairs need two usable images of the same aspect class; found "
                    f"{[len(ids) for ids in index.by_class]} (wider, higher) in "
                    f"{_source_summary(source)}")


def default_num_threads() -> int:
  """One reader thread per core, plus one.

  Decoding and resizing release the GIL, the caption and batching code holds it; with exactly one
  thread per core a core idles whenever its thread waits for the GIL. The extra thread fills those
  gaps: on the 2-core benchmark machine 3 threads gave 0.86 of the decode floor against 0.78-0.80
  with 2 (benchmarks/README.md); the floor itself does not gain from it.
  """
  return (os.cpu_count() or 1) + 1


def make_train_dataset(config: PipelineConfig, source=None, tokenize_fn=None):
  """The grain IterDataset of batches for this host (see the module docstring)."""
  import grain
  if source is None:
    source = sources.open_source(config.source, num_threads=config.num_threads or 16)
  index = PartnerIndex.from_aspects(source.aspects)
  check_usable(source, index, config)
  builder = SampleBuilder(source, index, config, tokenize_fn)
  ids = host_record_ids(index, config.process_index, config.process_count)
  ds = grain.MapDataset.source(ids).shuffle(seed=config.seed).repeat(config.num_epochs)
  ds = ds.map_with_index(_with_position)
  ds = ds.random_map(builder, seed=_sample_seed(config.seed, config.process_index))
  num_threads = config.num_threads or default_num_threads()
  batch = config.host_batch_size
  prefetch_batches = config.prefetch_batches or 2
  if config.mp_workers > 0:
    # mp_prefetch gives worker w every k-th element of the map dataset. Batching first makes a
    # whole step one element, so workers build whole batches (never mixing kinds) and the stream
    # and its state equal the thread-only stream. Each worker's threads hold whole batches, so
    # keep num_threads small per worker.
    ds = ds.batch(batch, drop_remainder=True, batch_fn=collate)
    read_options = grain.ReadOptions(num_threads=num_threads,
                                     prefetch_buffer_size=max(prefetch_batches, num_threads))
    it_ds = ds.to_iter_dataset(read_options)
    return it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=config.mp_workers))
  # Threads only: samples are built in parallel and batched in order, so batch t is exactly
  # positions [t*B, (t+1)*B) and the read-ahead is a few batches of uint8 samples.
  read_options = grain.ReadOptions(num_threads=num_threads,
                                   prefetch_buffer_size=max(prefetch_batches * batch, num_threads))
  it_ds = ds.to_iter_dataset(read_options)
  return it_ds.batch(batch, drop_remainder=True, batch_fn=collate)


def make_train_iterator(config: PipelineConfig, source=None, tokenize_fn=None):
  """An iterator of batches with get_state() / set_state() for exact resumption."""
  return iter(make_train_dataset(config, source, tokenize_fn))


def steps_per_epoch(config: PipelineConfig, source) -> int:
  """Number of batches (steps) of one pass over this host's usable records."""
  index = PartnerIndex.from_aspects(source.aspects)
  return len(host_record_ids(index, config.process_index, config.process_count)) // \
      config.host_batch_size
