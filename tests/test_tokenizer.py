"""clic_jax.tokenizer against open_clip's real tokenizer on deterministic, adversarial strings."""
from __future__ import annotations

import random

import ftfy
import ftfy.badness
import numpy as np
import open_clip
import pytest

from clic_jax import tokenizer as clic_tokenizer

# Fragments that ftfy leaves alone (so the fast paths are exercised) ...
_PLAIN_FRAGMENTS = [
    # plain words, mixed case, repeats, numbers
    "a", "photo", "of", "the", "Dog", "CAT", "sKaTeBoArD", "dog dog dog", "New York", "x",
    "0", "7", "42", "3.14", "1,000,000", "2nd", "1990s", "٣", "½", "²", "Ⅻ", "①",
    # punctuation and symbols
    ".", ",", "!", "?", "...", "!?", "--", "(", ")", "[x]", "{y}", "@user", "#tag", "$5", "%", "^",
    "*", "+=", "<", ">", "|", "~", "`", "\\", "/", "_", "snake_case", "e-mail", "U.S.A.", ":-)",
    # apostrophes and quotes
    "it's", "don't", "we're", "I've", "I'm", "you'll", "he'd", "IT'S", "'s", "'t", "''",
    "rock'n'roll", "'quoted'", '"double"', "dogs'",
    # accents, scripts, emoji, odd letters
    "café", "naïve", "crème brûlée", "Zürich", "São Paulo", "jalapeño", "Ελλάδα", "Москва",
    "東京タワー", "北京", "한국어", "ภาษาไทย", "العربية", "עברית", "हिन्दी",
    "🐶", "😀😀", "👨‍👩‍👧", "🇫🇷", "👍🏽", "İstanbul", "ß", "\u0345", "Ω", "µ", "ẞ",
    "—", "…", "•", "©", "™", "°C", "€", "£", "\xa0", "\u200b", "\u2060",
    # special-token literals and look-alikes
    "<start_of_text>", "<end_of_text>", "<START_OF_TEXT>", "<End_Of_Text>", "<|startoftext|>",
    "<|endoftext|>", "</w>", "<start_of_text", "start_of_text>", "<<end_of_text>>",
]
# ... and fragments that ftfy or html.unescape change.
_TRICKY_FRAGMENTS = [
    "‘single’", "“double”", "it’s", "„low“", "ǅ", "ﬁne", "ﬂuﬀy", "ＡＢＣ", "ｶﾀｶﾅ",
    "e\u0301", "A\u030a", "ŉ", "ǈ",
    # html entities, including double-escaped ones and bare ampersands
    "&amp;", "&lt;b&gt;", "&lt;/b&gt;", "&quot;", "&#39;", "&#x2019;", "&nbsp;", "&amp;lt;",
    "&hellip;", "&copy;", "& ", "&bogus;", "AT&T", "&&", "&#128054;", "<b>bold</b>", "<br/>",
    # mojibake that ftfy repairs (or deliberately leaves)
    "Ã©", "cafÃ©", "â€™", "â€œquoteâ€\x9d", "Ã ", "Â ", "Ã¼ber", "ГўВЂВ", "Ã", "Ã—",
    "Ã\xa0", "√±", "‚Ä¢", "Ð¼Ð¾", "Ã¢â‚¬â„¢",
    # control characters, line breaks and invisible characters
    "\x00", "\x07", "\x1b[31mred\x1b[0m", "\r\n", "\r", "\x0b", "\x0c", "\x85", "\u2028",
    "\x9d", "\x7f", "\n", "\u3000", "\ufeff", "\u200f",
]
_PLAIN_SEPARATORS = ["", " ", " ", " ", "  ", "\t"]
_ALL_SEPARATORS = _PLAIN_SEPARATORS + ["\n", " \r\n ", "\u3000"]


