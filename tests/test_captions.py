"""Caption variants and hard negatives (docs/method.md, "Samples")."""
from __future__ import annotations

import numpy as np
import pytest

from clic_jax.data import captions as C
from clic_jax.data import pos_tagging
from clic_jax.tokenizer import tokenize

COLOURS = ["red", "blue", "green", "yellow", "black", "white", "brown", "pink", "orange", "grey"]
OBJECTS = ["dog", "cat", "car", "table", "chair", "horse", "bicycle", "umbrella", "apple", "boat",
           "lamp", "bird", "truck", "vase", "ball", "t-shirt"]
RELATIONS = ["on", "under", "next to", "behind", "in front of", "near", "inside", "above"]
VERBS = ["sits", "stands", "sleeps", "rests", "waits"]
ODD_CAPTIONS = [
    "", " ", "!!!", "... ,", "dog", "a", "the the the", "一只狗在草地上", "ein Hund läuft über die Wiese",
    "un chat noir dort sur le canapé", "a dog " * 60, "50% off on a t-shirt", "a 'quoted' word here",
    "it's a dog's life, isn't it?", "a  double   spaced\tcaption", "red red red dog dog",
    "a red dog", "a red cat", "UPPER case Dog on Grass", "#tag @user $5 & more", "3.5 kg of apples",
]


def _generated_captions(n: int, seed: int = 0) -> list[str]:
  """Colour/object/relation captions with a few verbs, deterministic."""
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(n):
    c1, c2 = rng.choice(COLOURS, 2, replace=False)
    o1, o2 = rng.choice(OBJECTS, 2, replace=False)
    relation = RELATIONS[rng.integers(len(RELATIONS))]
    if rng.random() < 0.3:
      out.append(f"a {c1} {o1} {VERBS[rng.integers(len(VERBS))]} {relation} the {c2} {o2}")
    else:
      out.append(f"a {c1} {o1} {relation} a {c2} {o2}")
  return out


CORPUS = _generated_captions(320) + ODD_CAPTIONS


@pytest.fixture(scope="module")
def tagger():
  return pos_tagging.get_tagger("lexicon")


@pytest.fixture(scope="module")
def tags(tagger):
  return {text: tagger.tag(text) for text in CORPUS}


def _tokens(texts):
  return np.asarray(tokenize(list(texts)))


def _pairs(corpus, n, seed=1):
  rng = np.random.default_rng(seed)
  return [(corpus[i], corpus[j]) for i, j in rng.integers(0, len(corpus), size=(n, 2))]


# ---------------------------------------------------------------------------------------------------
# concat_texts and sampling


def test_concat_texts_adds_periods_and_skips_empty():
  assert C.concat_texts(["a dog on grass", "a cat."]) == "a dog on grass. a cat."
  assert C.concat_texts(["a dog   ", "a cat .  "]) == "a dog. a cat ."
  assert C.concat_texts(["", "a dog", "   ", None]) == "a dog."
  assert C.concat_texts(["", ""]) == ""


def test_sample_extra_sentences_enough():
  rng = np.random.default_rng(0)
  extras = ["e0", "e1", "e2", "e3"]
  seen_orders = set()
  for _ in range(50):
    chosen, reason = C.sample_extra_sentences(rng, extras, 2, "first")
    assert reason is None and len(chosen) == 2 and len(set(chosen)) == 2
    assert set(chosen) <= set(extras)
    seen_orders.add(tuple(chosen))
  assert len(seen_orders) > 6  # random subsets in random order


def test_sample_extra_sentences_too_few_and_none():
  rng = np.random.default_rng(0)
  chosen, reason = C.sample_extra_sentences(rng, ["only"], 3, "first")
  assert chosen == ["only", "only", "only"] and reason is None
  chosen, reason = C.sample_extra_sentences(rng, ["e0", "e1", "  "], 3, "first")
  assert chosen[:2] == ["e0", "e1"] and chosen[2] in ("e0", "e1") and reason is None
  chosen, reason = C.sample_extra_sentences(rng, [], 2, "first")
  assert chosen == ["first", "first"] and reason == "no_extra_sentences"
  assert C.sample_extra_sentences(rng, ["e0"], 0, "first") == ([], None)


