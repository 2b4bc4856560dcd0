"""Long caption -> sentences, like the reference's assets/create_dataset.py.

See docs/method.md, "Sentence splitting".
"""
from __future__ import annotations

from clic_jax.data import sentences


def _words(n: int, start: str = "Alpha") -> str:
  return " ".join([start] + ["word"] * (n - 1))


def test_prefix_removed_and_short_sentence_dropped():
  text = "The image shows a dog on a sandy beach. It is sunny and bright today. Waves crash."
  assert sentences.split_long_caption(text) == ["a dog on a sandy beach",
                                                "It is sunny and bright today"]


def test_prefixes_chain_in_list_order():
  text = "The image is a digital representation of a cat sitting on a mat. The mat is red and soft."
  assert sentences.split_long_caption(text)[0] == "a cat sitting on a mat"


def test_prefix_match_is_case_sensitive_and_first_sentence_only():
  text = "the image shows a dog on a beach. The image shows a cat on a sofa."
  assert sentences.split_long_caption(text) == ["the image shows a dog on a beach",
                                                "The image shows a cat on a sofa"]


def test_prefix_is_not_word_bounded_like_the_reference():
  # "The image is" also strips the start of "The image isolates": a reference quirk we keep.
  assert sentences.remove_prefixes("The image isolates a tree in a field") == "olates a tree in a field"


def test_abbreviations_do_not_split():
  text = "Mr. Smith walks his dog in the park. The dog is very happy today."
  assert sentences.split_long_caption(text) == ["Mr. Smith walks his dog in the park",
                                                "The dog is very happy today"]


def test_dotted_abbreviation_becomes_spaced_and_stays_protected():
  text = "The U.S. flag waves above the old building. Clouds drift across the blue sky."
  assert sentences.split_long_caption(text) == ["The U. S. flag waves above the old building",
                                                "Clouds drift across the blue sky"]


def test_decimals_break_but_do_not_split():
  text = "A bottle holds 3.5 liters of water on the table. Another bottle stands next to it."
  assert sentences.split_long_caption(text)[0] == "A bottle holds 3. 5 liters of water on the table"


def test_split_needs_uppercase_after_period():
  text = "A cat sleeps on the sofa. a dog sleeps on the floor. The room is quiet and warm."
  assert sentences.split_long_caption(text) == [
      "A cat sleeps on the sofa. a dog sleeps on the floor", "The room is quiet and warm"]


def test_word_bounds_are_4_to_34():
  parts = [_words(3, "Three"), _words(4, "Four"), _words(34, "Long"), _words(35, "Longer")]
  result = sentences.split_long_caption(". ".join(parts) + ".")
  assert result == [_words(4, "Four"), _words(34, "Long")]
  assert [sentences.count_words(s) for s in result] == [4, 34]


def test_words_are_backslash_w_runs():
  assert sentences.count_words("a t-shirt, 50% off") == 5


def test_at_sign_is_preserved():
  # The reference used "@" as its marker and turned real "@" into "."; we do not.
  text = "Send a message to me@home on the screen. The screen is bright and large."
  assert sentences.split_long_caption(text)[0] == "Send a message to me@home on the screen"


def test_no_trailing_period_and_empty_input():
  assert sentences.split_long_caption("A dog runs on the grass.") == ["A dog runs on the grass"]
  assert sentences.split_long_caption("") == []
  assert sentences.split_long_caption("...") == []
  assert sentences.split_long_caption(None) == []


def test_keep_row_needs_two_sentences():
  assert not sentences.keep_row([])
  assert not sentences.keep_row(["a dog on the grass"])
  assert sentences.keep_row(["a dog on the grass", "the grass is green"])
