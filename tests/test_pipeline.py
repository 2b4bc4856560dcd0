"""The grain training pipeline: shapes, step alternation, partners, determinism, hosts, resumption,
bad inputs, and the NegCLIP / baseline variants."""
from __future__ import annotations

import csv
import dataclasses

import numpy as np
import pytest
from PIL import Image

from clic_jax import tokenizer
from clic_jax.data import pipeline, sources

SIZE = 16
WORDS = ["dog", "cat", "horse", "bird", "car", "boat", "tree", "lamp", "chair", "cup", "ball", "hat"]
COLORS = ["red", "blue", "green", "black", "white", "small", "large", "old"]


def _caption(i):
  color, thing, other = COLORS[i % len(COLORS)], WORDS[i % len(WORDS)], WORDS[(i * 5 + 3) % len(WORDS)]
  return f"a {color} {thing} near a {other}"


def _make_csv(tmp_path, n=24, extra_rows=(), name="data.csv"):
  """n good images of mixed sizes/aspects; row i's caption names its image so tests can map back."""
  root = tmp_path / "imgs"
  root.mkdir(exist_ok=True)
  rows = []
  for i in range(n):
    w, h = [(40, 24), (24, 40), (32, 32), (50, 20), (20, 36)][i % 5]
    Image.new("RGB", (w, h), (i * 10 % 256, 50, 200)).save(root / f"{i}.jpg")
    rows.append([f"{i}.jpg", _caption(i), f"extra one of image {i}", f"extra two of image {i}",
                 f"extra three of image {i}"])
  rows.extend(extra_rows)
  path = tmp_path / name
  with open(path, "w", newline="") as f:
    csv.writer(f).writerows(rows)
  return str(path), str(root)


def _config(csv_path, root, **kw):
  base = dict(source=sources.SourceSpec(csv=csv_path, image_root=root), global_batch_size=4,
              image_size=SIZE, num_extra_positives=2, step_pattern=("clic", "clip"), mode="clic",
              seed=0, concat_image_norm="clip", image_dtype="float32", context_length=77,
              num_threads=2, prefetch_batches=2, pos_backend="lexicon")
  base.update(kw)
  return pipeline.PipelineConfig(**base)


def _take(it, n):
  return [next(it) for _ in range(n)]


def _assert_same(a, b):
  assert a["kind"] == b["kind"]
  np.testing.assert_array_equal(a["images"], b["images"])
  np.testing.assert_array_equal(a["texts"], b["texts"])


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  return _make_csv(tmp_path_factory.mktemp("pipeline"))


def test_batches_shapes_dtypes_and_alternation(data):
  it = pipeline.make_train_iterator(_config(*data, step_pattern=("clic", "clip", "clip")))
  batches = _take(it, 6)
  assert [b["kind"] for b in batches] == ["clic", "clip", "clip"] * 2
  for b in batches:
    assert b["images"].shape == (4, SIZE, SIZE, 3) and b["images"].dtype == np.float32
    assert b["texts"].dtype == np.int32
    assert b["texts"].shape == ((4, 5, 77) if b["kind"] == "clic" else (4, 1, 77))
    if b["kind"] == "clic":
      assert b["negative_valid"].shape == (4,) and b["negative_valid"].dtype == bool
    else:
      assert "negative_valid" not in b
    assert all(v.dtype == np.int64 and v.shape == () for v in b["stats"].values())
    assert int(b["stats"]["resampled/missing_image"]) == 0
  # CLIP step: the raw first sentence, no period added (docs/method.md, "Caption variants").
  clip_text = tokenizer.decode(batches[1]["texts"][0, 0], skip_special=True).strip()
  assert clip_text in {_caption(i) for i in range(24)}


def test_caption_variants_and_partner(data):
  """p2 is p1 with the two first sentences swapped; the partner has the same aspect class and is
  never the sample itself; the negative differs from every positive after tokenization."""
  config = _config(*data)
  source = sources.open_source(config.source)
  index = pipeline.PartnerIndex.from_aspects(source.aspects)
  builder = pipeline.SampleBuilder(source, index, config)
  captions_to_id = {_caption(i): i for i in range(24)}
  seen_layouts = set()
  for record_id in range(24):
    for draw in range(3):
      raw = builder.raw_sample("clic", record_id, np.random.default_rng([record_id, draw]))
      p1, p2 = raw.texts[0], raw.texts[1]
      first, second = [s.strip() for s in p1.rstrip(".").split(". ")]
      assert p2 == f"{second}. {first}."
      assert captions_to_id[first] == record_id
      partner = captions_to_id[second]
      assert partner != record_id
      assert source.aspects[partner] == source.aspects[record_id]
      assert raw.sources == [source[record_id]["path"], source[partner]["path"]]
      tokens = tokenizer.tokenize(raw.texts)
      for row in tokens[:-1]:
        assert not np.array_equal(row, tokens[-1])
      seen_layouts.add(raw.layout)
  assert seen_layouts == {"side_by_side", "stacked"}