# ---------------------------------------------------------------------------------------------------
# Swap semantics


def test_swap_replaces_every_whole_word_occurrence_case_sensitively():
  text = "a dog and a dog; hotdog, dogs, Dog, dog."
  assert C.swap_words(text, {"dog": "cat"}) == "a cat and a cat; hotdog, dogs, Dog, cat."


def test_swap_never_replaces_twice():
  assert C.swap_words("a dog chases a cat", {"dog": "cat", "cat": "dog"}) == "a cat chases a dog"
  assert C.swap_words("red car, redwood", {"red": "redwood", "redwood": "red"}) == "redwood car, red"


def test_swap_keeps_quotes_and_clitics():
  assert C.swap_words("a 'dog' and \"dog\" and the dog's bone", {"dog": "cat"}) == \
      "a 'cat' and \"cat\" and the cat's bone"
  # the "t" of "don't" is not a word of its own; the "t" of "t-shirt" is (spaCy: t - shirt)
  assert C.swap_words("don't wear a t-shirt", {"t": "x"}) == "don't wear a x-shirt"


def test_swap_words_with_non_word_edges():
  assert C.swap_words("50% off, 150% more", {"50%": "20%"}) == "20% off, 150% more"
  assert C.swap_words("a t-shirt and a shirt", {"t-shirt": "hat"}) == "a hat and a shirt"
  assert C.swap_words("a t-shirt and a shirt", {"shirt": "hat"}) == "a t-hat and a hat"
  assert C.swap_words("c++ code", {"c++": "rust"}) == "rust code"


def test_cross_negative_swaps_same_pos_words_only():
  c1, c2 = "the dog is on a red sofa", "the cat is under a blue table"
  t1 = [("the", "DET"), ("dog", "NOUN"), ("is", "AUX"), ("on", "ADP"), ("a", "DET"), ("red", "ADJ"),
        ("sofa", "NOUN")]
  t2 = [("the", "DET"), ("cat", "NOUN"), ("is", "AUX"), ("under", "ADP"), ("a", "DET"),
        ("blue", "ADJ"), ("table", "NOUN")]
  allowed = {("dog", "cat"), ("dog", "table"), ("sofa", "cat"), ("sofa", "table"), ("on", "under"),
             ("red", "blue")}
  seen = set()
  for seed in range(60):
    negative, counters = C.cross_caption_negative(np.random.default_rng(seed), c1, t1, c2, t2)
    assert counters == {}
    pair = next(p for p in allowed
                if negative in (C.concat_texts([C.swap_words(c1, {p[0]: p[1]}),
                                                C.swap_words(c2, {p[1]: p[0]})]),
                                C.concat_texts([C.swap_words(c2, {p[1]: p[0]}),
                                                C.swap_words(c1, {p[0]: p[1]})])))
    seen.add(pair)
  assert seen == allowed  # every candidate is reachable; DET and AUX never are


def test_shared_words_and_space_are_never_swapped():
  c1, c2 = "a red  dog", "a red  cat"
  t1 = [("a", "DET"), ("red", "ADJ"), (" ", "SPACE"), ("dog", "NOUN")]
  t2 = [("a", "DET"), ("red", "ADJ"), (" ", "SPACE"), ("cat", "NOUN")]
  for seed in range(10):
    negative, counters = C.cross_caption_negative(np.random.default_rng(seed), c1, t1, c2, t2)
    # dog<->cat is the only same-POS candidate, and it just gives p1/p2 back: rejected, so the
    # fallback swaps two words inside one caption.
    assert counters.get("cross_swap_failed") == 1 and "no_valid_negative" not in counters
    assert negative not in (C.concat_texts([c1, c2]), C.concat_texts([c2, c1]))
    assert "  " in negative and sorted(negative.replace(".", "").split()) == \
        sorted("a red dog a red cat".split())


