"""Tests of the procedural toy world (clic_jax.data.toyworld): determinism, POS tags, caption truth,
benchmark formats (read back with the real evaluator loaders), split disjointness, CSV rules.

Caption truth is checked with a small parser written here, independent of the generator's own
statement objects, against the structured scenes the generator writes next to the images.
"""
from __future__ import annotations

import csv
import hashlib
import itertools
import json
import os
import re

import numpy as np
import pytest
from PIL import Image

from clic_jax.data.toyworld import generate_world, world_paths
from clic_jax.data.toyworld.__main__ import main as cli_main
from clic_jax.data.toyworld.scenes import Scene, scene_key

COLORS = {"red", "green", "blue", "yellow", "purple", "orange"}
SHAPES = {"circle", "square", "triangle", "star", "cross", "diamond"}
SIZES = {"small", "large"}
BACKGROUND_WORDS = {"white", "gray", "black", "noisy", "striped"}
RELATION_PHRASES = {("to", "the", "left", "of"): "left", ("to", "the", "right", "of"): "right",
                    ("above",): "above", ("below",): "below"}
EXPECTED_TAG = {**{w: "ADJ" for w in COLORS | SIZES | BACKGROUND_WORDS},
                **{w: "NOUN" for w in SHAPES | {"shape", "shapes", "background", "left", "right"}},
                "a": "DET", "an": "DET", "the": "DET", "to": "ADP", "of": "ADP", "above": "ADP",
                "below": "ADP", "on": "ADP", "and": "CCONJ", ",": "PUNCT", ".": "PUNCT",
                "there": "PRON", "are": "VERB", "one": "NUM", "two": "NUM", "three": "NUM"}
SMALL = dict(num_train=40, num_test=30, seed=3, image_size=48, frames="mixed")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  return generate_world(str(tmp_path_factory.mktemp("world")), **SMALL)


def _read_csv(path):
  with open(path, newline="", encoding="utf-8") as f:
    return list(csv.reader(f))


def _read_jsonl(path):
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f]


