"""Scenes of the toy world: a few coloured shapes on a plain or lightly textured background.

A scene is pure data (no pixels): the renderer draws it and the caption generator describes it, so
every caption can be checked against the structure it came from. Sampling takes an explicit
`numpy.random.Generator`; nothing touches a global RNG.

Geometry: object centres and radii are fractions of the image's *shorter* side and live in the
central square of the image. Evaluation crops that square (open_clip's val transform), so no object
is ever cut off and the spatial relations stay true after the crop. Frames are square by default:
then training (which squashes the whole image into half of a pair) and evaluation (which crops)
see exactly the same content, and x, y are also fractions of the image's width and height. With
`orientations=ORIENTATIONS` the aspect ratio varies (portrait, landscape, square) so that both
pair-concatenation layouts of the CLIC pipeline occur.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

# Saturated, well-separated hues; backgrounds are neutral so no object colour clashes with them.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 35),
    "green": (30, 165, 55),
    "blue": (40, 85, 230),
    "yellow": (245, 210, 25),
    "purple": (145, 50, 190),
    "orange": (245, 130, 20),
}
SHAPES = ("circle", "square", "triangle", "star", "cross", "diamond")
SIZES = ("small", "large")
# Radius ranges, as fractions of the shorter image side. The gap between them keeps "small" and
# "large" unambiguous at 64 px.
SIZE_RADIUS = {"small": (0.08, 0.10), "large": (0.15, 0.17)}
PLAIN_BACKGROUNDS: dict[str, int] = {"white": 245, "gray": 150, "black": 25}
RELATIONS = ("left", "right", "above", "below")
OPPOSITE_RELATION = {"left": "right", "right": "left", "above": "below", "below": "above"}

# Aspect ratios (long side / short side) and how often each orientation occurs.
ORIENTATIONS = ("square", "landscape", "portrait")
LONG_SIDE_RATIOS = (1.25, 1.5)

# A stated relation must hold by at least this much (fraction of the short side), and sampled
# object pairs are at least this far apart on some axis, so every pair has a clear relation.
CLEAR_MARGIN = 0.2
# Gap kept between objects and between an object and the edge of the central square.
OBJECT_GAP = 0.05
EDGE_GAP = 0.03
# How many objects a scene has, with which probability.
OBJECT_COUNT_PROBS = {1: 0.2, 2: 0.4, 3: 0.4}


@dataclasses.dataclass(frozen=True)
class SceneObject:
  shape: str
  color: str
  size: str
  x: float          # centre, fraction of the short side, within the central square (0 = left)
  y: float          # 0 = top, so "above" means a smaller y
  radius: float

  @property
  def identity(self) -> tuple[str, str]:
    return (self.color, self.shape)


@dataclasses.dataclass(frozen=True)
class Background:
  kind: str          # "plain" | "noisy" | "striped"
  word: str          # the word captions use: "white", "gray", "black", "noisy", "striped"
  level: int         # base gray level 0..255
  stripe_width: int = 0          # in pixels at the output size; striped only
  vertical: bool = False         # stripe orientation; striped only
  noise_seed: int = 0            # texture seed so the renderer is a pure function of the scene


@dataclasses.dataclass(frozen=True)
class Scene:
  width: int
  height: int
  background: Background
  objects: tuple[SceneObject, ...]

  @property
  def orientation(self) -> str:
    if self.width == self.height:
      return "square"
    return "landscape" if self.width > self.height else "portrait"

  def to_json(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_json(cls, data: dict) -> Scene:
    return cls(width=data["width"], height=data["height"],
               background=Background(**data["background"]),
               objects=tuple(SceneObject(**o) for o in data["objects"]))


def relation_offset(a: SceneObject, b: SceneObject, relation: str) -> float:
  """How far `a` is in the direction `relation` of `b` (positive when the relation holds)."""
  if relation == "left":
    return b.x - a.x
  if relation == "right":
    return a.x - b.x
  if relation == "above":
    return b.y - a.y
  if relation == "below":
    return a.y - b.y
  raise ValueError(f"unknown relation {relation!r}; expected one of {RELATIONS}")


def clear_relation(a: SceneObject, b: SceneObject) -> str:
  """The relation of `a` to `b` along the axis where they are furthest apart."""
  dx, dy = b.x - a.x, b.y - a.y
  if abs(dx) >= abs(dy):
    return "left" if dx > 0 else "right"
  return "above" if dy > 0 else "below"


def _sample_size(rng: np.random.Generator) -> tuple[str, float]:
  size = SIZES[rng.integers(len(SIZES))]
  low, high = SIZE_RADIUS[size]
  return size, float(rng.uniform(low, high))


def _sample_positions(rng: np.random.Generator, radii: list[float],
                      max_tries: int = 200) -> list[tuple[float, float]] | None:
  """Non-overlapping centres in the unit square where every pair is clearly apart on some axis."""
  for _ in range(max_tries):
    centres = [(float(rng.uniform(r + EDGE_GAP, 1 - r - EDGE_GAP)),
                float(rng.uniform(r + EDGE_GAP, 1 - r - EDGE_GAP))) for r in radii]
    ok = True
    for i in range(len(radii)):
      for j in range(i):
        dx, dy = centres[i][0] - centres[j][0], centres[i][1] - centres[j][1]
        if math.hypot(dx, dy) < radii[i] + radii[j] + OBJECT_GAP:
          ok = False
        elif max(abs(dx), abs(dy)) < CLEAR_MARGIN:
          ok = False
    if ok:
      return centres
  return None


def _sample_objects(rng: np.random.Generator) -> tuple[SceneObject, ...]:
  counts = list(OBJECT_COUNT_PROBS)
  n = counts[rng.choice(len(counts), p=list(OBJECT_COUNT_PROBS.values()))]
  colors, shapes = list(COLORS), list(SHAPES)
  # Each (colour, shape) occurs at most once, so "the red circle" always names one object.
  identities: list[tuple[str, str]] = []
  while len(identities) < n:
    identity = (colors[rng.integers(len(colors))], shapes[rng.integers(len(shapes))])
    if identity not in identities:
      identities.append(identity)
  sizes = [_sample_size(rng) for _ in range(n)]
  centres = _sample_positions(rng, [r for _, r in sizes])
  if centres is None:                                  # crowded: shrink everything and retry
    sizes = [("small", SIZE_RADIUS["small"][0]) for _ in range(n)]
    centres = _sample_positions(rng, [r for _, r in sizes], max_tries=10_000)
    if centres is None:
      raise RuntimeError("could not place toy-world objects; this is a bug in the sampler")
  return tuple(SceneObject(shape=shape, color=color, size=size, x=x, y=y, radius=radius)
               for (color, shape), (size, radius), (x, y) in zip(identities, sizes, centres))


def _sample_background(rng: np.random.Generator, short_side: int) -> Background:
  kind = ("plain", "noisy", "striped")[rng.choice(3, p=[0.5, 0.25, 0.25])]
  noise_seed = int(rng.integers(2**31))
  if kind == "plain":
    word = list(PLAIN_BACKGROUNDS)[rng.integers(len(PLAIN_BACKGROUNDS))]
    return Background(kind="plain", word=word, level=PLAIN_BACKGROUNDS[word], noise_seed=noise_seed)
  level = int(rng.integers(170, 215))                  # light, so objects stand out
  if kind == "noisy":
    return Background(kind="noisy", word="noisy", level=level, noise_seed=noise_seed)
  stripe = max(2, int(round(short_side * rng.uniform(0.05, 0.1))))
  return Background(kind="striped", word="striped", level=level, stripe_width=stripe,
                    vertical=bool(rng.integers(2)), noise_seed=noise_seed)


def _sample_frame(rng: np.random.Generator, image_size: int,
                  orientations: tuple[str, ...]) -> tuple[int, int]:
  orientation = orientations[rng.integers(len(orientations))]
  if orientation == "square":
    return image_size, image_size
  long_side = int(round(image_size * LONG_SIDE_RATIOS[rng.integers(len(LONG_SIDE_RATIOS))]))
  return (long_side, image_size) if orientation == "landscape" else (image_size, long_side)


def sample_scene(rng: np.random.Generator, image_size: int = 64,
                 orientations: tuple[str, ...] = ("square",)) -> Scene:
  """One random scene whose shorter image side is `image_size` pixels; its frame is drawn
  uniformly from `orientations` (a subset of ORIENTATIONS)."""
  if image_size < 16:
    raise ValueError(f"image_size={image_size} is too small to draw shapes; use 16 or more")
  if not orientations or set(orientations) - set(ORIENTATIONS):
    raise ValueError(f"orientations={orientations!r}: a non-empty subset of {ORIENTATIONS}")
  width, height = _sample_frame(rng, image_size, tuple(orientations))
  return Scene(width=width, height=height, background=_sample_background(rng, image_size),
               objects=_sample_objects(rng))


def scene_key(scene: Scene) -> tuple:
  """What makes two scenes "the same" for the train/test split: background and each object's
  colour, shape, size and cell of a 3x3 grid. Held-out scenes never share a key with training."""
  cells = sorted((o.color, o.shape, o.size, min(int(o.x * 3), 2), min(int(o.y * 3), 2))
                 for o in scene.objects)
  return (scene.background.kind, scene.background.word, tuple(cells))