def test_pos_fallback_never_picks_punctuation():
  c1, c2 = "dog !", "cat ?"
  t1, t2 = [("dog", "NOUN"), ("!", "PUNCT")], [("cat", "VERB"), ("?", "PUNCT")]
  for seed in range(10):
    negative, counters = C.cross_caption_negative(np.random.default_rng(seed), c1, t1, c2, t2)
    assert counters.get("cross_pos_fallback") == 1
    assert "!" in negative and "?" in negative


# ---------------------------------------------------------------------------------------------------
# Caption sets on a corpus


def test_p2_is_p1_with_the_captions_swapped(tags):
  rng = np.random.default_rng(0)
  for c1, c2 in _pairs(CORPUS, 200):
    captions = C.clic_caption_set(rng, c1, ["x y z w"], tags[c1], c2, [], tags[c2])
    assert captions.positives[0] == C.concat_texts([c1, c2])
    assert captions.positives[1] == C.concat_texts([c2, c1])
    assert captions.single_caption == c1


def test_negative_differs_from_every_positive_after_tokenization(tags):
  rng = np.random.default_rng(0)
  generated = CORPUS[:320]
  extras = {c: [generated[(i + 7) % 320], generated[(i + 13) % 320]] for i, c in enumerate(CORPUS)}
  invalid_generated = 0
  for c1, c2 in _pairs(CORPUS, 400):
    captions = C.clic_caption_set(rng, c1, extras[c1], tags[c1], c2, extras[c2], tags[c2],
                                  tokenize_fn=tokenize)
    assert len(captions.positives) == 4
    assert set(captions.counters) <= set(C.COUNTER_NAMES)
    tokens = _tokens(captions.positives + [captions.negative])
    differs = not np.any(np.all(tokens[:-1] == tokens[-1], axis=-1))
    assert differs == captions.negative_is_valid, (c1, c2, captions)
    if c1 in generated and c2 in generated and c1 != c2:
      invalid_generated += not captions.negative_is_valid
  assert invalid_generated == 0


def test_truncation_at_77_tokens_is_detected():
  filler = "the word " * 40
  c1, c2 = filler + "dog", "a cat sits"
  t1, t2 = [("dog", "NOUN")], [("cat", "NOUN")]
  for seed in range(8):
    rng = np.random.default_rng(seed)
    negative, counters = C.cross_caption_negative(rng, c1, t1, c2, t2, tokenize_fn=tokenize)
    # c1 first: the swapped "dog" falls beyond token 77 and the tokens equal p1's; only the other
    # order is a real negative.
    assert negative.startswith("a dog sits.") and "no_valid_negative" not in counters
    tokens = _tokens([C.concat_texts([c1, c2]), C.concat_texts([c2, c1]), negative])
    assert not (tokens[2] == tokens[0]).all() and not (tokens[2] == tokens[1]).all()
    # Without the tokenizer only strings are compared, so the truncated order can slip through.
  results = {C.cross_caption_negative(np.random.default_rng(s), c1, t1, c2, t2)[0] for s in range(8)}
  assert any(r.startswith("the word") for r in results)


def test_no_valid_negative_is_reported():
  filler = "the word " * 40
  c1, c2 = filler + "dog", filler + "cat"
  negative, counters = C.cross_caption_negative(np.random.default_rng(0), c1, [("dog", "NOUN")], c2,
                                                [("cat", "NOUN")], tokenize_fn=tokenize)
  assert counters.get("cross_swap_failed") == 1 and counters.get("no_valid_negative") == 1
  assert isinstance(negative, str) and negative
  captions = C.clic_caption_set(np.random.default_rng(0), c1, [], [("dog", "NOUN")], c2, [],
                                [("cat", "NOUN")], tokenize_fn=tokenize)
  assert not captions.negative_is_valid and captions.counters["no_valid_negative"] == 1


