"""Binding probes (clic_jax/evaluate/binding.py): twin construction, exact chance for a model
without binding, near-perfect scores for one that binds, a tiny JAX model through the registry."""
from __future__ import annotations

import collections
import re

import numpy as np
import pytest

from clic_jax.data.toyworld.scenes import COLORS, SHAPES, CLEAR_MARGIN
from clic_jax.evaluate import binding

ACCURACIES = ("image_attribute", "image_spatial", "text_attribute", "text_spatial")
SMALL = dict(num_train=300, num_twins=60, seed=3, image_size=64)
BACKGROUNDS = ("white", "gray", "black", "noisy", "striped")
RELATIONS = ("left", "right", "above", "below")
COLOR_LIST, SHAPE_LIST = list(COLORS), list(SHAPES)


# -- fake embedders, computed from the scene / caption structure --------------------------------


def _background(scene):
  return [float(scene.background.word == w) for w in BACKGROUNDS]


def unbound_scene(scene):
  """Only the multisets of colours, shapes and positions: no binding at all."""
  colours = collections.Counter(o.color for o in scene.objects)
  shapes = collections.Counter(o.shape for o in scene.objects)
  xs = sorted(o.x for o in scene.objects) + [0.0] * (3 - len(scene.objects))
  ys = sorted(o.y for o in scene.objects) + [0.0] * (3 - len(scene.objects))
  c = [float(colours[k]) for k in COLOR_LIST]
  s = [float(shapes[k]) for k in SHAPE_LIST]
  return np.array(c + s + xs + ys + list(np.outer(c, s).ravel()) + _background(scene))


def bound_scene(scene):
  """Identity one-hots and each identity's position: perfect binding."""
  presence, where = np.zeros(36), np.zeros((36, 2))
  for o in scene.objects:
    k = binding.IDENTITY_INDEX[o.identity]
    presence[k], where[k] = 1.0, (o.x, o.y)
  return np.concatenate([presence, where.ravel(), _background(scene)])


def _words(text):
  return re.findall(r"[a-z]+", text)


def unbound_text(text):
  """Bag of words."""
  counts = collections.Counter(_words(text))
  return np.array([counts[w] for w in COLOR_LIST + SHAPE_LIST + list(RELATIONS) + ["and"]], float)


def bound_text(text):
  """Named identities, and for a relation where the first/second object sits (-1/+1 on its axis)."""
  words = _words(text)
  named = [(words[i], words[i + 1]) for i in range(len(words) - 1)
           if words[i] in COLORS and words[i + 1] in SHAPES]
  presence, where = np.zeros(36), np.zeros((36, 2))
  relation = next((w for w in words if w in RELATIONS), None)
  for rank, identity in enumerate(named):
    k = binding.IDENTITY_INDEX[identity]
    presence[k] = 1.0
    if relation is not None:
      sign = (-1.0 if rank == 0 else 1.0) * (1.0 if relation in ("left", "above") else -1.0)
      where[k, 0 if relation in ("left", "right") else 1] = sign
  return np.concatenate([presence, where.ravel()])


def scores_with(scene_fn, text_fn, **kwargs):
  return binding.binding_scores(lambda scenes: np.stack([scene_fn(s) for s in scenes]),
                                lambda texts: np.stack([text_fn(t) for t in texts]),
                                **{**SMALL, **kwargs})


# -- tests ---------------------------------------------------------------------------------------


def test_twins_differ_only_in_binding():
  for scene, twin in binding.attribute_twins(30, seed=0, image_size=64):
    (a, b), (ta, tb) = scene.objects, twin.objects
    assert a.color != b.color and a.shape != b.shape
    assert (ta.color, ta.shape, tb.color, tb.shape) == (b.color, a.shape, a.color, b.shape)
    assert (ta.x, ta.y, tb.x, tb.y, ta.radius) == (a.x, a.y, b.x, b.y, a.radius)
    assert twin.background == scene.background
    assert sorted(_words(binding.attribute_caption(scene))) == \
        sorted(_words(binding.attribute_caption(twin)))
  for scene, twin in binding.spatial_twins(30, seed=0, image_size=64):
    (a, b), (ta, tb) = scene.objects, twin.objects
    assert a.identity != b.identity and a.radius == b.radius == ta.radius == tb.radius
    assert (ta.identity, tb.identity, ta.x, tb.x, ta.y, tb.y) == \
        (a.identity, b.identity, b.x, a.x, b.y, a.y)
    assert max(abs(a.x - b.x), abs(a.y - b.y)) >= CLEAR_MARGIN - 1e-9
    assert np.hypot(a.x - b.x, a.y - b.y) > 2 * a.radius            # still non-overlapping
    first, second = binding.spatial_caption(scene, 0), binding.spatial_caption(twin, 1)
    assert first != second and sorted(_words(first)) == sorted(_words(second))
    assert _words(first)[1:3] == [a.color, a.shape] and _words(second)[1:3] == [b.color, b.shape]


def test_model_without_binding_scores_exactly_half():
  result = scores_with(unbound_scene, unbound_text)
  for key in ACCURACIES:
    assert result[key] == 0.5, (key, result)


def test_model_with_binding_scores_near_one():
  result = scores_with(bound_scene, bound_text)
  for key in ACCURACIES:
    assert result[key] >= 0.95, (key, result)
  assert result["image_identity_fit"] > 0.95 and result["text_identity_fit"] > 0.95
  assert result["num_examples"] == 2 * SMALL["num_twins"]


def test_deterministic_in_seed():
  first = scores_with(bound_scene, bound_text, num_twins=20)
  assert scores_with(bound_scene, bound_text, num_twins=20) == first
  assert binding.train_scenes(5, 1, 64) != binding.train_scenes(5, 2, 64)


def test_check_arguments():
  from clic_jax.evaluate import check_arguments
  check_arguments("binding", {"num_train": 10, "num_twins": 5, "seed": 1})
  with pytest.raises(ValueError, match="binding"):
    check_arguments("binding", {"num_trian": 10})


@pytest.fixture(scope="module")
def tiny():
  import clic_jax
  from clic_jax.evaluate import Embedder
  model, params = clic_jax.create_model("tiny", seed=0)
  return model, params, Embedder(model, params, batch_size=64)


def test_tiny_model_through_registry(tiny):
  from clic_jax.evaluate import evaluate
  model, params, embedder = tiny
  kwargs = {"binding": {"num_train": 200, "num_twins": 40}}
  result = evaluate(model, params, kwargs, embedder=embedder)["binding"]
  for key in ACCURACIES + ("image_identity_fit", "text_identity_fit"):
    assert 0.0 <= result[key] <= 1.0, (key, result)
  assert result["num_examples"] == 80 and result["skipped"] == {}
  assert evaluate(model, params, kwargs, embedder=embedder)["binding"] == result
