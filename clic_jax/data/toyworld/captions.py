"""Captions of the toy world: statements with a meaning, rendered as POS-tagged sentences.

Every sentence starts life as a small statement object (a list of objects, a relation, a property,
...). A statement renders itself as tokens that carry their Universal POS tag, because the generator
knows which word class it is writing, and it can check itself against a scene. The benchmark uses the
same check to prove that each negative caption is false for its image.

Tags follow Universal Dependencies English: colours, sizes and textures are ADJ, shapes and
"left"/"right"/"background" are NOUN, "to"/"of"/"above"/"below"/"on" are ADP, existential
"there is" is PRON + VERB, copular "is" is AUX, numbers are NUM, "and" is CCONJ, "," and "." PUNCT.
All text is lowercase, like the reference pipeline's CSV reader makes it.
"""
from __future__ import annotations

import dataclasses
import itertools
from typing import Union

import numpy as np

from clic_jax.data.toyworld.scenes import (CLEAR_MARGIN, OPPOSITE_RELATION, Scene, SceneObject,
                                           clear_relation, relation_offset)

Token = tuple[str, str]            # (word, Universal POS tag)

NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}
RELATION_WORDS: dict[str, tuple[Token, ...]] = {
    "left": (("to", "ADP"), ("the", "DET"), ("left", "NOUN"), ("of", "ADP")),
    "right": (("to", "ADP"), ("the", "DET"), ("right", "NOUN"), ("of", "ADP")),
    "above": (("above", "ADP"),),
    "below": (("below", "ADP"),),
}
PERIOD: Token = (".", "PUNCT")


@dataclasses.dataclass(frozen=True)
class Desc:
  """A noun phrase naming an object: its shape plus optionally its colour and size."""
  shape: str
  color: str | None = None
  size: str | None = None

  def matches(self, obj: SceneObject) -> bool:
    return (obj.shape == self.shape and self.color in (None, obj.color)
            and self.size in (None, obj.size))


def full_desc(obj: SceneObject, with_size: bool = True) -> Desc:
  return Desc(shape=obj.shape, color=obj.color, size=obj.size if with_size else None)


def noun_phrase(desc: Desc, definite: bool = False) -> list[Token]:
  words = [(w, "ADJ") for w in (desc.size, desc.color) if w] + [(desc.shape, "NOUN")]
  if definite:
    article = "the"
  else:
    article = "an" if words[0][0][0] in "aeiou" else "a"
  return [(article, "DET")] + words


def _conjoin(phrases: list[list[Token]]) -> list[Token]:
  """"x", "x and y", "x, y and z"."""
  tokens: list[Token] = []
  for i, phrase in enumerate(phrases):
    if i > 0:
      tokens.append(("and", "CCONJ") if i == len(phrases) - 1 else (",", "PUNCT"))
    tokens.extend(phrase)
  return tokens


def _there_is(plural: bool = False) -> list[Token]:
  return [("there", "PRON"), ("are" if plural else "is", "VERB")]


# ---------------------------------------------------------------------------------------------
# Statements. Each has tokens() and holds(scene, strict). `strict` is for positives (the claim is
# clearly true: relations hold by CLEAR_MARGIN, "the circle" names the only circle); non-strict is
# the most generous reading and is used for negatives (a negative must fail even that reading).
# ---------------------------------------------------------------------------------------------


def _assign(descs: tuple[Desc, ...], objects: tuple[SceneObject, ...]) -> bool:
  """Whether distinct objects can be found for all descriptions."""
  return any(all(d.matches(o) for d, o in zip(descs, chosen))
             for chosen in itertools.permutations(objects, len(descs)))


@dataclasses.dataclass(frozen=True)
class Objects:
  """"a red circle and a blue square." / "there is a red circle, a blue square and a green star."."""
  descs: tuple[Desc, ...]
  there_is: bool = False

  def tokens(self) -> list[Token]:
    lead = _there_is() if self.there_is else []
    return lead + _conjoin([noun_phrase(d) for d in self.descs]) + [PERIOD]

  def holds(self, scene: Scene, strict: bool = True) -> bool:
    return _assign(self.descs, scene.objects)


