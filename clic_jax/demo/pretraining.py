"""The toy world's pretrained CLIP, built to be in the regime the paper starts from.

CLIC fine-tunes a CLIP whose image tower already tells which attribute belongs to which object,
while its text tower reads a caption close to a bag of words; with the image tower frozen, CLIC's
job is to teach the text tower to bind. A tiny CLIP trained from scratch with the CLIP loss on a
few thousand toy scenes is not in that regime (its image embedding barely encodes binding), so
the demo builds its starting model in two stages instead:

1. Image tower, supervised on the scene structure. The tower plus two linear heads predict, for
   the whole view, which (colour, shape) identities it shows, where each one's centre is, whether
   it is large, and which backgrounds, colours and shapes occur; and for every patch token, which
   identity that patch shows. The per-patch labels are what make a ViT this small learn shapes in
   a few thousand steps (with the image-level labels alone it stayed near chance on the binding
   probe after 2400 steps; experiments/README.md). Half of each batch are single images (the view
   CLIP steps and evaluation see), half are two images squashed into one (the view CLIC steps see),
   labelled with both scenes' objects at their place in the pair. The heads are thrown away.
2. Text tower, aligned to the locked image tower with the plain CLIP loss (LiT). Each step pairs
   the frozen embedding of each image of a random batch with one random true sentence about it.
   Telling the images of a random batch apart needs no binding (a bag of words suffices), but
   matching an image embedding that encodes binding this precisely rewards it: the text tower
   learns the bag first and binding soon after (SugarCrepe swap_att 0.51 after 50 steps, 0.84
   after 200, 0.98 after 300; experiments/text_alignment.py). The recipe stops at 100 steps, where
   retrieval is far above chance and the text tower still reads close to a bag of words: the
   regime the paper starts from, measured by the binding probes.

Both stages train on a corpus of their own: scenes of the world's generator from separate random
streams, none sharing a scene key with a held-out scene (like a web-scale corpus that does not hold
the benchmark), each with the generator's true sentences. The fine-tuning runs then use the
world's training split. `pretrain` writes an open_clip export, so every fine-tuning run starts from
it exactly as a real run starts from open_clip's weights.

  python -m clic_jax.demo.pretraining --world=runs/demo/world --out=runs/demo/pretrained
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from clic_jax import losses, models
from clic_jax.data import images as images_lib
from clic_jax.data import toyworld
from clic_jax.data.toyworld import captions
from clic_jax.data.toyworld.render import render_scene
from clic_jax.data.toyworld.scenes import COLORS, SHAPES, Scene, scene_key
from clic_jax.train import optimizer as opt_lib

log = logging.getLogger("clic_jax.demo")

IDENTITIES = tuple((color, shape) for color in COLORS for shape in SHAPES)
BACKGROUND_WORDS = ("white", "gray", "black", "noisy", "striped")
_ID = {identity: i for i, identity in enumerate(IDENTITIES)}
_NUM = len(IDENTITIES)
# Output layout of the vision head: presence, large, x, y per identity, then which backgrounds,
# colours and shapes occur (the last two are easy targets that get the features going early).
_BACKGROUNDS = 4 * _NUM
_COLORS = _BACKGROUNDS + len(BACKGROUND_WORDS)
_SHAPES = _COLORS + len(COLORS)
_HEAD = _SHAPES + len(SHAPES)
POSITION_WEIGHT = 10.0      # positions are fractions, so their squared error is ~100x smaller
# Image towers made by this recipe, shipped so that the demo starts in the regime within its ten
# minutes: NAME.npz (float32 weights, as trained) beside NAME.json (the settings and world that
# made it, and the command). Used whenever the settings and world match (_cached_vision_stage).
SHIPPED_TOWERS = Path(__file__).parent / "towers"


@dataclasses.dataclass(frozen=True)
class PretrainSettings:
  """The recipe; its defaults are the budget that reaches the regime (experiments/README.md).
  The image tower these defaults make for the demo's world ships with clic_jax
  (SHIPPED_TOWERS), so the demo does not spend 24 minutes on it."""
  model: str = "tiny-64"
  seed: int = 0
  corpus_scenes: int = 20000      # pretraining scenes (none of them a held-out scene)
  vision_steps: int = 3000
  vision_batch: int = 64
  vision_lr: float = 2e-3
  pair_fraction: float = 0.5      # of each image-tower batch: concatenated pairs (CLIC's view)
  weight_decay: float = 0.05      # both stages
  text_steps: int = 100          # stop before the text tower binds (experiments/README.md)
  text_batch: int = 128
  text_lr: float = 5e-4
  context_length: int = 32        # token rows are cut to this; the model keeps its 77 positions

  def __post_init__(self):
    for name in ("corpus_scenes", "vision_steps", "vision_batch", "text_steps", "text_batch",
                 "context_length"):
      if getattr(self, name) < 1:
        raise ValueError(f"pretraining {name}={getattr(self, name)} must be at least 1")
    if self.vision_batch % 2:
      raise ValueError(f"pretraining vision_batch={self.vision_batch} must be even (half pairs)")

  def vision_stage(self) -> dict:
    """The settings the image tower depends on (every field up to text_steps): a run that changes
    only the text stage reuses the cached image tower."""
    names = [f.name for f in dataclasses.fields(self)]
    return {name: getattr(self, name) for name in names[:names.index("text_steps")]}


# ------------------------------------------------------------------------------------------------
# The pretraining corpus: scenes of the world's generator, its own random stream, no held-out scene.


@dataclasses.dataclass
class SceneSet:
  singles: np.ndarray          # uint8 (N, S, S, 3): the single-image view (open_clip val crop)
  halves: np.ndarray           # uint8 (N, h, w, 3): each whole image squashed to half a pair
  aspect: str                  # the pair layout (one aspect class; see build_corpus)
  labels: list[list[tuple]]    # per scene: [(identity, large, x, y, radius) in the crop frame]
  half_labels: list[list[tuple]]  # the same with x, y in the whole-image frame
  backgrounds: np.ndarray      # int (N,) index into BACKGROUND_WORDS
  sentences: list[list[str]]   # per scene: true sentences (first sentence, then extras)


def _frame_positions(scene: Scene, obj) -> tuple[tuple[float, float], tuple[float, float]]:
  """(x, y) of an object in the centre crop and in the whole image, as fractions."""
  short = min(scene.width, scene.height)
  whole = (((scene.width - short) / 2 + obj.x * short) / scene.width,
           ((scene.height - short) / 2 + obj.y * short) / scene.height)
  return (obj.x, obj.y), whole


def build_corpus(world: dict[str, str], num_scenes: int, size: int, seed: int) -> SceneSet:
  """`num_scenes` new scenes of the world's generator with their captions and structure labels.

  They come from random streams of their own and never share a scene key with a held-out scene,
  like a web-scale pretraining set that does not contain the benchmark. One frame shape only: the
  demo's worlds are square, so every pair is stacked.
  """
  with open(world["manifest"], encoding="utf-8") as f:
    config = json.load(f)["config"]
  with open(world["test_scenes"], encoding="utf-8") as f:
    held_out = {scene_key(Scene.from_json({k: v for k, v in json.loads(line).items()
                                           if k != "image"})) for line in f}
  scenes = toyworld.sample_split(toyworld.PRETRAIN_SCENES, num_scenes, seed,
                                 config["image_size"], excluded_keys=held_out,
                                 frames=config.get("frames", "square"))
  aspect = images_lib.aspect_class(scenes[0].width, scenes[0].height)
  width, height = images_lib.half_size(aspect, size)
  singles, halves, labels, half_labels, backgrounds, sentences = [], [], [], [], [], []
  for index, scene in enumerate(scenes):
    if images_lib.aspect_class(scene.width, scene.height) != aspect:
      continue
    image = render_scene(scene)
    singles.append(images_lib.clip_val_view(image, size))
    halves.append(np.asarray(images_lib.resize(image, width, height)))
    crop, whole = [], []
    for obj in scene.objects:
      at_crop, at_whole = _frame_positions(scene, obj)
      identity, large = _ID[obj.color, obj.shape], obj.size == "large"
      short = min(scene.width, scene.height)
      crop.append((identity, large) + at_crop + (obj.radius, obj.radius))
      whole.append((identity, large) + at_whole
                   + (obj.radius * short / scene.width, obj.radius * short / scene.height))
    labels.append(crop)
    half_labels.append(whole)
    backgrounds.append(BACKGROUND_WORDS.index(scene.background.word))
    rng = np.random.default_rng([seed, toyworld.PRETRAIN_CAPTIONS, index])
    sentences.append([captions.render(st)[0] for st in captions.describe_scene(scene, rng)])
  return SceneSet(np.stack(singles), np.stack(halves), aspect, labels, half_labels,
                  np.asarray(backgrounds), sentences)


def _targets(objects: list[tuple], backgrounds: list[int]) -> tuple[np.ndarray, np.ndarray]:
  """(targets, weights) float32 (_HEAD,) for one view; an identity seen twice in a pair has no
  place or size (weight 0): the view does not say which one is meant."""
  target = np.zeros(_HEAD, np.float32)
  weight = np.zeros(_HEAD, np.float32)
  weight[:_NUM] = 1.0
  counts = np.bincount([o[0] for o in objects], minlength=_NUM)
  for identity, large, x, y, *_ in objects:
    target[identity] = 1.0
    if counts[identity] == 1:
      for block, value in ((1, float(large)), (2, x), (3, y)):
        target[block * _NUM + identity] = value
        weight[block * _NUM + identity] = 1.0 if block == 1 else POSITION_WEIGHT
  target[_BACKGROUNDS + np.asarray(backgrounds)] = 1.0
  ids = np.asarray([o[0] for o in objects])
  target[_COLORS + ids // len(SHAPES)] = 1.0
  target[_SHAPES + ids % len(SHAPES)] = 1.0
  weight[_BACKGROUNDS:] = 1.0
  return target, weight


def _pair_objects(data: SceneSet, first: int, second: int) -> list[tuple]:
  """Both scenes' objects at their place in the pair: stacked (wider) or side by side."""
  placed = []
  for slot, index in enumerate((first, second)):
    for identity, large, x, y, rx, ry in data.half_labels[index]:
      if data.aspect == images_lib.HIGHER:
        placed.append((identity, large, (x + slot) / 2, y, rx / 2, ry))
      else:
        placed.append((identity, large, x, (y + slot) / 2, rx, ry / 2))
  return placed


