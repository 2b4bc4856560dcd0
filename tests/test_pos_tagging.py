"""POS tagging: the offline lexicon tagger, the spaCy code path, backend choice, stored tags."""
from __future__ import annotations

import pytest
import spacy

from clic_jax.data import pos_tagging
from clic_jax.data.pos_tagging import LexiconTagger, SpacyTagger, TaggerUnavailableError

# Hand-labelled captions: word/TAG marks an open-class word with the coarse tag en_core_web_sm gives.
LABELLED = [
  "a brown/ADJ dog/NOUN is running/VERB on the green/ADJ grass/NOUN",
  "two cats/NOUN sleeping/VERB on a red/ADJ couch/NOUN",
  "a man/NOUN wearing/VERB a black/ADJ hat/NOUN and a white/ADJ shirt/NOUN",
  "a woman/NOUN holding/VERB an umbrella/NOUN in the rain/NOUN",
  "a large/ADJ white/ADJ building/NOUN with many/ADJ windows/NOUN",
  "a plate/NOUN of food/NOUN on a wooden/ADJ table/NOUN",
  "a young/ADJ boy/NOUN plays/VERB with a yellow/ADJ ball/NOUN",
  "the sky/NOUN is blue/ADJ and the clouds/NOUN are white/ADJ",
  "a red/ADJ car/NOUN parked/VERB next/ADV to a tall/ADJ tree/NOUN",
  "a group/NOUN of people/NOUN standing/VERB on a beach/NOUN",
  "a small/ADJ bird/NOUN sits/VERB on a branch/NOUN",
  "a cup/NOUN of coffee/NOUN next/ADV to a laptop/NOUN",
  "a black/ADJ cat/NOUN lying/VERB on a soft/ADJ blanket/NOUN",
  "an old/ADJ man/NOUN reading/VERB a newspaper/NOUN on a bench/NOUN",
  "a bowl/NOUN of fresh/ADJ fruit/NOUN on the kitchen/NOUN counter/NOUN",
  "a girl/NOUN in a pink/ADJ dress/NOUN is dancing/VERB",
  "a busy/ADJ street/NOUN with cars/NOUN and buses/NOUN",
  "a dog/NOUN jumping/VERB over a fence/NOUN",
  "the mountains/NOUN are covered/VERB in snow/NOUN",
  "a person/NOUN riding/VERB a bicycle/NOUN down a narrow/ADJ road/NOUN",
  "a vase/NOUN with colorful/ADJ flowers/NOUN on a window/NOUN sill/NOUN",
  "children/NOUN playing/VERB soccer/NOUN in a park/NOUN",
  "a detailed/ADJ view/NOUN of a green/ADJ leaf/NOUN",
  "a chef/NOUN is cooking/VERB in a modern/ADJ kitchen/NOUN",
  "a horse/NOUN grazing/VERB in a field/NOUN",
  "the logo/NOUN of a company/NOUN on a dark/ADJ background/NOUN",
  "a man/NOUN and a woman/NOUN walking/VERB their dog/NOUN",
  "a bright/ADJ yellow/ADJ sign/NOUN with black/ADJ text/NOUN",
  "a cake/NOUN decorated/VERB with strawberries/NOUN",
  "a boat/NOUN floating/VERB on a calm/ADJ lake/NOUN",
  "a baby/NOUN smiling/VERB at the camera/NOUN",
  "an empty/ADJ room/NOUN with a wooden/ADJ floor/NOUN",
  "the woman/NOUN has long/ADJ brown/ADJ hair/NOUN",
  "a city/NOUN skyline/NOUN at night/NOUN",
  "a cat/NOUN looks/VERB out of the window/NOUN",
  "a blue/ADJ bowl/NOUN filled/VERB with rice/NOUN",
  "a soldier/NOUN stands/VERB near a gate/NOUN",
  "three students/NOUN are studying/VERB in the library/NOUN",
  "a tall/ADJ giraffe/NOUN eats/VERB leaves/NOUN from a tree/NOUN",
  "a map/NOUN of the world/NOUN with several/ADJ countries/NOUN highlighted/VERB",
  "a woman/NOUN holds/VERB a glass/NOUN of wine/NOUN",
  "an elephant/NOUN walks/VERB slowly/ADV through the tall/ADJ grass/NOUN",
  "a train/NOUN arriving/VERB at a crowded/ADJ station/NOUN",
  "a computer/NOUN screen/NOUN showing/VERB a colorful/ADJ chart/NOUN",
  "a man/NOUN in a suit/NOUN speaks/VERB at a conference/NOUN",
  "a bottle/NOUN of water/NOUN and a sandwich/NOUN on a picnic/NOUN blanket/NOUN",
  "the dog/NOUN is very/ADV happy/ADJ",
  "a woman/NOUN carefully/ADV paints/VERB a picture/NOUN",
  "the old/ADJ bridge/NOUN crosses/VERB a wide/ADJ river/NOUN",
  "a little/ADJ girl/NOUN is eating/VERB a green/ADJ apple/NOUN",
  "a pair/NOUN of red/ADJ shoes/NOUN on the floor/NOUN",
  "a snowy/ADJ mountain/NOUN behind a small/ADJ village/NOUN",
  "a man/NOUN throws/VERB a frisbee/NOUN to his dog/NOUN",
  "the table/NOUN is set/VERB for dinner/NOUN",
  "a delicious/ADJ pizza/NOUN topped/VERB with cheese/NOUN and olives/NOUN",
  "an orange/ADJ cat/NOUN watches/VERB birds/NOUN from the window/NOUN",
  "a wooden/ADJ chair/NOUN in the corner/NOUN of a room/NOUN",
  "people/NOUN are waiting/VERB for the bus/NOUN",
  "a silver/ADJ laptop/NOUN on a glass/NOUN desk/NOUN",
  "a teddy/NOUN bear/NOUN sits/VERB on a bed/NOUN",
  "a woman/NOUN with long/ADJ blonde/ADJ hair/NOUN and bright/ADJ blue/ADJ eyes/NOUN",
  "a woman/NOUN in a blue/ADJ dress/NOUN holds/VERB an umbrella/NOUN",
  "the man/NOUN appears/VERB to be in his office/NOUN",
  "the room/NOUN has white/ADJ walls/NOUN and a large/ADJ window/NOUN",
]

