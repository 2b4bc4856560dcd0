"""Coarse part-of-speech tags for captions: spaCy when installed, an offline lexicon tagger otherwise.

The hard negatives (docs/method.md, "Hard negative") swap two words of the same coarse Universal
POS, exactly spaCy's `token.pos_`. The reference runs `en_core_web_sm`; that pipeline cannot be
installed from the package registry on every machine, so there are two backends behind one protocol:

  "spacy"    any installed spaCy pipeline (or a `spacy.Language` object you built), tags = token.pos_.
  "lexicon"  no download: a spaCy-like tokenizer for captions, closed-class word lists, and an
             open-class lexicon read from `lemminflect`'s bundled lemma table (~80k word forms with
             their NOUN/VERB/ADJ/ADV readings), disambiguated by a few left-to-right context rules
             tuned on captions, with suffix heuristics for unknown words. Deterministic.
  "auto"     spacy if `en_core_web_sm` is installed, else lexicon.

Tags are stored as JSON, a list of [word, pos] pairs (`tags_to_json` / `tags_from_json`), so the
dataset preparation step can tag once and training never runs a tagger.
"""
from __future__ import annotations

import dataclasses
import functools
import gzip
import importlib.util
import json
import os
import re
from typing import Any, Iterable, Protocol, Sequence, runtime_checkable

Tagged = list[tuple[str, str]]

UPOS = ("ADJ", "ADP", "ADV", "AUX", "CCONJ", "DET", "INTJ", "NOUN", "NUM", "PART", "PRON", "PROPN",
        "PUNCT", "SCONJ", "SYM", "VERB", "X", "SPACE")
_UPOS_SET = frozenset(UPOS)

DEFAULT_SPACY_MODEL = "en_core_web_sm"
_SPACY_HINT = ("install it with `python -m spacy download {name}` (needs internet), or use "
               "backend='lexicon', the offline tagger")


class TaggerUnavailableError(RuntimeError):
  """The requested tagging backend cannot run on this machine."""


@runtime_checkable
class Tagger(Protocol):
  """Anything that turns text into [(word, coarse UPOS), ...]."""

  name: str

  def tag(self, text: str) -> Tagged:
    ...

  def tag_many(self, texts: Sequence[str]) -> list[Tagged]:
    ...


# ---------------------------------------------------------------------------------------------------
# spaCy backend


class SpacyTagger:
  """Tags with a spaCy pipeline: the words are `token.text`, the tags `token.pos_`."""

  def __init__(self, nlp: Any):
    self.nlp = nlp
    meta = getattr(nlp, "meta", {}) or {}
    self.name = f"spacy:{meta.get('lang', '?')}_{meta.get('name', '?')}-{meta.get('version', '?')}"

  @staticmethod
  def _from_doc(doc) -> Tagged:
    # A pipeline without a tagger leaves pos_ empty; "X" (other) keeps the tag vocabulary closed.
    return [(token.text, token.pos_ or "X") for token in doc]

  def tag(self, text: str) -> Tagged:
    return self._from_doc(self.nlp(text))

  def tag_many(self, texts: Sequence[str]) -> list[Tagged]:
    return [self._from_doc(doc) for doc in self.nlp.pipe(list(texts), batch_size=256)]


def _is_spacy_language(obj: Any) -> bool:
  return (type(obj).__module__.split(".")[0] == "spacy" and hasattr(obj, "pipe")
          and hasattr(obj, "vocab"))


def spacy_model_installed(name: str = DEFAULT_SPACY_MODEL) -> bool:
  """True when `spacy.load(name)` can work without a download (installed package or a directory)."""
  if importlib.util.find_spec("spacy") is None:
    return False
  if os.path.isdir(name):
    return True
  try:
    return importlib.util.find_spec(name) is not None
  except (ImportError, ValueError):  # a dotted or odd name that is no importable package
    return False


