"""The table of training modes: patterns, what each step kind builds and what it fixes."""
from __future__ import annotations

import pytest

from clic_jax import modes


def test_alternation():
  assert modes.alternation(1) == ("clic", "clip")
  assert modes.alternation(1.0) == ("clic", "clip")
  assert modes.alternation(3) == ("clip", "clic", "clic", "clic")
  assert modes.alternation(2.5) == ("clip", "clic", "clic")
  assert modes.alternation(0.5) == ("clic", "clip", "clip")
  assert modes.alternation(0.25) == ("clic",) + ("clip",) * 4
  for bad in (0, -1, float("nan"), float("inf"), "1", True):
    with pytest.raises(ValueError, match="hard_negative_freq"):
      modes.alternation(bad)


def test_each_mode_puts_its_hard_step_in_the_pattern():
  def names(mode, pattern):
    return [k.name for k in modes.mode(mode).pattern(pattern)]
  assert names("clic", ("clic", "clip")) == ["clic", "clip"]
  assert names("baseline", ("clic", "clip", "clip")) == ["baseline", "clip", "clip"]
  assert names("clic", ("clip",)) == ["clip"]
  assert names("negclip", ("clic", "clip")) == ["negclip"]     # NegCLIP never alternates
  with pytest.raises(ValueError, match="step pattern"):
    modes.mode("clic").pattern(("clic", "negclip"))
  with pytest.raises(ValueError, match="data.mode='other'"):
    modes.mode("other")
  with pytest.raises(ValueError, match="unknown step kind"):
    modes.step_kind("clop")


def test_rows():
  clic, clip = modes.STEP_KINDS["clic"], modes.STEP_KINDS["clip"]
  assert clic.image == modes.PAIR and clic.has_negative and clic.reads_loss_options
  assert clip.image == modes.SINGLE and not clip.has_negative and not clip.reads_loss_options
  assert modes.STEP_KINDS["baseline"].fixed == {"uni": 0.0}
  assert modes.STEP_KINDS["negclip"].fixed["separate_negatives"] is False
  assert all(k.image == modes.SINGLE for n, k in modes.STEP_KINDS.items() if n != "clic")
