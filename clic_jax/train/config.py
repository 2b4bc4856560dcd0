"""Every training option: its default, and the run spec the trainer reads.

configs/*.py start from `default_config()` (the only place a default is written) and override it;
`--config.field=value` overrides on the command line. The defaults are the reference's main CLIC
run (docs/method.md, "Default settings") with clic_jax's decisions (docs/method.md, "Where clic_jax
differs from the authors' code").

`run_spec(config)` turns the ConfigDict into frozen dataclasses once, before anything is read or
compiled: data, model, optimizer, loss, schedule (batch, duration, step pattern), checkpointing and
reporting. Each dataclass checks the fields it owns; a bad value is a ConfigError that names the
config field and what to do. Below the trainer nothing sees a ConfigDict.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_collections

from clic_jax import models, modes
from clic_jax.data import images as images_lib
from clic_jax.data import pipeline as pipeline_lib
from clic_jax.data import sources as sources_lib
from clic_jax.train import optimizer as opt_lib

log = logging.getLogger("clic_jax.train")


class ConfigError(ValueError):
  """A configuration value that cannot work; raised before anything is compiled."""


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.model = ml_collections.ConfigDict()
  c.model.name = "ViT-B-32-quickgelu"
  c.model.dtype = "auto"            # bfloat16 on accelerators, float32 on CPU; params stay float32
  c.model.remat = False             # rematerialize transformer blocks (large models, big batches)
  c.model.attention_impl = "auto"   # auto = "cudnn" (flash attention) on NVIDIA GPUs, else "xla"
  c.init_from = ""                  # open_clip weights: file, tag ("openai"), hf-hub:, local-dir:

  c.data = ml_collections.ConfigDict()
  c.data.csv = ""                   # reference CSV (no header): image path, sentence 1, 2, ...
  c.data.image_root = ""
  c.data.arrayrecord_dir = ""       # output of `python -m clic_jax.data.prepare`
  c.data.webdataset = ""            # webdataset shards: `python -m clic_jax.data.download`'s DIR
                                    # (or img2dataset's), globs, .tar files; comma-separated
  c.data.tfds_name = ""             # any TFDS image-caption dataset prepared as ArrayRecord
  c.data.tfds_data_dir = ""
  c.data.tfds_split = "train"
  # clic | negclip | baseline: a key of clic_jax.modes.MODES (docs/method.md, "Training variants")
  c.data.mode = "clic"
  c.data.num_extra_positives = 2    # p3, p4
  c.data.concat_image_norm = "clip"  # "imagenet" reproduces the reference's concatenated images
                                    # (single images: always the model's, models.image_normalization)
  c.data.num_threads = 0            # grain reader threads; 0: one per CPU core, plus one
  c.data.prefetch_batches = 0       # batches read ahead; 0: the pipeline's default
  c.data.mp_workers = 0
  c.data.pos_backend = "auto"
  c.data.image_dtype = "uint8"      # ship uint8, normalize on device ("float32": on the host)
  c.data.context_length = 77        # shorter only for short captions: text cost scales with it
  c.data.text_length_buckets = "32,48,64"  # cut each batch's token rows to the shortest of these
                                    # that holds its longest caption (exact; "" = always 77).
                                    # Off for towers where it is not exact (models.rows_trimmable:
                                    # CLIPA, CLIPS), whose data.context_length must be the model's.

  c.global_batch_size = 800         # the reference: 4 GPUs x 200
  c.total_steps = 0                 # > 0 overrides num_epochs
  c.num_epochs = 1
  # 1: CLIC and CLIP steps alternate, CLIC first (docs/method.md, "Alternating steps")
  c.hard_negative_freq = 1.0
  c.alternate_with_clip = True
  c.step_kinds = ""                 # overrides the pattern: e.g. "clip" (plain CLIP fine-tuning)

  c.loss = ml_collections.ConfigDict()
  c.loss.cont = 0.5
  c.loss.sneg = 0.5
  c.loss.uni = 1.0
  c.loss.separate_negatives = True
  c.loss.mask_invalid_negatives = True   # leave out negatives the pipeline marked invalid (no swap
                                    # gave one unlike every positive); False: the reference (all)
  c.loss.hard_negative_sets = "all"  # the separate 2-way term over all positive sets (the paper),
                                    # or "minimal": over p1, p2 only (needs separate_negatives)

  c.optim = ml_collections.ConfigDict()
  c.optim.lr = 1e-6
  c.optim.lr_start = 1e-7
  c.optim.lr_end = 1e-8
  c.optim.warmup_fraction = 0.2
  c.optim.weight_decay = 0.1
  c.optim.b1 = 0.9
  c.optim.b2 = 0.98
  c.optim.eps = 1e-8
  c.optim.grad_accum_steps = 1      # k > 1: each update's batch in k micro-batches, exactly
  c.optim.clip_grad_norm = 0.0      # 0: off, like the reference
  c.freeze = ("^visual/",)          # regexes on parameter paths; the reference freezes the ViT
  # False reproduces the reference, never clamped (docs/method.md, "Logit scale")
  c.clamp_logit_scale = True

  c.mesh = ml_collections.ConfigDict()
  c.mesh.fsdp = 1                   # > 1 shards params and optimizer state over that many devices

  c.log_every_steps = 10
  c.checkpoint_every_steps = 500
  c.keep_checkpoints = 3
  c.async_checkpointing = True
  # WORKDIR/lock.json from another host whose heartbeat is older than this is taken over
  # (clic_jax/train/workdir.py; a holder on this host is checked directly)
  c.workdir_lock_timeout_s = 600.0
  c.tensorboard = True
  c.eval_every_steps = 0            # 0: no evaluation during training
  c.eval_batch_size = 256
  c.evals = ml_collections.ConfigDict()   # benchmark name -> its arguments (see clic_jax.evaluate)
  c.export_open_clip = True         # WORKDIR/open_clip/ at the end: open_clip weights + config
  c.debug_sigterm_at_step = 0       # tests: send ourselves SIGTERM after this step
  return c


# ------------------------------------------------------------------------------------------------
# The run spec.


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  name: str
  dtype: str                  # "auto" | "float32" | "bfloat16" | "float16"
  remat: bool
  attention_impl: str         # "auto" | "xla" | "cudnn" ("" = xla)
  init_from: str              # open_clip weights (file, tag, hf-hub:, local-dir:); "" = random

  _DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}

  def __post_init__(self):
    try:
      models.get_model_config(self.name)
    except models.UnknownModelError as e:
      raise ConfigError(f"config.model.name: {e}") from None
    if self.dtype != "auto" and self.dtype not in self._DTYPES:
      raise ConfigError(f"model.dtype={self.dtype!r}: use auto, float32, bfloat16 or float16")
    if self.attention_impl not in ("auto", "", "xla", "cudnn"):
      raise ConfigError(f"model.attention_impl={self.attention_impl!r}: use auto, xla or cudnn")
    init = self.init_from
    if init and not (Path(init).exists() or ":" in init or "/" not in init):
      raise ConfigError(f"config.init_from={init!r}: no such file (use a weights file, a "
                        "pretrained tag such as 'openai', or 'hf-hub:org/repo').")

  @property
  def architecture(self) -> models.ClipConfig:
    return models.get_model_config(self.name)

  @property
  def compute_dtype(self):
    """auto: bfloat16 on accelerators, float32 on CPU; parameters stay float32 either way."""
    if self.dtype == "auto":
      return jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16
    return self._DTYPES[self.dtype]

  @property
  def attention(self) -> str | None:
    """jax.nn.dot_product_attention's `implementation`.

    auto: cuDNN flash attention on NVIDIA GPUs (ViT-L-14 CLIC step 0.83x the time of XLA's
    attention on an H200, benchmarks/RESULTS.md), XLA's own elsewhere.
    """
    if self.attention_impl == "auto":
      return "cudnn" if _nvidia_gpu() else None
    return self.attention_impl or None


def _nvidia_gpu() -> bool:
  if jax.default_backend() != "gpu":
    return False
  try:
    from jax.extend import backend
    return "cuda" in backend.get_backend().platform_version.lower()
  except Exception:   # unknown runtime: let XLA choose rather than fail
    return False


@dataclasses.dataclass(frozen=True)
class DataSpec:
  source: sources_lib.SourceSpec    # exactly one source; SourceSpec checks that
  num_extra_positives: int
  concat_image_norm: str            # "clip" | "imagenet"
  image_dtype: str                  # "uint8" (normalized on the device) | "float32"
  context_length: int
  text_length_buckets: tuple[int, ...]   # sorted; () = always context_length
  num_threads: int                  # 0: the pipeline's default
  prefetch_batches: int             # 0: the pipeline's default
  mp_workers: int
  pos_backend: str

  def __post_init__(self):
    if self.num_extra_positives < 0:
      raise ConfigError(f"data.num_extra_positives={self.num_extra_positives}: must be >= 0")
    try:
      images_lib.normalization_constants(self.concat_image_norm)
    except ValueError as e:
      raise ConfigError(f"config.data.concat_image_norm: {e}") from None
    if self.image_dtype not in ("uint8", "float32"):
      raise ConfigError(f"data.image_dtype={self.image_dtype!r}: use uint8 or float32")
    if any(b < 2 for b in self.text_length_buckets):
      raise ConfigError(f"data.text_length_buckets={self.text_length_buckets!r}: lengths must be "
                        "at least 2")


def parse_text_length_buckets(value) -> tuple[int, ...]:
  """data.text_length_buckets ("32,48,64", a tuple, or "" for none) as sorted ints."""
  items = value.split(",") if isinstance(value, str) else list(value)
  try:
    return tuple(sorted({int(v) for v in items if str(v).strip()}))
  except ValueError:
    raise ConfigError(f"data.text_length_buckets={value!r}: a comma list of token counts, "
                      "e.g. \"32,48,64\", or \"\"") from None


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
  lr: float
  lr_start: float
  lr_end: float
  warmup_fraction: float
  weight_decay: float
  b1: float
  b2: float
  eps: float
  grad_accum_steps: int             # micro-batches per update (exact: train/step.py)
  clip_grad_norm: float | None      # None: off (config value 0)
  freeze: tuple[str, ...]           # regexes on parameter paths; empty entries dropped
  clamp_logit_scale: bool

  def __post_init__(self):
    try:
      opt_lib.check_hyperparameters(
          lr=self.lr, lr_start=self.lr_start, lr_end=self.lr_end,
          warmup_fraction=self.warmup_fraction, weight_decay=self.weight_decay,
          grad_accum_steps=self.grad_accum_steps, clip_grad_norm=self.clip_grad_norm)
    except ValueError as e:
      raise ConfigError(f"config.optim: {e}") from None

  def learning_rate(self, total_steps: int):
    return opt_lib.lr_schedule(total_steps, self.lr, self.lr_start, self.lr_end,
                               self.warmup_fraction)

  def transformation(self, params, total_steps: int):
    return opt_lib.make_optimizer(
        params, total_steps=total_steps, lr=self.lr, lr_start=self.lr_start, lr_end=self.lr_end,
        warmup_fraction=self.warmup_fraction, weight_decay=self.weight_decay, b1=self.b1,
        b2=self.b2, eps=self.eps, freeze=self.freeze, clip_grad_norm=self.clip_grad_norm)


# loss.hard_negative_sets -> how many leading positive sets the separate 2-way term averages over.
_HARD_NEGATIVE_SETS = {"all": None, "minimal": 2}   # minimal: p1, p2 (same words as the negative)
# What the unified variant (separate_negatives=False) leaves unused (docs/method.md, "Unified
# variant").
_UNUSED_WHEN_UNIFIED = ("cont", "sneg")


@dataclasses.dataclass(frozen=True)
class LossSpec:
  """config.loss: the options of losses.clic_loss (docs/method.md, "Losses").

  An option that no step of the run reads is an error unless it keeps its default: a weight set
  and silently ignored would make a run that is not what its config says. "Its default" is the
  value in default_config(), so configs that never touch an option always pass; a value equal to
  what a step kind fixes (modes.StepKind.fixed) is accepted too. Two rules decide what is read:
  the unified variant applies no cont/sneg weight (checked here, with separate_negatives), and a
  step kind reads what it does not fix (checked against the run's pattern, check_read_by).
  """
  cont: float
  sneg: float
  uni: float
  separate_negatives: bool
  mask_invalid_negatives: bool      # leave out the negatives the pipeline marked invalid
  hard_negative_sets: str           # "all" | "minimal" (the 2-way term over p1, p2 only)

  def __post_init__(self):
    for name in ("separate_negatives", "mask_invalid_negatives"):
      if not isinstance(getattr(self, name), bool):
        raise ConfigError(f"config.loss.{name}={getattr(self, name)!r}: use True or False")
    if self.hard_negative_sets not in _HARD_NEGATIVE_SETS:
      raise ConfigError(f"config.loss.hard_negative_sets={self.hard_negative_sets!r}: use one of "
                        f"{tuple(_HARD_NEGATIVE_SETS)}")
    if not self.separate_negatives:
      if self.sneg_sets is not None:
        raise ConfigError(f"config.loss.hard_negative_sets={self.hard_negative_sets!r} needs "
                          "config.loss.separate_negatives=True: the unified variant has no "
                          "separate hard-negative term to restrict.")
      for name in _UNUSED_WHEN_UNIFIED:
        if _differs_from_default("loss", name, getattr(self, name)):
          raise ConfigError(
              f"config.loss.{name}={getattr(self, name)!r} is not used with "
              "config.loss.separate_negatives=False: the unified variant computes "
              "contrastive + uni * uni-modal (docs/method.md, \"Unified variant\"). Leave it at "
              f"its default {_default('loss', name)!r}.")

  @property
  def sneg_sets(self) -> int | None:
    """losses.clic_loss's `sneg_sets`."""
    return _HARD_NEGATIVE_SETS[self.hard_negative_sets]

  def check_read_by(self, pattern: tuple[modes.StepKind, ...], mode: str) -> None:
    """ConfigError for an option set away from its default that no step of `pattern` reads."""
    names = tuple(dict.fromkeys(kind.name for kind in pattern))
    for field in dataclasses.fields(self):
      value = getattr(self, field.name)
      if not _differs_from_default("loss", field.name, value):
        continue
      if any(self._reads(kind, field.name) for kind in pattern):
        continue
      fixed = {kind.fixed[field.name] for kind in pattern if field.name in kind.fixed}
      if fixed == {value}:
        continue
      why = "; ".join(self._why_unread(kind, field.name) for kind in dict.fromkeys(pattern))
      raise ConfigError(
          f"config.loss.{field.name}={value!r} does not apply to data.mode={mode!r} with step "
          f"kinds {names}: {why} (docs/method.md, \"Training variants\"). Leave it at its "
          f"default {_default('loss', field.name)!r}.")

  @staticmethod
  def _why_unread(kind: modes.StepKind, name: str) -> str:
    if name in kind.fixed:
      return f"{kind.name} steps fix it to {kind.fixed[name]!r}"
    if not kind.reads_loss_options:
      return f"{kind.name} steps have no loss options"
    return f"{kind.name} steps use the unified form, which applies no cont/sneg weight"

  def _reads(self, kind: modes.StepKind, name: str) -> bool:
    if not kind.reads_loss_options or name in kind.fixed:
      return False
    separate = kind.fixed.get("separate_negatives", self.separate_negatives)
    return separate or name not in _UNUSED_WHEN_UNIFIED


@dataclasses.dataclass(frozen=True)
class ScheduleSpec:
  """The batch, the run's length and its repeating pattern of step kinds."""
  global_batch_size: int
  total_steps: int                  # > 0 overrides num_epochs
  num_epochs: int
  mode: str                         # config.data.mode, a key of modes.MODES
  hard_negative_freq: float
  alternate_with_clip: bool
  step_kinds: str                   # "" or a comma list of clic/clip that overrides the two above

  def __post_init__(self):
    num_devices = jax.device_count()
    if self.global_batch_size <= 0 or self.global_batch_size % num_devices:
      raise ConfigError(f"config.global_batch_size={self.global_batch_size} must be a positive "
                        f"multiple of the device count ({num_devices}).")
    if self.total_steps <= 0 and self.num_epochs <= 0:
      raise ConfigError("Set config.total_steps > 0 or config.num_epochs > 0.")
    if self.mode not in modes.MODES:
      raise ConfigError(f"config.data.mode={self.mode!r}: use one of {tuple(modes.MODES)}")
    if not modes.MODES[self.mode].alternates:
      for name in ("hard_negative_freq", "alternate_with_clip", "step_kinds"):
        if _differs_from_default(None, name, getattr(self, name)):
          raise ConfigError(
              f"config.{name}={getattr(self, name)!r} does not apply to data.mode={self.mode!r}: "
              "every step of that mode is of one kind (docs/method.md, \"Training variants\"). "
              f"Leave it at its default {_default(None, name)!r}.")
    self.pattern   # the pattern's own checks

  @property
  def step_names(self) -> tuple[str, ...]:
    """The pattern in the config's words (modes.HARD_STEP / "clip")."""
    if self.step_kinds:             # explicit, e.g. "clip" for plain CLIP fine-tuning
      return tuple(k.strip() for k in self.step_kinds.split(","))
    if not self.alternate_with_clip:
      return (modes.HARD_STEP,)
    try:
      return modes.alternation(self.hard_negative_freq)
    except ValueError as e:
      raise ConfigError(f"config.hard_negative_freq: {e}") from None

  @property
  def pattern(self) -> tuple[modes.StepKind, ...]:
    names = self.step_names
    try:
      return modes.MODES[self.mode].pattern(names)
    except ValueError:
      raise ConfigError(f"config.step_kinds={self.step_kinds!r}: a comma list of "
                        f"{modes.HARD_STEP}/{modes.CLIP_STEP_NAME}") from None

  def optimizer_updates(self, steps_per_epoch: int) -> int:
    """The run's length in optimizer updates, one per global batch."""
    if self.total_steps > 0:
      return self.total_steps
    return max(1, self.num_epochs * steps_per_epoch)


@dataclasses.dataclass(frozen=True)
class CheckpointSpec:
  every_steps: int
  keep: int
  use_async: bool
  lock_timeout_s: float             # config.workdir_lock_timeout_s

  def __post_init__(self):
    if self.every_steps < 1 or self.keep < 1:
      raise ConfigError(f"config.checkpoint_every_steps={self.every_steps} and "
                        f"config.keep_checkpoints={self.keep} must be at least 1")
    if not self.lock_timeout_s > 0:
      raise ConfigError(f"config.workdir_lock_timeout_s={self.lock_timeout_s}: must be > 0 "
                        "(seconds without a heartbeat after which another host's lock is taken "
                        "over)")


@dataclasses.dataclass(frozen=True)
class ReportSpec:
  """What the loop writes besides checkpoints: metrics, evaluations, the final export."""
  log_every_steps: int
  tensorboard: bool
  eval_every_steps: int             # 0: no evaluation during training
  eval_batch_size: int
  evals: Mapping[str, Mapping[str, Any]]   # benchmark name -> its arguments
  export_open_clip: bool

  def __post_init__(self):
    if self.log_every_steps < 1:
      raise ConfigError(f"config.log_every_steps={self.log_every_steps}: must be at least 1")
    if self.evals:
      from clic_jax.evaluate import check_arguments   # the benchmarks' registry: heavy imports
      for name, kwargs in self.evals.items():
        try:
          check_arguments(name, dict(kwargs))
        except ValueError as e:
          raise ConfigError(f"config.evals: {e}") from None

  def evaluates_at(self, step: int) -> bool:
    return bool(self.eval_every_steps and self.evals and step % self.eval_every_steps == 0)


@dataclasses.dataclass(frozen=True)
class RunSpec:
  seed: int
  model: ModelSpec
  data: DataSpec
  optim: OptimizerSpec
  loss: LossSpec
  schedule: ScheduleSpec
  checkpointing: CheckpointSpec
  reporting: ReportSpec
  fsdp: int                         # > 1 shards params and optimizer state over that many devices
  debug_sigterm_at_step: int        # tests: send ourselves SIGTERM after this step

  def __post_init__(self):
    if self.fsdp < 1 or jax.device_count() % self.fsdp:
      raise ConfigError(f"config.mesh.fsdp={self.fsdp} must divide the device count "
                        f"({jax.device_count()}).")
    self.loss.check_read_by(self.schedule.pattern, self.schedule.mode)
    k, batch = self.optim.grad_accum_steps, self.schedule.global_batch_size
    if batch % (k * jax.device_count()):
      raise ConfigError(
          f"config.global_batch_size={batch} with optim.grad_accum_steps={k}: each of the {k} "
          f"micro-batches must split evenly over the {jax.device_count()} devices, so the batch "
          f"must be a multiple of {k * jax.device_count()}.")
    text = self.model.architecture.text
    if (not models.rows_trimmable(self.model.architecture)
        and self.data.context_length != text.context_length):
      raise ConfigError(
          f"data.context_length={self.data.context_length}: {self.model.name}'s text tower reads "
          f"every position of its {text.context_length}-token rows (padding included), so its "
          f"captions are tokenized to exactly that length; set data.context_length="
          f"{text.context_length}.")
    if self.data.context_length > text.context_length:
      raise ConfigError(f"data.context_length={self.data.context_length} is longer than "
                        f"{self.model.name}'s text tower ({text.context_length} positions).")

  def pipeline_config(self, image_size: int) -> pipeline_lib.PipelineConfig:
    """This host's share of the input (jax.process_index of jax.process_count)."""
    data = self.data
    return pipeline_lib.PipelineConfig(
        source=data.source, global_batch_size=self.schedule.global_batch_size,
        process_index=jax.process_index(), process_count=jax.process_count(),
        image_size=image_size, num_extra_positives=data.num_extra_positives,
        step_pattern=self.schedule.step_names, mode=self.schedule.mode, seed=self.seed,
        concat_image_norm=data.concat_image_norm, num_threads=data.num_threads or None,
        prefetch_batches=data.prefetch_batches or None, mp_workers=data.mp_workers,
        pos_backend=data.pos_backend, context_length=data.context_length,
        image_dtype=data.image_dtype,
        single_image_norm=models.image_normalization(self.model.name))

  def tokenize_fn(self):
    """The model's own tokenizer (CLIP BPE, or CLIPA/CLIPS WordPiece) at data.context_length:
    the pipeline's and the preview's TokenizeFn (picklable, for process workers)."""
    from clic_jax import model_tokenizer
    return model_tokenizer.tokenize_fn(self.model.name, self.data.context_length)


def run_spec(config: ml_collections.ConfigDict) -> RunSpec:
  """The run spec of a config made by default_config() (and overridden); ConfigError if a value
  cannot work. Reads every field by name: defaults live in default_config() only."""
  c, data, optim = config, config.data, config.optim
  buckets = parse_text_length_buckets(data.text_length_buckets)
  if buckets and not _rows_trimmable(c.model.name):
    # Cutting padding columns changes this tower's embedding (models.rows_trimmable): rows stay
    # full length, whatever data.text_length_buckets says.
    log.info("data.text_length_buckets=%r ignored: rows of %s are not trimmable exactly.",
             data.text_length_buckets, c.model.name)
    buckets = ()
  if _known(c.model.name) and data.concat_image_norm != models.image_normalization(c.model.name):
    # Single images always get the model's statistics; the concatenated ones get this option
    # (configs/clipa_l14.py sets "imagenet", the model's own, for CLIPA and CLIPS).
    log.warning("data.concat_image_norm=%r while %s normalizes its images with %r.",
                data.concat_image_norm, c.model.name, models.image_normalization(c.model.name))
  return RunSpec(
      seed=c.seed,
      model=ModelSpec(name=c.model.name, dtype=c.model.dtype, remat=c.model.remat,
                      attention_impl=c.model.attention_impl, init_from=c.init_from),
      data=DataSpec(
          source=_source_spec(data),
          num_extra_positives=data.num_extra_positives,
          concat_image_norm=data.concat_image_norm, image_dtype=data.image_dtype,
          context_length=data.context_length,
          text_length_buckets=buckets,
          num_threads=data.num_threads, prefetch_batches=data.prefetch_batches,
          mp_workers=data.mp_workers, pos_backend=data.pos_backend),
      optim=OptimizerSpec(
          lr=optim.lr, lr_start=optim.lr_start, lr_end=optim.lr_end,
          warmup_fraction=optim.warmup_fraction, weight_decay=optim.weight_decay, b1=optim.b1,
          b2=optim.b2, eps=optim.eps, grad_accum_steps=optim.grad_accum_steps,
          clip_grad_norm=optim.clip_grad_norm or None,
          # `--config.freeze=` on the command line gives ("",): it freezes nothing.
          freeze=tuple(p for p in c.freeze if p), clamp_logit_scale=c.clamp_logit_scale),
      loss=loss_spec(c.loss),
      schedule=ScheduleSpec(
          global_batch_size=c.global_batch_size, total_steps=c.total_steps,
          num_epochs=c.num_epochs, mode=data.mode, hard_negative_freq=c.hard_negative_freq,
          alternate_with_clip=c.alternate_with_clip, step_kinds=c.step_kinds),
      checkpointing=CheckpointSpec(every_steps=c.checkpoint_every_steps,
                                   keep=c.keep_checkpoints, use_async=c.async_checkpointing,
                                   lock_timeout_s=c.workdir_lock_timeout_s),
      reporting=ReportSpec(
          log_every_steps=c.log_every_steps, tensorboard=c.tensorboard,
          eval_every_steps=c.eval_every_steps, eval_batch_size=c.eval_batch_size,
          evals={name: dict(kwargs) for name, kwargs in c.evals.items()},
          export_open_clip=c.export_open_clip),
      fsdp=c.mesh.fsdp, debug_sigterm_at_step=c.debug_sigterm_at_step)


def _known(name: str) -> bool:
  try:
    models.get_model_config(name)
    return True
  except models.UnknownModelError:      # ModelSpec reports it
    return False


def _rows_trimmable(name: str) -> bool:
  return not _known(name) or models.rows_trimmable(models.get_model_config(name))


def _source_spec(data: ml_collections.ConfigDict) -> sources_lib.SourceSpec:
  try:
    return sources_lib.SourceSpec(
        csv=data.csv or None, image_root=data.image_root or None,
        arrayrecord_dir=data.arrayrecord_dir or None, tfds_name=data.tfds_name or None,
        tfds_data_dir=data.tfds_data_dir or None, tfds_split=data.tfds_split,
        webdataset=data.webdataset or None)
  except ValueError as e:               # SourceSpec checks that exactly one source is given
    raise ConfigError(f"config.data: {e}") from None


def loss_spec(loss: ml_collections.ConfigDict | None = None) -> LossSpec:
  """config.loss as a LossSpec; None: default_config()'s (tests and benchmarks that build a step
  by hand)."""
  loss = default_config().loss if loss is None else loss
  return LossSpec(cont=loss.cont, sneg=loss.sneg, uni=loss.uni,
                  separate_negatives=loss.separate_negatives,
                  mask_invalid_negatives=loss.mask_invalid_negatives,
                  hard_negative_sets=loss.hard_negative_sets)


def _default(section: str | None, name: str):
  node = default_config()
  return node[name] if section is None else node[section][name]


def _differs_from_default(section: str | None, name: str, value) -> bool:
  return value != _default(section, name)
