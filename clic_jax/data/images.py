"""Image decoding and the two image views of CLIC (concatenated pair, single image).

Everything here works on PIL images and uint8 numpy arrays and is thread-safe: PIL releases the GIL
while decoding and resizing, so grain's reader threads scale on all cores.

Decoding never returns a half-valid image. Every failure raises `ImageError` with a short `reason`
(one of `IMAGE_SKIP_REASONS`) that the pipeline counts before it resamples another record.
"""
from __future__ import annotations

import io
import os
from typing import Union

import numpy as np
from PIL import Image

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NORMALIZATIONS = {"clip": (CLIP_MEAN, CLIP_STD), "imagenet": (IMAGENET_MEAN, IMAGENET_STD)}

WIDER, HIGHER = "wider", "higher"
ASPECT_CLASSES = (WIDER, HIGHER)  # index 0 / 1 in the uint8 aspect arrays of the index files.

# PIL's own decompression-bomb threshold; larger images are skipped (counted), not decoded.
MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485
# Pillow first box-reduces an image that is this many times larger than the target, then resizes
# with the bicubic filter; per Pillow's docs the result is indistinguishable from a direct resize
# and a 6000x4000 image is resized ~10x faster.
REDUCING_GAP = 3.0

IMAGE_SKIP_REASONS = (
    "missing_image", "empty_image", "not_an_image", "truncated_image", "corrupt_image",
    "image_too_large",
)

ImageInput = Union[bytes, str, os.PathLike, np.ndarray]


class ImageError(Exception):
  """An image that cannot be used; `reason` is one of IMAGE_SKIP_REASONS."""

  def __init__(self, reason: str, detail: str = ""):
    super().__init__(f"{reason}: {detail}" if detail else reason)
    self.reason = reason


def aspect_class(width: int, height: int) -> str:
  """Reference rule: width >= height is "wider" (squares included), else "higher".

  See docs/method.md, "Aspect classes and partners".
  """
  return WIDER if width >= height else HIGHER


def read_bytes(image: ImageInput) -> bytes:
  """The encoded bytes of a path or bytes input; missing and empty files raise ImageError."""
  if isinstance(image, (bytes, bytearray, memoryview)):
    data = bytes(image)
  else:
    try:
      with open(image, "rb") as f:
        data = f.read()
    except FileNotFoundError:
      raise ImageError("missing_image", str(image)) from None
    except IsADirectoryError:
      raise ImageError("not_an_image", f"{image} is a directory") from None
    except OSError as e:
      raise ImageError("missing_image", f"{image}: {e}") from None
  if not data:
    raise ImageError("empty_image", "" if isinstance(image, (bytes, bytearray)) else str(image))
  return data


def _open(data) -> Image.Image:
  """Open lazily (header only) from bytes or a binary file object."""
  try:
    img = Image.open(io.BytesIO(data) if isinstance(data, bytes) else data)
  except Image.DecompressionBombError as e:
    raise ImageError("image_too_large", str(e)) from None
  except Exception as e:  # PIL raises UnidentifiedImageError, SyntaxError, ValueError, ...
    raise ImageError("not_an_image", type(e).__name__) from None
  width, height = img.size
  if width <= 0 or height <= 0:
    raise ImageError("corrupt_image", f"size {img.size}")
  if width * height > MAX_IMAGE_PIXELS:
    raise ImageError("image_too_large", f"{width}x{height} > {MAX_IMAGE_PIXELS} pixels")
  return img


def image_size(image: ImageInput) -> tuple[int, int]:
  """(width, height) read from the file header only: no pixels are decoded and, for a path, only
  the first kilobytes of the file are read."""
  if isinstance(image, np.ndarray):
    return int(image.shape[1]), int(image.shape[0])
  if isinstance(image, (bytes, bytearray, memoryview)):
    return _open(read_bytes(image)).size
  try:
    if os.path.isdir(image):
      raise ImageError("not_an_image", f"{image} is a directory")
    if os.path.getsize(image) == 0:
      raise ImageError("empty_image", str(image))
    with open(image, "rb") as f:
      return _open(f).size
  except (FileNotFoundError, PermissionError) as e:
    raise ImageError("missing_image", f"{image}: {e}") from None


def _to_rgb(img: Image.Image) -> Image.Image:
  """Any PIL mode -> RGB. Transparency is composited over black (what the reference's premultiplied
  resize does to fully transparent pixels; docs/method.md, "Image decoding"); 16-bit and float
  images are rescaled, not clipped."""
  mode = img.mode
  if mode == "RGB":
    return img
  if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
    arr = np.asarray(img).astype(np.float32)
    if mode.startswith("I;16") or arr.max(initial=0) > 255:
      arr = arr * (255.0 / 65535.0)
    elif mode == "F" and arr.max(initial=0) <= 1.0:
      arr = arr * 255.0
    gray = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    return Image.fromarray(gray, "L").convert("RGB")
  has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
      mode == "P" and "transparency" in img.info)
  if has_alpha:
    rgba = img.convert("RGBA")
    out = Image.new("RGB", rgba.size, (0, 0, 0))
    out.paste(rgba, mask=rgba.getchannel("A"))
    return out
  return img.convert("RGB")


