"""open_clip's evaluation image transform, in numpy, so JAX numbers match open_clip's.

open_clip's val transform for square ViT inputs (open_clip/transform.py, resize_mode "shortest"):
torchvision Resize(size) on a PIL image (bicubic, PIL's antialiased resampling), CenterCrop(size),
RGB conversion, ToTensor (/255) and Normalize with the CLIP mean/std. The image is converted to RGB
*before* resizing here, like every evaluation script that opens files with `.convert("RGB")`
(the CLIC reference, SugarCrepe++, Winoground loaders). For RGB/L sources both orders are identical.
"""
from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np
from PIL import Image

CLIP_MEAN = np.array((0.48145466, 0.4578275, 0.40821073), np.float32)
CLIP_STD = np.array((0.26862954, 0.26130258, 0.27577711), np.float32)


def resize_shorter_side(image: Image.Image, size: int) -> Image.Image:
  """Bicubic resize so the shorter side is `size`; the longer side is truncated like torchvision."""
  return _resize_shorter_side(image, size, Image.BICUBIC)


def _resize_shorter_side(image: Image.Image, size: int, resample) -> Image.Image:
  width, height = image.size
  short, long = (width, height) if width <= height else (height, width)
  new_short, new_long = size, int(size * long / short)
  new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
  if (new_w, new_h) == (width, height):
    return image                               # torchvision skips the resample in this case too
  return image.resize((new_w, new_h), resample)


def center_crop(image: Image.Image, size: int) -> Image.Image:
  """torchvision CenterCrop: offsets rounded with Python's round(); pads with 0 when too small."""
  width, height = image.size
  if width < size or height < size:
    padded = Image.new(image.mode, (max(width, size), max(height, size)), 0)
    padded.paste(image, ((max(size - width, 0)) // 2, (max(size - height, 0)) // 2))
    image, (width, height) = padded, padded.size
    if (width, height) == (size, size):
      return image
  top = int(round((height - size) / 2.0))
  left = int(round((width - size) / 2.0))
  return image.crop((left, top, left + size, top + size))


def normalize(image: Image.Image, mean: np.ndarray = CLIP_MEAN,
              std: np.ndarray = CLIP_STD) -> np.ndarray:
  """uint8 RGB -> float32 HWC normalized with mean/std (CLIP's by default), with ToTensor's float32
  arithmetic."""
  pixels = np.asarray(image, dtype=np.uint8).astype(np.float32) / np.float32(255.0)
  return (pixels - mean) / std


_RESAMPLE = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}


def preprocess_image(image: Image.Image, image_size: int,
                     preprocess: Mapping[str, Any] | None = None) -> np.ndarray:
  """A PIL image -> (image_size, image_size, 3) float32, exactly open_clip's val transform.

  preprocess: a model's open_clip preprocess_cfg (interop.preprocess_config: mean, std,
  interpolation, resize_mode "shortest" or "squash", e.g. CLIPA's ImageNet statistics, bilinear,
  squashed); None: OpenAI CLIP's (bicubic, shorter side, center crop).
  """
  image = image.convert("RGB")
  if preprocess is None:
    return normalize(center_crop(resize_shorter_side(image, image_size), image_size))
  mean = np.asarray(preprocess.get("mean", CLIP_MEAN), np.float32)
  std = np.asarray(preprocess.get("std", CLIP_STD), np.float32)
  interpolation = preprocess.get("interpolation", "bicubic")
  mode = preprocess.get("resize_mode", "shortest")
  if interpolation not in _RESAMPLE or mode not in ("shortest", "squash"):
    raise ValueError(f"unsupported preprocess_cfg interpolation={interpolation!r} "
                     f"resize_mode={mode!r} (supported: bicubic/bilinear, shortest/squash)")
  if mode == "squash":     # torchvision Resize((size, size)): no crop
    if image.size != (image_size, image_size):
      image = image.resize((image_size, image_size), _RESAMPLE[interpolation])
    return normalize(image, mean, std)
  if interpolation == "bicubic":
    image = resize_shorter_side(image, image_size)
  else:
    image = _resize_shorter_side(image, image_size, _RESAMPLE[interpolation])
  return normalize(center_crop(image, image_size), mean, std)


def load_image(path: str | os.PathLike, image_size: int,
               preprocess: Mapping[str, Any] | None = None) -> np.ndarray:
  """Opens an image file and preprocesses it. Raises FileNotFoundError / OSError on bad files."""
  with Image.open(path) as image:
    return preprocess_image(image, image_size, preprocess)
