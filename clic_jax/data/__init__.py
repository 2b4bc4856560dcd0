"""Input data for CLIC: sources, dataset preparation, image pairs, caption variants, POS tagging.

One sample's path: a reader (a record) -> pipeline (partner, view for the step kind) -> images
(decode, resize, concatenate) + captions (variants, hard negative) -> tokenizer -> batch.

Text side (no heavy imports, usable without jax):
  sentences    long caption -> filtered sentences, like the reference's dataset script
               (docs/method.md, "Sentence splitting")
  pos_tagging  coarse Universal POS tags: spaCy when a pipeline is installed, else an offline lexicon
  captions     caption variants p1..pK and hard negatives (docs/method.md, "Samples")
Image and record side:
  sources      a source kind -> its reader (SOURCE_KINDS), exactly one source per run
  records      what every reader gives: the record dict, aspect codes, shared helpers
  csv_source, arrayrecord_source, webdataset_source, tfds_source
               the readers: reference CSV, prepared ArrayRecord shards, webdataset tar shards
               (random access through a member index), TFDS ArrayRecord datasets
  images       decoding (odd modes, truncated files), half-image resize, concatenation, CLIP view
  pipeline     the grain training pipeline: host slices, shuffle, partner index, batches per kind
  url_tables   caption tables read row by row: URL lists (CogVLM CSV, PixelProse parquet), CSVs
  caption_prep `python -m clic_jax.data.caption_prep`: long captions -> the reference CSV
  download     `python -m clic_jax.data.download`: URL list -> webdataset shards (img2dataset)
  work_shares  --shard_index/--num_shards: one machine's part of a data job
  prepare      `python -m clic_jax.data.prepare`: CSV + images, or shards -> ArrayRecord with tags
  preview      `python -m clic_jax.data.preview`: contact sheet + samples.json of training samples
  stats        counters of skips and fallbacks
  toyworld/    the procedural compositional world of the offline demo
"""