@functools.lru_cache(maxsize=4)
def _load_spacy_tagger(name: str) -> SpacyTagger:
  if importlib.util.find_spec("spacy") is None:
    raise TaggerUnavailableError(
        f"POS backend 'spacy' needs the spacy package: `pip install spacy` and then "
        f"{_SPACY_HINT.format(name=name)}.")
  import spacy  # pylint: disable=import-outside-toplevel
  try:
    # Only the tagger and the attribute ruler set token.pos_; the rest would only cost time.
    nlp = spacy.load(name, exclude=["parser", "ner", "lemmatizer", "senter"])
  except OSError as err:
    raise TaggerUnavailableError(
        f"spaCy pipeline {name!r} is not installed: {_SPACY_HINT.format(name=name)}.") from err
  return SpacyTagger(nlp)


# ---------------------------------------------------------------------------------------------------
# Offline lexicon backend: tokenizer


_PREFIX_CHARS = frozenset("\"'([{<“‘«$£€¥#¿¡*`")
_SUFFIX_CHARS = frozenset(",;:!?)]}>\"'”’»…*`")
_CLITICS = ("n't", "'s", "'re", "'ve", "'ll", "'d", "'m")
# Tokens spaCy keeps whole with their period (its tokenizer exceptions, the caption-relevant part).
_ABBREVIATIONS = frozenset(
    "e.g. i.e. a.m. p.m. co. vs. v.s. Mr. Mrs. Ms. Dr. St. Jr. Sr. Mt. Inc. Ltd. Co. Corp. Prof. "
    "U.S. U.K. U.N. E.U.".split()) | frozenset(f"{letter}." for letter in "abcdefghijklmnopqrstuvwxyz")
_NUMBER_WITH_UNIT = re.compile(
    r"(\d+(?:[.,]\d+)*)(km|kg|cm|mm|m|g|mg|lb|lbs|oz|ft|mph|kph|ml|l|am|pm|k|gb|mb|hz|mhz|ghz|px|hp)")
_INFIX = re.compile(r"((?<=[^\W_])(?:-{1,3}|–|—|~)(?=[^\W_])|(?<=[^\W_])/(?=[^\W\d_])"
                    r"|(?<=[^\W\d_]),(?=[^\W\d_]))")
_WHITESPACE = re.compile(r"(\s+)")


def _norm(word: str) -> str:
  return word.lower().replace("’", "'").replace("‘", "'")


def _split_affixes(chunk: str) -> list[str]:
  """One whitespace-free chunk -> tokens: peel prefixes, suffixes and clitics, then split infixes."""
  prefixes: list[str] = []
  suffixes: list[str] = []
  s = chunk
  if _norm(s) in _CLITICS:  # a clitic written apart ("it 's") stays one token, as in spaCy
    return [s]
  while s:
    if len(s) > 1 and s[0] in _PREFIX_CHARS:
      prefixes.append(s[0])
      s = s[1:]
      continue
    if len(s) > 3 and s.endswith("..."):
      suffixes.insert(0, "...")
      s = s[:-3]
      continue
    if len(s) > 1 and s[-1] in _SUFFIX_CHARS and not _norm(s).endswith(("n't", "'s")):
      suffixes.insert(0, s[-1])
      s = s[:-1]
      continue
    lower = _norm(s)
    if len(s) > 1 and s.endswith(".") and s not in _ABBREVIATIONS:
      suffixes.insert(0, ".")
      s = s[:-1]
      continue
    if len(s) > 1 and s.endswith("%"):
      suffixes.insert(0, "%")
      s = s[:-1]
      continue
    clitic = next((c for c in _CLITICS if lower.endswith(c) and len(lower) > len(c)), None)
    if clitic is not None:
      suffixes.insert(0, s[-len(clitic):])
      s = s[:-len(clitic)]
      continue
    unit = _NUMBER_WITH_UNIT.fullmatch(lower)
    if unit is not None:
      suffixes.insert(0, s[unit.start(2):])
      s = s[:unit.start(2)]
    break
  middle = [piece for piece in _INFIX.split(s) if piece] if s else []
  return prefixes + middle + suffixes