def patch_labels(objects: list[tuple], grid: int) -> np.ndarray:
  """int32 (grid*grid,): the identity of the object each patch shows, _NUM for none. A patch
  shows an object when its centre lies inside the object's disk (an ellipse in a squashed half),
  or the object's centre lies inside the patch (so a small object is never missed)."""
  centres = (np.arange(grid) + 0.5) / grid
  px, py = np.meshgrid(centres, centres)              # row-major patches, like the ViT's
  labels = np.full((grid, grid), _NUM, np.int32)
  for identity, _, x, y, rx, ry in sorted(objects, key=lambda o: -o[4] * o[5]):  # small on top
    labels[((px - x) / rx) ** 2 + ((py - y) / ry) ** 2 <= 1.0] = identity
    labels[min(int(y * grid), grid - 1), min(int(x * grid), grid - 1)] = identity
  return labels.reshape(-1)


def vision_batch(data: SceneSet, rng: np.random.Generator, batch: int, num_pairs: int,
                 grid: int):
  """uint8 views (batch, S, S, 3), image targets and weights, and patch labels (batch, grid^2):
  single images, then num_pairs pairs."""
  n = len(data.singles)
  singles = rng.integers(n, size=batch - num_pairs)
  pairs = rng.integers(n, size=(num_pairs, 2))
  views, objects, backgrounds = [], [], []
  for i in singles:
    views.append(data.singles[i])
    objects.append(data.labels[i])
    backgrounds.append([data.backgrounds[i]])
  for a, b in pairs:
    views.append(_concat(data.halves[a], data.halves[b], data.aspect))
    objects.append(_pair_objects(data, a, b))
    backgrounds.append([data.backgrounds[a], data.backgrounds[b]])
  targets, weights = zip(*(_targets(o, bg) for o, bg in zip(objects, backgrounds)))
  patches = np.stack([patch_labels(o, grid) for o in objects])
  return np.stack(views), np.stack(targets), np.stack(weights), patches