def test_same_seed_same_batches_other_seed_differs(data):
  a = _take(pipeline.make_train_iterator(_config(*data, seed=3)), 4)
  b = _take(pipeline.make_train_iterator(_config(*data, seed=3)), 4)
  c = _take(pipeline.make_train_iterator(_config(*data, seed=4)), 4)
  for x, y in zip(a, b):
    _assert_same(x, y)
  assert any(not np.array_equal(x["texts"], z["texts"]) for x, z in zip(a, c))


def test_hosts_get_disjoint_slices_covering_the_data(data):
  config = _config(*data, global_batch_size=8, process_count=4)
  source = sources.open_source(config.source)
  index = pipeline.PartnerIndex.from_aspects(source.aspects)
  slices = [pipeline.host_record_ids(index, p, 4) for p in range(4)]
  assert all(len(s) == 6 for s in slices)
  assert sorted(np.concatenate(slices).tolist()) == list(range(24))
  # The batches each host builds come from its slice: one epoch of CLIP steps, captions -> ids.
  captions_to_id = {_caption(i): i for i in range(24)}
  seen = []
  for p in range(4):
    host = dataclasses.replace(config, process_index=p, step_pattern=("clip",), num_epochs=1)
    ids = []
    for batch in pipeline.make_train_iterator(host, source=source):
      assert batch["images"].shape[0] == 2
      ids += [captions_to_id[tokenizer.decode(t[0], skip_special=True).strip()]
              for t in batch["texts"]]
    assert sorted(ids) == sorted(slices[p].tolist())
    seen += ids
  assert sorted(seen) == list(range(24))


def test_state_restore_gives_identical_continuation(data):
  config = _config(*data)
  it = pipeline.make_train_iterator(config)
  _take(it, 3)
  state = it.get_state()
  expected = _take(it, 4)
  fresh = pipeline.make_train_iterator(config)
  fresh.set_state(state)
  for want, got in zip(expected, _take(fresh, 4)):
    _assert_same(want, got)
  assert [b["kind"] for b in expected] == ["clip", "clic", "clip", "clic"]  # step 3 is odd


def test_epochs_reshuffle_and_finite_epochs(data):
  config = _config(*data, step_pattern=("clip",), num_epochs=2, global_batch_size=8)
  batches = list(pipeline.make_train_iterator(config))
  assert len(batches) == 6  # 2 epochs x 24 records / 8
  epoch1 = np.concatenate([b["texts"] for b in batches[:3]])
  epoch2 = np.concatenate([b["texts"] for b in batches[3:]])
  assert not np.array_equal(epoch1, epoch2)
  assert sorted(map(bytes, epoch1)) == sorted(map(bytes, epoch2))  # same records, new order


