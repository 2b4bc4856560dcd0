"""Every benchmark's metric from clic_jax equals the metric computed from open_clip embeddings of
the exported weights on the same files, plus the handling of missing images and malformed data.

Fixtures are written in tmp_path in the public formats (SugarCrepe dict files, SugarCrepe++ lists,
Winoground examples.jsonl + images/, Karpathy retrieval JSON, class folders), with generated images.
The reference side below is written independently of clic_jax.evaluate: open_clip's own model,
transform and tokenizer, and straightforward per-example loops.
"""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from clic_jax.evaluate import (Embedder, EvalDataError, evaluate, retrieval, sugarcrepe,
                               sugarcrepe_pp, winoground, zeroshot)
from clic_jax.interop import export_open_clip
from clic_jax.models import config_to_open_clip, create_model, get_model_config

from hf_cache import fake_hf_cache  # noqa: E402

OPEN_CLIP_NAME = "clic-test-tiny"
WORDS = ("dog cat red blue small large horse table bench tree car boat man woman child ball "
         "under over next to riding holding green old young two three wooden metal").split()


# -- fixture writers (also used by test_evaluate_cli.py) -------------------------------------------

def _caption(rng) -> str:
  return "a " + " ".join(rng.choice(WORDS, size=rng.integers(3, 9))) + "."


def _write_image(path, rng, size=None, flat=False) -> None:
  w, h = size or (int(rng.integers(20, 90)), int(rng.integers(20, 90)))
  base = rng.integers(0, 256, 3)
  noise = 0 if flat else rng.integers(-60, 60, (h, w, 3))
  pixels = (base + noise + np.zeros((h, w, 3), np.int64)).clip(0, 255).astype(np.uint8)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(pixels).save(path)


def write_fixtures(root, seed: int = 0) -> dict[str, str]:
  """All benchmark folders in their public formats under root; returns their paths."""
  rng = np.random.default_rng(seed)
  root = str(root)
  coco = os.path.join(root, "coco", "val2017")
  coco_names = [f"{i:012d}.jpg" for i in (139, 285, 632, 724, 776, 785, 802, 872, 885, 1000)]
  for name in coco_names:
    _write_image(os.path.join(coco, name), rng)

  sc = os.path.join(root, "sugarcrepe")
  os.makedirs(sc)
  for c, category in enumerate(sugarcrepe.CATEGORIES):
    ids = sorted(rng.choice(5000, size=7, replace=False))          # non-contiguous string ids
    data = {str(i): {"filename": str(rng.choice(coco_names)), "caption": _caption(rng),
                     "negative_caption": _caption(rng)} for i in ids}
    with open(os.path.join(sc, f"{category}.json"), "w") as f:
      json.dump(data, f, indent=1)

  scpp = os.path.join(root, "sugarcrepe_pp")
  os.makedirs(scpp)
  for category in sugarcrepe_pp.CATEGORIES:
    data = [{"id": i, "filename": str(rng.choice(coco_names)), "caption": _caption(rng),
             "caption2": _caption(rng), "negative_caption": _caption(rng)} for i in range(8)]
    with open(os.path.join(scpp, f"{category}.json"), "w") as f:
      json.dump(data, f, indent=1)

  wino = os.path.join(root, "winoground")
  with_lines = []
  for i in range(16):
    for j in (0, 1):   # a noisy and a flat image: a random model then scores them differently
      _write_image(os.path.join(wino, "images", f"ex_{i}_img_{j}.png"), rng, flat=bool(j))
    with_lines.append(json.dumps({"id": i, "caption_0": _caption(rng), "caption_1": _caption(rng),
                                  "tag": "Object", "secondary_tag": "", "num_main_preds": 1,
                                  "collapsed_tag": "Object", "image_0": f"ex_{i}_img_0",
                                  "image_1": f"ex_{i}_img_1"}))
  with open(os.path.join(wino, "examples.jsonl"), "w") as f:
    f.write("\n".join(with_lines) + "\n")

  retrieval_root = os.path.join(root, "coco_retrieval")
  entries = []
  for i in range(9):
    rel = f"val2014/COCO_val2014_{i:012d}.jpg"
    _write_image(os.path.join(retrieval_root, rel), rng)
    entries.append({"image": rel, "caption": [_caption(rng).upper() + ' "quoted"!  (x)'
                                              for _ in range(5)]})
  with open(os.path.join(root, "coco_karpathy_test.json"), "w") as f:
    json.dump(entries, f)

  classes = os.path.join(root, "classes")
  for k, wnid in enumerate(("n01440764", "n01443537", "n01484850", "n01491361")):
    for j in range(4):
      _write_image(os.path.join(classes, wnid, f"img_{j}.JPEG"), rng)
  with open(os.path.join(root, "classnames.json"), "w") as f:
    json.dump(["tench", "goldfish", "great white shark", "tiger shark"], f)
  with open(os.path.join(root, "templates.txt"), "w") as f:
    f.write("a photo of a {c}.\na drawing of the {c}.\nitap of a {c}.\n")

  return {"root": root, "coco": coco, "sugarcrepe": sc, "sugarcrepe_pp": scpp, "winoground": wino,
          "retrieval_json": os.path.join(root, "coco_karpathy_test.json"),
          "retrieval_root": retrieval_root, "classes": classes,
          "classnames": os.path.join(root, "classnames.json"),
          "templates": os.path.join(root, "templates.txt")}