def _concat(first: np.ndarray, second: np.ndarray, aspect: str) -> np.ndarray:
  return np.concatenate([first, second], axis=1 if aspect == images_lib.HIGHER else 0)


# ------------------------------------------------------------------------------------------------
# Stage 1: the image tower.


def _head_loss(outputs, targets, weights):
  """Binary cross-entropy on presence, size, backgrounds, colours and shapes; squared error on
  positions (weights hold POSITION_WEIGHT there, and 0 for what a view does not say)."""
  is_position = np.zeros(_HEAD, bool)
  is_position[2 * _NUM:4 * _NUM] = True
  bce = optax.sigmoid_binary_cross_entropy(outputs, targets)
  squared = jnp.square(outputs - targets)
  per_output = jnp.where(is_position, squared, bce) * weights
  return jnp.sum(per_output) / outputs.shape[0]


def train_vision(model, params, data: SceneSet, settings: PretrainSettings) -> tuple[dict, dict]:
  """Trains params["visual"] with linear heads on the image embedding (structure labels) and on
  the patch tokens (the identity each patch shows); returns (params, stats)."""
  scale, offset = (jnp.asarray(v) for v in images_lib.normalization_constants("clip"))
  dim, width = model.cfg.embed_dim, model.cfg.vision.width
  key, patch_key = jax.random.split(jax.random.key(settings.seed + 1))
  head = {"kernel": jax.random.normal(key, (dim, _HEAD), jnp.float32) * dim ** -0.5,
          "bias": jnp.zeros((_HEAD,), jnp.float32)}
  patch_head = {"kernel": jax.random.normal(patch_key, (width, _NUM + 1)) * width ** -0.5,
                "bias": jnp.zeros((_NUM + 1,), jnp.float32)}
  trainable = {"visual": params["visual"], "head": head, "patch_head": patch_head}
  tx = opt_lib.make_optimizer(trainable, total_steps=settings.vision_steps, lr=settings.vision_lr,
                              lr_start=settings.vision_lr / 100, lr_end=settings.vision_lr / 100,
                              warmup_fraction=0.05, weight_decay=settings.weight_decay)

  def loss_fn(trainable, views, targets, weights, patches):
    pixels = views.astype(jnp.float32) * scale + offset
    emb, tokens = model.apply({"params": dict(params, visual=trainable["visual"])}, pixels,
                              method="encode_image_patches")
    outputs = emb @ trainable["head"]["kernel"] + trainable["head"]["bias"]
    patch_logits = tokens @ trainable["patch_head"]["kernel"] + trainable["patch_head"]["bias"]
    dense = optax.softmax_cross_entropy_with_integer_labels(patch_logits, patches)
    return _head_loss(outputs, targets, weights) + jnp.mean(jnp.sum(dense, axis=-1))

  @jax.jit
  def step(trainable, opt_state, views, targets, weights, patches):
    loss, grads = jax.value_and_grad(loss_fn)(trainable, views, targets, weights, patches)
    updates, opt_state = tx.update(grads, opt_state, trainable)
    return optax.apply_updates(trainable, updates), opt_state, loss

  opt_state = tx.init(trainable)
  rng = np.random.default_rng([settings.seed, 1])
  history = []
  for i in range(settings.vision_steps):
    views = vision_batch(data, rng, settings.vision_batch,
                         int(settings.vision_batch * settings.pair_fraction), model.cfg.vision.grid)
    trainable, opt_state, loss = step(trainable, opt_state, *views)
    if (i + 1) % 100 == 0 or i + 1 == settings.vision_steps:
      history.append((i + 1, float(loss)))
      log.info("pretraining the image tower: step %d/%d, structure loss %.4f", i + 1,
               settings.vision_steps, float(loss))
  return dict(params, visual=trainable["visual"]), {"vision_loss": history}


