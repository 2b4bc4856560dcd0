"""Binding probes: does an embedding know WHICH colour goes with WHICH shape, and WHERE each one is?

Works on any model the Embedder can run (random init, a clic_jax checkpoint, open_clip weights):
the probes draw their own toy-world scenes at the model's resolution, so no data is needed.

1. Probe training. `num_train` random scenes (square frames, objects as sampled). Image features:
   the scene's image embedding. Text features: one caption per scene naming its objects fully
   (colour + shape, no size): "a red circle." for a one-object scene, otherwise a relation between
   two random objects, "a red circle to the left of a blue square.".
2. Linear probes, ridge regression in closed form on standardized features (no iterative fitting,
   no search; lambda = RIDGE * rows, i.e. 1% of the mean per-feature variance per row):
   - identity probe: the 36-dim 0/1 presence of each (colour, shape) (for text: the named objects);
   - position probe: per identity, (x, y) of its centre, fit on the rows where it is present (for
     text: the two objects of a relation caption, at their true positions in the scene).
3. Twin tests on held-out scenes from separate random streams; both members of a pair are scored.
   - attribute: two objects of different colour and different shape; the twin swaps the colours.
     margin = f(c1,s1) + f(c2,s2) - f(c1,s2) - f(c2,s1) from the identity probe; correct if > 0.
   - spatial: two objects of distinct identity and equal size; the twin swaps their positions.
     On the axis where they are further apart, correct if pred(obj1) - pred(obj2) has the sign of
     the true difference.
   - text twins are the twins' captions: "a red circle and a blue square." vs "a blue circle and a
     red square."; "a red circle to the left of a blue square." vs "a blue square to the left of a
     red circle." (same template, objects exchanged, both true of their scenes).
   A tie (|margin| < TIE) counts 0.5. A model without binding (its embedding depends only on the
   multiset of colours, shapes, positions, words) embeds a scene and its twin identically, so the
   two margins are exact negatives and it scores exactly 0.5; a model that binds scores near 1.

Results: image_/text_ attribute and spatial accuracies, and image_/text_identity_fit = mean average
precision of the identity probe on the twin scenes (chance is about 2/36 = 0.06), which says whether
the probe learned anything at all. Everything is deterministic in `seed`: item i of stream s comes
from np.random.default_rng([seed, s, i]).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import numpy as np

from clic_jax.data.toyworld.captions import Objects, Relation, full_desc, render
from clic_jax.data.toyworld.render import render_scene
from clic_jax.data.toyworld.scenes import COLORS, SHAPES, Scene, clear_relation, sample_scene
from clic_jax.evaluate.embed import SkipCounter

IDENTITIES: tuple[tuple[str, str], ...] = tuple((c, s) for c in COLORS for s in SHAPES)
IDENTITY_INDEX = {identity: i for i, identity in enumerate(IDENTITIES)}
RIDGE = 1e-2            # lambda = RIDGE * number of rows, on standardized features
TIE = 1e-9
# Random streams (the entry after the seed).
TRAIN_SCENES, ATTRIBUTE_TWINS, SPATIAL_TWINS, TRAIN_CAPTIONS = range(4)
_MAX_REDRAWS = 10_000

EmbedFn = Callable[[Sequence[Any]], np.ndarray]


# -- scenes and captions ---------------------------------------------------------------------------


def _square_scene(rng: np.random.Generator, image_size: int) -> Scene:
  """A random scene in a square frame (objects live in the central square anyway)."""
  return dataclasses.replace(sample_scene(rng, image_size), width=image_size, height=image_size)


def train_scenes(num: int, seed: int, image_size: int) -> list[Scene]:
  return [_square_scene(np.random.default_rng([seed, TRAIN_SCENES, i]), image_size)
          for i in range(num)]


def _redraw(rng: np.random.Generator, image_size: int, accept: Callable[[Scene], bool]) -> Scene:
  for _ in range(_MAX_REDRAWS):
    scene = _square_scene(rng, image_size)
    if accept(scene):
      return scene
  raise RuntimeError("could not sample a twin scene; this is a bug in the binding probe")


def attribute_twins(num: int, seed: int, image_size: int) -> list[tuple[Scene, Scene]]:
  """(scene, twin): two objects differing in colour and shape; the twin swaps the colours."""
  def accept(scene):
    objs = scene.objects
    return len(objs) == 2 and objs[0].color != objs[1].color and objs[0].shape != objs[1].shape
  pairs = []
  for i in range(num):
    scene = _redraw(np.random.default_rng([seed, ATTRIBUTE_TWINS, i]), image_size, accept)
    a, b = scene.objects
    twin = dataclasses.replace(scene, objects=(dataclasses.replace(a, color=b.color),
                                               dataclasses.replace(b, color=a.color)))
    pairs.append((scene, twin))
  return pairs


def spatial_twins(num: int, seed: int, image_size: int) -> list[tuple[Scene, Scene]]:
  """(scene, twin): two objects of the same (the smaller) size; the twin swaps their centres.

  Shrinking the larger object to the smaller radius keeps the sampled placement valid, and with
  equal radii the swapped placement is valid too."""
  pairs = []
  for i in range(num):
    scene = _redraw(np.random.default_rng([seed, SPATIAL_TWINS, i]), image_size,
                    lambda s: len(s.objects) == 2)       # the sampler never repeats an identity
    a, b = scene.objects
    small = a if a.radius <= b.radius else b
    a, b = (dataclasses.replace(o, size=small.size, radius=small.radius) for o in (a, b))
    scene = dataclasses.replace(scene, objects=(a, b))
    twin = dataclasses.replace(scene, objects=(dataclasses.replace(a, x=b.x, y=b.y),
                                               dataclasses.replace(b, x=a.x, y=a.y)))
    pairs.append((scene, twin))
  return pairs


def train_caption(scene: Scene, rng: np.random.Generator) -> tuple[str, tuple, tuple]:
  """(caption, named objects, positioned objects): positioned are the relation's two objects
  (none for a one-object caption, which says nothing about position)."""
  objs = scene.objects
  if len(objs) == 1:
    return render(Objects((full_desc(objs[0], False),)))[0], objs, ()
  i, j = rng.choice(len(objs), size=2, replace=False)
  a, b = objs[i], objs[j]
  text = render(Relation(full_desc(a, False), clear_relation(a, b), full_desc(b, False)))[0]
  return text, (a, b), (a, b)


def attribute_caption(scene: Scene) -> str:
  return render(Objects(tuple(full_desc(o, False) for o in scene.objects)))[0]


def spatial_caption(scene: Scene, first: int) -> str:
  """The relation caption naming object `first` first: the scene says 0, its twin 1, so the two
  captions are one template with the objects exchanged (and hold the same words)."""
  a, b = scene.objects[first], scene.objects[1 - first]
  return render(Relation(full_desc(a, False), clear_relation(a, b), full_desc(b, False)))[0]


# -- probes ----------------------------------------------------------------------------------------


def ridge_fit(x: np.ndarray, y: np.ndarray, ridge: float = RIDGE) -> tuple[np.ndarray, np.ndarray]:
  """Closed-form ridge with an unpenalized intercept: (w, b) with prediction x @ w + b."""
  if len(x) < 2:                        # nothing to learn: constant prediction (scores as ties)
    return np.zeros((x.shape[1], y.shape[1])), (y.mean(0) if len(y) else np.zeros(y.shape[1]))
  x_mean, y_mean = x.mean(0), y.mean(0)
  xc = x - x_mean
  gram = xc.T @ xc + ridge * len(x) * np.eye(x.shape[1])
  w = np.linalg.solve(gram, xc.T @ (y - y_mean))
  return w, y_mean - x_mean @ w


@dataclasses.dataclass
class Probes:
  """Identity and per-identity position probes on one modality's features."""
  mean: np.ndarray
  scale: np.ndarray
  identity: tuple[np.ndarray, np.ndarray]               # (D, 36), (36,)
  position: tuple[np.ndarray, np.ndarray]               # (36, D, 2), (36, 2)

  @classmethod
  def fit(cls, features: np.ndarray, named: Sequence[tuple], positioned: Sequence[tuple]
          ) -> Probes:
    x = np.asarray(features, np.float64)
    mean, std = x.mean(0), x.std(0)
    scale = np.where(std > 1e-8, std, 1.0)               # constant features stay harmless
    z = (x - mean) / scale
    presence = np.zeros((len(x), len(IDENTITIES)))
    for row, objs in enumerate(named):
      for o in objs:
        presence[row, IDENTITY_INDEX[o.identity]] = 1.0
    weights, biases = [], []
    for k, identity in enumerate(IDENTITIES):
      rows, xy = [], []
      for row, objs in enumerate(positioned):
        for o in objs:
          if o.identity == identity:
            rows.append(row)
            xy.append((o.x, o.y))
      w, b = ridge_fit(z[rows], np.asarray(xy, np.float64).reshape(-1, 2))
      weights.append(w)
      biases.append(b)
    return cls(mean, scale, ridge_fit(z, presence), (np.stack(weights), np.stack(biases)))

  def predict(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, 36) identity scores and (N, 36, 2) positions. Rows are deduplicated first, so equal
    embeddings get bit-identical predictions (what makes a binding-free model score exactly 0.5,
    whatever the BLAS does with row blocks)."""
    unique, inverse = np.unique(np.asarray(features, np.float64), axis=0, return_inverse=True)
    z = (unique - self.mean) / self.scale
    scores = z @ self.identity[0] + self.identity[1]
    positions = np.einsum("nd,kdc->nkc", z, self.position[0]) + self.position[1]
    inverse = inverse.reshape(-1)
    return scores[inverse], positions[inverse]


# -- scoring ---------------------------------------------------------------------------------------


def _score(values: np.ndarray) -> float:
  """Mean of 1 (> TIE), 0 (< -TIE) or 0.5 (a tie) over signed margins."""
  return float(np.mean(np.where(np.abs(values) < TIE, 0.5, values > 0)))


def attribute_accuracy(scores: np.ndarray, scenes: Sequence[Scene]) -> float:
  margins = []
  for row, scene in zip(scores, scenes):
    (c1, s1), (c2, s2) = (o.identity for o in scene.objects)
    f = lambda c, s: row[IDENTITY_INDEX[(c, s)]]
    # (p + q) - (r + s): the twin's margin is then the exact floating-point negative.
    margins.append((f(c1, s1) + f(c2, s2)) - (f(c1, s2) + f(c2, s1)))
  return _score(np.asarray(margins))


def spatial_accuracy(positions: np.ndarray, scenes: Sequence[Scene]) -> float:
  margins = []
  for row, scene in zip(positions, scenes):
    a, b = scene.objects
    axis = 0 if abs(a.x - b.x) >= abs(a.y - b.y) else 1
    true = np.sign((a.x, a.y)[axis] - (b.x, b.y)[axis])
    pred = (row[IDENTITY_INDEX[a.identity], axis] - row[IDENTITY_INDEX[b.identity], axis])
    margins.append(true * pred)
  return _score(np.asarray(margins))


def mean_average_precision(scores: np.ndarray, named: Sequence[tuple]) -> float:
  """Mean over identities (those present at least once) of the average precision of ranking the
  rows by the identity probe's score."""
  aps = []
  for k, identity in enumerate(IDENTITIES):
    relevant = np.array([any(o.identity == identity for o in objs) for objs in named])
    if not relevant.any():
      continue
    hits = relevant[np.argsort(-scores[:, k], kind="stable")]
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    aps.append(precision[hits].mean())
  return float(np.mean(aps))