def register_tiny_in_open_clip() -> None:
  open_clip.factory._MODEL_CONFIGS[OPEN_CLIP_NAME] = config_to_open_clip(get_model_config("tiny"))


# -- shared state: one model, one Embedder (one compile per tower), one open_clip twin ------------

@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  root = tmp_path_factory.mktemp("eval")
  paths = write_fixtures(root / "data")
  model, params = create_model("tiny", seed=0)
  weights = export_open_clip("tiny", params, str(root / "tiny.safetensors"))
  register_tiny_in_open_clip()
  torch_model, _, transform = open_clip.create_model_and_transforms(OPEN_CLIP_NAME,
                                                                    pretrained=str(weights))
  torch_model.eval()
  torch.set_num_threads(1)      # tiny matmuls: threads only add contention on a shared CI machine
  embedder = Embedder(model, params, batch_size=8)   # small batches: many padded last batches
  return paths, embedder, OpenClipReference(torch_model, transform)


class OpenClipReference:
  """Embeddings from open_clip itself, one file / caption at a time (the reference protocol)."""

  def __init__(self, model, transform):
    self.model, self.transform = model, transform
    self.tokenizer = open_clip.get_tokenizer(OPEN_CLIP_NAME)
    self.images, self.texts = {}, {}

  @torch.no_grad()
  def image(self, path) -> np.ndarray:
    if path not in self.images:
      x = self.transform(Image.open(path).convert("RGB"))[None]
      self.images[path] = self.model.encode_image(x, normalize=True)[0].numpy()
    return self.images[path]

  @torch.no_grad()
  def text(self, caption) -> np.ndarray:
    if caption not in self.texts:
      self.texts[caption] = self.model.encode_text(self.tokenizer([caption]),
                                                   normalize=True)[0].numpy()
    return self.texts[caption]


# -- parity ---------------------------------------------------------------------------------------

def test_embeddings_match_open_clip(setup):
  """The batched, padded, sharded path gives open_clip's per-example embeddings."""
  paths, embedder, ref = setup
  files = sorted(os.path.join(paths["coco"], f) for f in os.listdir(paths["coco"]))
  images, failures = embedder.embed_image_files(files)          # 10 files: last batch padded
  assert failures == {}
  np.testing.assert_allclose(images, np.stack([ref.image(f) for f in files]), atol=2e-5)
  captions = ["a dog.", "Two  RED cars, under a tree!", "caf\u00e9 &amp; bar", "x"] * 3
  np.testing.assert_allclose(embedder.embed_texts(captions),
                             np.stack([ref.text(c) for c in captions]), atol=2e-5)


def test_sugarcrepe_matches_open_clip(setup):
  paths, embedder, ref = setup
  got = sugarcrepe.run(embedder, paths["sugarcrepe"], paths["coco"])
  expected = {}
  for category in sugarcrepe.CATEGORIES:
    with open(os.path.join(paths["sugarcrepe"], f"{category}.json")) as f:
      data = json.load(f)
    hits = []
    for record in data.values():
      img = ref.image(os.path.join(paths["coco"], record["filename"]))
      pos, neg = ref.text(record["caption"]), ref.text(record["negative_caption"])
      hits.append(float(img @ pos > img @ neg))
    expected[category] = sum(hits) / len(hits)
  for category, value in expected.items():
    assert got[category] == pytest.approx(value, abs=1e-12), category
  assert got["avg_swap"] == pytest.approx((expected["swap_obj"] + expected["swap_att"]) / 2)
  assert got["avg_replace"] == pytest.approx(np.mean([expected["replace_obj"],
                                                      expected["replace_att"],
                                                      expected["replace_rel"]]))
  assert got["num_examples"] == {c: 7 for c in sugarcrepe.CATEGORIES}
  assert got["skipped"] == {}
  assert 0.0 < np.mean(list(expected.values())) < 1.0       # a random model is not trivially right


