"""Long caption -> list of short sentences, as the reference's `assets/create_dataset.py`.

See docs/method.md, "Sentence splitting".

The released CLIC CSVs were made with that script, so we reproduce its behaviour, quirks included,
to get the same "first sentence" and the same extra sentences from the same long caption:

  * Prefix removal splits the caption on *every* "." and rejoins with ". ". This breaks decimals
    and dotted abbreviations ("3.5" -> "3. 5", "U.S." -> "U. S.", "e.g." -> "e. g") and drops a
    trailing period. That is why "U. S." is in the abbreviation list. Kept.
  * Prefixes match case-sensitively and not on word boundaries ("The image is" also strips the
    start of "The image isolates ..."), and are tried in list order, so several can be removed one
    after another ("The image is a digital representation of a cat" -> "a cat"). Kept.
  * Abbreviations are protected with plain substring replacement, also not on word boundaries. Kept.
  * The word bounds are "more than 3 and fewer than 35 `\\w+` tokens", i.e. 4..34, although the
    reference docstring says "<3 or >35". Kept (4..34).
  * One deliberate fix: the reference marks protected periods with "@" and turns every "@" back into
    "." afterwards, so a real "@" in a caption became ".". We use a private-use character instead.

Input sentences are not lowercased here; the CSV reader lowercases them later (docs/method.md,
"Dataset format"). Splitting needs the original case because a sentence break is ". " followed by
an uppercase letter.
"""
from __future__ import annotations

import re

# Order matters: the reference applies them one after another, in this order. The duplicate last
# entry is the reference's; it only matters for a doubled prefix and is kept for fidelity.
PREFIXES = (
    "The image displays", "The image showcases", "The image shows",
    "The image is", "The image features", "The image depicts", "The image illustrates",
    "This image displays", "This image showcases", "This image shows",
    "This image is", "This image features", "This image depicts", "This image illustrates",
    "a digital representation of", "This image appears to be", "a collection of",
    "a graphic representation of", "a screenshot of", "a graphic representation of",
)

ABBREVIATIONS = (
    "Mr.", "Mrs.", "Ms.", "Dr.", "Prof.", "Sr.", "Jr.", "U.K.", "U.N.", "U.S.", "U. S.",
    "Inc.", "Corp.", "Ltd.", "Jan.", "Feb.", "Mar.", "Apr.", "Aug.", "Sept.", "Oct.",
    "Nov.", "Dec.", "St.", "Ave.", "Blvd.", "Fig.", "et al.", "etc.",
)
# Longest first, like the reference, so "U. S." is protected before a shorter entry eats part of it.
_ABBREVIATIONS_LONGEST_FIRST = tuple(sorted(ABBREVIATIONS, key=lambda a: (-len(a), a)))

MIN_WORDS = 4   # reference: len(re.findall(r"\w+", s)) > 3
MAX_WORDS = 34  # reference: len(re.findall(r"\w+", s)) < 35
MIN_SENTENCES_PER_ROW = 2  # reference keeps a row when len(sentences) > 1

_PROTECTED_PERIOD = "\ue000"  # private-use code point: cannot clash with caption text
_SENTENCE_BREAK = re.compile(r"\.\s+(?=[A-Z])")
_WORD = re.compile(r"\w+")


def remove_prefixes(text: str) -> str:
  """Split on every ".", strip boilerplate prefixes from the first piece, rejoin.

  Step 1 of docs/method.md, "Sentence splitting".
  """
  pieces = [piece.strip() for piece in text.split(".")]
  pieces = [piece for piece in pieces if piece]
  if pieces:
    for prefix in PREFIXES:
      if pieces[0].startswith(prefix):
        pieces[0] = pieces[0][len(prefix):].strip()
  return ". ".join(pieces)


def split_sentences(text: str) -> list[str]:
  """Split on ". " + uppercase letter, except after protected abbreviations.

  Step 2 of docs/method.md, "Sentence splitting".
  """
  for abbreviation in _ABBREVIATIONS_LONGEST_FIRST:
    text = text.replace(abbreviation, abbreviation.replace(".", _PROTECTED_PERIOD))
  sentences = _SENTENCE_BREAK.split(text)
  sentences = [s.replace(_PROTECTED_PERIOD, ".").strip() for s in sentences]
  return [s for s in sentences if s]


def count_words(sentence: str) -> int:
  """Number of `\\w+` runs, the reference's notion of a word ("t-shirt" counts as 2)."""
  return len(_WORD.findall(sentence))


def split_long_caption(text: str) -> list[str]:
  """The sentences of one long caption that have 4..34 words, in caption order.

  Steps 1-3 of docs/method.md, "Sentence splitting".

  Never raises: anything that is not a string, or has no usable sentence, gives [].
  """
  if not isinstance(text, str):
    return []
  sentences = split_sentences(remove_prefixes(text))
  return [s for s in sentences if MIN_WORDS <= count_words(s) <= MAX_WORDS]


def keep_row(sentences: list[str]) -> bool:
  """A row is kept when at least two sentences survived (first + >= 1 extra).

  Step 4 of docs/method.md, "Sentence splitting".
  """
  return len(sentences) >= MIN_SENTENCES_PER_ROW