def binding_scores(embed_scenes: EmbedFn, embed_texts: EmbedFn, *, num_train: int = 2000,
                   num_twins: int = 400, seed: int = 0, image_size: int = 64) -> dict[str, Any]:
  """The probes on arbitrary embedders: `embed_scenes(list[Scene]) -> (N, D)` (render with
  `render_scene`, or read the scene directly in tests) and `embed_texts(list[str]) -> (N, D')`."""
  if num_train < 2 or num_twins < 1:
    raise ValueError(f"binding: num_train={num_train} must be >= 2 and num_twins={num_twins} >= 1")
  train = train_scenes(num_train, seed, image_size)
  attribute = [s for pair in attribute_twins(num_twins, seed, image_size) for s in pair]
  spatial = [s for pair in spatial_twins(num_twins, seed, image_size) for s in pair]
  twins = attribute + spatial

  # Images: one embedding pass over everything (fewer padded batches).
  images = np.asarray(embed_scenes(train + twins))
  image_probes = Probes.fit(images[:num_train], [s.objects for s in train],
                            [s.objects for s in train])
  scores, positions = image_probes.predict(images[num_train:])
  n = len(attribute)
  result = {"image_attribute": attribute_accuracy(scores[:n], attribute),
            "image_spatial": spatial_accuracy(positions[n:], spatial),
            "image_identity_fit": mean_average_precision(scores, [s.objects for s in twins])}

  # Text: the training captions, then the twins' captions (scene: object 0 first, twin: object 1).
  captions = [train_caption(s, np.random.default_rng([seed, TRAIN_CAPTIONS, i]))
              for i, s in enumerate(train)]
  twin_texts = ([attribute_caption(s) for s in attribute]
                + [spatial_caption(s, i % 2) for i, s in enumerate(spatial)])
  texts = np.asarray(embed_texts([c[0] for c in captions] + twin_texts))
  text_probes = Probes.fit(texts[:num_train], [c[1] for c in captions], [c[2] for c in captions])
  scores, positions = text_probes.predict(texts[num_train:])
  result.update({"text_attribute": attribute_accuracy(scores[:n], attribute),
                 "text_spatial": spatial_accuracy(positions[n:], spatial),
                 "text_identity_fit": mean_average_precision(scores, [s.objects for s in twins])})
  result["num_examples"] = 2 * num_twins          # scored scenes (or captions) per twin test
  return result


def run(embedder, *, num_train: int = 2000, num_twins: int = 400, seed: int = 0,
        image_size: int | None = None, on_missing: str = "skip") -> dict[str, Any]:
  """Registry runner. Scenes are rendered at `image_size` (default: the model's input size, e.g.
  64 for tiny-64, 224 for ViT-B-32) inside the Embedder's loader threads. Nothing is read from
  disk, so `on_missing` only has to be valid."""
  skips = SkipCounter("binding", on_missing)
  size = int(image_size or embedder.image_size)

  def embed_scenes(scenes):
    embeddings, failures = embedder.embed_images(scenes, render_scene)
    if failures:
      raise RuntimeError(f"binding: rendering failed for {len(failures)} scenes: "
                         f"{sorted(set(failures.values()))}")
    return embeddings

  result = binding_scores(embed_scenes, embedder.embed_texts, num_train=num_train,
                          num_twins=num_twins, seed=seed, image_size=size)
  result["skipped"] = skips.as_dict()
  return result
