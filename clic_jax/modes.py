"""Training modes as data: what each kind of step builds and what it minimizes.

A run is a repeating pattern of steps (docs/method.md, "Alternating steps"), and every step is of
one kind. STEP_KINDS holds one row per kind: the image view the pipeline builds, the caption set it
builds, and the loss the train step computes with the weights the kind fixes itself. MODES maps
`config.data.mode` to the kind that plays the hard-negative step of the pattern and says whether
CLIP steps alternate with it (docs/method.md, "Training variants"). The pipeline, the train step and
the run spec read these tables; none of them tests a mode's name.

Adding a variant is one caption builder and one row here.
"""
from __future__ import annotations

import dataclasses
import math
import types
from typing import Any, Callable, Mapping, NamedTuple, Sequence

from clic_jax import losses
from clic_jax.data import captions

PAIR, SINGLE = "pair", "single"     # two images glued into one (needs a partner) | CLIP's eval view
HARD_STEP, CLIP_STEP_NAME = "clic", "clip"   # the names config.step_kinds writes a pattern with


class Sentences(NamedTuple):
  """One record's text as the caption builders take it."""
  first: str
  extras: Sequence[str]
  tags: Any                         # POS tags of `first` (None: tagged when needed)


# Caption builders: (rng, own Sentences, partner Sentences or None, num_extra, tokenize_fn) ->
# captions.CaptionSet. The order of the rng draws inside each is part of the data stream.


def _clic_captions(rng, own: Sentences, partner: Sentences, num_extra: int, tokenize_fn):
  return captions.clic_caption_set(rng, own.first, own.extras, own.tags, partner.first,
                                   partner.extras, partner.tags, num_extra=num_extra,
                                   tokenize_fn=tokenize_fn)


def _baseline_captions(rng, own: Sentences, partner, num_extra: int, tokenize_fn):
  return captions.baseline_caption_set(rng, own.first, own.extras, own.tags, num_extra=num_extra,
                                       tokenize_fn=tokenize_fn)


def _negclip_captions(rng, own: Sentences, partner, num_extra: int, tokenize_fn):
  return captions.negclip_caption_set(rng, own.first, own.tags, tokenize_fn=tokenize_fn)


# Losses: (image (B, D), texts (K, B, D), scale, neg_valid (B,) or None, loss options) ->
# (loss, metrics). The options are the run spec's LossSpec with the kind's fixed values applied.


def _clip_loss(img, txt, scale, neg_valid, options):
  return losses.clip_loss(img, txt[0], scale)


def _multi_positive_loss(img, txt, scale, neg_valid, options):
  """texts = [positive sets..., negative]: losses.clic_loss (docs/method.md, "Losses")."""
  return losses.clic_loss(img, txt[:-1], txt[-1], scale, cont=options.cont, sneg=options.sneg,
                          uni=options.uni, separate_negatives=options.separate_negatives,
                          neg_valid=neg_valid, sneg_sets=options.sneg_sets)


@dataclasses.dataclass(frozen=True, eq=False)    # each row is one object: compared by identity
class StepKind:
  """One kind of training step, from the sample to the loss."""
  name: str              # batch["kind"], the key of its compiled step, the prefix of its metrics
  image: str             # PAIR or SINGLE
  captions: Callable | None   # caption builder; None: the raw first sentence alone (CLIP)
  loss: Callable
  # loss.* options this kind sets itself, whatever the config says. A config that sets one of them
  # to anything but its default or this value is an error (run spec: LossSpec.check_read_by).
  fixed: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  @property
  def has_negative(self) -> bool:
    """Its texts end with a hard negative (and its batches carry negative_valid)."""
    return self.captions is not None

  @property
  def reads_loss_options(self) -> bool:
    """Whether config.loss matters to it at all (the CLIP loss has no options)."""
    return self.loss is not _clip_loss


STEP_KINDS: Mapping[str, StepKind] = types.MappingProxyType({k.name: k for k in (
    StepKind("clic", PAIR, _clic_captions, _multi_positive_loss),
    StepKind("clip", SINGLE, None, _clip_loss),
    # The single-image ablation: no uni-modal term, as the authors run it.
    StepKind("baseline", SINGLE, _baseline_captions, _multi_positive_loss, {"uni": 0.0}),
    # NegCLIP: one positive, its negative inside the contrastive softmax (the unified variant,
    # which applies no cont/sneg weight), no uni-modal term.
    StepKind("negclip", SINGLE, _negclip_captions, _multi_positive_loss,
             {"uni": 0.0, "separate_negatives": False, "hard_negative_sets": "all"}),
)})


@dataclasses.dataclass(frozen=True)
class Mode:
  """config.data.mode: the kind of its hard-negative steps and whether CLIP steps alternate."""
  hard_step: str
  alternates: bool

  def pattern(self, names: Sequence[str]) -> tuple[StepKind, ...]:
    """A pattern written with HARD_STEP / CLIP_STEP_NAME -> this mode's step kinds.

    A mode that does not alternate runs its hard step alone whatever `names` says (the run spec
    refuses a config that asks for anything else).
    """
    if not self.alternates:
      return (STEP_KINDS[self.hard_step],)
    if not names or any(n not in (HARD_STEP, CLIP_STEP_NAME) for n in names):
      raise ValueError(f"step pattern {tuple(names)!r} must be a non-empty sequence of "
                       f"{HARD_STEP!r} / {CLIP_STEP_NAME!r}")
    return tuple(STEP_KINDS[self.hard_step if n == HARD_STEP else CLIP_STEP_NAME] for n in names)


MODES: Mapping[str, Mode] = types.MappingProxyType({
    "clic": Mode("clic", alternates=True),
    "baseline": Mode("baseline", alternates=True),
    "negclip": Mode("negclip", alternates=False),
})


def mode(name: str) -> Mode:
  try:
    return MODES[name]
  except KeyError:
    raise ValueError(f"data.mode={name!r}: use one of {tuple(MODES)}") from None


def step_kind(kind: str | StepKind) -> StepKind:
  """A StepKind, or one named by STEP_KINDS."""
  if isinstance(kind, StepKind):
    return kind
  try:
    return STEP_KINDS[kind]
  except KeyError:
    raise ValueError(f"unknown step kind {kind!r}; use one of {tuple(STEP_KINDS)}") from None


def alternation(hard_negative_freq: float) -> tuple[str, ...]:
  """The authors' repeating pattern of hard-negative and CLIP steps for `hard_negative_freq` f.

  See docs/method.md, "Alternating steps".

    f == 1  -> ("clic", "clip")
    f > 1   -> ("clip",) + ("clic",) * int(f)
    f < 1   -> ("clic",) + ("clip",) * int(1 / f)
  """
  if isinstance(hard_negative_freq, bool) or not isinstance(hard_negative_freq, (int, float)) \
      or not math.isfinite(hard_negative_freq) or hard_negative_freq <= 0:
    raise ValueError(f"hard_negative_freq must be a finite number > 0 (1 alternates CLIC and CLIP "
                     f"steps), got {hard_negative_freq!r}.")
  if hard_negative_freq == 1:
    return (HARD_STEP, CLIP_STEP_NAME)
  if hard_negative_freq > 1:
    return (CLIP_STEP_NAME,) + (HARD_STEP,) * int(hard_negative_freq)
  return (HARD_STEP,) + (CLIP_STEP_NAME,) * int(1.0 / hard_negative_freq)
