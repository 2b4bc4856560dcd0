"""Caption variants and hard negatives for one training sample.

See docs/method.md, "Samples", and "Where clic_jax differs from the authors' code" for the
guarantees the reference lacks.

Pure functions: all randomness comes from the `np.random.Generator` passed in, and every set is
sorted before anything is sampled from it, so a sample is a function of (seed, inputs) only
(docs/method.md, "Determinism").
Nothing here raises on bad captions (empty, punctuation only, one word, non-English, longer than 77
tokens): each call returns a usable result plus counters that say which fallback was taken.

Texts are used exactly as given: the CSV reader lowercases them (docs/method.md, "Dataset format")
and the POS tags must have been computed on the same text, because the word swap is case-sensitive
like the reference's.

Counters (each 0/1 per call; the pipeline sums them into its stats):
  no_extra_sentences     a record had no extra sentence; its first sentence was reused
                         (docs/method.md, "Caption variants")
  caption_without_words  a first sentence was empty or had no word characters
  cross_pos_fallback     the two captions share no swappable part of speech; two different words of
                         any kind (never punctuation) were swapped, like the reference's fallback
  negative_retried       the first swap gave a negative equal to a positive; another one was used
  cross_swap_failed      no cross-caption swap gave a valid negative; a swap inside one caption was used
  single_pos_fallback    no part of speech had two different words; two different words of
                         different (or excluded) parts of speech were swapped
  no_valid_negative      nothing gave a negative that differs from every positive; the returned
                         negative is a best effort and `CaptionSet.negative_is_valid` is False
"""
from __future__ import annotations

import dataclasses
import functools
import re
from typing import Callable, Iterator, Sequence

import numpy as np

from clic_jax.data import pos_tagging

# Tags never chosen for a same-POS swap: the reference's list plus SPACE
# (docs/method.md, "Hard negative").
EXCLUDED_POS = frozenset({"AUX", "DET", "INTJ", "PART", "PUNCT", "SYM", "X", "SCONJ", "CCONJ",
                          "SPACE"})
# Tokens never swapped at all, not even in the fallbacks: never punctuation or whitespace
# (docs/method.md, "Hard negative").
NON_WORD_POS = frozenset({"PUNCT", "SYM", "SPACE"})
DEFAULT_MAX_TRIES = 8

NO_EXTRA_SENTENCES = "no_extra_sentences"
CAPTION_WITHOUT_WORDS = "caption_without_words"
CROSS_POS_FALLBACK = "cross_pos_fallback"
NEGATIVE_RETRIED = "negative_retried"
CROSS_SWAP_FAILED = "cross_swap_failed"
SINGLE_POS_FALLBACK = "single_pos_fallback"
NO_VALID_NEGATIVE = "no_valid_negative"
COUNTER_NAMES = (NO_EXTRA_SENTENCES, CAPTION_WITHOUT_WORDS, CROSS_POS_FALLBACK, NEGATIVE_RETRIED,
                 CROSS_SWAP_FAILED, SINGLE_POS_FALLBACK, NO_VALID_NEGATIVE)

TokenizeFn = Callable[[list[str]], np.ndarray]

_QUOTES_AND_PERIODS = "'\"`‘’“”."
_HAS_WORD_CHAR = re.compile(r"\w")


@dataclasses.dataclass
class CaptionSet:
  """The texts of one sample. positives[0] is p1; `single_caption` is the raw first sentence.

  See docs/method.md, "Caption variants".
  """
  positives: list[str]
  negative: str
  single_caption: str
  counters: dict[str, int] = dataclasses.field(default_factory=dict)
  negative_is_valid: bool = True


# ---------------------------------------------------------------------------------------------------
# Joining and sampling sentences


def concat_texts(texts: Sequence[str]) -> str:
  """Strip trailing whitespace, end each text with ".", join with one space.

  The joining rule of docs/method.md, "Caption variants".

  Unlike the reference, empty (or non-string) texts are skipped instead of raising IndexError.
  """
  parts = []
  for text in texts:
    text = text.rstrip() if isinstance(text, str) else ""
    if text:
      parts.append(text if text.endswith(".") else text + ".")
  return " ".join(parts)