def tokenize_like_spacy(text: str) -> list[str]:
  """Words, punctuation and clitics close to spaCy's English tokenizer on caption-like text.

  "a man's t-shirt, isn't it 50% off?" -> a man 's t - shirt , is n't it 50 % off ?
  Whitespace beyond one space becomes its own token, as in spaCy (tagged SPACE).
  """
  tokens: list[str] = []
  for part in _WHITESPACE.split(text):
    if not part:
      continue
    if part.isspace():
      rest = part[1:] if tokens and part.startswith(" ") else part
      if rest:
        tokens.append(rest)
      continue
    tokens.extend(_split_affixes(part))
  return tokens


# ---------------------------------------------------------------------------------------------------
# Offline lexicon backend: word lists


def _words(pos: str, words: str) -> dict[str, str]:
  return {word: pos for word in words.split()}


# Closed classes, as en_core_web_sm labels them (possessives are PRON, copulas AUX, particles ADP).
_CLOSED: dict[str, str] = {
    **_words("DET", "a an the every each some any no all both another either neither whatever "
             "whichever"),
    **_words("PRON", "i me my mine myself you your yours yourself yourselves he him his himself she "
             "her hers herself it its itself we us our ours ourselves they them their theirs "
             "themselves who whom whose what which something someone somebody anything anyone "
             "anybody everything everyone everybody nothing nobody"),
    **_words("ADP", "about above across against along alongside amid amidst among amongst around "
             "as at atop behind below beneath beside besides between beyond by despite down during "
             "except for from in inside into near of off on onto opposite out outside over past per "
             "through throughout toward towards under underneath unlike up upon versus via with "
             "within without than"),
    **_words("AUX", "am is are was were be been being 're 'm ai could would shall should might "
             "must ca wo 'll 'd ought"),
    **_words("PART", "not n't"),
    **_words("CCONJ", "and or but nor &"),
    **_words("SCONJ", "because although though while whereas if unless whether"),
    **_words("ADV", "very also too quite rather just only even still almost nearly here now then "
             "always never often sometimes perhaps maybe together away nearby ahead apart upstairs "
             "downstairs outdoors indoors however so again already else instead somewhat how where "
             "why when really extremely slightly mostly partially fully"),
    **_words("INTJ", "yes oh hello hi hey wow ok okay please ah oops yeah um uh bye"),
    **_words("NUM", "zero one two three four five six seven eight nine ten eleven twelve thirteen "
             "fourteen fifteen sixteen seventeen eighteen nineteen twenty thirty forty fifty sixty "
             "seventy eighty ninety hundred thousand million billion trillion"),
    **_words("ADJ", "many such other several few same own various"),
}
_POSSESSIVES = frozenset("my your his her its our their whose".split())
_SUBJECT_PRONOUNS = frozenset("i you he she it we they who".split())
_DEMONSTRATIVES = frozenset("this that these those".split())
_DEGREE_ADVERBS = frozenset("very so quite really too extremely slightly rather fairly".split())
_HAVE = frozenset("have has had having 've".split())
_DO = frozenset("do does did".split())
_MODALS_AMBIGUOUS = frozenset("can will may".split())  # also nouns: "a can of soda"
_TEMPORAL = frozenset("before after since until till".split())
_ADVERB_NEXT_TO_PREPOSITION = frozenset("next right just".split())
# Nouns the lemma table lacks or under-weights for captions ("on top of", "to the left").
_EXTRA_NOUNS = frozenset("top front side back bottom middle center centre left right background "
                         "foreground t".split())
_SYMBOLS = frozenset("$ € £ ¥ + = < > ^ ~ | \\ # @ ° × / * ©".split())
_NUMBER = re.compile(r"[+-]?\d+(?:[.,:/]\d+)*(?:s|st|nd|rd|th)?")


@dataclasses.dataclass(frozen=True)
class _Entry:
  """What the lemma table says about one lowercase word form."""
  cats: frozenset[str]   # subset of NOUN VERB ADJ ADV PROPN
  vbg: bool = False      # verb -ing form
  past: bool = False     # verb -ed / irregular past form
  vbz: bool = False      # verb third person singular
  plural: bool = False   # noun plural form
  noun_base: bool = False