# ------------------------------------------------------------------------------------------------
# Stage 2: the text tower against the locked image tower.


def embed_views(model, params, views: np.ndarray, batch: int = 256) -> np.ndarray:
  scale, offset = images_lib.normalization_constants("clip")
  encode = jax.jit(lambda p, x: model.apply({"params": p}, x, method="encode_image"))
  out = [np.asarray(encode(params, views[i:i + batch].astype(np.float32) * scale + offset))
         for i in range(0, len(views), batch)]
  return np.asarray(losses.l2_normalize(np.concatenate(out)))


def train_text(model, params, data: SceneSet, settings: PretrainSettings,
               on_checkpoint: Callable[[int, dict], None] | None = None,
               checkpoints: Sequence[int] = ()) -> tuple[dict, dict]:
  """CLIP loss between random true sentences and the frozen image embeddings (LiT).
  on_checkpoint(step, params) is called after each step in `checkpoints` (experiments measure
  the text tower along the way: experiments/text_alignment.py)."""
  from clic_jax import tokenizer
  image_emb = embed_views(model, params, data.singles)
  # Every scene's sentences in one token array: scene i's rows are starts[i] .. + counts[i].
  tokens = tokenizer.tokenize([s for row in data.sentences for s in row],
                              context_length=settings.context_length)
  counts = np.asarray([len(row) for row in data.sentences])
  starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
  text = {k: v for k, v in params.items() if k != "visual"}
  tx = opt_lib.make_optimizer(text, total_steps=settings.text_steps, lr=settings.text_lr,
                              lr_start=settings.text_lr / 100, lr_end=settings.text_lr / 100,
                              warmup_fraction=0.05, weight_decay=settings.weight_decay)

  def loss_fn(text, image, tok):
    emb = model.apply({"params": dict(text, visual=params["visual"])}, tok, method="encode_text")
    return losses.clip_loss(image, losses.l2_normalize(emb), jnp.exp(text["logit_scale"]))

  @jax.jit
  def step(text, opt_state, image, tok):
    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(text, image, tok)
    updates, opt_state = tx.update(grads, opt_state, text)
    text = opt_lib.clamp_logit_scale(optax.apply_updates(text, updates))
    return text, opt_state, loss, metrics["accuracy"]

  opt_state = tx.init(text)
  rng = np.random.default_rng([settings.seed, 2])
  order, cursor, history = rng.permutation(len(counts)), 0, []
  for i in range(settings.text_steps):
    if cursor + settings.text_batch > len(order):
      order, cursor = rng.permutation(len(counts)), 0
    chosen = order[cursor:cursor + settings.text_batch]
    cursor += settings.text_batch
    rows = starts[chosen] + rng.integers(counts[chosen])     # one random true sentence each
    text, opt_state, loss, accuracy = step(text, opt_state, image_emb[chosen], tokens[rows])
    if on_checkpoint is not None and i + 1 in checkpoints:
      on_checkpoint(i + 1, dict(text, visual=params["visual"]))
    if (i + 1) % 100 == 0 or i + 1 == settings.text_steps:
      history.append((i + 1, float(loss), float(accuracy)))
      log.info("aligning the text tower: step %d/%d, CLIP loss %.4f, in-batch accuracy %.1f%%",
               i + 1, settings.text_steps, float(loss), float(accuracy))
  return dict(text, visual=params["visual"]), {"text_loss_accuracy": history}