def sample_extra_sentences(rng: np.random.Generator, extras: Sequence[str], k: int,
                           fallback: str) -> tuple[list[str], str | None]:
  """The reference's `get_captions`: k extra sentences of one image, and a counter name or None.

  See docs/method.md, "Caption variants".

  n >= k: k distinct ones in random order. 0 < n < k: all n in CSV order, then k - n drawn with
  replacement. n == 0: `fallback` (the first sentence) k times and "no_extra_sentences"; the
  reference crashes there. Blank extras do not count.
  """
  if k <= 0:
    return [], None
  pool = [e for e in extras if isinstance(e, str) and e.strip()]
  n = len(pool)
  if n >= k:
    return [pool[i] for i in rng.permutation(n)[:k]], None  # = random.sample(pool, k)
  if n > 0:
    return pool + [pool[i] for i in rng.integers(0, n, size=k - n)], None
  return [fallback] * k, NO_EXTRA_SENTENCES


# ---------------------------------------------------------------------------------------------------
# Word swaps


@functools.lru_cache(maxsize=16384)
def _alternation(words: tuple[str, ...]) -> re.Pattern:
  # Whole word = not glued to a word character on either side. Lookarounds instead of the
  # reference's \b also work for words whose edges are not word characters ("50%", "-ish").
  # `(?<!\w')` keeps the "t" of "don't" and the "s" of "dog's" from matching; quotes around a word
  # are outside the match, so they stay in place like in the reference.
  body = "|".join(re.escape(w) for w in sorted(words, key=lambda w: (-len(w), w)))
  return re.compile(rf"(?<!\w)(?<!\w')(?:{body})(?!\w)")


def swap_words(text: str, mapping: dict[str, str]) -> str:
  """Replace every whole-word, case-sensitive occurrence of each key by its value, in one pass.

  One regex pass over all keys means a replacement is never replaced again, which is what the
  reference's placeholder achieves: swap_words("a dog and a cat", {"dog": "cat", "cat": "dog"})
  is "a cat and a dog".
  """
  if not mapping or not text:
    return text
  return _alternation(tuple(mapping)).sub(lambda m: mapping[m.group(0)], text)


@functools.lru_cache(maxsize=65536)
def _clean_word(token: str) -> str | None:
  """The swappable form of a token (the reference strips quotes and periods), or None if unusable."""
  word = token.strip().strip(_QUOTES_AND_PERIODS)
  return word if word and _HAS_WORD_CHAR.search(word) else None


def _words_by_pos(tags: pos_tagging.Tagged, excluded: frozenset[str]) -> dict[str, list[str]]:
  """POS -> sorted distinct swappable words.

  Sorted: sampling must not depend on set order (docs/method.md, "Determinism").
  """
  by_pos: dict[str, set[str]] = {}
  for token, pos in tags:
    word = _clean_word(token) if isinstance(token, str) else None
    if word is not None and pos not in excluded:
      by_pos.setdefault(pos, set()).add(word)
  return {pos: sorted(words) for pos, words in sorted(by_pos.items())}


def _distinct_words(tags: pos_tagging.Tagged, excluded: frozenset[str]) -> list[str]:
  return sorted({w for words in _words_by_pos(tags, excluded).values() for w in words})


WordGroup = tuple[list[str], list[str]]  # (words on the left, words on the right) of one POS


def _sample_pairs(rng: np.random.Generator, groups: list[WordGroup],
                  max_tries: int) -> Iterator[tuple[str, str]]:
  """Distinct word pairs, sampled like the reference: a group (POS) uniformly, then a word from each
  side uniformly. A pair is never yielded twice and never pairs a word with itself; at most
  `max_tries` pairs. When left and right are the same list, two different words of it are drawn.
  """
  total = 0
  for left, right in groups:
    total += len(left) * (len(left) - 1) // 2 if left is right else (
        len(left) * len(right) - len(set(left) & set(right)))
  budget = min(total, max_tries)
  tried: set[tuple[str, str]] = set()
  draws = 0
  while len(tried) < budget and draws < 64 * max_tries:  # redraws of tried pairs are bounded
    draws += 1
    left, right = groups[int(rng.integers(len(groups)))] if len(groups) > 1 else groups[0]
    i = int(rng.integers(len(left)))
    if left is right:
      j = int(rng.integers(len(left) - 1))
      j += j >= i
      pair = (left[i], left[j])
      key = tuple(sorted(pair))
    else:
      pair = key = (left[i], right[int(rng.integers(len(right)))])
      if pair[0] == pair[1]:
        continue
    if key in tried:
      continue
    tried.add(key)
    yield pair