def _lemminflect_table() -> str:
  spec = importlib.util.find_spec("lemminflect")
  if spec is None or not spec.submodule_search_locations:
    raise TaggerUnavailableError(
        "POS backend 'lexicon' reads lemminflect's word table: `pip install lemminflect`.")
  return os.path.join(list(spec.submodule_search_locations)[0], "resources", "lemma_lu.csv.gz")


@functools.lru_cache(maxsize=1)
def _open_class_lexicon() -> dict[str, _Entry]:
  """lowercase word form -> _Entry, from lemminflect's `lemma_lu.csv.gz` (form,category,lemmas)."""
  upos_of = {"noun": "NOUN", "verb": "VERB", "adj": "ADJ", "adv": "ADV"}
  lower_info: dict[str, dict[str, Any]] = {}
  capital_info: dict[str, set[str]] = {}
  with gzip.open(_lemminflect_table(), "rt", encoding="utf-8") as table:
    for line in table:
      parts = line.rstrip("\n").split(",")
      if len(parts) != 3 or parts[1] not in upos_of:
        continue
      form, category, lemmas = parts
      upos = upos_of[category]
      is_base = form in lemmas.split("/")
      if form != form.lower():
        capital_info.setdefault(form.lower(), set()).add(upos)
        continue
      info = lower_info.setdefault(form, {"cats": set(), "vbg": False, "past": False,
                                          "vbz": False, "plural": False, "noun_base": False})
      info["cats"].add(upos)
      if upos == "VERB" and not is_base:
        if form.endswith("ing"):
          info["vbg"] = True
        elif form.endswith("s") and not form.endswith("ss"):
          info["vbz"] = True
        else:
          info["past"] = True
      if upos == "NOUN":
        info["plural" if not is_base else "noun_base"] = True
  lexicon = {form: _Entry(frozenset(info.pop("cats")), **info) for form, info in lower_info.items()}
  for form, cats in capital_info.items():
    if form not in lexicon:  # only a capitalised entry: a name ("Paris") or a nationality adjective
      lexicon[form] = _Entry(frozenset("PROPN" if c in ("NOUN", "VERB", "ADV") else c for c in cats))
  for form in _EXTRA_NOUNS:
    entry = lexicon.get(form, _Entry(frozenset()))
    lexicon[form] = dataclasses.replace(entry, cats=entry.cats | {"NOUN"}, noun_base=True)
  return lexicon


def _guess_unknown(word: str) -> str:
  """Suffix heuristics for words the lemma table lacks (mostly nouns in captions)."""
  lower = word.lower()
  if lower.endswith("ly") and len(lower) > 4:
    return "ADV"
  if lower.endswith(("ing", "ed")) and len(lower) > 5:
    return "VERB"
  if lower.endswith(("ous", "ful", "ive", "able", "ible", "ish", "less", "ic", "ical", "esque")):
    return "ADJ"
  return "NOUN"


# ---------------------------------------------------------------------------------------------------
# Offline lexicon backend: the tagger


