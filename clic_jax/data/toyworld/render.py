"""Draws a toy-world scene with PIL.

Shapes are drawn at SUPERSAMPLE times the output size and box-downsampled, which antialiases the
edges cheaply; at 64 px a star and a cross stay distinguishable. Rendering is a pure function of
the scene (texture noise comes from the scene's own seed), so the same scene gives the same bytes.
"""
from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from clic_jax.data.toyworld.scenes import COLORS, Background, Scene, SceneObject

SUPERSAMPLE = 4
NOISE_AMPLITUDE = 22        # +- gray levels of the "noisy" texture: visible, not distracting
STRIPE_CONTRAST = 28        # gray-level difference between the two stripe tones


def _background_array(background: Background, width: int, height: int) -> np.ndarray:
  if background.kind == "plain":
    return np.full((height, width), background.level, np.uint8)
  if background.kind == "noisy":
    rng = np.random.default_rng(background.noise_seed)
    noise = rng.integers(-NOISE_AMPLITUDE, NOISE_AMPLITUDE + 1, size=(height, width))
    return np.clip(background.level + noise, 0, 255).astype(np.uint8)
  if background.kind == "striped":
    coords = np.arange(width if background.vertical else height)
    band = (coords // background.stripe_width) % 2 == 1
    line = np.where(band, background.level - STRIPE_CONTRAST, background.level).astype(np.uint8)
    return np.broadcast_to(line[None, :] if background.vertical else line[:, None],
                           (height, width)).copy()
  raise ValueError(f"unknown background kind {background.kind!r}")


def _regular_polygon(cx: float, cy: float, radius: float, corners: int,
                     start_deg: float) -> list[tuple[float, float]]:
  return [(cx + radius * math.cos(math.radians(start_deg + 360 * k / corners)),
           cy + radius * math.sin(math.radians(start_deg + 360 * k / corners)))
          for k in range(corners)]


def _star(cx: float, cy: float, radius: float) -> list[tuple[float, float]]:
  outer = _regular_polygon(cx, cy, radius, 5, -90)
  inner = _regular_polygon(cx, cy, radius * 0.45, 5, -90 + 36)
  return [p for pair in zip(outer, inner) for p in pair]


def _cross(cx: float, cy: float, radius: float) -> list[tuple[float, float]]:
  r, t = radius, radius * 0.34                         # arm length and half thickness
  return [(cx - t, cy - r), (cx + t, cy - r), (cx + t, cy - t), (cx + r, cy - t),
          (cx + r, cy + t), (cx + t, cy + t), (cx + t, cy + r), (cx - t, cy + r),
          (cx - t, cy + t), (cx - r, cy + t), (cx - r, cy - t), (cx - t, cy - t)]


def _draw_object(draw: ImageDraw.ImageDraw, obj: SceneObject, x0: float, y0: float,
                 unit: float) -> None:
  """Draws one object; (x0, y0) is the top-left of the central square, `unit` its side length."""
  cx, cy, r = x0 + obj.x * unit, y0 + obj.y * unit, obj.radius * unit
  fill = COLORS[obj.color]
  if obj.shape == "circle":
    draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
  elif obj.shape == "square":
    h = r * 0.85                                       # similar area to the circle
    draw.rectangle((cx - h, cy - h, cx + h, cy + h), fill=fill)
  elif obj.shape == "triangle":
    draw.polygon(_regular_polygon(cx, cy + r * 0.15, r * 1.1, 3, -90), fill=fill)
  elif obj.shape == "star":
    draw.polygon(_star(cx, cy, r * 1.1), fill=fill)
  elif obj.shape == "cross":
    draw.polygon(_cross(cx, cy, r), fill=fill)
  elif obj.shape == "diamond":
    draw.polygon(_regular_polygon(cx, cy, r * 1.05, 4, -90), fill=fill)
  else:
    raise ValueError(f"unknown shape {obj.shape!r}")


def render_scene(scene: Scene) -> Image.Image:
  """The scene as an RGB PIL image of size (scene.width, scene.height)."""
  gray = _background_array(scene.background, scene.width, scene.height)
  big_size = (scene.width * SUPERSAMPLE, scene.height * SUPERSAMPLE)
  canvas = Image.fromarray(gray, "L").convert("RGB").resize(big_size, Image.NEAREST)
  draw = ImageDraw.Draw(canvas)
  unit = min(scene.width, scene.height) * SUPERSAMPLE
  x0 = (scene.width * SUPERSAMPLE - unit) / 2
  y0 = (scene.height * SUPERSAMPLE - unit) / 2
  for obj in scene.objects:
    _draw_object(draw, obj, x0, y0, unit)
  return canvas.reduce(SUPERSAMPLE)