def _cross_groups(tags1, tags2) -> list[WordGroup]:
  """Per shared POS (minus exclusions), the words of each caption minus shared words.

  Steps 2-3 of docs/method.md, "Hard negative".
  """
  words1 = _words_by_pos(tags1, EXCLUDED_POS)
  words2 = _words_by_pos(tags2, EXCLUDED_POS)
  groups = []
  for pos in sorted(set(words1) & set(words2)):
    shared = set(words1[pos]) & set(words2[pos])
    left = [w for w in words1[pos] if w not in shared]
    right = [w for w in words2[pos] if w not in shared]
    if left and right:
      groups.append((left, right))
  return groups


def _any_word_groups(tags1, tags2) -> list[WordGroup]:
  """The reference's fallback (any token of each caption), minus punctuation and whitespace."""
  left, right = _distinct_words(tags1, NON_WORD_POS), _distinct_words(tags2, NON_WORD_POS)
  return [(left, right)] if left and right else []


def _within_groups(tags, excluded: frozenset[str], same_pos: bool) -> list[WordGroup]:
  """One caption's swappable words: per POS with >= 2 words (the reference's choice), or all at once."""
  if same_pos:
    lists = [words for words in _words_by_pos(tags, excluded).values() if len(words) >= 2]
  else:
    words = _distinct_words(tags, excluded)
    lists = [words] if len(words) >= 2 else []
  return [(words, words) for words in lists]


# ---------------------------------------------------------------------------------------------------
# Negative validity: it must differ from every positive after tokenization
# (docs/method.md, "Hard negative")


def _normalized(text: str) -> str:
  # The CLIP tokenizer lowercases and collapses whitespace, so these strings tokenize identically.
  return " ".join(text.lower().split())


class _DiffersFromPositives:
  """Checks candidates against the positives; tokenizes the positives at most once."""

  def __init__(self, positives: Sequence[str], tokenize_fn: TokenizeFn | None):
    self._normalized = {_normalized(p) for p in positives}
    self._positives = list(positives)
    self._tokenize_fn = tokenize_fn
    self._positive_tokens: np.ndarray | None = None

  def __call__(self, candidate: str) -> bool:
    if _normalized(candidate) in self._normalized:
      return False
    if self._tokenize_fn is None or not self._positives:
      return True
    if self._positive_tokens is None:  # one tokenizer call for the positives and the first candidate
      all_tokens = np.asarray(self._tokenize_fn(self._positives + [candidate]))
      self._positive_tokens, tokens = all_tokens[:-1], all_tokens[-1]
    else:
      tokens = np.asarray(self._tokenize_fn([candidate]))[0]
    # Truncation to the context length can cut the swapped word off: compare tokens
    # (docs/method.md, "Hard negative").
    return not bool(np.any(np.all(self._positive_tokens == tokens[None, :], axis=-1)))


# ---------------------------------------------------------------------------------------------------
# Hard negatives


@functools.lru_cache(maxsize=65536)
def _default_tags(text: str) -> tuple[tuple[str, str], ...]:
  return tuple(pos_tagging.default_tagger().tag(text))


def _resolve_tags(text: str, tags) -> pos_tagging.Tagged:
  """Tags as given, decoded from stored JSON, or computed with the default tagger (cached)."""
  if tags is None:
    return list(_default_tags(text if isinstance(text, str) else ""))
  if isinstance(tags, (str, bytes)):
    return pos_tagging.tags_from_json(tags)
  return tags if isinstance(tags, list) else list(tags)


def _as_text(text) -> str:
  return text if isinstance(text, str) else ""


def _bump(counters: dict[str, int], name: str) -> None:
  counters[name] = counters.get(name, 0) + 1


def _single_swap_candidates(rng: np.random.Generator, caption: str, tags, max_tries: int,
                            counters: dict[str, int]) -> Iterator[str]:
  """Captions with two of their words swapped, best kind first.

  See docs/method.md, "Single-caption negative".

  Tiers: two words of one POS (the reference's choice); two non-excluded words of different POS (the
  reference's fallback); any two different words, e.g. "a dog" -> "dog a" (ours, so that short
  captions still get a negative). At most `max_tries` swaps per tier.
  """
  tiers = ((EXCLUDED_POS, True), (EXCLUDED_POS, False), (NON_WORD_POS, False))
  for tier, (excluded, same_pos) in enumerate(tiers):
    groups = _within_groups(tags, excluded, same_pos)
    if not groups:
      continue
    if tier > 0 and SINGLE_POS_FALLBACK not in counters:
      _bump(counters, SINGLE_POS_FALLBACK)
    for w1, w2 in _sample_pairs(rng, groups, max_tries):
      yield swap_words(caption, {w1: w2, w2: w1})