class LexiconTagger:
  """Offline tagger: lexicon lookup plus context rules, close to en_core_web_sm on captions."""

  name = "lexicon"

  def __init__(self):
    self._lexicon = _open_class_lexicon()

  def tokenize(self, text: str) -> list[str]:
    return tokenize_like_spacy(text)

  def tag(self, text: str) -> Tagged:
    tokens = self.tokenize(text)
    lowers = [_norm(t) for t in tokens]
    tags: list[str] = []
    for i, token in enumerate(tokens):
      tags.append(self._tag_token(i, tokens, lowers, tags))
    return list(zip(tokens, tags))

  def tag_many(self, texts: Sequence[str]) -> list[Tagged]:
    return [self.tag(text) for text in texts]

  # -- lexical lookups used by the context rules

  def _entry(self, lower: str) -> _Entry | None:
    return self._lexicon.get(lower)

  def _could_be(self, lower: str | None, *poses: str) -> bool:
    """Whether a word has one of these readings (closed-class words only their listed one)."""
    if lower is None:
      return False
    if lower in _CLOSED or lower in _DEMONSTRATIVES or lower in _HAVE or lower in _DO:
      return _CLOSED.get(lower) in poses
    if _NUMBER.fullmatch(lower):
      return "NUM" in poses
    if not any(ch.isalnum() for ch in lower):
      return False
    entry = self._entry(lower)
    if entry is None:
      return _guess_unknown(lower) in poses or "NOUN" in poses  # unknown words are mostly nouns
    cats = entry.cats | ({"NOUN"} if "PROPN" in entry.cats else set())
    return any(p in cats for p in poses)

  def _nominal_next(self, lower: str | None) -> bool:
    """The next word could continue a noun phrase (adjective, noun, number)."""
    return self._could_be(lower, "NOUN", "ADJ", "PROPN", "NUM")

  # -- rules

  def _tag_token(self, i: int, tokens: list[str], lowers: list[str], tags: list[str]) -> str:
    token, lower = tokens[i], lowers[i]
    prev_tag = tags[i - 1] if i > 0 else None
    prev = lowers[i - 1] if i > 0 else None
    nxt = lowers[i + 1] if i + 1 < len(lowers) else None
    nxt2 = lowers[i + 2] if i + 2 < len(lowers) else None

    if token.isspace():
      return "SPACE"
    if not any(ch.isalnum() for ch in token):
      return self._punctuation(token, prev, nxt)
    if _NUMBER.fullmatch(lower):
      return "NUM"
    contextual = self._contextual_closed_class(lower, prev_tag, prev, nxt, nxt2)
    if contextual is not None:
      return contextual
    if lower in _CLOSED:
      return _CLOSED[lower]
    entry = self._entry(lower)
    if entry is None:
      starts_sentence = i == 0 or prev in (".", "!", "?", '"')
      if token[:1].isupper() and not starts_sentence:
        return "PROPN"
      return _guess_unknown(lower)
    prev2_tag = tags[i - 2] if i > 1 else None
    return self._open_class(entry, lower, prev_tag, prev, prev2_tag, nxt, nxt2)

  def _punctuation(self, token: str, prev: str | None, nxt: str | None) -> str:
    if token == "%":
      return "NOUN"  # en_core_web_sm tags "%" as NN
    if token == "&":
      return "CCONJ"
    if token in ("'", "’") and prev is not None and prev.endswith("s") and prev.isalpha() \
        and nxt is not None and nxt[:1].isalnum():
      return "PART"  # plural possessive: "the dogs' toys"
    if token in _SYMBOLS:
      return "SYM"
    return "PUNCT"

  def _contextual_closed_class(self, lower: str, prev_tag: str | None, prev: str | None,
                               nxt: str | None, nxt2: str | None) -> str | None:
    """Function words whose tag depends on the neighbours; None for everything else."""
    if lower == "to":
      verb_next = nxt in ("be", "have", "do") or (self._could_be(nxt, "VERB") and not self._could_be(nxt, "DET", "PRON", "NUM")
                   and not (nxt is not None and nxt.endswith("s") and self._could_be(nxt, "NOUN")))
      return "PART" if verb_next and not self._nominal_only(nxt) else "ADP"
    if lower in _DEMONSTRATIVES:
      if lower == "that" and prev_tag in ("NOUN", "PROPN", "PRON"):
        return "PRON"  # relative pronoun: "a dog that is running"
      return "DET" if self._nominal_next(nxt) else "PRON"
    if lower == "there":
      return "PRON" if nxt in ("is", "are", "was", "were", "'s", "'re") else "ADV"
    if lower == "'s":
      if prev in ("it", "that", "there", "he", "she", "what", "who", "here", "where", "this"):
        return "AUX"
      return "PART"
    if lower in _HAVE:
      after = nxt2 if nxt in ("not", "n't", "been") and nxt2 is not None else nxt
      participle = after is not None and (after == "been" or self._entry(after) is not None
                                          and self._entry(after).past)
      return "AUX" if participle or nxt in ("been",) else "VERB"
    if lower in _DO:
      return "AUX" if nxt in ("not", "n't") or prev in (None, ".", "?") else "VERB"
    if lower in _MODALS_AMBIGUOUS:
      if prev_tag in ("DET", "ADJ", "NUM") or (prev in _POSSESSIVES):
        return "NOUN"
      return "AUX"
    if lower == "like":
      return "VERB" if prev in _SUBJECT_PRONOUNS or prev_tag in ("AUX", "PART") else "ADP"
    if lower in _TEMPORAL:
      return "ADP" if self._nominal_next(nxt) or self._could_be(nxt, "DET", "PRON") else "SCONJ"
    if lower == "one" and prev_tag == "DET" and not self._nominal_next(nxt):
      return "NOUN"  # "the one on the left"
    return None

  def _nominal_only(self, lower: str | None) -> bool:
    entry = self._entry(lower) if lower else None
    return entry is not None and "VERB" not in entry.cats

  def _open_class(self, entry: _Entry, lower: str, prev_tag: str | None, prev: str | None,
                  prev2_tag: str | None, nxt: str | None, nxt2: str | None) -> str:
    cats = entry.cats
    noun = "PROPN" if "PROPN" in cats else "NOUN"
    if len(cats) == 1:
      return next(iter(cats))
    prev_determiner = (prev_tag in ("DET", "ADJ", "NUM") or prev in _POSSESSIVES
                       or (prev_tag == "PART" and prev in ("'s", "'")))
    verb_trigger = (prev_tag == "PART" and prev in ("to", "not", "n't")) or (
        prev_tag == "AUX" and prev not in ("is", "are", "was", "were", "am", "be", "'s", "'re",
                                           "'m", "been", "being"))
    next_nominal = self._nominal_next(nxt) and not self._could_be(nxt, "DET", "PRON", "ADP")
    after_copula = prev_tag == "AUX" or prev in _DEGREE_ADVERBS

    if "VERB" in cats and verb_trigger:
      return "VERB"
    if "ADV" in cats and (nxt in ("to", "of") and lower in _ADVERB_NEXT_TO_PREPOSITION
                          or prev is None and nxt in ("next", "behind", "above", "below", "in")):
      return "ADV"  # "next to", "right next to"
    if "VERB" in cats and entry.vbg:
      if "ADJ" in cats and prev in _DEGREE_ADVERBS:
        return "ADJ"
      if noun in cats and prev_determiner and not next_nominal:
        return noun  # "a painting of", "the building"
      return "VERB"  # "a man sitting on", "is running", "a sleeping cat"
    if "VERB" in cats and entry.past:
      if "ADJ" in cats and (prev_determiner or after_copula or next_nominal):
        return "ADJ"  # "a crowded street", "is crowded"
      return "VERB"
    if "VERB" in cats and entry.vbz and noun in cats:
      subject_before = prev_tag in ("NOUN", "PROPN") or prev in _SUBJECT_PRONOUNS or (
          prev_tag == "ADV" and prev2_tag in ("NOUN", "PROPN", "PRON"))
      if subject_before:
        return "VERB"  # "a man plays the guitar", "a woman carefully paints"
      return noun
    if "ADJ" in cats:
      if noun in cats and prev_determiner and self._verb_next(nxt, nxt2):
        return noun  # "a blue dress holds an ...": the next word is the verb
      if after_copula or prev_determiner and next_nominal:
        return "ADJ"
      if prev_tag == "CCONJ" and prev2_tag == "ADJ":
        return "ADJ"  # "clear and blue"
      if next_nominal or nxt in ("and", "or", ",") and self._could_be(nxt2, "ADJ"):
        return "ADJ"  # "a red car", "red and white"
      if noun in cats:
        return noun  # "in front of", "on the left"
      if "ADV" in cats and not prev_determiner:
        return "ADV"
      return "ADJ"
    if "VERB" in cats and noun in cats:
      if prev in _SUBJECT_PRONOUNS and prev_tag == "PRON":
        return "VERB"
      if prev_tag == "NOUN" and prev is not None and self._is_plural(prev) and not next_nominal:
        return "VERB"  # "two dogs play with a ball"
      return noun
    for pos in ("NOUN", "PROPN", "ADJ", "VERB", "ADV"):
      if pos in cats:
        return pos
    return "X"

  def _verb_next(self, lower: str | None, after: str | None) -> bool:
    """The next word is a finite verb: "dress holds an umbrella", "dress covered in sequins"."""
    entry = self._entry(lower) if lower else None
    if entry is None or "ADJ" in entry.cats:
      return False
    if entry.vbz:  # "holds" is also a plural noun: only a following object decides
      return self._could_be(after, "DET", "PRON", "NUM")
    return entry.past and self._could_be(after, "ADP", "DET")

  def _is_plural(self, lower: str) -> bool:
    entry = self._entry(lower)
    if entry is None:  # unknown words: the English plural ending
      return lower.endswith("s") and not lower.endswith("ss") and _guess_unknown(lower) == "NOUN"
    return entry.plural and not entry.noun_base


