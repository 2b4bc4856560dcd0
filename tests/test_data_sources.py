"""Record sources (CSV, ArrayRecord via prepare, TFDS) and image decoding of every bad-input kind."""
from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
from PIL import Image

from clic_jax.data import arrayrecord_source, images, records, sources


def _save(path, size=(64, 48), mode="RGB", fmt=None, color=(200, 30, 30)):
  if mode in ("I;16",):
    img = Image.fromarray(np.full(size[::-1], 40000, np.uint16))
  elif mode == "P":
    img = Image.new("RGB", size, color).convert("P")
  elif mode == "CMYK":
    img = Image.new("CMYK", size, (0, 200, 200, 0))
  elif mode == "RGBA":
    img = Image.new("RGBA", size, color + (0,))
    img.paste((10, 200, 10, 255), (0, 0, size[0] // 2, size[1]))
  else:
    img = Image.new(mode, size, color)
  img.save(path, fmt)
  return path


def _write_csv(path, rows, raw_lines=()):
  with open(path, "w", newline="") as f:
    w = csv.writer(f)
    for r in rows:
      w.writerow(r)
    for line in raw_lines:
      f.write(line + "\n")
  return str(path)


# --- images --------------------------------------------------------------------------------------

def test_decode_modes_and_bad_files(tmp_path):
  good = {
      "cmyk.jpg": _save(tmp_path / "cmyk.jpg", mode="CMYK"),
      "pal.png": _save(tmp_path / "pal.png", mode="P"),
      "rgba.png": _save(tmp_path / "rgba.png", mode="RGBA"),
      "i16.png": _save(tmp_path / "i16.png", mode="I;16"),
      "gray.png": _save(tmp_path / "gray.png", mode="L", color=90),
  }
  for name, path in good.items():
    img = images.decode_rgb(str(path))
    assert img.mode == "RGB" and img.size == (64, 48), name
  rgba = np.asarray(images.decode_rgb(str(good["rgba.png"])))
  # Fully transparent -> black (docs/method.md, "Image decoding").
  assert rgba[:, 40:].max() == 0
  assert tuple(rgba[0, 0]) == (10, 200, 10)
  i16 = np.asarray(images.decode_rgb(str(good["i16.png"])))
  assert abs(int(i16[0, 0, 0]) - round(40000 / 257)) <= 1  # rescaled, not clipped to 255

  jpeg = tmp_path / "full.jpg"
  Image.fromarray(np.random.default_rng(0).integers(0, 255, (80, 80, 3), np.uint8)).save(jpeg)
  (tmp_path / "trunc.jpg").write_bytes(jpeg.read_bytes()[:len(jpeg.read_bytes()) // 2])
  (tmp_path / "empty.jpg").write_bytes(b"")
  (tmp_path / "text.jpg").write_bytes(b"this is not an image at all")
  expect = {"trunc.jpg": "truncated_image", "empty.jpg": "empty_image", "text.jpg": "not_an_image",
            "missing.jpg": "missing_image"}
  for name, reason in expect.items():
    with pytest.raises(images.ImageError) as e:
      images.decode_rgb(str(tmp_path / name))
    assert e.value.reason == reason


def test_huge_image_and_views(tmp_path):
  path = tmp_path / "huge.png"
  Image.new("RGB", (6000, 4000), (1, 2, 3)).save(path)  # ~100 KB on disk, 24 Mpixel decoded
  assert images.image_size(str(path)) == (6000, 4000)
  img = images.decode_rgb(str(path), (32, 16))
  pair = images.concat_pair(img, img, images.aspect_class(*img.size), 32)
  assert pair.shape == (32, 32, 3) and pair.dtype == np.uint8
  single = images.clip_val_view(img, 32)
  assert single.shape == (32, 32, 3) and tuple(single[5, 5]) == (1, 2, 3)


def test_concat_layout_and_normalization():
  red, blue = Image.new("RGB", (30, 60), (255, 0, 0)), Image.new("RGB", (30, 60), (0, 0, 255))
  side = images.concat_pair(red, blue, "higher", 16)        # portrait: side by side
  assert tuple(side[8, 2]) == (255, 0, 0) and tuple(side[8, 13]) == (0, 0, 255)
  stacked = images.concat_pair(red, blue, "wider", 16)      # landscape/square: stacked
  assert tuple(stacked[2, 8]) == (255, 0, 0) and tuple(stacked[13, 8]) == (0, 0, 255)
  assert images.aspect_class(10, 10) == "wider" and images.aspect_class(9, 10) == "higher"
  norm = images.normalizer("imagenet")(np.full((1, 1, 3), 255, np.uint8))
  np.testing.assert_allclose(norm[0, 0], (1 - np.array(images.IMAGENET_MEAN)) /
                             np.array(images.IMAGENET_STD), rtol=1e-6)
  clip = images.normalizer("clip")(side)
  np.testing.assert_array_equal(images.denormalize(clip, "clip"), side)
  with pytest.raises(ValueError, match="normalization"):
    images.normalizer("nope")


# --- CSV -----------------------------------------------------------------------------------------

def test_csv_source_counts_every_bad_row(tmp_path):
  root = tmp_path / "imgs"
  root.mkdir()
  _save(root / "a.jpg", (64, 48))
  _save(root / "b.png", (48, 64))
  _save(tmp_path / "abs.jpg", (50, 50))
  (root / "empty.jpg").write_bytes(b"")
  rows = [
      ["a.jpg", "A Dog On Grass", "Extra One", "", "extra two"],  # empty column dropped
      ["b.png", "a cat"],                                          # no extra sentences: usable
      [str(tmp_path / "abs.jpg"), "absolute path wins"],
      ["doc.txt", "not an image"],                                 # extension
      ["missing.jpg", "no file"],                                  # missing file
      ["empty.jpg", "empty file"],
      ["a.jpg", "?!..."],                                          # punctuation only
      ["a.jpg", ""],                                               # empty caption
      ["only_one_column.jpg"],                                     # wrong column count
  ]
  path = _write_csv(tmp_path / "d.csv", rows, raw_lines=['a.jpg,"bad "quote" here,x', ""])
  src = sources.CsvSource(path, str(root))
  assert len(src) == 8 - 1  # doc.txt dropped at parse time; too-few-columns too; others indexed
  rec = src[0]
  # Lowercased (docs/method.md, "Dataset format").
  assert rec["sentences"] == ["a dog on grass", "extra one", "extra two"]
  assert rec["aspect"] == "wider" and rec["image"] == str(root / "a.jpg")
  assert src[1]["aspect"] == "higher" and src[2]["image"] == str(tmp_path / "abs.jpg")
  report = src.report
  assert report["not_image_extension"] == 1 and report["too_few_columns"] == 1
  assert report["malformed_csv_row"] == 1
  assert report["missing_image"] == 1 and report["empty_image"] == 1
  assert report["unusable_caption"] == 2
  assert list(src.aspects == records.UNUSABLE) == [False] * 3 + [True] * 4


def test_csv_pos_sidecar_is_used(tmp_path):
  _save(tmp_path / "a.jpg")
  path = _write_csv(tmp_path / "d.csv", [["a.jpg", "Red Cube", "", "blue ball"]])
  tags = [[["Red", "ADJ"], ["Cube", "NOUN"]], [], [["blue", "ADJ"], ["ball", "NOUN"]]]
  (tmp_path / "d.csv.pos.jsonl").write_text(json.dumps({"tags": tags}) + "\n")
  rec = sources.CsvSource(path, str(tmp_path))[0]
  assert rec["tags"] == [[("red", "ADJ"), ("cube", "NOUN")], [("blue", "ADJ"), ("ball", "NOUN")]]


def test_open_source_errors(tmp_path):
  with pytest.raises(ValueError, match="exactly one"):
    sources.open_source(sources.SourceSpec())
  with pytest.raises(FileNotFoundError, match="does not exist"):
    sources.open_source(sources.SourceSpec(csv=str(tmp_path / "nope.csv")))
  with pytest.raises(FileNotFoundError, match="prepare"):
    sources.open_source(sources.SourceSpec(arrayrecord_dir=str(tmp_path)))


def test_record_encoding_roundtrip():
  meta = {"sentences": ["ünïcode caption"], "aspect": "wider"}
  got_meta, got_bytes = arrayrecord_source.decode_record(arrayrecord_source.encode_record(meta, b"\xff\xd8jpeg"))
  assert got_meta == meta and got_bytes == b"\xff\xd8jpeg"
  with pytest.raises(ValueError, match="magic"):
    arrayrecord_source.decode_record(b"garbage")


# --- TFDS ----------------------------------------------------------------------------------------

def test_tfds_array_record_source(tmp_path):
  import tensorflow_datasets as tfds

  class TinyCaptions(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          "image": tfds.features.Image(encoding_format="jpeg"),
          "captions": tfds.features.Sequence({"text": tfds.features.Text()}),
          "id": tfds.features.Scalar(np.int64)}))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples()}

    def _generate_examples(self):
      for i in range(6):
        buf = io.BytesIO()
        size = (40, 20) if i % 2 else (20, 40)
        Image.new("RGB", size, (i * 30, 0, 0)).save(buf, "JPEG")
        caps = [{"text": f"A Box Number {i}"}, {"text": "second caption"}] if i != 5 else \
               [{"text": "..."}]
        yield i, {"image": buf.getvalue(), "captions": caps, "id": i}

  builder = TinyCaptions(data_dir=str(tmp_path), file_format="array_record")
  builder.download_and_prepare()
  for src in (sources.open_source(sources.SourceSpec(tfds_builder_dir=builder.data_dir)),
              sources.TfdsSource("tiny_captions", data_dir=str(tmp_path))):
    assert len(src) == 6 and src.caption_key == "captions/text"
    assert src.report == {"unusable_caption": 1}
    read = [src[i] for i in range(6)]
    usable = [r for r, a in zip(read, src.aspects) if a != records.UNUSABLE]
    assert len(usable) == 5
    for r in usable:
      assert r["sentences"][0].startswith("a box number") and r["sentences"][1] == "second caption"
      w, h = images.image_size(r["image"])
      assert r["aspect"] == images.aspect_class(w, h)


# --- webdataset shards ---------------------------------------------------------------------------

def _csv_and_shards(tmp_path, n=24):
  """The same records as a reference CSV with image files and as two webdataset shards (the first
  with img2dataset's width/height in the JSON, the second without: sizes from the image headers)."""
  from clic_jax.data import webdataset_source
  root = tmp_path / "imgs"
  root.mkdir()
  rows, samples = [], []
  for i in range(n):
    size = [(40, 24), (24, 40), (32, 32), (50, 20)][i % 4]
    _save(root / f"{i}.jpg", size, color=(i * 10, 60, 200))
    captions = [f"A Red Dog Number {i} near a tree", f"Extra one of {i}", f"extra two of {i}"]
    rows.append([f"{i}.jpg", *captions])
    meta = {"clic_captions": captions, "clic_row": i}
    if i < n // 2:
      meta.update(width=size[0], height=size[1])
    samples.append((f"{i:09d}", {"jpg": (root / f"{i}.jpg").read_bytes(),
                                 "txt": captions[0].encode(), "json": json.dumps(meta).encode()}))
  shards = tmp_path / "shards"
  shards.mkdir()
  webdataset_source.write_shard(str(shards / "00000.tar"), samples[:n // 2])
  webdataset_source.write_shard(str(shards / "00001.tar"), samples[n // 2:])
  return _write_csv(tmp_path / "d.csv", rows), str(root), str(shards)


def test_webdataset_source_gives_the_csv_records_and_keeps_its_index(tmp_path):
  from clic_jax.data import webdataset_source
  csv_path, root, shards = _csv_and_shards(tmp_path)
  csv_src = sources.CsvSource(csv_path, root)
  wds = sources.open_source(sources.SourceSpec(webdataset=shards))
  assert isinstance(wds, webdataset_source.WebDatasetSource) and wds.report == {}
  assert len(wds) == len(csv_src) and list(wds.aspects) == list(csv_src.aspects)
  for i in range(len(wds)):
    a, b = csv_src[i], wds[i]
    assert b["sentences"] == a["sentences"] and b["aspect"] == a["aspect"]
    assert b["image"] == images.read_bytes(a["image"]) and b["id"] == f"{i:09d}"
  # The index is saved beside each shard and reused; a changed shard is indexed again.
  index = tmp_path / "shards" / ("00001.tar" + webdataset_source.INDEX_SUFFIX)
  stamp = index.stat().st_mtime_ns
  assert len(sources.open_source(sources.SourceSpec(webdataset=shards))) == len(wds)
  assert index.stat().st_mtime_ns == stamp
  webdataset_source.write_shard(str(tmp_path / "shards" / "00001.tar"), [])
  assert len(webdataset_source.WebDatasetSource(shards)) == len(wds) // 2
  assert index.stat().st_mtime_ns != stamp
  # Reader processes get a picklable source that opens its own files.
  import pickle
  copy = pickle.loads(pickle.dumps(wds))
  assert copy[3]["image"] == wds[3]["image"]
  wds.close()


def test_pipeline_on_webdataset_equals_pipeline_on_csv_and_resumes_exactly(tmp_path):
  from clic_jax.data import pipeline
  csv_path, root, shards = _csv_and_shards(tmp_path)

  def config(spec):
    return pipeline.PipelineConfig(
        source=spec, global_batch_size=4, image_size=16, num_extra_positives=2,
        step_pattern=("clic", "clip"), mode="clic", seed=0, concat_image_norm="clip",
        image_dtype="uint8", context_length=77, pos_backend="lexicon", num_threads=2)

  from_csv = pipeline.make_train_iterator(config(sources.SourceSpec(csv=csv_path, image_root=root)))
  from_shards = pipeline.make_train_iterator(config(sources.SourceSpec(webdataset=shards)))
  want = [next(from_csv) for _ in range(5)]
  got = [next(from_shards) for _ in range(2)]
  state = from_shards.get_state()
  got += [next(from_shards) for _ in range(3)]
  for a, b in zip(want, got):   # the same partners, images, captions and negatives, batch by batch
    assert a["kind"] == b["kind"]
    np.testing.assert_array_equal(a["images"], b["images"])
    np.testing.assert_array_equal(a["texts"], b["texts"])
  resumed = pipeline.make_train_iterator(config(sources.SourceSpec(webdataset=shards)))
  resumed.set_state(state)
  for a in got[2:]:
    np.testing.assert_array_equal(next(resumed)["texts"], a["texts"])
  for it in (from_csv, from_shards, resumed):
    it.close()


def test_webdataset_bad_members_are_counted_never_raised(tmp_path):
  from clic_jax.data import webdataset_source
  jpg = (_save(tmp_path / "a.jpg", (40, 30))).read_bytes()
  good = {"jpg": jpg, "json": json.dumps({"clic_captions": ["a good one", "extra"]}).encode()}
  path = str(tmp_path / "bad.tar")
  webdataset_source.write_shard(path, [
      ("000", good),
      ("001", {"json": good["json"]}),                             # no image member
      ("002", {"jpg": jpg, "json": b"{not json", "txt": b"A caption from the txt"}),
      ("003", {"jpg": jpg, "json": json.dumps({"clic_captions": ["?!"]}).encode()}),
      ("004", {"png": b"<html>not an image</html>", "txt": b"a page"}),
      ("dir/005", {"seg.png": jpg, "jpeg": jpg, "txt": b"nested key, two images"}),
      ("006", good),
  ])
  # Cut the tar inside the last member, as an interrupted copy leaves it.
  data = open(path, "rb").read()
  open(path, "wb").write(data[:data.rindex(jpg[:64]) + 100])
  (tmp_path / "junk.tar").write_bytes(b"not a tar file at all")   # counted, holds nothing
  src = webdataset_source.WebDatasetSource(f"{path},{tmp_path}/junk.tar")
  assert src.report == {"no_image_member": 1, "bad_json_member": 1, "unusable_caption": 1,
                        "not_an_image": 1, "truncated_shard": 1, "unreadable_shard": 1}
  assert [src[i]["id"] for i in range(len(src))] == ["000", "002", "003", "004", "dir/005"]
  assert src[1]["sentences"] == ["a caption from the txt"]
  assert src[4]["path"].endswith("bad.tar/dir/005.jpeg")
  assert [records.aspect_name(a) for a in src.aspects] == ["wider", "wider", None, None, "wider"]
  with pytest.raises(FileNotFoundError, match="clic_jax.data.download"):
    webdataset_source.WebDatasetSource(str(tmp_path / "nothing_here"))
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="no webdataset"):
    sources.open_source(sources.SourceSpec(webdataset=str(tmp_path / "empty")))


def test_prepare_from_webdataset_gives_the_same_records(tmp_path):
  from clic_jax.data import prepare
  _, _, shards = _csv_and_shards(tmp_path, n=10)
  out = tmp_path / "prepared"
  report = prepare.prepare(prepare.parse_args([f"--webdataset={shards}", f"--out={out}",
                                               "--num_workers=0", "--shard_size=4",
                                               "--pos_backend=lexicon"]))
  assert report["records_written"] == 10 and report["skipped"] == {}
  a, b = sources.WebDatasetSource(shards), sources.ArrayRecordSource(str(out))
  assert list(a.aspects) == list(b.aspects)
  for i in range(10):
    assert a[i]["sentences"] == b[i]["sentences"] and a[i]["image"] == b[i]["image"]
    assert b[i]["id"] == a[i]["id"] and b[i]["tags"][0][0] == ("a", "DET")