def test_sugarcrepe_pp_matches_open_clip(setup):
  paths, embedder, ref = setup
  got = sugarcrepe_pp.run(embedder, paths["sugarcrepe_pp"], paths["coco"])
  text_only = sugarcrepe_pp.run(embedder, paths["sugarcrepe_pp"], coco_dir=None)
  for category in sugarcrepe_pp.CATEGORIES:
    with open(os.path.join(paths["sugarcrepe_pp"], f"{category}.json")) as f:
      data = json.load(f)
    itt, tot = [], []
    for r in data:
      img = ref.image(os.path.join(paths["coco"], r["filename"]))
      p1, p2, n = ref.text(r["caption"]), ref.text(r["caption2"]), ref.text(r["negative_caption"])
      itt.append(img @ p1 > img @ n and img @ p2 > img @ n)
      tot.append(p1 @ p2 > p1 @ n and p1 @ p2 > p2 @ n)
    assert got[category] == {"itt": pytest.approx(np.mean(itt)), "tot": pytest.approx(np.mean(tot))}
    assert text_only[category] == {"itt": None, "tot": pytest.approx(np.mean(tot))}


def test_winoground_matches_open_clip(setup):
  paths, embedder, ref = setup
  got = winoground.run(embedder, paths["winoground"])
  text, image, group = [], [], []
  with open(os.path.join(paths["winoground"], "examples.jsonl")) as f:
    for line in f:
      e = json.loads(line)
      c0, c1 = ref.text(e["caption_0"]), ref.text(e["caption_1"])
      i0 = ref.image(os.path.join(paths["winoground"], "images", e["image_0"] + ".png"))
      i1 = ref.image(os.path.join(paths["winoground"], "images", e["image_1"] + ".png"))
      t = c0 @ i0 > c1 @ i0 and c1 @ i1 > c0 @ i1
      im = c0 @ i0 > c0 @ i1 and c1 @ i1 > c1 @ i0
      text.append(t), image.append(im), group.append(t and im)
  assert got["text"] == pytest.approx(np.mean(text))
  assert got["image"] == pytest.approx(np.mean(image))
  assert got["group"] == pytest.approx(np.mean(group))
  assert got["num_examples"] == 16
  assert got["text"] + got["image"] > 0                     # not a trivial all-zero comparison


def _reference_recall(image_emb, text_emb, text_image, k):
  """ARO/BLIP style: argsort of the full score matrix."""
  scores = image_emb @ text_emb.T
  i2t = [any(j in np.argsort(-row)[:k] for j in np.flatnonzero(text_image == i))
         for i, row in enumerate(scores)]
  t2i = [text_image[j] in np.argsort(-scores[:, j])[:k] for j in range(scores.shape[1])]
  return np.mean(i2t), np.mean(t2i)


def test_retrieval_matches_open_clip(setup):
  paths, embedder, ref = setup
  got = retrieval.run(embedder, paths["retrieval_json"], paths["retrieval_root"])
  with open(paths["retrieval_json"]) as f:
    entries = json.load(f)
  image_emb = np.stack([ref.image(os.path.join(paths["retrieval_root"], e["image"]))
                        for e in entries])
  captions = [c for e in entries for c in e["caption"]]
  cleaned = [" ".join(c.lower().replace('"', " ").replace("!", " ").replace("(", " ")
                      .replace(")", " ").replace(".", " ").split()) for c in captions]
  text_emb = np.stack([ref.text(c) for c in cleaned])
  text_image = np.repeat(np.arange(len(entries)), 5)
  for k in (1, 5, 10):
    i2t, t2i = _reference_recall(image_emb, text_emb, text_image, k)
    assert got[f"image_to_text_R@{k}"] == pytest.approx(i2t), k
    assert got[f"text_to_image_R@{k}"] == pytest.approx(t2i), k
  assert got["num_images"] == 9 and got["num_captions"] == 45
  assert got["text_to_image_R@1"] < 1.0