def _varied_strings(count: int, seed: int = 1234) -> list[str]:
  """Deterministic adversarial strings: fixed edge cases, then random fragment mixes (40% from
  the plain fragments only)."""
  rng = random.Random(seed)
  strings = ["", " ", "   \t\n ", "\n", "a", "A photo of a dog.", "word " * 100,
             "supercalifragilisticexpialidocious" * 20, "🐶" * 200, "a" * 1000,
             " ".join(str(i) for i in range(100)), "\ud83d\udc36", "lone \udc00 surrogate",
             "<start_of_text><end_of_text>", "&amp;amp;amp;", "x" + "\u0301" * 30]
  while len(strings) < count:
    plain = rng.random() < 0.4
    fragments = _PLAIN_FRAGMENTS if plain else _PLAIN_FRAGMENTS + _TRICKY_FRAGMENTS
    separators = _PLAIN_SEPARATORS if plain else _ALL_SEPARATORS
    pieces = [rng.choice(fragments) for _ in range(rng.randint(1, 14))]
    text = "".join(p + rng.choice(separators) for p in pieces)
    roll = rng.random()
    if roll < 0.15:
      text = text.upper()
    elif roll < 0.3:
      text = text.title()
    elif roll < 0.35:
      text = text * rng.randint(5, 30)  # well past 77 tokens
    strings.append(text)
  return strings


@pytest.fixture(scope="module")
def reference():
  return open_clip.get_tokenizer("ViT-B-32")


@pytest.fixture(scope="module")
def strings():
  return _varied_strings(1500)


def _assert_rows_equal(ours: np.ndarray, theirs: np.ndarray, texts: list[str]) -> None:
  assert ours.shape == theirs.shape
  bad_rows = np.flatnonzero((ours != theirs).any(axis=1))
  assert bad_rows.size == 0, (
      f"{bad_rows.size} rows differ; first: {texts[bad_rows[0]]!r}\n"
      f"ours   {ours[bad_rows[0]].tolist()}\nopen_clip {theirs[bad_rows[0]].tolist()}")


def test_equals_open_clip_on_varied_strings(reference, strings):
  expected = reference(strings).numpy()
  fresh = clic_tokenizer.Tokenizer()
  _assert_rows_equal(fresh(strings), expected, strings)
  _assert_rows_equal(fresh(strings), expected, strings)  # again, now from the word caches
  _assert_rows_equal(clic_tokenizer.tokenize(strings), expected, strings)
  # Batch composition must not matter: reversed order and one string at a time.
  _assert_rows_equal(fresh(strings[::-1]), expected[::-1], strings[::-1])
  for text, row in zip(strings[:100], expected[:100]):
    np.testing.assert_array_equal(clic_tokenizer.tokenize(text)[0], row, err_msg=repr(text))


def test_equals_open_clip_with_short_context_and_tiny_cache(reference, strings):
  subset = strings[:300]
  tokenizer = clic_tokenizer.Tokenizer(context_length=16, max_cache_entries=7)
  _assert_rows_equal(tokenizer(subset), reference(subset, context_length=16).numpy(), subset)
  assert len(tokenizer._word_ids) <= 7 and len(tokenizer._piece_ids) <= 7


def test_encode_equals_open_clip_encode(reference, strings):
  tokenizer = clic_tokenizer.Tokenizer()
  for text in strings[:400]:
    assert tokenizer.encode(text) == reference.encode(text), repr(text)


def test_skipped_ftfy_is_really_an_identity(strings):
  """The fast paths only skip ftfy where fix_text(text) == text; probe both on random text."""
  rng = random.Random(7)
  ascii_noise = ["".join(chr(rng.randrange(128)) for _ in range(rng.randint(0, 40)))
                 for _ in range(3000)]
  fast_ascii = [t for t in ascii_noise if clic_tokenizer._is_clean_ascii(t)]
  assert len(fast_ascii) > 50 and len(fast_ascii) < len(ascii_noise)
  for text in fast_ascii:
    assert ftfy.fix_text(text) == text, repr(text)
  fast_unicode = [t for t in strings if not t.isascii() and clic_tokenizer._ftfy_is_identity(t)]
  if clic_tokenizer._ftfy_is_identity.enabled:  # ftfy 6.3.x, the series the check was read from
    assert len(fast_unicode) > 200
  else:  # any other ftfy: every non-ASCII text must take the full ftfy path
    assert not fast_unicode
  for text in fast_unicode:
    assert ftfy.fix_text(text) == text, repr(text)
  for text in ["cafÃ©", "it’s", "ﬁne", "ＡＢＣ", "e\u0301", "a\x85b", "x\x9dy"]:
    assert not clic_tokenizer._ftfy_is_identity(text), repr(text)


