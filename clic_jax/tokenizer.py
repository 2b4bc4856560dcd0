"""CLIP byte-level BPE tokenizer, token-for-token equal to open_clip's ViT tokenizer.

open_clip's `get_tokenizer("ViT-B-32")` is a `SimpleTokenizer` with the "lower" cleaning:
ftfy.fix_text, html.unescape twice, strip, whitespace collapse, lowercase; then a word-split regex,
byte-level BPE with the 48,894 merges of `bpe_simple_vocab_16e6.txt.gz`, `<start_of_text>` and
`<end_of_text>` around each text, zero padding, and truncation that keeps the end token last.
This module computes exactly that (the tests compare against open_clip on >1,000 varied strings),
but faster, because training tokenizes every caption of every epoch:

- Plain printable ASCII without '&' (the bulk of captions) skips ftfy and html.unescape, which
  provably leave such text unchanged (ftfy only touches non-ASCII, control chars and HTML entities).
  Other single-line text without '&' skips them too when a cheap check, built from ftfy 6.3's own
  fixers and mojibake regex, shows that ftfy would return it unchanged (`_FtfyIdentityCheck`).
- After cleaning, the text is single words separated by one space, and no regex alternative can
  match or contain a space, so the regex split of the text is the concatenation of the splits of
  its space-separated words. The final token ids of each word are therefore cached, which replaces
  the regex, the byte mapping, the BPE and the vocabulary look-ups by one dict look-up per word.
- The (N, context_length) int32 array is filled in one masked assignment.
"""
from __future__ import annotations

import dataclasses
import functools
import gzip
import html
import itertools
import os
import unicodedata
from collections.abc import Iterable, Sequence

import ftfy
import ftfy.badness
import ftfy.fixes
import numpy as np
import regex

DEFAULT_CONTEXT_LENGTH = 77
VOCAB_FILENAME = "bpe_simple_vocab_16e6.txt.gz"
# CLIP uses the first 49152 - 256 - 2 merge lines (after the version header) of the file.
NUM_MERGES = 49152 - 256 - 2
START_OF_TEXT = "<start_of_text>"
END_OF_TEXT = "<end_of_text>"
END_OF_WORD = "</w>"

# Vocabulary layout: 256 byte symbols, the same 256 with END_OF_WORD, one entry per merge, the two
# special tokens. These ids are facts of every open_clip CLIP checkpoint; load_vocab checks them.
vocab_size = 2 * 256 + NUM_MERGES + 2
sot_token = vocab_size - 2
eot_token = vocab_size - 1

