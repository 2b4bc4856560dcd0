"""clic_jax's eval preprocessing equals open_clip's val transform on odd-sized images."""
from __future__ import annotations

import numpy as np
import open_clip
import pytest
from PIL import Image

from clic_jax.evaluate import preprocess
from clic_jax.models import config_to_open_clip, get_model_config

SIZES = [(37, 23), (23, 37), (32, 32), (101, 50), (33, 97), (16, 9), (640, 427)]


def _image(width: int, height: int, mode: str, seed: int) -> Image.Image:
  rng = np.random.default_rng(seed)
  pixels = rng.integers(0, 256, (height, width, 3), np.uint8)
  # Smooth gradients plus noise: resampling errors show up on both kinds of content.
  pixels[..., 0] = (np.arange(width)[None, :] * 255 // max(width - 1, 1)).astype(np.uint8)
  image = Image.fromarray(pixels)
  return image.convert(mode) if mode != "RGB" else image


@pytest.fixture(scope="module")
def tiny_transform():
  open_clip.factory._MODEL_CONFIGS["clic-test-tiny"] = config_to_open_clip(
      get_model_config("tiny"))
  _, _, transform = open_clip.create_model_and_transforms("clic-test-tiny")
  return transform


@pytest.mark.parametrize("mode", ["RGB", "L", "P"])
def test_matches_open_clip_val_transform_tiny(tiny_transform, mode):
  for i, (w, h) in enumerate(SIZES):
    image = _image(w, h, mode, seed=i)
    expected = tiny_transform(image.convert("RGB")).numpy().transpose(1, 2, 0)
    ours = preprocess.preprocess_image(image, 32)
    assert ours.shape == (32, 32, 3) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, expected, atol=1e-6, rtol=0)


def test_matches_open_clip_val_transform_224():
  # ViT-B-32's transform (create_model_and_transforms("ViT-B-32")[2] prints the same pipeline).
  transform = open_clip.image_transform(224, is_train=False)
  for i, (w, h) in enumerate([(300, 227), (225, 224), (131, 517)]):
    image = _image(w, h, "RGB", seed=10 + i)
    expected = transform(image).numpy().transpose(1, 2, 0)
    np.testing.assert_allclose(preprocess.preprocess_image(image, 224), expected, atol=1e-6, rtol=0)


def test_load_image_reads_files_and_converts_rgba(tmp_path, tiny_transform):
  rgba = _image(45, 30, "RGBA", seed=3)
  path = tmp_path / "x.png"
  rgba.save(path)
  expected = tiny_transform(Image.open(path).convert("RGB")).numpy().transpose(1, 2, 0)
  np.testing.assert_allclose(preprocess.load_image(path, 32), expected, atol=1e-6, rtol=0)


def test_center_crop_rounds_like_torchvision():
  # (height - size) / 2 = 0.5 -> round() gives 0; 1.5 -> 2 (banker's rounding in both).
  image = Image.fromarray(np.arange(5 * 4, dtype=np.uint8).reshape(5, 4))
  assert np.array_equal(np.asarray(preprocess.center_crop(image, 4)), np.asarray(image)[0:4])
  image = Image.fromarray(np.arange(7 * 4, dtype=np.uint8).reshape(7, 4))
  assert np.array_equal(np.asarray(preprocess.center_crop(image, 4)), np.asarray(image)[2:6])
