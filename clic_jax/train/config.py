"""Defaults of every training option: configs/*.py start from `default_config()` and override.

The defaults are the reference's main CLIC run (docs/method.md, "Default settings") with
clic_jax's decisions (docs/method.md, "Where clic_jax differs from the authors' code").
"""
from __future__ import annotations

import ml_collections


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.model = ml_collections.ConfigDict()
  c.model.name = "ViT-B-32-quickgelu"
  c.model.dtype = "auto"            # bfloat16 on accelerators, float32 on CPU; params stay float32
  c.model.remat = False             # rematerialize transformer blocks (large models, big batches)
  c.model.text_calls = "auto"       # caption sets: "batched" (one call), "separate" (one per set);
                                    # auto = batched (measured fastest on GPU and CPU)
  c.model.attention_impl = "auto"   # auto = "cudnn" (flash attention) on NVIDIA GPUs, else "xla"
  c.init_from = ""                  # open_clip weights: file, tag ("openai"), hf-hub:, local-dir:

  c.data = ml_collections.ConfigDict()
  c.data.csv = ""                   # reference CSV (no header): image path, sentence 1, 2, ...
  c.data.image_root = ""
  c.data.arrayrecord_dir = ""       # output of `python -m clic_jax.data.prepare`
  c.data.tfds_name = ""             # any TFDS image-caption dataset prepared as ArrayRecord
  c.data.tfds_data_dir = ""
  c.data.tfds_split = "train"
  # clic | negclip | baseline (docs/method.md, "Training variants")
  c.data.mode = "clic"
  c.data.num_extra_positives = 2    # p3, p4
  c.data.concat_image_norm = "clip"  # "imagenet" reproduces the reference's concatenated images
  c.data.num_threads = 0            # grain reader threads; 0: one per CPU core, plus one
  c.data.prefetch_batches = 0       # batches read ahead; 0: the pipeline's default
  c.data.mp_workers = 0
  c.data.pos_backend = "auto"
  c.data.image_dtype = "uint8"      # ship uint8, normalize on device ("float32": on the host)
  c.data.context_length = 77        # shorter only for short captions: text cost scales with it
  c.data.text_length_buckets = "32,48,64"  # cut each batch's token rows to the shortest of these
                                    # that holds its longest caption (exact; "" = always 77)

  c.global_batch_size = 800         # the reference: 4 GPUs x 200
  c.total_steps = 0                 # > 0 overrides num_epochs
  c.num_epochs = 1
  # 1: CLIC and CLIP steps alternate, CLIC first (docs/method.md, "Alternating steps")
  c.hard_negative_freq = 1.0
  c.alternate_with_clip = True
  c.step_kinds = ""                 # overrides the pattern: e.g. "clip" (plain CLIP fine-tuning)

  c.loss = ml_collections.ConfigDict()
  c.loss.cont = 0.5
  c.loss.sneg = 0.5
  c.loss.uni = 1.0
  c.loss.separate_negatives = True
  c.loss.mask_invalid_negatives = True   # leave out negatives the pipeline marked invalid (no swap
                                    # gave one unlike every positive); False: the reference (all)
  c.loss.hard_negative_sets = "all"  # the separate 2-way term over all positive sets (the paper),
                                    # or "minimal": over p1, p2 only (needs separate_negatives)

  c.optim = ml_collections.ConfigDict()
  c.optim.lr = 1e-6
  c.optim.lr_start = 1e-7
  c.optim.lr_end = 1e-8
  c.optim.warmup_fraction = 0.2
  c.optim.weight_decay = 0.1
  c.optim.b1 = 0.9
  c.optim.b2 = 0.98
  c.optim.eps = 1e-8
  c.optim.grad_accum_steps = 1
  c.optim.clip_grad_norm = 0.0      # 0: off, like the reference
  c.freeze = ("^visual/",)          # regexes on parameter paths; the reference freezes the ViT
  # False reproduces the reference, never clamped (docs/method.md, "Logit scale")
  c.clamp_logit_scale = True

  c.mesh = ml_collections.ConfigDict()
  c.mesh.fsdp = 1                   # > 1 shards params and optimizer state over that many devices

  c.log_every_steps = 10
  c.checkpoint_every_steps = 500
  c.keep_checkpoints = 3
  c.async_checkpointing = True
  c.tensorboard = True
  c.eval_every_steps = 0            # 0: no evaluation during training
  c.eval_batch_size = 256
  c.evals = ml_collections.ConfigDict()   # benchmark name -> its arguments (see clic_jax.evaluate)
  c.export_open_clip = True         # WORKDIR/open_clip/ at the end: open_clip weights + config
  c.debug_sigterm_at_step = 0       # tests: send ourselves SIGTERM after this step
  return c