# The same alternatives and flags as open_clip: special tokens first (so a literal "<end_of_text>"
# in a caption becomes the special id), English contractions, letter runs, single digits, and runs
# of everything else. IGNORECASE matters for a few non-letters whose case variants are letters.
_WORD_SPLIT_PATTERN = (
    START_OF_TEXT + "|" + END_OF_TEXT
    + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""")

# ASCII control characters other than tab and newline: ftfy removes or rewrites them.
_ASCII_CONTROL = regex.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def _byte_symbols() -> tuple[list[str], list[str]]:
  """One printable unicode character per byte value, so BPE never sees whitespace or controls.

  Printable Latin-1 bytes stand for themselves; the other 68 bytes get the code points 256, 257,
  ... in byte order. Returns (symbols in vocabulary order, symbols indexed by byte value).
  """
  printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
               *range(ord("®"), ord("ÿ") + 1)]
  printable_set = set(printable)
  symbols = {}
  next_code = 256
  for byte in range(256):
    if byte in printable_set:
      symbols[byte] = chr(byte)
    else:
      symbols[byte] = chr(next_code)
      next_code += 1
  # The vocabulary lists byte symbols in this order: printable ones first, then the remapped ones.
  ordered = printable + [b for b in range(256) if b not in printable_set]
  return [symbols[b] for b in ordered], [symbols[b] for b in range(256)]


@dataclasses.dataclass(frozen=True)
class BpeVocab:
  """Everything read from the merges file; immutable and shared by all Tokenizer instances."""
  encoder: dict[str, int]             # BPE symbol -> id
  decoder: list[str]                  # id -> BPE symbol
  merge_ranks: dict[tuple[str, str], int]
  byte_translation: dict[int, str]    # latin-1 code point of a byte -> its unicode symbol
  symbol_to_byte: dict[str, int]
  word_split: regex.Pattern


@functools.lru_cache(maxsize=None)
def load_vocab(path: str | None = None) -> BpeVocab:
  """Reads the BPE merges (the package's copy by default) once per path."""
  path = path or os.path.join(os.path.dirname(os.path.abspath(__file__)), VOCAB_FILENAME)
  if not os.path.exists(path):
    raise FileNotFoundError(
        f"CLIP BPE vocabulary {path!r} is missing; it ships inside the clic_jax package "
        f"(reinstall clic_jax, or pass vocab_path= to a copy of {VOCAB_FILENAME}).")
  with gzip.open(path, "rt", encoding="utf-8") as f:
    lines = f.read().split("\n")
  merges = [tuple(line.split()) for line in lines[1:NUM_MERGES + 1]]
  if len(merges) != NUM_MERGES or any(len(m) != 2 for m in merges):
    raise ValueError(f"{path!r} is not a CLIP BPE merges file: expected {NUM_MERGES} merge lines "
                     f"of two symbols after the header.")
  ordered_symbols, symbol_of_byte = _byte_symbols()
  decoder = (ordered_symbols + [s + END_OF_WORD for s in ordered_symbols]
             + ["".join(m) for m in merges] + [START_OF_TEXT, END_OF_TEXT])
  # dict(zip(...)) like open_clip: if a symbol ever appeared twice, the later id would win.
  encoder = dict(zip(decoder, range(len(decoder))))
  if encoder[START_OF_TEXT] != sot_token or encoder[END_OF_TEXT] != eot_token:
    raise ValueError(f"{path!r} gives special token ids {encoder[START_OF_TEXT]}, "
                     f"{encoder[END_OF_TEXT]}; CLIP needs {sot_token}, {eot_token}.")
  return BpeVocab(
      encoder=encoder,
      decoder=decoder,
      merge_ranks=dict(zip(merges, range(len(merges)))),
      byte_translation={b: symbol_of_byte[b] for b in range(256)},
      symbol_to_byte={s: b for b, s in enumerate(symbol_of_byte)},
      word_split=regex.compile(_WORD_SPLIT_PATTERN, regex.IGNORECASE),
  )


def clean_text(text: str) -> str:
  """open_clip's "lower" cleaning: fix mojibake, unescape HTML twice, collapse spaces, lowercase."""
  text = ftfy.fix_text(text)
  text = html.unescape(html.unescape(text)).strip()
  return " ".join(text.split()).lower()


def clean_whitespace(text: str) -> str:
  """open_clip's "whitespace" cleaning (its HFTokenizer's default): clean_text without lowercasing.
  ftfy and html.unescape are skipped where they provably change nothing (see the module notes)."""
  if not (_is_clean_ascii(text) or _ftfy_is_identity(text)):
    text = html.unescape(html.unescape(ftfy.fix_text(text)))
  return " ".join(text.split())


def text_list(texts) -> list[str]:
  """A str or a sequence of str as a list, with the same TypeErrors as `tokenize`."""
  if isinstance(texts, str):
    return [texts]
  if isinstance(texts, (bytes, bytearray)) or not isinstance(texts, Iterable):
    raise TypeError(f"tokenize expects a str or a sequence of str, got a "
                    f"{type(texts).__name__}; pass text (decode bytes first).")
  texts = list(texts)
  for index, text in enumerate(texts):
    _check_text(text, index)
  return texts


def _is_clean_ascii(text: str) -> bool:
  """True where ftfy.fix_text and html.unescape are identities: ASCII, no '&', no control chars
  except tab and newline (ftfy keeps those; the whitespace collapse removes them)."""
  return text.isascii() and "&" not in text and (
      text.isprintable() or _ASCII_CONTROL.search(text) is None)


class _WindowedMojibakeCheck:
  """`ftfy.badness.is_bad(text)`, computed on short windows around suspicious characters.

  is_bad searches a large regex at every position of the text, which costs ~100 us per caption.
  Reading that regex's parse tree once shows that every alternative needs, at a fixed place, one
  character from a small set (mostly Latin-1 letters and symbols) and that no match is longer
  than `max_width` characters, with no look-arounds. A match therefore lies within max_width of a
  run of such characters, and searching only those windows (with pos/endpos, so '^' still means
  the real start) gives exactly is_bad's answer. If the tree holds anything else (another ftfy or
  Python version), this falls back to calling is_bad itself.
  """
  _ALLOWED_OPS = {"LITERAL", "NOT_LITERAL", "IN", "ANY", "MAX_REPEAT", "MIN_REPEAT", "SUBPATTERN",
                  "BRANCH", "AT", "CATEGORY"}

  def __init__(self):
    self.pattern = ftfy.badness.BADNESS_RE
    try:
      self.triggers, self.max_width = self._analyse(self.pattern)
    except Exception:  # unknown regex internals or pattern shape: always exact via is_bad
      self.triggers, self.max_width = None, 0

  @classmethod
  def _analyse(cls, pattern):
    try:
      from re import _parser as sre_parse
    except ImportError:  # Python 3.10
      import sre_parse
    if pattern.flags & regex.IGNORECASE or not isinstance(pattern.pattern, str):
      raise ValueError("unsupported flags")
    tree = sre_parse.parse(pattern.pattern, pattern.flags)
    max_width = tree.getwidth()[1]
    if max_width > 64:
      raise ValueError("unbounded match width")
    cls._check_ops(tree)
    items = list(tree)
    branches = items[0][1][1] if len(items) == 1 and str(items[0][0]) == "BRANCH" else [items]
    triggers = set()
    for branch in branches:
      candidates = [chars for chars in map(cls._required_chars, branch) if chars]
      # The rarest required character set of the branch (non-ASCII sets first).
      triggers |= min(candidates, key=lambda chars: (min(chars) < 128, len(chars)))
    return frozenset(map(chr, triggers)), max_width

  @classmethod
  def _check_ops(cls, items) -> None:
    for op, arg in items:
      name = str(op)
      if name not in cls._ALLOWED_OPS or (name == "AT" and str(arg) != "AT_BEGINNING"):
        raise ValueError(f"unsupported regex element {name}")
      if name == "BRANCH":
        for branch in arg[1]:
          cls._check_ops(branch)
      elif name in ("MAX_REPEAT", "MIN_REPEAT"):
        cls._check_ops(arg[2])
      elif name == "SUBPATTERN":
        cls._check_ops(arg[-1])

  @staticmethod
  def _required_chars(item) -> set[int] | None:
    """Code points one mandatory top-level element of a branch can match, or None if unknown."""
    op, arg = item
    if str(op) == "LITERAL":
      return {arg}
    if str(op) != "IN":
      return None
    chars = set()
    for kind, value in arg:
      if str(kind) == "LITERAL":
        chars.add(value)
      elif str(kind) == "RANGE":
        chars.update(range(value[0], value[1] + 1))
      else:  # NEGATE, CATEGORY: too broad to be a trigger
        return None
    return chars

  def __call__(self, text: str, chars: set[str] | None = None) -> bool:
    """is_bad(text); `chars` is set(text) when the caller has it already."""
    if self.triggers is None:
      return ftfy.badness.is_bad(text)
    present = self.triggers.intersection(set(text) if chars is None else chars)
    if not present:
      return False
    positions = sorted(i for char in present for i in _positions(text, char))
    reach, windows = self.max_width - 1, []
    for i in positions:
      start, end = max(0, i - reach), i + 1 + reach
      if windows and start <= windows[-1][1]:
        windows[-1][1] = end
      else:
        windows.append([start, end])
    return any(self.pattern.search(text, start, end) for start, end in windows)


def _positions(text: str, char: str):
  i = text.find(char)
  while i >= 0:
    yield i
    i = text.find(char, i + 1)


class _FtfyIdentityCheck:
  """Decides cheaply that ftfy.fix_text(text) == text for non-ASCII text without '&' or '\\n'.

  ftfy 6 fixes one segment (a line) in passes of: HTML unescaping (needs '&'); mojibake repair,
  which leaves text alone unless `ftfy.badness.is_bad` finds a suspicious sequence; fixers that
  each act on single characters (C1 controls, ligatures, full/half width forms, curly quotes, line
  breaks, surrogates, terminal escapes, control chars); NFC. So a single-line text is unchanged
  when it is not "bad", is NFC, and every character is unchanged by each character fixer. The last
  property is learned per character from ftfy itself and memoised. Texts that fail any test, and
  all texts under ftfy versions other than the 6.3 series this was read from, take the full path.
  """
  _CHARACTER_FIXERS = ("fix_c1_controls", "fix_latin_ligatures", "fix_character_width",
                       "uncurl_quotes", "fix_line_breaks", "fix_surrogates",
                       "remove_terminal_escapes", "remove_control_chars")

  def __init__(self):
    self.enabled = ftfy.__version__.split(".")[:2] == ["6", "3"]
    self._max_segment_length = ftfy.TextFixerConfig().max_decode_length
    self._inert_chars = set(chr(c) for c in range(0x20, 0x7f)) - {"&"} | {"\t"}
    self._active_chars = set(chr(c) for c in range(0x20)) - {"\t"} | {"\x7f", "&"}
    self._is_bad = _WindowedMojibakeCheck()

  def _learn(self, chars: set[str]) -> None:
    fixers = [getattr(ftfy.fixes, name) for name in self._CHARACTER_FIXERS]
    for char in chars:
      unchanged = all(fixer(char) == char for fixer in fixers)
      (self._inert_chars if unchanged else self._active_chars).add(char)

  def __call__(self, text: str) -> bool:
    if not self.enabled or len(text) >= self._max_segment_length:
      return False
    chars = set(text)
    if not chars <= self._inert_chars:
      if not chars.isdisjoint(self._active_chars):
        return False
      self._learn(chars - self._inert_chars)
      if not chars <= self._inert_chars:
        return False
    return unicodedata.is_normalized("NFC", text) and not self._is_bad(text, chars)


_NOT_A_MERGE = float("inf")


def bpe(token: str, merge_ranks: dict[tuple[str, str], int]) -> list[str]:
  """Byte-level BPE of one byte-mapped regex piece: repeatedly merge the adjacent pair with the
  lowest merge rank (all its non-overlapping occurrences, left to right) until none is mergeable."""
  word = [*token[:-1], token[-1] + END_OF_WORD]
  while len(word) > 1:
    best_rank, best_pair = _NOT_A_MERGE, None
    for pair in zip(word, word[1:]):
      rank = merge_ranks.get(pair, _NOT_A_MERGE)
      if rank < best_rank:
        best_rank, best_pair = rank, pair
    if best_pair is None:
      break
    first, second = best_pair
    merged, i, n = [], 0, len(word)
    while i < n:
      if i + 1 < n and word[i] == first and word[i + 1] == second:
        merged.append(first + second)
        i += 2
      else:
        merged.append(word[i])
        i += 1
    word = merged
  return word


class Tokenizer:
  """CLIP tokenizer with per-word caches of final token ids.

  The vocabulary is loaded on first use and shared between instances; each instance owns its
  caches, which are cleared when they reach `max_cache_entries` (bounded memory on long runs).
  """

  def __init__(self, context_length: int = DEFAULT_CONTEXT_LENGTH, vocab_path: str | None = None,
               max_cache_entries: int = 1_000_000):
    _check_context_length(context_length)
    self.context_length = context_length
    self.vocab_path = vocab_path
    self.max_cache_entries = max_cache_entries
    self.vocab_size = vocab_size
    self.sot_token = sot_token
    self.eot_token = eot_token
    self._word_ids: dict[str, tuple[int, ...]] = {}
    self._piece_ids: dict[str, tuple[int, ...]] = {}

  @property
  def vocab(self) -> BpeVocab:
    return load_vocab(self.vocab_path)

  def _ids_of_piece(self, piece: str) -> tuple[int, ...]:
    ids = self._piece_ids.get(piece)
    if ids is None:
      vocab = self.vocab
      if piece == START_OF_TEXT or piece == END_OF_TEXT:
        ids = (vocab.encoder[piece],)
      else:
        mapped = piece.encode("utf-8").decode("latin-1").translate(vocab.byte_translation)
        ids = tuple(vocab.encoder[symbol] for symbol in bpe(mapped, vocab.merge_ranks))
      if len(self._piece_ids) >= self.max_cache_entries:
        self._piece_ids.clear()
      self._piece_ids[piece] = ids
    return ids

  def _ids_of_word(self, word: str) -> tuple[int, ...]:
    """Ids of one space-free word of cleaned text (cache miss path of the hot loop)."""
    ids = []
    for piece in self.vocab.word_split.findall(word):
      ids.extend(self._ids_of_piece(piece))
    ids = tuple(ids)
    if len(self._word_ids) >= self.max_cache_entries:
      self._word_ids.clear()
    self._word_ids[word] = ids
    return ids

  def _words(self, text: str) -> list[str]:
    """The space-separated words of clean_text(text), skipping ftfy where it is an identity."""
    if _is_clean_ascii(text):
      return text.lower().split()
    if _ftfy_is_identity(text):
      return " ".join(text.split()).lower().split(" ")
    return clean_text(text).split(" ")

  def encode(self, text: str) -> list[int]:
    """Token ids of one text, without start/end tokens and without truncation."""
    _check_text(text, None)
    ids = []
    for word in self._words(text):
      cached = self._word_ids.get(word)
      ids.extend(self._ids_of_word(word) if cached is None else cached)
    return ids

  def decode(self, ids: Iterable[int], skip_special: bool = False) -> str:
    """Text of token ids; every word is followed by a space, like open_clip's decode.

    With skip_special, start/end tokens are dropped and decoding stops at the first end token
    (so the zero padding of a `tokenize` row is ignored).
    """
    vocab = self.vocab
    ids = [int(i) for i in np.asarray(ids).reshape(-1)]
    if skip_special:
      if eot_token in ids:
        ids = ids[:ids.index(eot_token)]
      ids = [i for i in ids if i != sot_token]
    bad = [i for i in ids if not 0 <= i < len(vocab.decoder)]
    if bad:
      raise ValueError(f"token ids {bad[:5]} are outside the CLIP vocabulary [0, {vocab_size}).")
    symbols = "".join(vocab.decoder[i] for i in ids)
    data = bytes(vocab.symbol_to_byte[c] for c in symbols)
    return data.decode("utf-8", errors="replace").replace(END_OF_WORD, " ")

  def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> np.ndarray:
    """int32 (N, context_length): start token, ids, end token, zero padding; a text that is too
    long is cut to context_length with the end token in the last position."""
    context_length = self.context_length if context_length is None else context_length
    _check_context_length(context_length)
    if isinstance(texts, str):
      texts = [texts]
    elif isinstance(texts, (bytes, bytearray)) or not isinstance(texts, Iterable):
      raise TypeError(f"tokenize expects a str or a sequence of str, got a "
                      f"{type(texts).__name__}; pass text (decode bytes first).")
    # The hot loop: ASCII check, split, one dict look-up per word (measured faster than
    # map/chain variants and than writing each row into the array).
    word_ids, ids_of_word, rows, lengths = self._word_ids, self._ids_of_word, [], []
    for index, text in enumerate(texts):
      if not isinstance(text, str):
        _check_text(text, index)
      if text.isascii() and "&" not in text and (
          text.isprintable() or _ASCII_CONTROL.search(text) is None):
        words = text.lower().split()
      else:
        words = self._words(text)
      row = [sot_token]
      for word in words:
        cached = word_ids.get(word)
        row += ids_of_word(word) if cached is None else cached
      row.append(eot_token)
      if len(row) > context_length:
        row = row[:context_length]
        row[-1] = eot_token
      rows.append(row)
      lengths.append(len(row))
    out = np.zeros((len(rows), context_length), np.int32)
    filled = np.arange(context_length) < np.asarray(lengths, np.int64).reshape(-1, 1)
    out[filled] = np.fromiter(itertools.chain.from_iterable(rows), np.int32, sum(lengths))
    return out


def _check_context_length(context_length) -> None:
  if not isinstance(context_length, (int, np.integer)) or context_length < 2:
    raise ValueError(f"context_length must be an integer >= 2 (room for the start and end tokens), "
                     f"got {context_length!r}; CLIP models use {DEFAULT_CONTEXT_LENGTH}.")


def _check_text(text, index: int | None) -> None:
  if not isinstance(text, str):
    where = "" if index is None else f" at index {index}"
    raise TypeError(f"tokenize expects strings, but the text{where} is a {type(text).__name__} "
                    f"({text!r:.60}); convert it with str() or remove it.")


_ftfy_is_identity = _FtfyIdentityCheck()
_default_tokenizer: Tokenizer | None = None


def default_tokenizer() -> Tokenizer:
  """The module's shared Tokenizer (its caches persist across calls)."""
  global _default_tokenizer
  if _default_tokenizer is None:
    _default_tokenizer = Tokenizer()
  return _default_tokenizer


def tokenize(texts: str | Sequence[str],
             context_length: int = DEFAULT_CONTEXT_LENGTH) -> np.ndarray:
  """int32 (N, context_length) CLIP tokens, equal to open_clip.get_tokenizer("ViT-B-32")(texts)."""
  return default_tokenizer()(texts, context_length)


def decode(ids: Iterable[int], skip_special: bool = False) -> str:
  """Text of token ids (see Tokenizer.decode)."""
  return default_tokenizer().decode(ids, skip_special)
