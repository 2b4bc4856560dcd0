"""open_clip's evaluation image transform, in numpy, so JAX numbers match open_clip's.

open_clip's val transform for square ViT inputs (open_clip/transform.py, resize_mode "shortest"):
torchvision Resize(size) on a PIL image (bicubic, PIL's antialiased resampling), CenterCrop(size),
RGB conversion, ToTensor (/255) and Normalize with the CLIP mean/std. The image is converted to RGB
*before* resizing here, like every evaluation script that opens files with `.convert("RGB")`
(the CLIC reference, SugarCrepe++, Winoground loaders). For RGB/L sources both orders are identical.
"""
from __future__ import annotations

import os

import numpy as np
from PIL import Image

CLIP_MEAN = np.array((0.48145466, 0.4578275, 0.40821073), np.float32)
CLIP_STD = np.array((0.26862954, 0.26130258, 0.27577711), np.float32)


def resize_shorter_side(image: Image.Image, size: int) -> Image.Image:
  """Bicubic resize so the shorter side is `size`; the longer side is truncated like torchvision."""
  width, height = image.size
  short, long = (width, height) if width <= height else (height, width)
  new_short, new_long = size, int(size * long / short)
  new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
  if (new_w, new_h) == (width, height):
    return image                               # torchvision skips the resample in this case too
  return image.resize((new_w, new_h), Image.BICUBIC)


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


def normalize(image: Image.Image) -> np.ndarray:
  """uint8 RGB -> float32 HWC in CLIP's normalized space, with ToTensor's float32 arithmetic."""
  pixels = np.asarray(image, dtype=np.uint8).astype(np.float32) / np.float32(255.0)
  return (pixels - CLIP_MEAN) / CLIP_STD


def preprocess_image(image: Image.Image, image_size: int) -> np.ndarray:
  """A PIL image -> (image_size, image_size, 3) float32, exactly open_clip's val transform."""
  image = image.convert("RGB")
  return normalize(center_crop(resize_shorter_side(image, image_size), image_size))


def load_image(path: str | os.PathLike, image_size: int) -> np.ndarray:
  """Opens an image file and preprocesses it. Raises FileNotFoundError / OSError on bad files."""
  with Image.open(path) as image:
    return preprocess_image(image, image_size)