# ------------------------------------------------------------------------------------------------
# The whole recipe, cached in its output folder.


def _matching_tower(folder: Path, key: dict) -> tuple[Path, dict] | None:
  """(weights, report) of a tower in `folder` (NAME.npz beside NAME.json) made with `key`."""
  for report in sorted(folder.glob("*.json")):
    saved = json.loads(report.read_text())
    if {k: saved.get(k) for k in key} == key and report.with_suffix(".npz").is_file():
      return report.with_suffix(".npz"), saved
  return None


def _load_tower(weights: Path) -> dict:
  with np.load(weights) as arrays:
    flat = {tuple(k.split("/")): jnp.asarray(arrays[k], jnp.float32) for k in arrays}
  return traverse_util.unflatten_dict(flat)


def _cached_vision_stage(out_dir: Path, key: dict, train: Callable[[], tuple[dict, dict]],
                        params: dict) -> tuple[dict, dict]:
  """(params with the trained image tower, its stats). The image tower is the expensive stage
  (24 of the recipe's 25 minutes on a 2-core CPU), so it comes, in this order, from
  OUT/vision_tower.npz when that was made with the same image-tower settings and world; from the
  tower shipped with clic_jax for the demo's settings (SHIPPED_TOWERS); else it is trained and
  saved to OUT/vision_tower.npz."""
  weights, report = out_dir / "vision_tower.npz", out_dir / "vision_tower.json"
  for folder, where in ((out_dir, "cached"), (SHIPPED_TOWERS, "shipped with clic_jax")):
    found = _matching_tower(folder, key) if folder.is_dir() else None
    if found is not None:
      log.info("using the pretrained image tower %s (%s)", found[0], where)
      return dict(params, visual=_load_tower(found[0])), found[1]["stats"]
  log.info("training the image tower (%d steps; a cached or shipped tower does not match these "
           "settings)", key["settings"]["vision_steps"])
  params, stats = train()
  flat = traverse_util.flatten_dict(jax.device_get(params["visual"]), sep="/")
  np.savez(weights.with_suffix(".tmp.npz"), **{k: np.asarray(v) for k, v in flat.items()})
  weights.with_suffix(".tmp.npz").replace(weights)
  report.write_text(json.dumps(dict(key, stats=stats), indent=1))
  return params, stats