def test_windowed_mojibake_check_equals_ftfy_is_bad(strings):
  check = clic_tokenizer._WindowedMojibakeCheck()
  if ftfy.__version__.startswith("6.3."):
    assert check.triggers is not None and 3 <= check.max_width <= 64
  # Dense random mixes of the characters ftfy's mojibake regex looks for, spaces and letters.
  alphabet = sorted(set(check.triggers or "Ã©â€™")) + list("abcXYZ  .,?!") + ["\xa0", "\u3000"]
  rng = random.Random(3)
  fuzz = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 16))) for _ in range(20000)]
  expected = [ftfy.badness.is_bad(t) for t in fuzz + strings]
  assert 0.2 < sum(expected) / len(expected) < 0.9
  for text, bad in zip(fuzz + strings, expected):
    assert check(text) == bad, repr(text)


def test_shape_dtype_and_special_ids(reference):
  assert clic_tokenizer.sot_token == 49406 == reference.sot_token_id
  assert clic_tokenizer.eot_token == 49407 == reference.eot_token_id
  assert clic_tokenizer.vocab_size == 49408 == reference.vocab_size
  single = clic_tokenizer.tokenize("A photo of a dog.")
  assert single.shape == (1, 77) and single.dtype == np.int32
  assert single[0, 0] == 49406 and single[0, 7] == 49407 and not single[0, 8:].any()
  assert clic_tokenizer.tokenize(("a", "b", "c"), context_length=10).shape == (3, 10)
  assert clic_tokenizer.tokenize(np.array(["a dog", "a cat"])).shape == (2, 77)
  assert clic_tokenizer.tokenize([]).shape == (0, 77)
  assert clic_tokenizer.Tokenizer().encode("<END_OF_TEXT>") == [49407]


def test_truncation_keeps_end_token_last():
  tokens = clic_tokenizer.tokenize(["dog " * 200, "a cat"], context_length=77)
  assert tokens[0, 0] == 49406 and tokens[0, -1] == 49407
  assert (tokens[0, 1:-1] == tokens[0, 1]).all()  # every middle token is "dog"
  assert tokens[1, 3] == 49407 and not tokens[1, 4:].any()
  np.testing.assert_array_equal(clic_tokenizer.tokenize("a long caption", context_length=2),
                                [[49406, 49407]])


def test_decode_round_trip(reference, strings):
  tokenizer = clic_tokenizer.Tokenizer()
  assert tokenizer.decode(tokenizer.encode("A photo of a Dog, isn't it?")) == (
      "a photo of a dog , isn 't it ? ")
  row = tokenizer("Two café tables & 東京 🐶!")[0]  # "🐶!" is one regex piece
  assert tokenizer.decode(row, skip_special=True) == "two café tables & 東京 🐶! "
  # Words come back exactly (ftfy-cleaned, lower-cased, one space after each regex piece).
  pattern = tokenizer.vocab.word_split
  for text in strings[:300]:
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids) == reference.decode(ids), repr(text)
    if "_of_text>" not in text.lower():
      pieces = pattern.findall(clic_tokenizer.clean_text(text))
      assert tokenizer.decode(ids) == "".join(p + " " for p in pieces), repr(text)


def test_helpful_errors():
  for bad_length in (1, 0, -5, 2.5):
    with pytest.raises(ValueError, match="context_length"):
      clic_tokenizer.tokenize("a dog", context_length=bad_length)
  with pytest.raises(ValueError, match="context_length"):
    clic_tokenizer.Tokenizer(context_length=1)
  with pytest.raises(TypeError, match=r"index 2 is a int"):
    clic_tokenizer.tokenize(["a dog", "a cat", 7])
  with pytest.raises(TypeError, match=r"index 0 is a NoneType"):
    clic_tokenizer.tokenize([None])
  with pytest.raises(TypeError, match="bytes"):
    clic_tokenizer.tokenize(b"a dog")
  with pytest.raises(TypeError, match="NoneType"):
    clic_tokenizer.tokenize(None)
  with pytest.raises(TypeError, match="is a bytes"):
    clic_tokenizer.Tokenizer().encode(b"a dog")
  with pytest.raises(ValueError, match="outside the CLIP vocabulary"):
    clic_tokenizer.decode([49406, 49408])


def test_vocabulary_ships_with_the_package(tmp_path):
  vocab = clic_tokenizer.load_vocab()
  assert len(vocab.decoder) == 49408 and len(vocab.merge_ranks) == 48894
  with pytest.raises(FileNotFoundError, match="vocab_path"):
    clic_tokenizer.Tokenizer(vocab_path=str(tmp_path / "missing.txt.gz")).encode("a")