OPEN_CLASS = {"NOUN", "VERB", "ADJ", "ADV", "PROPN"}

_RULE_TAGS = {"a": "DET", "the": "DET", "dog": "NOUN", "cat": "NOUN", "runs": "VERB", "sleeps": "VERB",
              "red": "ADJ", "on": "ADP", "grass": "NOUN", ".": "PUNCT"}
def _parse(line):
  words, gold = [], {}
  for index, item in enumerate(line.split()):
    word, _, tag = item.partition("/")
    words.append(word)
    if tag:
      gold[index] = tag
  return " ".join(words), words, gold


@pytest.fixture(scope="module")
def lexicon():
  return pos_tagging.get_tagger("lexicon")


def test_lexicon_agrees_with_hand_labels_on_open_class_words(lexicon):
  agree = total = 0
  for line in LABELLED:
    text, words, gold = _parse(line)
    tagged = lexicon.tag(text)
    assert [word for word, _ in tagged] == words
    for index, tag in gold.items():
      assert tag in OPEN_CLASS
      total += 1
      agree += tagged[index][1] == tag
  assert total >= 200
  assert agree / total >= 0.9, f"agreement {agree}/{total}"


def test_lexicon_closed_classes(lexicon):
  tagged = lexicon.tag("there is a dog and it 's not sleeping because the cat can't see her toy .")
  assert [pos for _, pos in tagged] == [
      "PRON", "AUX", "DET", "NOUN", "CCONJ", "PRON", "AUX", "PART", "VERB", "SCONJ", "DET", "NOUN",
      "AUX", "PART", "VERB", "PRON", "NOUN", "PUNCT"]


def test_lexicon_context_rules(lexicon):
  tags = [pos for _, pos in lexicon.tag("a man wants to play next to the building")]
  assert tags == ["DET", "NOUN", "VERB", "PART", "VERB", "ADV", "ADP", "DET", "NOUN"]
  tags = dict(lexicon.tag("two dogs play with a can of soda"))
  assert (tags["two"], tags["play"], tags["can"]) == ("NUM", "VERB", "NOUN")
  assert lexicon.tag("a dog's bone") == [("a", "DET"), ("dog", "NOUN"), ("'s", "PART"),
                                         ("bone", "NOUN")]


def test_lexicon_numbers_symbols_spaces_and_unknown_words(lexicon):
  tagged = lexicon.tag("3 zorbles cost $5  on 12/24 , 50% off")
  assert tagged == [("3", "NUM"), ("zorbles", "NOUN"), ("cost", "VERB"), ("$", "SYM"), ("5", "NUM"),
                    (" ", "SPACE"), ("on", "ADP"), ("12/24", "NUM"), (",", "PUNCT"),
                    ("50", "NUM"), ("%", "NOUN"), ("off", "ADP")]
  assert dict(lexicon.tag("a gleebly dog"))["gleebly"] == "ADV"
  assert dict(lexicon.tag("a dog sits near Zaragozaville"))["Zaragozaville"] == "PROPN"


