"""The toy world's compositional benchmark, in the public SugarCrepe and SugarCrepe++ file formats.

SugarCrepe (github.com/RAIVNLab/sugar-crepe, data/*.json): one file per category, each a dict
  {"<id>": {"filename": "<image file under the COCO val2017 folder>", "caption": ..., "negative_caption": ...}}
SugarCrepe++ (github.com/Sri-Harsha/scpp, data/*.json): one file per category, each a list of
  {"id": <int>, "filename": ..., "caption": ..., "caption2": <paraphrase of caption>, "negative_caption": ...}
Retrieval (Karpathy-style, like coco_karpathy_test.json): a list of {"image": <relpath>, "caption": [5 strings]}.

Every pair is built from a scene's structure and checked against it: the caption must be clearly true
and the negative false under its most generous reading, so a perfect model scores 100%.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import os
from typing import Callable

import numpy as np

from clic_jax.data.toyworld import captions as cap
from clic_jax.data.toyworld.scenes import COLORS, SHAPES, OPPOSITE_RELATION, Scene, clear_relation

SUGARCREPE_CATEGORIES = ("add_att", "add_obj", "replace_att", "replace_obj", "replace_rel",
                         "swap_att", "swap_obj")
SUGARCREPE_PP_CATEGORIES = ("replace_att", "replace_obj", "replace_rel", "swap_att", "swap_obj")
RETRIEVAL_CAPTIONS = 5
_TRIES = 8          # random re-draws per scene and category before giving up on that pair

Builder = Callable[[cap.Desc], cap.Statement]


@dataclasses.dataclass(frozen=True)
class HardNegativePair:
  category: str
  caption: cap.Statement
  negative: cap.Statement


def _pick(rng: np.random.Generator, items: list):
  return items[rng.integers(len(items))]


def _form(rng: np.random.Generator) -> str:
  return ("plain", "there_is")[rng.integers(2)]


def _frame_around(scene: Scene, index: int, rng: np.random.Generator,
                  relation_only: bool = False) -> Builder | None:
  """A sentence with a slot for the description of object `index`: a relation to another object
  or a list of some of the objects. Returns desc -> statement, so caption and negative share it."""
  objects = scene.objects
  target = objects[index]
  others = [j for j in range(len(objects)) if j != index]
  if relation_only and not others:
    return None
  with_size = bool(rng.integers(2))
  if others and (relation_only or rng.random() < 0.5):
    j = _pick(rng, others)
    other = cap.full_desc(objects[j], with_size)
    form = _form(rng)
    if rng.integers(2):
      rel = clear_relation(target, objects[j])
      return lambda d: cap.Relation(d, rel, other, form)
    rel = clear_relation(objects[j], target)
    return lambda d: cap.Relation(other, rel, d, form)
  chosen = [j for j in others if rng.integers(2)]
  order = [index] + chosen
  order = [order[k] for k in rng.permutation(len(order))]
  there_is = bool(rng.integers(2))
  fixed = {j: cap.full_desc(objects[j], with_size) for j in order}
  return lambda d: cap.Objects(tuple(d if j == index else fixed[j] for j in order), there_is)


def _swap_att(scene: Scene, rng: np.random.Generator) -> HardNegativePair | None:
  pairs = [(a, b) for a, b in itertools.permutations(scene.objects, 2)
           if a.color != b.color and a.shape != b.shape]
  if not pairs:
    return None
  a, b = _pick(rng, pairs)
  with_size = bool(rng.integers(2))
  da, db = cap.full_desc(a, with_size), cap.full_desc(b, with_size)
  na, nb = dataclasses.replace(da, color=b.color), dataclasses.replace(db, color=a.color)
  if rng.integers(2):
    rel, form = clear_relation(a, b), _form(rng)
    return HardNegativePair("swap_att", cap.Relation(da, rel, db, form), cap.Relation(na, rel, nb, form))
  there_is = bool(rng.integers(2))
  return HardNegativePair("swap_att", cap.Objects((da, db), there_is), cap.Objects((na, nb), there_is))


def _swap_obj(scene: Scene, rng: np.random.Generator) -> HardNegativePair | None:
  """Swaps the two nouns of a relation: who is left of whom (bare shapes) or which shape carries
  which colour (coloured shapes)."""
  pairs = [(a, b) for a, b in itertools.permutations(scene.objects, 2) if a.shape != b.shape]
  if not pairs:
    return None
  a, b = _pick(rng, pairs)
  rel, form = clear_relation(a, b), _form(rng)
  if rng.integers(2):
    da, db = cap.Desc(a.shape), cap.Desc(b.shape)
  else:
    da, db = cap.full_desc(a, False), cap.full_desc(b, False)
  na, nb = dataclasses.replace(da, shape=b.shape), dataclasses.replace(db, shape=a.shape)
  return HardNegativePair("swap_obj", cap.Relation(da, rel, db, form), cap.Relation(na, rel, nb, form))


def _replace_attribute(category: str, field: str, choices: tuple[str, ...]):
  def make(scene: Scene, rng: np.random.Generator) -> HardNegativePair | None:
    used = {getattr(o, field) for o in scene.objects}
    unused = [c for c in choices if c not in used]      # absent from the image: surely false
    if not unused:
      return None
    index = int(rng.integers(len(scene.objects)))
    build = _frame_around(scene, index, rng)
    desc = cap.full_desc(scene.objects[index], bool(rng.integers(2)))
    wrong = dataclasses.replace(desc, **{field: _pick(rng, unused)})
    return HardNegativePair(category, build(desc), build(wrong))
  return make


def _replace_rel(scene: Scene, rng: np.random.Generator) -> HardNegativePair | None:
  if len(scene.objects) < 2:
    return None
  build_index = int(rng.integers(len(scene.objects)))
  statement = _frame_around(scene, build_index, rng, relation_only=True)(
      cap.full_desc(scene.objects[build_index], bool(rng.integers(2))))
  flipped = dataclasses.replace(statement, relation=OPPOSITE_RELATION[statement.relation])
  return HardNegativePair("replace_rel", statement, flipped)


def _add_obj(scene: Scene, rng: np.random.Generator) -> HardNegativePair | None:
  objects = list(scene.objects)
  shown = [objects[k] for k in rng.permutation(len(objects))[:int(rng.integers(1, min(2, len(objects)) + 1))]]
  descs = [cap.full_desc(o, bool(rng.integers(2))) for o in shown]
  absent = [cap.Desc(s, c) for c in COLORS for s in SHAPES
            if not any(o.color == c and o.shape == s for o in objects)]
  extra = _pick(rng, absent)
  at = int(rng.integers(len(descs) + 1))
  there_is = bool(rng.integers(2))
  return HardNegativePair("add_obj", cap.Objects(tuple(descs), there_is),
                          cap.Objects(tuple(descs[:at] + [extra] + descs[at:]), there_is))


def _add_att(scene: Scene, rng: np.random.Generator) -> HardNegativePair | None:
  index = int(rng.integers(len(scene.objects)))
  target = scene.objects[index]
  wrong_colors = [c for c in COLORS if not any(o.shape == target.shape and o.color == c
                                               for o in scene.objects)]
  build = _frame_around(scene, index, rng)
  return HardNegativePair("add_att", build(cap.Desc(target.shape)),
                          build(cap.Desc(target.shape, _pick(rng, wrong_colors))))


_MAKERS = {
    "add_att": _add_att,
    "add_obj": _add_obj,
    "replace_att": _replace_attribute("replace_att", "color", tuple(COLORS)),
    "replace_obj": _replace_attribute("replace_obj", "shape", SHAPES),
    "replace_rel": _replace_rel,
    "swap_att": _swap_att,
    "swap_obj": _swap_obj,
}


def is_valid_pair(pair: HardNegativePair, scene: Scene) -> bool:
  """The caption is clearly true, the negative false even read generously, and they differ."""
  return (pair.caption.holds(scene, strict=True) and not pair.negative.holds(scene, strict=False)
          and cap.render(pair.caption)[0] != cap.render(pair.negative)[0])


def make_pair(category: str, scene: Scene, rng: np.random.Generator) -> HardNegativePair | None:
  """A checked (caption, negative) for the scene, or None when the scene cannot host the category
  (e.g. swap_att needs two objects of different colours and shapes)."""
  if category not in _MAKERS:
    raise ValueError(f"unknown benchmark category {category!r}; expected one of {tuple(_MAKERS)}")
  for _ in range(_TRIES):
    pair = _MAKERS[category](scene, rng)
    if pair is None:
      return None
    if is_valid_pair(pair, scene):
      return pair
  return None


def retrieval_captions(scene: Scene, rng: np.random.Generator,
                       count: int = RETRIEVAL_CAPTIONS) -> list[str]:
  """`count` different true sentences about the scene. Sentences that fit most images ("there are
  two shapes.", "the background is white.") are left out: no model could retrieve with them."""
  generic = (cap.Count, cap.BackgroundIs)
  statements = ([cap.first_statement(scene, rng)]
                + [s for s in cap.statement_pool(scene, rng) if not isinstance(s, generic)]
                + [cap.Objects((cap.full_desc(o),), there_is=True) for o in scene.objects])
  texts: list[str] = []
  for statement in statements:
    text = cap.render(statement)[0]
    if text not in texts:
      texts.append(text)
  chosen = [texts[k] for k in rng.permutation(len(texts))[:count]]
  while len(chosen) < count:       # cannot happen with the current templates; keep the format anyway
    chosen.append(chosen[len(chosen) % len(texts)])
  return chosen


def build_benchmark(scenes: list[Scene], filenames: list[str], seed_entropy: list[int],
                    retrieval_images: list[str] | None = None) -> dict:
  """All benchmark records for held-out scenes: {"sugarcrepe": {cat: {id: {...}}},
  "sugarcrepe_pp": {cat: [{...}]}, "retrieval": [{...}], "skipped": {cat: n}}.

  `filenames` are relative to the COCO-like image folder; `retrieval_images` (default: the same)
  are the paths written into the retrieval file. Scene i draws from
  np.random.default_rng([*seed_entropy, i]), so its items do not depend on the other scenes.
  """
  retrieval_images = retrieval_images or filenames
  sugarcrepe: dict[str, dict] = {c: {} for c in SUGARCREPE_CATEGORIES}
  sugarcrepe_pp: dict[str, list] = {c: [] for c in SUGARCREPE_PP_CATEGORIES}
  skipped = {c: 0 for c in SUGARCREPE_CATEGORIES}
  retrieval = []
  for index, (scene, filename) in enumerate(zip(scenes, filenames)):
    rng = np.random.default_rng([*seed_entropy, index])
    for category in SUGARCREPE_CATEGORIES:
      pair = make_pair(category, scene, rng)
      if pair is None:
        skipped[category] += 1
        continue
      caption, negative = cap.render(pair.caption)[0], cap.render(pair.negative)[0]
      sugarcrepe[category][str(index)] = {"filename": filename, "caption": caption,
                                          "negative_caption": negative}
      paraphrased = cap.paraphrase(pair.caption, scene) if category in sugarcrepe_pp else None
      if paraphrased is not None:
        sugarcrepe_pp[category].append({"id": index, "filename": filename, "caption": caption,
                                        "caption2": cap.render(paraphrased)[0],
                                        "negative_caption": negative})
    retrieval.append({"image": retrieval_images[index], "caption": retrieval_captions(scene, rng)})
  return {"sugarcrepe": sugarcrepe, "sugarcrepe_pp": sugarcrepe_pp, "retrieval": retrieval,
          "skipped": skipped}


def _write_json(path: str, data) -> None:
  with open(path, "w", encoding="utf-8") as f:
    json.dump(data, f, indent=1)
    f.write("\n")


def write_benchmark(records: dict, sugarcrepe_dir: str, sugarcrepe_pp_dir: str,
                    retrieval_path: str) -> None:
  os.makedirs(sugarcrepe_dir, exist_ok=True)
  os.makedirs(sugarcrepe_pp_dir, exist_ok=True)
  for category, items in records["sugarcrepe"].items():
    _write_json(os.path.join(sugarcrepe_dir, f"{category}.json"), items)
  for category, items in records["sugarcrepe_pp"].items():
    _write_json(os.path.join(sugarcrepe_pp_dir, f"{category}.json"), items)
  _write_json(retrieval_path, records["retrieval"])