@dataclasses.dataclass(frozen=True)
class Relation:
  """"a red circle to the left of a blue square." (form "plain"), "there is ..." (form
  "there_is") or "the red circle is to the left of the blue square." (form "copula")."""
  a: Desc
  relation: str
  b: Desc
  form: str = "plain"

  def tokens(self) -> list[Token]:
    definite = self.form == "copula"
    head = noun_phrase(self.a, definite)
    if self.form == "there_is":
      head = _there_is() + head
    elif self.form == "copula":
      head = head + [("is", "AUX")]
    return head + list(RELATION_WORDS[self.relation]) + noun_phrase(self.b, definite) + [PERIOD]

  def holds(self, scene: Scene, strict: bool = True) -> bool:
    threshold = CLEAR_MARGIN - 1e-9 if strict else 1e-9
    if strict and self.form == "copula":       # "the red circle" must name exactly one object
      if any(sum(d.matches(o) for o in scene.objects) != 1 for d in (self.a, self.b)):
        return False
    return any(self.a.matches(a) and self.b.matches(b)
               and relation_offset(a, b, self.relation) >= threshold
               for a, b in itertools.permutations(scene.objects, 2))


@dataclasses.dataclass(frozen=True)
class Property:
  """"the circle is red." / "the square is large." (attribute is "color" or "size")."""
  shape: str
  attribute: str
  value: str

  def tokens(self) -> list[Token]:
    return [("the", "DET"), (self.shape, "NOUN"), ("is", "AUX"), (self.value, "ADJ"), PERIOD]

  def holds(self, scene: Scene, strict: bool = True) -> bool:
    same_shape = [o for o in scene.objects if o.shape == self.shape]
    if strict and len(same_shape) != 1:      # "the circle" must name exactly one object
      return False
    return any(getattr(o, self.attribute) == self.value for o in same_shape)


@dataclasses.dataclass(frozen=True)
class Count:
  """"there is one shape." / "there are three shapes."."""
  number: int

  def tokens(self) -> list[Token]:
    plural = self.number != 1
    return _there_is(plural) + [(NUMBER_WORDS[self.number], "NUM"),
                                ("shapes" if plural else "shape", "NOUN"), PERIOD]

  def holds(self, scene: Scene, strict: bool = True) -> bool:
    return len(scene.objects) == self.number


@dataclasses.dataclass(frozen=True)
class BackgroundIs:
  """"the background is white." / "the background is striped."."""
  word: str

  def tokens(self) -> list[Token]:
    return [("the", "DET"), ("background", "NOUN"), ("is", "AUX"), (self.word, "ADJ"), PERIOD]

  def holds(self, scene: Scene, strict: bool = True) -> bool:
    return scene.background.word == self.word


@dataclasses.dataclass(frozen=True)
class OnBackground:
  """"a small red circle on a noisy background."."""
  desc: Desc
  word: str

  def tokens(self) -> list[Token]:
    return (noun_phrase(self.desc) + [("on", "ADP")]
            + noun_phrase(Desc(shape="background", color=self.word)) + [PERIOD])

  def holds(self, scene: Scene, strict: bool = True) -> bool:
    return scene.background.word == self.word and any(self.desc.matches(o) for o in scene.objects)


Statement = Union[Objects, Relation, Property, Count, BackgroundIs, OnBackground]


def join_words(words: list[str]) -> str:
  """Words -> sentence: single spaces, punctuation glued to the word before it."""
  text = ""
  for word in words:
    text += word if (not text or word in {",", "."}) else " " + word
  return text


def render(statement: Statement) -> tuple[str, list[Token]]:
  tokens = statement.tokens()
  return join_words([w for w, _ in tokens]), tokens