def single_caption_negative(rng: np.random.Generator, caption: str, tags=None,
                            tokenize_fn: TokenizeFn | None = None,
                            max_tries: int = DEFAULT_MAX_TRIES,
                            positives: Sequence[str] | None = None
                            ) -> tuple[str | None, dict[str, int]]:
  """Single-caption negative with validity checks: (negative or None, counters).

  See docs/method.md, "Single-caption negative".

  Swaps two words inside `caption` (every occurrence of each). The result must differ from every
  text in `positives` (default: [caption]) after tokenization when `tokenize_fn` is given, else after
  lowercasing and collapsing whitespace. Returns None (and "no_valid_negative") when the caption has
  fewer than two different words or no swap changes it; it never raises.
  """
  caption = _as_text(caption)
  counters: dict[str, int] = {}
  tags = _resolve_tags(caption, tags)
  differs = _DiffersFromPositives([caption] if positives is None else positives, tokenize_fn)
  for tries, candidate in enumerate(_single_swap_candidates(rng, caption, tags, max_tries,
                                                            counters)):
    if differs(candidate):
      if tries:
        _bump(counters, NEGATIVE_RETRIED)
      return candidate, counters
  _bump(counters, NO_VALID_NEGATIVE)
  return None, counters


def _in_random_order(rng: np.random.Generator, a: str, b: str) -> list[str]:
  return [a, b] if rng.random() < 0.5 else [b, a]


def cross_caption_negative(rng: np.random.Generator, c1: str, tags1, c2: str, tags2,
                           tokenize_fn: TokenizeFn | None = None,
                           max_tries: int = DEFAULT_MAX_TRIES,
                           extra_positives: Sequence[str] = ()) -> tuple[str, dict[str, int]]:
  """Cross-caption hard negative with validity checks: (negative, counters).

  See docs/method.md, "Hard negative".

  Swap w1 of c1 with w2 of c2 (same POS, not shared, never punctuation/empty/identical), every
  whole-word occurrence, then join the two in random order with `concat_texts`. The negative must
  differ from p1 = concat([c1, c2]), p2 = concat([c2, c1]) and `extra_positives` after tokenization
  (`tokenize_fn`, list[str] -> int array, truncation included), else after lowercasing and collapsing
  whitespace. Invalid swaps are retried (up to `max_tries` pairs, both orders each); then a swap
  inside c1 (or c2) joined with the other caption ("cross_swap_failed"); then a best effort
  ("no_valid_negative"). `tags1`/`tags2` may be None (default tagger, cached) or stored JSON.
  """
  c1, c2 = _as_text(c1), _as_text(c2)
  counters: dict[str, int] = {}
  tags1, tags2 = _resolve_tags(c1, tags1), _resolve_tags(c2, tags2)
  positives = [concat_texts([c1, c2]), concat_texts([c2, c1]), *extra_positives]
  differs = _DiffersFromPositives(positives, tokenize_fn)

  groups = _cross_groups(tags1, tags2)
  if not groups:
    _bump(counters, CROSS_POS_FALLBACK)
    groups = _any_word_groups(tags1, tags2)
  best_effort = None
  pairs = _sample_pairs(rng, groups, max_tries) if groups else iter(())
  for tries, (w1, w2) in enumerate(pairs):
    swapped1, swapped2 = swap_words(c1, {w1: w2}), swap_words(c2, {w2: w1})
    order = _in_random_order(rng, swapped1, swapped2)
    # The other order can survive truncation (docs/method.md, "Hard negative").
    for texts in (order, order[::-1]):
      negative = concat_texts(texts)
      best_effort = best_effort or negative
      if differs(negative):
        if tries:
          _bump(counters, NEGATIVE_RETRIED)
        return negative, counters

  _bump(counters, CROSS_SWAP_FAILED)
  for caption, tags, other in ((c1, tags1, c2), (c2, tags2, c1)):
    for swapped in _single_swap_candidates(rng, caption, tags, max_tries, counters):
      negative = concat_texts(_in_random_order(rng, swapped, other))
      best_effort = best_effort or negative
      if differs(negative):
        return negative, counters
  _bump(counters, NO_VALID_NEGATIVE)
  return (best_effort if best_effort is not None else positives[0]), counters