# ---------------------------------------------------------------------------------------------------
# Choosing a backend


@functools.lru_cache(maxsize=1)
def _lexicon_tagger() -> LexiconTagger:
  return LexiconTagger()


def get_tagger(backend: Any = "auto", spacy_model: Any = DEFAULT_SPACY_MODEL) -> Tagger:
  """A tagger by backend name ("auto", "spacy", "lexicon"), or wrap an object you built.

  `backend` may also be a `spacy.Language` (wrapped) or any object with `tag`/`tag_many` (returned
  as is); `spacy_model` may be a pipeline name, a path, or a `spacy.Language`. Taggers built from
  names are cached, so repeated calls are cheap.
  """
  if _is_spacy_language(backend):
    return SpacyTagger(backend)
  if not isinstance(backend, str) and hasattr(backend, "tag") and hasattr(backend, "tag_many"):
    return backend
  if backend not in ("auto", "spacy", "lexicon"):
    raise ValueError(f"Unknown POS backend {backend!r}: use 'auto', 'spacy', 'lexicon' or a "
                     "spacy.Language object.")
  if backend == "lexicon":
    return _lexicon_tagger()
  if _is_spacy_language(spacy_model):
    return SpacyTagger(spacy_model)
  if not isinstance(spacy_model, str):
    raise ValueError(f"spacy_model must be a pipeline name, a path or a spacy.Language, got "
                     f"{type(spacy_model).__name__}.")
  if backend == "spacy" or spacy_model_installed(spacy_model):
    return _load_spacy_tagger(spacy_model)
  return _lexicon_tagger()