def test_bad_inputs_are_counted_and_never_stop(tmp_path):
  root = tmp_path / "imgs"
  root.mkdir()
  good = Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 60, 3), np.uint8))
  good.save(root / "full.jpg")
  data = (root / "full.jpg").read_bytes()
  (root / "trunc.jpg").write_bytes(data[:len(data) // 2])   # header ok, decode fails at runtime
  (root / "empty.jpg").write_bytes(b"")
  (root / "text.png").write_text("hello")
  Image.new("CMYK", (40, 30)).save(root / "cmyk.jpg")
  Image.new("RGB", (30, 40), (5, 5, 5)).convert("P").save(root / "pal.png")
  Image.new("RGBA", (40, 30), (1, 2, 3, 0)).save(root / "rgba.png")
  Image.fromarray(np.full((30, 40), 30000, np.uint16)).save(root / "i16.png")
  Image.new("RGB", (6000, 4000), (9, 9, 9)).save(root / "huge.png")
  long_caption = " ".join(["a very long caption about a dog"] * 20)  # > 77 tokens
  bad_rows = [
      ["missing.jpg", "a missing image"], ["empty.jpg", "an empty file"],
      ["trunc.jpg", "a truncated jpeg"], ["text.png", "a text file"],
      ["cmyk.jpg", "a cmyk picture of a cat", "extra"], ["pal.png", "a palette image"],
      ["rgba.png", "a transparent square"], ["i16.png", "a sixteen bit scan"],
      ["huge.png", long_caption, long_caption],
      ["full.jpg", "dog"], ["full.jpg", ""], ["full.jpg", "?!?"],
      ["full.jpg", "ein hund läuft über die straße", "一只狗在街上跑"],
      ["full.jpg"], ["doc.pdf", "not an image extension"],
  ]
  csv_path, _ = _make_csv(tmp_path, n=6, extra_rows=bad_rows)
  with open(csv_path, "a") as f:
    f.write('full.jpg,"broken "quoting,here\n')
  config = _config(csv_path, str(root), global_batch_size=6)
  source = sources.open_source(config.source)
  for key in ("missing_image", "empty_image", "not_an_image", "unusable_caption",
              "too_few_columns", "not_image_extension", "malformed_csv_row"):
    assert source.report.get(key), key
  it = pipeline.make_train_iterator(config, source=source)
  totals = {}
  for batch in _take(it, 12):
    assert np.isfinite(batch["images"]).all()
    for k, v in batch["stats"].items():
      totals[k] = totals.get(k, 0) + int(v)
  assert totals["resampled/truncated_image"] + totals["partner_resampled/truncated_image"] > 0
  assert totals["text_truncated"] > 0
  # Rows without extra sentences reuse c1 (docs/method.md, "Caption variants").
  assert totals["caption/no_extra_sentences"] > 0
  # Every unusual-but-valid image decodes through the pipeline.
  builder = pipeline.SampleBuilder(source, pipeline.PartnerIndex.from_aspects(source.aspects),
                                   config)
  row_of = {r.path: i for i, r in enumerate(source.rows)}
  for name in ("cmyk.jpg", "pal.png", "rgba.png", "i16.png", "huge.png"):
    raw = builder.raw_sample("clip", row_of[name], np.random.default_rng(0))
    assert raw.sources == [str(root / name)] and raw.pixels.shape == (SIZE, SIZE, 3)
  odd_captions = ("dog", "ein hund läuft über die straße")
  for rid in [i for i, r in enumerate(source.rows) if r.sentences[0] in odd_captions]:
    raw = builder.raw_sample("clic", rid, np.random.default_rng(1))
    assert raw.single_caption == source.rows[rid].sentences[0]  # built from it, not replaced
    assert len(raw.texts) == 5 and all(raw.texts) and raw.texts[-1] not in raw.texts[:-1]


def test_all_bad_dataset_gives_one_clear_error(tmp_path):
  root = tmp_path / "imgs"
  root.mkdir()
  (root / "a.jpg").write_bytes(b"")
  path = tmp_path / "bad.csv"
  path.write_text("a.jpg,an empty file\nb.jpg,a missing file\nc.txt,not an image\n")
  with pytest.raises(pipeline.DataError, match="no usable records.*empty_image"):
    pipeline.make_train_iterator(_config(str(path), str(root)))
  # Headers fine, but every image is truncated: found while sampling, still one clear error.
  img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 60, 3), np.uint8))
  img.save(root / "t.jpg")
  data = (root / "t.jpg").read_bytes()
  for i in range(3):
    (root / f"t{i}.jpg").write_bytes(data[:len(data) // 2])
  path.write_text("".join(f"t{i}.jpg,truncated picture {i}\n" for i in range(3)))
  it = pipeline.make_train_iterator(_config(str(path), str(root), global_batch_size=2,
                                            max_resample_tries=5))
  with pytest.raises(pipeline.DataError, match="no usable record found.*truncated_image"):
    next(it)


def test_negclip_and_baseline_modes(data):
  neg = _take(pipeline.make_train_iterator(_config(*data, mode="negclip")), 3)
  assert [b["kind"] for b in neg] == ["negclip"] * 3
  assert neg[0]["texts"].shape == (4, 2, 77) and "negative_valid" in neg[0]
  base = _take(pipeline.make_train_iterator(_config(*data, mode="baseline")), 2)
  assert [b["kind"] for b in base] == ["baseline", "clip"]
  assert base[0]["texts"].shape == (4, 5, 77)
  # p2 = p1 (docs/method.md, "Training variants").
  np.testing.assert_array_equal(base[0]["texts"][:, 0], base[0]["texts"][:, 1])
  with pytest.raises(ValueError, match="mode"):
    _config(*data, mode="other")


def test_imagenet_normalization_only_for_concatenated_image(data):
  clip_cfg = _config(*data, step_pattern=("clic",))
  imnet_cfg = _config(*data, step_pattern=("clic",), concat_image_norm="imagenet")
  a = next(pipeline.make_train_iterator(clip_cfg))["images"]
  b = next(pipeline.make_train_iterator(imnet_cfg))["images"]
  assert not np.allclose(a, b)
  single_a = next(pipeline.make_train_iterator(dataclasses.replace(clip_cfg, step_pattern=("clip",))))
  single_b = next(pipeline.make_train_iterator(dataclasses.replace(imnet_cfg, step_pattern=("clip",))))
  np.testing.assert_array_equal(single_a["images"], single_b["images"])


def test_arrayrecord_and_pipeline_agree_on_records(tmp_path):
  from clic_jax.data import prepare
  csv_path, root = _make_csv(tmp_path, n=10)
  out = tmp_path / "prepared"
  prepare.prepare(prepare.parse_args([f"--csv={csv_path}", f"--image_root={root}", f"--out={out}",
                                      "--num_workers=0", "--shard_size=4", "--pos_backend=lexicon"]))
  config = _config(csv_path, root, source=sources.SourceSpec(arrayrecord_dir=str(out)))
  batches = _take(pipeline.make_train_iterator(config), 4)
  assert [b["kind"] for b in batches] == ["clic", "clip"] * 2
  assert batches[0]["texts"].shape == (4, 5, 77)


def test_worker_processes_give_the_same_stream(data):
  """mp_prefetch workers each build whole batches; the stream and its state match threads only."""
  from absl import flags
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  config = _config(*data)
  expected = _take(pipeline.make_train_iterator(config), 4)
  it = pipeline.make_train_iterator(dataclasses.replace(config, mp_workers=2))
  got = _take(it, 2)
  state = it.get_state()
  got += _take(it, 2)
  for want, have in zip(expected, got):
    _assert_same(want, have)
  resumed = pipeline.make_train_iterator(dataclasses.replace(config, mp_workers=2))
  resumed.set_state(state)
  _assert_same(next(resumed), expected[2])
  for iterator in (it, resumed):
    iterator.close()


def test_uint8_images_normalized_on_device_match_float32(data):
  from clic_jax.data import images
  config = _config(*data, concat_image_norm="imagenet")
  floats = _take(pipeline.make_train_iterator(config), 2)
  raw = _take(pipeline.make_train_iterator(dataclasses.replace(config, image_dtype="uint8")), 2)
  for f, r in zip(floats, raw):
    assert r["images"].dtype == np.uint8 and r["image_norm"] == f["image_norm"]
    scale, offset = images.normalization_constants(r["image_norm"])
    np.testing.assert_allclose(r["images"] * scale + offset, f["images"], atol=1e-6)
    np.testing.assert_array_equal(r["texts"], f["texts"])
  assert [b["image_norm"] for b in floats] == ["imagenet", "clip"]


def test_every_batch_has_the_same_stats_keys(data):
  from clic_jax.data import stats
  batches = _take(pipeline.make_train_iterator(_config(*data)), 4)
  for b in batches:
    assert sorted(b["stats"]) == sorted(stats.BATCH_KEYS)
  running = {}
  for b in batches:
    stats.accumulate(running, b["stats"])
  assert running["resampled/missing_image"] == 0 and "caption/no_valid_negative" in running


def test_text_length_for_picks_the_shortest_bucket_that_holds_every_caption():
  texts = np.zeros((2, 3, 77), np.int32)
  texts[:, :, 0] = 49406
  texts[0, 1, 1:10], texts[0, 1, 10] = 7, 49407           # longest row ends at column 10
  assert pipeline.text_length_for(texts, (32, 48, 64)) == 32
  texts[1, 2, 40] = 49407                                  # now column 40 is used
  assert pipeline.text_length_for(texts, (64, 32, 48)) == 48
  texts[1, 0, 76] = 49407                                  # a row truncated at the full width
  assert pipeline.text_length_for(texts, (32, 48, 64)) == 77
  assert pipeline.text_length_for(texts[..., :20], ()) == 20
  assert pipeline.text_length_for(np.zeros((1, 1, 77), np.int32), (32,)) == 32