def test_classification_matches_open_clip(setup):
  paths, embedder, ref = setup
  got = zeroshot.run_folder(embedder, paths["classes"], paths["classnames"], paths["templates"])
  with open(paths["classnames"]) as f:
    names = json.load(f)
  templates = ["a photo of a {c}.", "a drawing of the {c}.", "itap of a {c}."]
  classifier = []
  for name in names:
    emb = np.stack([ref.text(t.replace("{c}", name)) for t in templates]).mean(0)
    classifier.append(emb / np.linalg.norm(emb))
  classifier = np.stack(classifier)
  top1, top5 = [], []
  for label, wnid in enumerate(sorted(os.listdir(paths["classes"]))):
    for file in sorted(os.listdir(os.path.join(paths["classes"], wnid))):
      logits = classifier @ ref.image(os.path.join(paths["classes"], wnid, file))
      top1.append(int(np.argmax(logits)) == label)
      top5.append(label in np.argsort(-logits)[:5])
  assert got["top1"] == pytest.approx(np.mean(top1))
  assert got["top5"] == pytest.approx(np.mean(top5)) == 1.0     # 4 classes: top-5 always hits
  assert got["num_examples"] == 16
  subset = zeroshot.run_folder(embedder, paths["classes"], paths["classnames"], paths["templates"],
                               max_examples=5)
  assert subset["num_examples"] == 5
  with pytest.raises(EvalDataError, match="4 class folders but 1000 class names"):
    zeroshot.run_imagenet(embedder, paths["classes"])          # ImageNet needs all 1000 classes


def _write_fake_tfds_imagenet(data_dir: str, samples) -> None:
  """An ArrayRecord TFDS dataset named imagenet2012 holding the given (jpeg path, label) pairs."""
  import tensorflow_datasets as tfds

  class Imagenet2012(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = tfds.core.Version("5.1.0")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          "image": tfds.features.Image(encoding_format="jpeg"),
          "label": tfds.features.ClassLabel(num_classes=1000),
          "file_name": tfds.features.Text()}))

    def _split_generators(self, dl_manager):
      return {"validation": self._generate_examples()}

    def _generate_examples(self):
      for i, (path, label) in enumerate(samples):
        yield i, {"image": path, "label": label, "file_name": os.path.basename(path)}

  Imagenet2012(data_dir=data_dir, file_format="array_record").download_and_prepare()


def test_tfds_source_equals_image_folder(setup, tmp_path):
  """tfds.data_source("imagenet2012") records give the image-folder path's numbers."""
  paths, embedder, _ = setup
  samples, _ = zeroshot.image_folder(paths["classes"])
  _write_fake_tfds_imagenet(str(tmp_path), samples)
  source = zeroshot.tfds_source(str(tmp_path), "imagenet2012", "validation")
  names = zeroshot.read_names(paths["classnames"])
  templates = zeroshot.read_names(paths["templates"])
  from_tfds = zeroshot.run_records(embedder, source, names, templates)
  from_folder = zeroshot.run_folder(embedder, paths["classes"], names, templates)
  assert from_tfds == from_folder and from_tfds["num_examples"] == 16
  with pytest.raises(EvalDataError, match="imagenet2012"):
    zeroshot.tfds_source(str(tmp_path / "empty"), "imagenet2012", "validation")


def test_evaluate_api_runs_named_benchmarks(setup):
  paths, embedder, _ = setup
  results = evaluate(None, None, {
      "sugarcrepe": {"data_dir": paths["sugarcrepe"], "coco_dir": paths["coco"]},
      "retrieval/coco": {"annotation_file": paths["retrieval_json"],
                         "image_root": paths["retrieval_root"]},
  }, embedder=embedder)
  assert set(results) == {"sugarcrepe", "retrieval/coco"}
  assert results["sugarcrepe"] == sugarcrepe.run(embedder, paths["sugarcrepe"], paths["coco"])
  with pytest.raises(ValueError, match="Unknown benchmark"):
    evaluate(None, None, {"sugarcreep": {}}, embedder=embedder)


def test_image_imagenet_metadata_is_openai_prompt_set():
  names, templates = zeroshot.imagenet_metadata()
  assert len(names) == 1000 and len(templates) == 80
  assert names[0] == "tench" and templates[0] == "a bad photo of a {c}."
  assert [t("x") for t in open_clip.zero_shot_metadata.OPENAI_IMAGENET_TEMPLATES] == \
      [zeroshot.fill(t, "x") for t in templates]