def default_tagger() -> Tagger:
  """The "auto" tagger: en_core_web_sm when installed, else the offline lexicon tagger."""
  return get_tagger("auto")


# ---------------------------------------------------------------------------------------------------
# Storage


def tags_to_json(tagged: Iterable[tuple[str, str]]) -> str:
  """Tags as a compact JSON list of [word, pos] pairs (what `prepare` stores per sentence)."""
  return json.dumps([[str(word), str(pos)] for word, pos in tagged], ensure_ascii=False,
                    separators=(",", ":"))


def tags_from_json(data: str | bytes | list) -> Tagged:
  """Inverse of `tags_to_json`; also accepts an already-decoded list. Raises ValueError if malformed."""
  try:
    pairs = json.loads(data) if isinstance(data, (str, bytes, bytearray)) else data
  except json.JSONDecodeError as err:
    raise ValueError(f"Stored POS tags are not valid JSON ({err}); re-run the prepare step.") from err
  if not isinstance(pairs, list):
    raise ValueError(f"Stored POS tags must be a JSON list of [word, pos] pairs, got "
                     f"{type(pairs).__name__}; re-run the prepare step.")
  tagged: Tagged = []
  for pair in pairs:
    if (not isinstance(pair, (list, tuple)) or len(pair) != 2
        or not all(isinstance(x, str) for x in pair) or pair[1] not in _UPOS_SET):
      raise ValueError(f"Stored POS tags hold a malformed entry {pair!r}: expected [word, POS] "
                       f"with POS one of {', '.join(UPOS)}; re-run the prepare step.")
    tagged.append((pair[0], pair[1]))
  return tagged