def test_lexicon_is_deterministic_and_closed_vocabulary(lexicon):
  texts = [_parse(line)[0] for line in LABELLED] + ["", "!!!", "一只狗在草地上", "a  \n dog"]
  first = lexicon.tag_many(texts)
  assert first == [lexicon.tag(text) for text in texts]
  assert first == pos_tagging.LexiconTagger().tag_many(texts)
  assert all(pos in pos_tagging.UPOS for tagged in first for _, pos in tagged)
  assert lexicon.tag("") == []


CAPTIONS_FOR_TOKENIZER = [
    "a man's t-shirt, isn't it 50% off?", "e.g. a dog at 5 p.m. today", "u.s. flag", "Mr. Smith",
    "the dog... runs", "3-4 dogs", "black/white photo", "red,blue", "a 1990s car", "$5 bill",
    "o'clock", "i'm here and they're ok", "we've got it'd be", "1,000 people", "3.5 liters",
    "a 10-year-old boy", "(a dog)", "'hello'", "it’s a dog’s bone", "don’t", "a b.", "dog.cat",
    "a dog!!", "50-60%", "#hashtag", "1/2 cup", 'he said: "yes"', "8am", "5kg", "dogs' toys",
    "AT&T e-mail", "a  dog\non grass ", " leading space", "can't won't",
]


def test_tokenizer_matches_spacy_english_tokenizer():
  nlp = spacy.blank("en")
  texts = CAPTIONS_FOR_TOKENIZER + [_parse(line)[0] for line in LABELLED]
  for text in texts:
    assert pos_tagging.tokenize_like_spacy(text) == [t.text for t in nlp(text)], text


def test_spacy_code_path_with_a_rule_pipeline(rule_pos_pipeline):
  nlp = rule_pos_pipeline(_RULE_TAGS)
  tagger = pos_tagging.get_tagger(nlp)
  assert isinstance(tagger, SpacyTagger)
  assert tagger.tag("a red dog runs.") == [("a", "DET"), ("red", "ADJ"), ("dog", "NOUN"),
                                           ("runs", "VERB"), (".", "PUNCT")]
  assert tagger.tag_many(["the cat sleeps", "zzz"]) == [
      [("the", "DET"), ("cat", "NOUN"), ("sleeps", "VERB")], [("zzz", "X")]]
  assert isinstance(pos_tagging.get_tagger("spacy", spacy_model=nlp), SpacyTagger)
  assert isinstance(pos_tagging.get_tagger("auto", spacy_model=nlp), SpacyTagger)


def test_spacy_without_tagger_gives_x():
  assert SpacyTagger(spacy.blank("en")).tag("a dog") == [("a", "X"), ("dog", "X")]


def test_missing_spacy_model_names_the_download_command():
  with pytest.raises(TaggerUnavailableError, match="python -m spacy download"):
    pos_tagging.get_tagger("spacy", spacy_model="clic_no_such_pipeline_sm")


def test_auto_backend_and_bad_backend():
  expected = SpacyTagger if pos_tagging.spacy_model_installed() else LexiconTagger
  assert isinstance(pos_tagging.get_tagger("auto"), expected)
  assert pos_tagging.get_tagger("lexicon") is pos_tagging.get_tagger("lexicon")
  assert isinstance(pos_tagging.default_tagger(), expected)
  with pytest.raises(ValueError, match="Unknown POS backend"):
    pos_tagging.get_tagger("nltk")
  custom = LexiconTagger()
  assert pos_tagging.get_tagger(custom) is custom


def test_tags_json_round_trip(lexicon):
  tagged = lexicon.tag("a “quoted” café, naïve dog")
  stored = pos_tagging.tags_to_json(tagged)
  assert stored.startswith('[["a","DET"]')
  assert pos_tagging.tags_from_json(stored) == tagged
  assert pos_tagging.tags_from_json(stored.encode()) == tagged
  assert pos_tagging.tags_from_json([["dog", "NOUN"]]) == [("dog", "NOUN")]
  assert pos_tagging.tags_from_json("[]") == []


@pytest.mark.parametrize("bad", ["not json", '{"a": 1}', '[["dog"]]', '[["dog", "NOUNISH"]]',
                                 '[[1, "NOUN"]]'])
def test_malformed_stored_tags_raise_a_clear_error(bad):
  with pytest.raises(ValueError, match="prepare step"):
    pos_tagging.tags_from_json(bad)