def test_same_seed_same_caption_sets(tags):
  def run(seed):
    rng = np.random.default_rng(seed)
    return [C.clic_caption_set(rng, c1, [c2, c1 + " again"], tags[c1], c2, [c1], tags[c2])
            for c1, c2 in _pairs(CORPUS, 120)]
  first = run(3)
  assert first == run(3)
  assert first != run(4)


def test_extra_positives_are_shuffled_pairs():
  rng = np.random.default_rng(0)
  orders = set()
  for _ in range(40):
    captions = C.clic_caption_set(rng, "a red dog", ["e1 a", "e1 b"], None, "a blue cat",
                                  ["e2 a", "e2 b"], None, num_extra=2)
    assert len(captions.positives) == 4
    parts = [p[:-1].split(". ") for p in captions.positives[2:]]
    for first, second in parts:
      assert {first[:2], second[:2]} == {"e1", "e2"}  # one sentence of each image
      orders.add(first[:2])
    # the two extras of one image are drawn without replacement
    assert sorted(s for pair in parts for s in pair) == ["e1 a", "e1 b", "e2 a", "e2 b"]
  assert orders == {"e1", "e2"}  # both orders occur


def test_num_extra_controls_the_number_of_positives():
  for k in (0, 1, 3):
    captions = C.clic_caption_set(np.random.default_rng(0), "a red dog", ["a b c d"], None,
                                  "a blue cat", ["e f g h"], None, num_extra=k)
    assert len(captions.positives) == 2 + k


def test_no_extra_sentences_reuses_first_sentence():
  captions = C.clic_caption_set(np.random.default_rng(0), "a red dog runs", [], None,
                                "a blue cat sleeps", [], None)
  assert captions.counters["no_extra_sentences"] == 2
  assert set(captions.positives[2:]) <= set(captions.positives[:2])
  assert captions.negative_is_valid


@pytest.mark.parametrize("bad", ODD_CAPTIONS)
def test_bad_captions_never_raise(bad, tags):
  rng = np.random.default_rng(0)
  good = "a red dog sits on a blue chair"
  for c1, c2 in ((bad, good), (good, bad), (bad, bad)):
    captions = C.clic_caption_set(rng, c1, [bad], tags.get(c1), c2, [], None, tokenize_fn=tokenize)
    assert len(captions.positives) == 4 and all(isinstance(p, str) for p in captions.positives)
    assert isinstance(captions.negative, str)
    if captions.negative_is_valid:
      tokens = _tokens(captions.positives + [captions.negative])
      assert not np.any(np.all(tokens[:-1] == tokens[-1], axis=-1))
  for make in (lambda: C.negclip_caption_set(rng, bad, None, tokenize_fn=tokenize),
               lambda: C.baseline_caption_set(rng, bad, [], None, tokenize_fn=tokenize)):
    captions = make()
    assert isinstance(captions.negative, str) and captions.single_caption == bad
  negative, counters = C.single_caption_negative(rng, bad, None)
  assert (negative is None) == ("no_valid_negative" in counters)


def test_bad_caption_counters():
  rng = np.random.default_rng(0)
  captions = C.clic_caption_set(rng, "", [], None, "!!!", [], None)
  assert captions.counters["caption_without_words"] == 2
  assert not captions.negative_is_valid
  captions = C.clic_caption_set(rng, "dog", [], None, "a red cat sits", [], None)
  assert captions.negative_is_valid  # one word still swaps with a noun of the partner
  negative, counters = C.single_caption_negative(rng, "dog", None)
  assert negative is None and counters == {"no_valid_negative": 1}


# ---------------------------------------------------------------------------------------------------
# Single-caption negatives: NegCLIP and the baseline (docs/method.md, "Single-caption negative")