# -- bad data -------------------------------------------------------------------------------------

def test_missing_images_and_bad_records_are_counted(setup, tmp_path):
  paths, embedder, ref = setup
  data = {"5": {"filename": "000000000139.jpg", "caption": "a dog.", "negative_caption": "a cat."},
          "9": {"filename": "nope.jpg", "caption": "a dog.", "negative_caption": "a cat."},
          "12": {"filename": "000000000285.jpg", "caption": "a red car."},        # missing key
          "40": "not an object"}
  for category in sugarcrepe.CATEGORIES[:2]:
    with open(tmp_path / f"{category}.json", "w") as f:
      json.dump(data, f)
  (tmp_path / "swap_obj.json").write_text("{ not json")
  got = sugarcrepe.run(embedder, str(tmp_path), paths["coco"])
  assert got["num_examples"] == {"add_obj": 1, "add_att": 1}
  assert got["skipped"] == {"missing_image": 2, "missing_key": 2, "malformed_record": 2,
                            "malformed_file": 1, "missing_file": 4}
  img = ref.image(os.path.join(paths["coco"], "000000000139.jpg"))
  assert got["add_obj"] == float(img @ ref.text("a dog.") > img @ ref.text("a cat."))
  assert "avg_add" in got and "avg_swap" not in got       # averages only over complete groups


def test_on_missing_error_names_the_problem(setup, tmp_path):
  paths, embedder, _ = setup
  for category in sugarcrepe.CATEGORIES:
    with open(tmp_path / f"{category}.json", "w") as f:
      json.dump({"3": {"filename": "gone.jpg", "caption": "a", "negative_caption": "b"}}, f)
  with pytest.raises(EvalDataError, match="gone.jpg"):
    sugarcrepe.run(embedder, str(tmp_path), paths["coco"], on_missing="error")


def test_winoground_malformed_lines_and_unreadable_images(setup, tmp_path):
  paths, embedder, _ = setup
  wino = tmp_path / "data"
  (wino / "images").mkdir(parents=True)
  rng = np.random.default_rng(1)
  for name in ("a", "b", "c"):
    _write_image(str(wino / "images" / f"{name}.png"), rng)
  (wino / "images" / "broken.png").write_bytes(b"not a png")
  lines = [json.dumps({"caption_0": "x y", "caption_1": "y x", "image_0": "a", "image_1": "b"}),
           "{truncated",
           json.dumps({"caption_0": "x y", "image_0": "a", "image_1": "b"}),
           json.dumps({"caption_0": "p q", "caption_1": "q p", "image_0": "c",
                       "image_1": "broken"}),
           json.dumps({"caption_0": "p q", "caption_1": "q p", "image_0": "c", "image_1": "gone"})]
  (wino / "examples.jsonl").write_text("\n".join(lines) + "\n")
  got = winoground.run(embedder, str(tmp_path))             # finds data/examples.jsonl
  assert got["num_examples"] == 1
  assert got["skipped"] == {"malformed_line": 1, "missing_key": 1, "unreadable_image": 1,
                            "missing_image": 1}
  with pytest.raises(EvalDataError, match="line 2"):
    winoground.run(embedder, str(tmp_path), on_missing="error")


def test_winoground_from_the_hugging_face_cache_equals_the_local_folder(setup, tmp_path,
                                                                        monkeypatch):
  """No folder given: the real huggingface_hub download (offline, from a cache laid out as the hub
  writes it) of the public files, examples.jsonl and images.zip, unzipped once, same scores."""
  import zipfile

  import huggingface_hub.constants
  monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
  paths, embedder, _ = setup
  local = winoground.run(embedder, paths["winoground"])

  def write_zip(path):
    with zipfile.ZipFile(path, "w") as z:
      for name in sorted(os.listdir(os.path.join(paths["winoground"], "images"))):
        z.write(os.path.join(paths["winoground"], "images", name), f"images/{name}")

  snapshot = fake_hf_cache(tmp_path, winoground.HF_REPO, {
      "data/examples.jsonl": lambda p: shutil.copy(
          os.path.join(paths["winoground"], "examples.jsonl"), p),
      "data/images.zip": write_zip}, repo_type="dataset")
  from_hub = winoground.run(embedder, None, cache_dir=str(tmp_path))
  assert from_hub == local and from_hub["num_examples"] == 16
  assert len(os.listdir(snapshot / "data" / "images")) == 32
  assert not [p for p in os.listdir(snapshot / "data") if p.startswith(".images-")]  # no staging
  # A second run reuses the unpacked images (the archive is no longer read).
  (snapshot / "data" / "images.zip").write_bytes(b"not a zip any more")
  assert winoground.run(embedder, None, cache_dir=str(tmp_path)) == local


