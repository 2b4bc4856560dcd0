"""Test setup: 8 simulated CPU devices, so sharded code paths run in every test session.

XLA reads the flag when the CPU backend starts, so it is set before anything imports jax.
"""
import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")       # tests never touch the network
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# No persistent compilation cache: executables reloaded from it for 8 simulated CPU devices were
# seen to deadlock in their collectives (XLA aborts with "Expected 8 threads to join").

import csv  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

_COLOURS = ("red", "blue", "green", "yellow", "purple", "orange")
_SHAPES = ("cube", "ball", "cone", "ring", "star", "box")


def write_caption_dataset(root, num=64, seed=0):
  """A small dataset in the reference CSV format: coloured images of mixed aspect, 4 sentences each.

  Image colour and caption colour agree, so a model can learn something in a few steps.
  """
  from PIL import Image
  rng = np.random.default_rng(seed)
  images = root / "images"
  images.mkdir(parents=True, exist_ok=True)
  palette = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30),
             "yellow": (230, 230, 30), "purple": (150, 30, 180), "orange": (250, 140, 20)}
  rows = []
  for i in range(num):
    colour, shape = _COLOURS[i % len(_COLOURS)], _SHAPES[(i // len(_COLOURS)) % len(_SHAPES)]
    w, h = [(48, 32), (32, 48), (40, 40)][i % 3]
    pixels = np.clip(np.array(palette[colour]) + rng.integers(-20, 20, (h, w, 3)), 0, 255)
    Image.fromarray(pixels.astype(np.uint8)).save(images / f"{i}.jpg")
    rows.append([f"{i}.jpg", f"a {colour} {shape} on a table", f"the {shape} is {colour}",
                 f"a photo of one {colour} {shape}", f"a {shape} that is {colour}"])
  with open(root / "train.csv", "w", newline="") as f:
    csv.writer(f).writerows(rows)
  return root / "train.csv", images


@pytest.fixture(scope="session")
def caption_dataset(tmp_path_factory):
  return write_caption_dataset(tmp_path_factory.mktemp("caption_dataset"))


@pytest.fixture
def rule_pos_pipeline():
  """Builds a spaCy pipeline that assigns coarse POS from a dict (unknown words: "X"), so the spaCy
  code path of the taggers runs without a downloadable English model."""
  import spacy
  from spacy.language import Language

  if not Language.has_factory("clic_test_rule_pos"):
    @Language.factory("clic_test_rule_pos", default_config={"tags": {}})
    def _make_rule_pos(nlp, name, tags):
      def assign(doc):
        for token in doc:
          token.pos_ = tags.get(token.lower_, "X")
        return doc
      return assign

  def build(tags: dict[str, str]):
    nlp = spacy.blank("en")
    nlp.add_pipe("clic_test_rule_pos", config={"tags": dict(tags)})
    return nlp
  return build


# The slowest test files first: pytest-xdist (--dist loadfile) hands whole files to the workers in
# collection order, so a long file collected last would leave one worker running alone at the end.
_SLOW_FILES_FIRST = ("test_multihost.py", "test_train.py", "test_demo.py", "test_grad_accum.py",
                     "test_experiment_smoke.py", "test_clipa_training.py",
                     "test_benchmarks_smoke.py", "test_workdir.py", "test_download.py")


def pytest_collection_modifyitems(config, items):
  rank = {name: i for i, name in enumerate(_SLOW_FILES_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))   # stable: file order kept