def test_single_caption_negative_same_pos_first():
  caption = "a red dog chases a blue cat"
  for seed in range(20):
    negative, counters = C.single_caption_negative(np.random.default_rng(seed), caption, None)
    assert counters == {}
    assert negative in ("a red cat chases a blue dog", "a blue dog chases a red cat")


def test_single_caption_negative_short_captions():
  negative, counters = C.single_caption_negative(np.random.default_rng(0), "red dog",
                                                 [("red", "ADJ"), ("dog", "NOUN")])
  assert negative == "dog red" and counters == {"single_pos_fallback": 1}
  negative, counters = C.single_caption_negative(np.random.default_rng(0), "the dog",
                                                 [("the", "DET"), ("dog", "NOUN")])
  assert negative == "dog the" and counters == {"single_pos_fallback": 1}


def test_negclip_and_baseline_sets():
  rng = np.random.default_rng(0)
  captions = C.negclip_caption_set(rng, "a red dog chases a blue cat", None, tokenize_fn=tokenize)
  assert captions.positives == ["a red dog chases a blue cat"]
  assert captions.negative != captions.positives[0] and captions.negative_is_valid
  captions = C.baseline_caption_set(rng, "a red dog chases a blue cat", ["e0 x y", "e1 x y"], None,
                                    tokenize_fn=tokenize)
  assert captions.positives[:2] == ["a red dog chases a blue cat"] * 2
  assert sorted(captions.positives[2:]) == ["e0 x y", "e1 x y"]
  assert captions.negative not in captions.positives and captions.negative_is_valid
  assert captions.single_caption == "a red dog chases a blue cat"


# ---------------------------------------------------------------------------------------------------
# Both tagger code paths feed the same negatives


_RULE_TAGS = {"a": "DET", "the": "DET", "dog": "NOUN", "cat": "NOUN", "sofa": "NOUN", "mat": "NOUN",
              "runs": "VERB", "sleeps": "VERB", "red": "ADJ", "blue": "ADJ", "on": "ADP",
              "under": "ADP", ".": "PUNCT"}
def test_spacy_pipeline_tags_drive_the_negative(rule_pos_pipeline):
  nlp = rule_pos_pipeline(_RULE_TAGS)
  tagger = pos_tagging.get_tagger(nlp)
  c1, c2 = "a red dog sleeps on the sofa", "a blue cat runs under the mat"
  t1, t2 = tagger.tag_many([c1, c2])
  assert t1[2] == ("dog", "NOUN") and t2[3] == ("runs", "VERB")
  lexicon = pos_tagging.get_tagger("lexicon")
  for seed in range(10):
    from_spacy = C.cross_caption_negative(np.random.default_rng(seed), c1, t1, c2, t2,
                                          tokenize_fn=tokenize)
    from_json = C.cross_caption_negative(np.random.default_rng(seed), c1,
                                         pos_tagging.tags_to_json(t1), c2,
                                         pos_tagging.tags_to_json(t2), tokenize_fn=tokenize)
    from_lexicon = C.cross_caption_negative(np.random.default_rng(seed), c1, lexicon.tag(c1), c2,
                                            lexicon.tag(c2), tokenize_fn=tokenize)
    assert from_spacy == from_json
    assert from_spacy[1] == {} and from_lexicon[1] == {}
    words = sorted(from_spacy[0].replace(".", "").split())
    assert words == sorted((c1 + " " + c2).split())  # a swap moves words, never adds or drops


def test_default_tags_are_used_when_none():
  rng = np.random.default_rng(0)
  with_none = C.clic_caption_set(rng, "a red dog runs", [], None, "a blue cat sleeps", [], None)
  rng = np.random.default_rng(0)
  tagger = pos_tagging.default_tagger()
  explicit = C.clic_caption_set(rng, "a red dog runs", [], tagger.tag("a red dog runs"),
                                "a blue cat sleeps", [], tagger.tag("a blue cat sleeps"))
  assert with_none == explicit