def test_winoground_hub_errors_say_what_to_do(setup, tmp_path, monkeypatch):
  import huggingface_hub.constants
  monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
  _, embedder, _ = setup
  with pytest.raises(EvalDataError, match="gated.*--winoground_dir"):
    winoground.run(embedder, None, cache_dir=str(tmp_path / "empty"))     # nothing cached
  snapshot = fake_hf_cache(tmp_path, winoground.HF_REPO, {
      "data/examples.jsonl": lambda p: p.write_text("{}\n"),
      "data/images.zip": lambda p: p.write_bytes(b"truncated download")}, repo_type="dataset")
  with pytest.raises(EvalDataError, match="not a readable zip"):
    winoground.run(embedder, None, cache_dir=str(tmp_path))
  assert not (snapshot / "data" / "images").exists()      # a failed unzip leaves no images/


def test_missing_benchmark_folder_is_one_clear_error(setup, tmp_path):
  _, embedder, _ = setup
  with pytest.raises(EvalDataError, match="examples.jsonl"):
    winoground.run(embedder, str(tmp_path))
  with pytest.raises(EvalDataError, match="no readable category files"):
    sugarcrepe_pp.run(embedder, str(tmp_path))
  with pytest.raises(EvalDataError, match="does not exist"):
    retrieval.run(embedder, str(tmp_path / "nope.json"), str(tmp_path))


# -- scoring rules on hand-made numbers ------------------------------------------------------------

def test_winoground_scores_follow_the_definitions():
  # Example 0: both right. 1: text right only. 2: image right only. 3: neither.
  c0i0 = np.array([0.9, 0.9, 0.5, 0.1])
  c1i0 = np.array([0.1, 0.1, 0.8, 0.9])
  c0i1 = np.array([0.2, 0.95, 0.4, 0.9])
  c1i1 = np.array([0.8, 0.99, 0.9, 0.1])
  assert winoground.scores(c0i0, c0i1, c1i0, c1i1) == {"text": 0.5, "image": 0.5, "group": 0.25}


def test_recall_at_k_on_a_known_ranking():
  image_emb = np.eye(3, dtype=np.float32)
  # Captions 0,1 -> image 0; caption 2 -> image 1; caption 3 -> image 2.
  text_emb = np.array([[1, 0, 0], [0, 0.6, 0.8], [0, 1, 0], [0.8, 0, 0.6]], np.float32)
  out = retrieval.recall_at_k(image_emb, text_emb, np.array([0, 0, 1, 2]), ks=(1, 2))
  # Caption 1 ranks its image 0 last (rank 2); caption 3 ranks image 2 second (rank 1).
  assert out["text_to_image_R@1"] == 0.5 and out["text_to_image_R@2"] == 0.75
  # Image 2 ranks caption 1 (0.8) above its own caption 3 (0.6): a miss at K=1, a hit at K=2.
  assert out["image_to_text_R@1"] == pytest.approx(2 / 3) and out["image_to_text_R@2"] == 1.0


def test_sugarcrepe_pp_rules_need_both_conditions():
  e = np.eye(4, dtype=np.float32)
  image, p1 = e[[0]], e[[0]]
  p2 = np.array([[0.6, 0.8, 0, 0]], np.float32)
  neg = np.array([[0.7, 0, 0.71414284, 0]], np.float32)
  # cos(I,p1)=1 > cos(I,n)=0.7 but cos(I,p2)=0.6 < 0.7: ITT fails.
  assert not sugarcrepe_pp.itt_correct(image, p1, p2, neg)[0]
  # cos(p1,p2)=0.6 < cos(p1,n)=0.7: TOT fails too; with a farther negative both pass.
  assert not sugarcrepe_pp.tot_correct(p1, p2, neg)[0]
  far = e[[3]]
  assert sugarcrepe_pp.itt_correct(image, p1, p2, far)[0]
  assert sugarcrepe_pp.tot_correct(p1, p2, far)[0]