# ---------------------------------------------------------------------------------------------------
# Caption sets for the three training variants


def _has_words(text: str) -> bool:
  return bool(_HAS_WORD_CHAR.search(text))


def _merge(into: dict[str, int], counters: dict[str, int]) -> None:
  for name, count in counters.items():
    into[name] = into.get(name, 0) + count


def clic_caption_set(rng: np.random.Generator, first1: str, extras1: Sequence[str], tags1,
                     first2: str, extras2: Sequence[str], tags2, num_extra: int = 2,
                     tokenize_fn: TokenizeFn | None = None,
                     max_tries: int = DEFAULT_MAX_TRIES) -> CaptionSet:
  """The CLIC view's texts: p1, p2, p3..p(2+num_extra), the cross-caption negative.

  See docs/method.md, "Caption variants".

  p1 = concat([c1, c2]) follows dataset order (the indexed record first), p2 = concat([c2, c1]);
  p(3+k) joins the k-th sampled extra sentence of each image in random order. `tags1`/`tags2` are
  the tags of first1/first2 (None: default tagger, cached; a string: stored JSON).
  """
  c1, c2 = _as_text(first1), _as_text(first2)
  counters: dict[str, int] = {}
  for caption in (c1, c2):
    if not _has_words(caption):
      _bump(counters, CAPTION_WITHOUT_WORDS)
  extra1, reason1 = sample_extra_sentences(rng, extras1 or (), num_extra, c1)
  extra2, reason2 = sample_extra_sentences(rng, extras2 or (), num_extra, c2)
  for reason in (reason1, reason2):
    if reason:
      _bump(counters, reason)
  positives = [concat_texts([c1, c2]), concat_texts([c2, c1])]
  positives += [concat_texts(_in_random_order(rng, a, b)) for a, b in zip(extra1, extra2)]
  negative, negative_counters = cross_caption_negative(
      rng, c1, tags1, c2, tags2, tokenize_fn=tokenize_fn, max_tries=max_tries,
      extra_positives=positives[2:])
  _merge(counters, negative_counters)
  return CaptionSet(positives=positives, negative=negative, single_caption=c1, counters=counters,
                    negative_is_valid=NO_VALID_NEGATIVE not in negative_counters)


def _single_negative_set(rng, first: str, tags, positives: list[str], tokenize_fn, max_tries,
                         counters: dict[str, int]) -> CaptionSet:
  negative, negative_counters = single_caption_negative(
      rng, first, tags, tokenize_fn=tokenize_fn, max_tries=max_tries, positives=positives)
  _merge(counters, negative_counters)
  return CaptionSet(positives=positives, negative=first if negative is None else negative,
                    single_caption=first, counters=counters, negative_is_valid=negative is not None)


def negclip_caption_set(rng: np.random.Generator, first: str, tags=None,
                        tokenize_fn: TokenizeFn | None = None,
                        max_tries: int = DEFAULT_MAX_TRIES) -> CaptionSet:
  """NegCLIP: positives [c], negative = a swap inside c (docs/method.md, "Single-caption negative").

  Without a valid swap the negative is c itself and `negative_is_valid` is False (the loss can mask
  it).
  """
  c = _as_text(first)
  counters: dict[str, int] = {}
  if not _has_words(c):
    _bump(counters, CAPTION_WITHOUT_WORDS)
  return _single_negative_set(rng, c, tags, [c], tokenize_fn, max_tries, counters)


def baseline_caption_set(rng: np.random.Generator, first: str, extras: Sequence[str], tags=None,
                         num_extra: int = 2, tokenize_fn: TokenizeFn | None = None,
                         max_tries: int = DEFAULT_MAX_TRIES) -> CaptionSet:
  """Single-image baseline: positives [c1, c1, a1[0], a1[1], ...], negative = a swap inside c1.

  See docs/method.md, "Single-caption negative".

  The second slot repeats c1 on purpose: that is what the reference trains with.
  """
  c1 = _as_text(first)
  counters: dict[str, int] = {}
  if not _has_words(c1):
    _bump(counters, CAPTION_WITHOUT_WORDS)
  extra, reason = sample_extra_sentences(rng, extras or (), num_extra, c1)
  if reason:
    _bump(counters, reason)
  return _single_negative_set(rng, c1, tags, [c1, c1, *extra], tokenize_fn, max_tries, counters)