def decode_rgb(image: ImageInput, min_size: tuple[int, int] | None = None) -> Image.Image:
  """Decode to a fully loaded RGB PIL image.

  min_size: (width, height) the caller will resize to. JPEGs are then decoded at the smallest DCT
  scale that still leaves at least twice that size, which keeps the bicubic result practically
  unchanged and makes decoding of large photos several times faster.
  """
  if isinstance(image, np.ndarray):  # TFDS sources that decode themselves.
    if image.ndim == 2:
      image = image[:, :, None]
    if image.size == 0:
      raise ImageError("empty_image", "array with no pixels")
    if image.shape[-1] == 1:
      image = np.repeat(image, 3, axis=-1)
    return _to_rgb(Image.fromarray(np.ascontiguousarray(image[..., :4].astype(np.uint8))))
  img = _open(read_bytes(image))
  if min_size is not None and img.format == "JPEG":
    img.draft(img.mode, (2 * min_size[0], 2 * min_size[1]))
  try:
    img.load()
  except Image.DecompressionBombError as e:
    raise ImageError("image_too_large", str(e)) from None
  except Exception as e:  # truncated data raises OSError; broken streams raise many other types.
    reason = "truncated_image" if "truncated" in str(e) else "corrupt_image"
    raise ImageError(reason, f"{type(e).__name__}: {e}") from None
  try:
    return _to_rgb(img)
  except Exception as e:
    raise ImageError("corrupt_image", f"mode {img.mode}: {e}") from None


def resize(img: Image.Image, width: int, height: int) -> Image.Image:
  """Bicubic, antialiased (Pillow widens the filter support when downscaling), no aspect kept."""
  if img.size == (width, height):
    return img
  return img.resize((width, height), Image.Resampling.BICUBIC, reducing_gap=REDUCING_GAP)


def half_size(aspect: str, size: int) -> tuple[int, int]:
  """(width, height) of each half of a concatenated image: squash to S x S/2.

  See docs/method.md, "Concatenated image".
  """
  return (size // 2, size) if aspect == HIGHER else (size, size // 2)


def concat_pair(first: Image.Image, second: Image.Image, aspect: str, size: int) -> np.ndarray:
  """uint8 (size, size, 3): two portrait halves side by side, or two landscape halves stacked."""
  width, height = half_size(aspect, size)
  out = np.empty((size, size, 3), np.uint8)
  a = np.asarray(resize(first, width, height))
  b = np.asarray(resize(second, width, height))
  if aspect == HIGHER:
    out[:, :width], out[:, width:] = a, b
  else:
    out[:height], out[height:] = a, b
  return out


def clip_val_view(img: Image.Image, size: int) -> np.ndarray:
  """open_clip's val transform as uint8 (size, size, 3): shorter side to `size` (bicubic,
  antialiased, longer side truncated like torchvision), then a center crop rounded like
  torchvision's CenterCrop."""
  width, height = img.size
  if width <= height:
    new_w, new_h = size, int(size * height / width)
  else:
    new_w, new_h = int(size * width / height), size
  resized = resize(img, new_w, new_h)
  top = int(round((new_h - size) / 2.0))
  left = int(round((new_w - size) / 2.0))
  return np.asarray(resized.crop((left, top, left + size, top + size)))


def normalization_constants(name: str) -> tuple[np.ndarray, np.ndarray]:
  """float32 (scale, offset) of shape (3,) with normalized = uint8_pixels * scale + offset.

  For pipelines that ship uint8 images (4x less host work and transfer) and normalize on device.
  """
  if name not in NORMALIZATIONS:
    raise ValueError(f"image normalization {name!r} is unknown; use one of {sorted(NORMALIZATIONS)}")
  mean, std = (np.asarray(v, np.float64) for v in NORMALIZATIONS[name])
  return (1.0 / (255.0 * std)).astype(np.float32), (-mean / std).astype(np.float32)


def normalizer(name: str):
  """A function uint8 (..., 3) -> float32 normalized with the named statistics.

  Uses one 256-entry float32 table per channel (the same float32 multiply-add, precomputed): a
  table look-up writes the output once, about twice as fast as converting and then scaling.
  """
  scale, offset = normalization_constants(name)
  levels = np.arange(256, dtype=np.float32)
  tables = [levels * scale[c] + offset[c] for c in range(3)]

  def normalize(pixels: np.ndarray) -> np.ndarray:
    if pixels.dtype != np.uint8:
      raise TypeError(f"normalize expects uint8 pixels, got {pixels.dtype}")
    out = np.empty(pixels.shape, np.float32)
    for c, table in enumerate(tables):
      np.take(table, pixels[..., c], out=out[..., c])
    return out

  return normalize


def denormalize(pixels: np.ndarray, name: str = "clip") -> np.ndarray:
  """float32 normalized -> uint8, for previews."""
  mean, std = (np.asarray(v, np.float32) for v in NORMALIZATIONS[name])
  return np.clip(np.rint((pixels * std + mean) * 255.0), 0, 255).astype(np.uint8)