def _read_json(path):
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def _digest_tree(root):
  digest = {}
  for folder, _, files in os.walk(root):
    for name in files:
      if name != "manifest.json":
        path = os.path.join(folder, name)
        with open(path, "rb") as f:
          digest[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
  return digest


# ---- an independent reader of the caption grammar, and its truth conditions -------------------

def _parse_np(words, i):
  article = words[i]
  if article not in ("a", "an", "the"):
    raise ValueError(f"expected an article at {i}: {words}")
  np_ = {"definite": article == "the", "size": None, "color": None}
  expected_article = "an" if words[i + 1][0] in "aeiou" else "a"
  assert np_["definite"] or article == expected_article, words
  i += 1
  if words[i] in SIZES:
    np_["size"], i = words[i], i + 1
  if words[i] in COLORS:
    np_["color"], i = words[i], i + 1
  if words[i] not in SHAPES:
    raise ValueError(f"expected a shape at {i}: {words}")
  np_["shape"] = words[i]
  return np_, i + 1


def _parse_relation(words, i):
  for phrase, relation in RELATION_PHRASES.items():
    if tuple(words[i:i + len(phrase)]) == phrase:
      return relation, i + len(phrase)
  return None, i


def parse(sentence):
  """A sentence -> ("background", w) | ("count", n) | ("property", shape, adj) |
  ("on", np, w) | ("relation", np, rel, np) | ("objects", [np, ...])."""
  assert sentence.endswith("."), sentence
  words = re.findall(r"[a-z]+|,", sentence[:-1])
  assert " ".join(words).replace(" ,", ",") == sentence[:-1], sentence
  if words[:3] == ["the", "background", "is"] and len(words) == 4:
    return ("background", words[3])
  if words[:2] in (["there", "is"], ["there", "are"]) and words[2] in ("one", "two", "three"):
    return ("count", ["one", "two", "three"].index(words[2]) + 1)
  if len(words) == 4 and words[0] == "the" and words[1] in SHAPES and words[2] == "is":
    return ("property", words[1], words[3])
  i = 2 if words[:2] == ["there", "is"] else 0
  first, i = _parse_np(words, i)
  if i < len(words) and words[i] == "is":
    i += 1
  relation, j = _parse_relation(words, i)
  if relation:
    second, j = _parse_np(words, j)
    assert j == len(words), sentence
    return ("relation", first, relation, second)
  if words[i:i + 2] == ["on", "a"] and words[i + 3:] == ["background"]:
    return ("on", first, words[i + 2])
  nps = [first]
  while i < len(words):
    assert words[i] in (",", "and"), sentence
    np_, i = _parse_np(words, i + 1)
    nps.append(np_)
  return ("objects", nps)


def _matches(np_, obj):
  return (obj["shape"] == np_["shape"] and np_["color"] in (None, obj["color"])
          and np_["size"] in (None, obj["size"]))


def _names_one(np_, objects):
  return not np_["definite"] or sum(_matches(np_, o) for o in objects) == 1


def _offset(a, b, relation):
  return {"left": b["x"] - a["x"], "right": a["x"] - b["x"],
          "above": b["y"] - a["y"], "below": a["y"] - b["y"]}[relation]


def is_true(sentence, scene):
  """Truth for the scene: relations need only the right order (offset > 0); "the x" must name one
  object. Positives must pass this; negatives must fail even this generous reading."""
  kind, *args = parse(sentence)
  objects = scene["objects"]
  if kind == "background":
    return scene["background"]["word"] == args[0]
  if kind == "count":
    return len(objects) == args[0]
  if kind == "property":
    same = [o for o in objects if o["shape"] == args[0]]
    return len(same) == 1 and args[1] in (same[0]["color"], same[0]["size"])
  if kind == "on":
    return scene["background"]["word"] == args[1] and any(_matches(args[0], o) for o in objects)
  if kind == "relation":
    a_np, relation, b_np = args
    if not (_names_one(a_np, objects) and _names_one(b_np, objects)):
      return False
    return any(_matches(a_np, a) and _matches(b_np, b) and _offset(a, b, relation) > 0
               for a, b in itertools.permutations(objects, 2))
  nps = args[0]
  return any(all(_matches(n, o) for n, o in zip(nps, chosen))
             for chosen in itertools.permutations(objects, len(nps)))


def _scenes_by_image(path):
  return {s["image"]: s for s in _read_jsonl(path)}


# ---- determinism and idempotence --------------------------------------------------------------

def test_same_seed_same_bytes_other_seed_differs(world, tmp_path):
  again = generate_world(str(tmp_path / "again"), **SMALL)
  first, second = _digest_tree(world["out_dir"]), _digest_tree(again["out_dir"])
  assert first == second
  assert any(k.endswith(".png") for k in first) and "train.csv" in first
  other = generate_world(str(tmp_path / "other"), **{**SMALL, "seed": 4})
  third = _digest_tree(other["out_dir"])
  assert third["train.csv"] != first["train.csv"]
  assert third["images/train/000000.png"] != first["images/train/000000.png"]


def test_generate_is_idempotent_and_regenerates_on_new_config(world, tmp_path):
  stamp = os.stat(world["train_csv"]).st_mtime_ns
  assert generate_world(world["out_dir"], **SMALL) == world
  assert os.stat(world["train_csv"]).st_mtime_ns == stamp
  manifest = _read_json(world["manifest"])
  assert manifest["complete"] and manifest["config"]["num_train"] == SMALL["num_train"]

  small = generate_world(str(tmp_path / "w"), num_train=5, num_test=3, seed=0, image_size=32)
  bigger = generate_world(str(tmp_path / "w"), num_train=7, num_test=3, seed=0, image_size=32)
  assert len(_read_csv(bigger["train_csv"])) == 7
  assert len(os.listdir(os.path.join(small["image_root"], "train"))) == 7


def test_refuses_foreign_nonempty_directory_and_bad_arguments(tmp_path):
  (tmp_path / "mine.txt").write_text("precious")
  with pytest.raises(FileExistsError, match="not empty"):
    generate_world(str(tmp_path), num_train=2, num_test=2)
  with pytest.raises(ValueError, match="num_train"):
    generate_world(str(tmp_path / "x"), num_train=0, num_test=2)
  with pytest.raises(ValueError, match="image_format"):
    generate_world(str(tmp_path / "x"), num_train=2, num_test=2, image_format="gif")


# ---- the CSV, the images and the scenes ----------------------------------------------------------

def test_csv_follows_the_reference_reader_rules(world):
  for name in ("train", "test"):
    rows = _read_csv(world[f"{name}_csv"])
    assert len(rows) == SMALL[f"num_{name}"]
    for row in rows:
      assert row[0].endswith((".png", ".jpg", ".jpeg")) and not os.path.isabs(row[0])
      assert os.path.isfile(os.path.join(world["image_root"], row[0]))
      assert len(row) >= 4                                  # first sentence + at least 2 extras
      assert all(s == s.lower() and s.strip() == s and s for s in row[1:])
      assert len(set(row[1:])) == len(row) - 1              # extras are different sentences


def test_images_match_their_scenes(world):
  scenes = _read_jsonl(world["train_scenes"])
  orientations = set()
  colors = {"red": (220, 30, 35), "green": (30, 165, 55), "blue": (40, 85, 230),
            "yellow": (245, 210, 25), "purple": (145, 50, 190), "orange": (245, 130, 20)}
  for scene in scenes:
    with Image.open(os.path.join(world["image_root"], scene["image"])) as image:
      pixels = np.asarray(image.convert("RGB"), np.int32)
    height, width = pixels.shape[:2]
    assert (width, height) == (scene["width"], scene["height"])
    orientations.add("portrait" if height > width else "wide")
    unit = min(width, height)
    x0, y0 = (width - unit) / 2, (height - unit) / 2
    for obj in scene["objects"]:
      px = pixels[int(y0 + obj["y"] * unit), int(x0 + obj["x"] * unit)]
      assert np.abs(px - colors[obj["color"]]).max() <= 40, (scene["image"], obj, px)
  assert orientations == {"portrait", "wide"}              # both concatenation layouts occur


def test_default_world_is_square_so_the_evaluation_crop_keeps_everything(tmp_path):
  paths = generate_world(str(tmp_path / "sq"), num_train=12, num_test=6, seed=1, image_size=32)
  for name in ("train_scenes", "test_scenes"):
    for scene in _read_jsonl(paths[name]):
      assert scene["width"] == scene["height"] == 32
      for obj in scene["objects"]:          # inside the image: fractions of width and height
        assert obj["radius"] < obj["x"] < 1 - obj["radius"]
        assert obj["radius"] < obj["y"] < 1 - obj["radius"]


def test_train_and_test_scenes_are_disjoint(world):
  train = [Scene.from_json({k: v for k, v in s.items() if k != "image"})
           for s in _read_jsonl(world["train_scenes"])]
  test = [Scene.from_json({k: v for k, v in s.items() if k != "image"})
          for s in _read_jsonl(world["test_scenes"])]
  assert not {scene_key(s) for s in train} & {scene_key(s) for s in test}
  digest = lambda d: {v for k, v in _digest_tree(d).items()}
  assert not digest(os.path.join(world["image_root"], "train")) & digest(world["coco_dir"])


def test_held_out_sampler_redraws_scenes_that_training_has():
  from clic_jax.data.toyworld import TEST_SCENES, sample_split

  plain = sample_split(TEST_SCENES, 20, seed=5, image_size=32, excluded_keys=set())
  taken = {scene_key(s) for s in plain[::2]}              # pretend training has every other one
  held_out = sample_split(TEST_SCENES, 20, seed=5, image_size=32, excluded_keys=taken)
  assert not {scene_key(s) for s in held_out} & taken
  assert held_out[1::2] == plain[1::2]                    # the others are untouched


def test_every_training_sentence_is_true_for_its_scene(world):
  for name in ("train", "test"):
    scenes = _scenes_by_image(world[f"{name}_scenes"])
    for row in _read_csv(world[f"{name}_csv"]):
      for sentence in row[1:]:
        assert is_true(sentence, scenes[row[0]]), (row[0], sentence)


# ---- POS tags ------------------------------------------------------------------------------------

def test_pos_sidecar_has_a_right_tag_for_every_word(world):
  rows = _read_csv(world["train_csv"])
  lines = _read_jsonl(world["train_pos"])
  assert len(lines) == len(rows)
  seen_tags = set()
  for row, line in zip(rows, lines):
    assert set(line) == {"tags"} and len(line["tags"]) == len(row) - 1
    for sentence, tagged in zip(row[1:], line["tags"]):
      words = [w for w, _ in tagged]
      assert "".join(words) == sentence.replace(" ", "")    # every character is covered
      assert re.findall(r"[a-z]+|[.,]", sentence) == words   # punctuation is its own token
      for word, tag in tagged:
        seen_tags.add(tag)
        if word == "is":                                    # existential VERB, copular AUX
          assert tag == ("VERB" if words[0] == "there" else "AUX"), sentence
        else:
          assert tag == EXPECTED_TAG[word], (word, tag, sentence)
  assert {"DET", "ADJ", "NOUN", "ADP", "PUNCT", "CCONJ", "PRON", "VERB", "AUX"} <= seen_tags


# ---- the benchmark --------------------------------------------------------------------------------

def test_sugarcrepe_files_have_the_public_format_and_true_captions(world):
  scenes = _scenes_by_image(world["test_scenes"])
  files = sorted(os.listdir(world["sugarcrepe_dir"]))
  assert files == sorted(f"{c}.json" for c in ("add_att", "add_obj", "replace_att",
                                                 "replace_obj", "replace_rel", "swap_att", "swap_obj"))
  for file in files:
    category = file[:-5]
    data = _read_json(os.path.join(world["sugarcrepe_dir"], file))
    assert isinstance(data, dict) and len(data) >= SMALL["num_test"] // 3, (file, len(data))
    for key, item in data.items():
      assert isinstance(key, str) and key.isdigit()
      assert set(item) == {"filename", "caption", "negative_caption"}
      assert all(isinstance(v, str) for v in item.values())
      assert os.path.isfile(os.path.join(world["coco_dir"], item["filename"]))
      scene = scenes[f"test/{item['filename']}"]
      caption, negative = item["caption"], item["negative_caption"]
      assert caption != negative
      assert is_true(caption, scene), (category, caption)
      assert not is_true(negative, scene), (category, negative, scene)
      _check_category_edit(category, caption, negative)


def _check_category_edit(category, caption, negative):
  """The negative differs from the caption in the way its category says."""
  pos_words, neg_words = re.findall(r"[a-z]+", caption), re.findall(r"[a-z]+", negative)
  kind_pos, kind_neg = parse(caption), parse(negative)
  assert kind_pos[0] == kind_neg[0]
  if category == "swap_att":
    assert sorted(pos_words) == sorted(neg_words)
    assert [w for w in pos_words if w in COLORS] != [w for w in neg_words if w in COLORS]
  elif category == "swap_obj":
    assert kind_pos[0] == "relation" and sorted(pos_words) == sorted(neg_words)
    assert [w for w in pos_words if w in SHAPES] == [w for w in neg_words if w in SHAPES][::-1]
  elif category == "replace_rel":
    assert kind_pos[0] == "relation" and kind_pos[1] == kind_neg[1] and kind_pos[3] == kind_neg[3]
    assert {kind_pos[2], kind_neg[2]} in ({"left", "right"}, {"above", "below"})
  elif category in ("replace_att", "replace_obj"):
    vocabulary = COLORS if category == "replace_att" else SHAPES
    changed = [(p, n) for p, n in zip(pos_words, neg_words) if p != n and p not in ("a", "an")]
    assert len(changed) == 1 and set(changed[0]) <= vocabulary, (caption, negative)
  elif category == "add_obj":
    assert len(kind_neg[1]) == len(kind_pos[1]) + 1
  elif category == "add_att":
    assert len([w for w in neg_words if w in COLORS]) == len([w for w in pos_words if w in COLORS]) + 1


def test_sugarcrepe_pp_files_have_the_public_format(world):
  scenes = _scenes_by_image(world["test_scenes"])
  files = sorted(os.listdir(world["sugarcrepe_pp_dir"]))
  assert files == sorted(f"{c}.json" for c in ("replace_att", "replace_obj", "replace_rel",
                                                 "swap_att", "swap_obj"))
  for file in files:
    data = _read_json(os.path.join(world["sugarcrepe_pp_dir"], file))
    assert isinstance(data, list) and data
    for item in data:
      assert set(item) == {"id", "filename", "caption", "caption2", "negative_caption"}
      assert isinstance(item["id"], int)
      scene = scenes[f"test/{item['filename']}"]
      assert len({item["caption"], item["caption2"], item["negative_caption"]}) == 3
      assert is_true(item["caption"], scene) and is_true(item["caption2"], scene)
      assert not is_true(item["negative_caption"], scene)


def test_retrieval_split_has_five_true_captions_per_image(world):
  scenes = _scenes_by_image(world["test_scenes"])
  data = _read_json(world["retrieval_json"])
  assert len(data) == SMALL["num_test"]
  for item in data:
    assert set(item) == {"image", "caption"} and len(item["caption"]) == 5
    assert len(set(item["caption"])) == 5
    assert os.path.isfile(os.path.join(world["retrieval_image_root"], item["image"]))
    assert all(is_true(c, scenes[item["image"]]) for c in item["caption"])


def test_real_evaluator_loaders_read_the_benchmark(world):
  from clic_jax.evaluate import retrieval, sugarcrepe, sugarcrepe_pp
  from clic_jax.evaluate.embed import SkipCounter

  loaded = sugarcrepe.load(world["sugarcrepe_dir"], world["coco_dir"],
                           SkipCounter("sugarcrepe", on_missing="error"))
  assert set(loaded) == set(sugarcrepe.CATEGORIES)
  assert all(os.path.isfile(row["image"]) for rows in loaded.values() for row in rows)
  loaded_pp = sugarcrepe_pp.load(world["sugarcrepe_pp_dir"],
                                 SkipCounter("sugarcrepe_pp", on_missing="error"))
  assert set(loaded_pp) == set(sugarcrepe_pp.CATEGORIES)
  examples = retrieval.load(world["retrieval_json"], world["retrieval_image_root"],
                            SkipCounter("retrieval", on_missing="error"))
  assert len(examples) == SMALL["num_test"] and all(len(e["captions"]) == 5 for e in examples)
  assert all(os.path.isfile(e["image"]) for e in examples)


def test_data_pipeline_reader_keeps_every_row_with_its_tags(world):
  from clic_jax.data.csv_source import read_reference_csv

  rows, report = read_reference_csv(world["train_csv"])
  assert len(rows) == SMALL["num_train"] and not report, report
  for row in rows:
    assert row.tags is not None and len(row.tags) == len(row.sentences)
    assert [w for w, _ in row.tags[0]] == re.findall(r"[a-z]+|[.,]", row.sentences[0])


# ---- the command line and the JPEG option --------------------------------------------------------

def test_cli_writes_a_jpeg_world_and_reports_bad_input(tmp_path, capsys):
  out = tmp_path / "cli"
  assert cli_main([f"--out={out}", "--num_train=4", "--num_test=3", "--seed=1",
                   "--image_size=32", "--image_format=jpg"]) == 0
  printed = json.loads(capsys.readouterr().out)
  assert printed == world_paths(str(out))
  rows = _read_csv(printed["train_csv"])
  assert len(rows) == 4 and all(r[0].endswith(".jpg") for r in rows)
  assert cli_main([f"--out={tmp_path / 'bad'}", "--num_train=0"]) == 2
  assert "num_train" in capsys.readouterr().err