def image_tower_stage(world: dict[str, str], out_dir: str | os.PathLike,
                      settings: PretrainSettings) -> tuple[Any, dict, SceneSet, dict]:
  """(model, params with the trained image tower and a fresh text tower, the corpus, the image
  tower's stats): everything the text stage starts from. The image tower comes from
  OUT/vision_tower.npz when that was made with the same settings and world."""
  out_dir = Path(out_dir)
  with open(world["manifest"], encoding="utf-8") as f:
    world_config = json.load(f)["config"]
  model = models.build_model(models.get_model_config(settings.model))
  params = models.init_params(model, settings.seed)
  data = build_corpus(world, settings.corpus_scenes, model.cfg.vision.image_size, settings.seed)
  out_dir.mkdir(parents=True, exist_ok=True)
  params, stats = _cached_vision_stage(
      out_dir, {"settings": settings.vision_stage(), "world": world_config},
      lambda: train_vision(model, params, data, settings), params)
  return model, params, data, stats


def pretrain(world: dict[str, str], out_dir: str | os.PathLike,
             settings: PretrainSettings = PretrainSettings()) -> Path:
  """Builds the pretrained model (or reuses a finished one made with the same settings and
  world) and returns its open_clip export folder, OUT/open_clip."""
  from clic_jax.interop import export_open_clip
  out_dir = Path(out_dir)
  export = out_dir / "open_clip"
  report_path = out_dir / "pretraining.json"
  with open(world["manifest"], encoding="utf-8") as f:
    world_config = json.load(f)["config"]
  wanted = {"settings": dataclasses.asdict(settings), "world": world_config}
  if report_path.is_file():
    report = json.loads(report_path.read_text())
    same = {k: report.get(k) for k in wanted} == wanted
    if same and (export / "open_clip_config.json").is_file():
      log.info("reusing the pretrained model in %s", out_dir)
      return export
  start = time.perf_counter()
  model, params, data, vision_stats = image_tower_stage(world, out_dir, settings)
  params, text_stats = train_text(model, params, data, settings)
  export_open_clip(model.cfg, jax.device_get(params), export)
  report = dict(wanted, **vision_stats, **text_stats,
                logit_scale=float(np.exp(params["logit_scale"])),
                seconds=round(time.perf_counter() - start, 1))
  report_path.write_text(json.dumps(report, indent=1))
  return export


def main(argv=None) -> None:
  import argparse
  from clic_jax.data.toyworld import world_paths
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--world", required=True, help="a toy world made by generate_world")
  parser.add_argument("--out", required=True)
  for field in dataclasses.fields(PretrainSettings):
    parser.add_argument(f"--{field.name}", type=type(field.default), default=field.default)
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
  settings = PretrainSettings(**{f.name: getattr(args, f.name)
                                 for f in dataclasses.fields(PretrainSettings)})
  print(pretrain(world_paths(args.world), args.out, settings))


if __name__ == "__main__":
  main()