# ---------------------------------------------------------------------------------------------
# Describing a scene: a first sentence plus a pool of other true sentences (extra positives).
# ---------------------------------------------------------------------------------------------


def _shuffled(rng: np.random.Generator, items: list) -> list:
  return [items[i] for i in rng.permutation(len(items))]


def first_statement(scene: Scene, rng: np.random.Generator) -> Statement:
  """The main caption: a relation between two objects, or a list of the objects."""
  descs = [full_desc(o, with_size=bool(rng.integers(2))) for o in scene.objects]
  if len(descs) == 1:
    choice = rng.integers(3)
    if choice == 2:
      return OnBackground(descs[0], scene.background.word)
    return Objects((descs[0],), there_is=bool(choice))
  if rng.random() < 0.6:
    i, j = rng.choice(len(descs), size=2, replace=False)
    a, b = scene.objects[i], scene.objects[j]
    return Relation(descs[i], clear_relation(a, b), descs[j],
                    form=("plain", "there_is")[rng.integers(2)])
  return Objects(tuple(_shuffled(rng, descs)), there_is=bool(rng.integers(2)))


def statement_pool(scene: Scene, rng: np.random.Generator) -> list[Statement]:
  """Every kind of true sentence the generator can say about the scene (used for extras and for
  retrieval captions)."""
  objects = scene.objects
  pool: list[Statement] = []
  for obj in objects:
    pool.append(Objects((full_desc(obj),)))
    if sum(o.shape == obj.shape for o in objects) == 1:
      pool.append(Property(obj.shape, "color", obj.color))
      pool.append(Property(obj.shape, "size", obj.size))
  for a, b in itertools.permutations(objects, 2):
    pool.append(Relation(full_desc(a, False), clear_relation(a, b), full_desc(b, False),
                         form=("plain", "copula")[rng.integers(2)]))
  if len(objects) > 1:
    pool.append(Objects(tuple(full_desc(o, bool(rng.integers(2))) for o in _shuffled(rng, list(objects))),
                        there_is=True))
  pool.append(Count(len(objects)))
  pool.append(BackgroundIs(scene.background.word))
  pool.append(OnBackground(full_desc(objects[rng.integers(len(objects))], False),
                           scene.background.word))
  return pool


def describe_scene(scene: Scene, rng: np.random.Generator, min_extras: int = 2,
                   max_extras: int = 4) -> list[Statement]:
  """[first sentence, extra sentences...]; all true, all with different text."""
  first = first_statement(scene, rng)
  seen = {render(first)[0]}
  extras: list[Statement] = []
  wanted = int(rng.integers(min_extras, max_extras + 1))
  for statement in _shuffled(rng, statement_pool(scene, rng)):
    text = render(statement)[0]
    if text not in seen and len(extras) < wanted:
      seen.add(text)
      extras.append(statement)
  return [first] + extras


def paraphrase(statement: Statement, scene: Scene) -> Statement | None:
  """Same meaning, different wording (SugarCrepe++'s caption2): the first rewording that is clearly
  true for the scene and reads differently, or None."""
  if isinstance(statement, Relation):
    # "a x to the left of a y" == "the y is to the right of the x" when each names one object.
    a, rel, b = statement.a, statement.relation, statement.b
    inverse = OPPOSITE_RELATION[rel]
    candidates = [Relation(b, inverse, a, "copula"), Relation(b, inverse, a, "there_is"),
                  Relation(b, inverse, a, "plain")]
    candidates += [Relation(a, rel, b, form) for form in ("copula", "there_is", "plain")]
  elif isinstance(statement, Objects):
    flipped = statement.descs[::-1]
    candidates = [Objects(flipped, not statement.there_is), Objects(flipped, statement.there_is),
                  Objects(statement.descs, not statement.there_is)]
  else:
    raise ValueError(f"no paraphrase rule for {type(statement).__name__}")
  text = render(statement)[0]
  for candidate in candidates:
    if render(candidate)[0] != text and candidate.holds(scene, strict=True):
      return candidate
  return None
