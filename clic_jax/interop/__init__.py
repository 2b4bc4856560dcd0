"""open_clip weight interop: load any open_clip CLIP checkpoint into Flax, and export back.

  model, params = load_open_clip("ViT-B-32-quickgelu", "openai")          # pretrained tag
  model, params = load_open_clip("ViT-B-16", "weights.safetensors")       # or .bin/.pt/.npz/dict
  model, params = load_open_clip("hf-hub:nmndeep/CLIC-ViT-B-32-224-CogVLM")  # config from the repo
  export_open_clip("ViT-B-32-quickgelu", params, "out.safetensors")       # or a directory
  export_transformers("ViT-B-32-quickgelu", params, "hf_dir/")    # transformers.CLIPModel format
  model, params = load_transformers("hf_dir/")
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any, Mapping

from clic_jax.interop import hub
from clic_jax.interop.convert import (CheckpointMismatchError, params_to_state_dict,
                                      state_dict_to_params)
from clic_jax.interop.files import (CONFIG_FILE, read_open_clip_config, read_state_dict,
                                    write_safetensors)
from clic_jax.interop.transformers_format import export_transformers, load_transformers
from clic_jax.models import (ClipConfig, build_model, config_from_open_clip, config_to_open_clip,
                             get_model_config)
from clic_jax.models.registry import preprocess_for



def resolve(name: str | ClipConfig | None, source: Any = None, cache_dir: str | None = None
            ) -> tuple[ClipConfig, Any]:
  """Architecture and state-dict source for any accepted (name, source) pair."""
  for candidate in (name, source):
    if isinstance(candidate, str):
      schema, identifier = hub.split_schema(candidate)
      if schema:
        config_path, weights = hub.resolve_repo_files(schema, identifier, cache_dir)
        cfg = config_from_open_clip(read_open_clip_config(config_path))
        if candidate is source and name is not None and isinstance(name, str):
          named = get_model_config(name)
          if named != cfg:
            raise CheckpointMismatchError(f"{source} describes a different architecture than "
                                          f"{name!r}: {cfg} vs {named}")
        return cfg, weights
  if name is None:
    raise ValueError("A model name is needed unless the source is 'hf-hub:...' or 'local-dir:...'")
  cfg = get_model_config(name)
  if source is None:
    raise ValueError(f"No weights given for {name!r}: pass a file, a dict or a pretrained tag "
                     f"({', '.join(hub.tags_for(str(name))) or 'none known'}).")
  if isinstance(source, Mapping):
    return cfg, source
  path = Path(os.path.expanduser(str(source)))
  if path.is_dir():
    return resolve(None, f"{hub.LOCAL_DIR_PREFIX}{path}", cache_dir)
  if path.is_file():
    return cfg, path
  tag = hub.find_tag(str(name), str(source))
  if tag is None:
    raise FileNotFoundError(
        f"{source!r} is neither a weights file nor a pretrained tag of {name!r} (known tags: "
        f"{', '.join(hub.tags_for(str(name))) or 'none'}).")
  if tag.quick_gelu != cfg.quick_gelu:
    warnings.warn(f"Pretrained '{source}' was trained with quick_gelu={tag.quick_gelu} but {name!r} "
                  f"uses quick_gelu={cfg.quick_gelu}; embeddings will be off. Use "
                  f"'{hub.base_name(str(name))}{'-quickgelu' if tag.quick_gelu else ''}'.")
  return cfg, hub.download_weights(tag.repo_id, cache_dir)


def load_open_clip(name: str | ClipConfig | None, source: Any = None, *, cache_dir: str | None = None,
                   **model_kwargs):
  """Returns (model, params) with open_clip weights; see the module docstring for sources."""
  cfg, weights = resolve(name, source, cache_dir)
  params = state_dict_to_params(read_state_dict(weights), cfg)
  return build_model(cfg, **model_kwargs), params


def preprocess_config(name: str, cache_dir: str | None = None) -> dict:
  """The image preprocessing of a model (open_clip's preprocess_cfg: mean, std, interpolation,
  resize_mode): an 'hf-hub:'/'local-dir:' model's own, else the registry's for that name."""
  schema, identifier = hub.split_schema(name)
  if schema is None:
    return preprocess_for(name)
  config = read_open_clip_config(hub.config_file(schema, identifier, cache_dir))
  return {**preprocess_for(""), **config.get("preprocess_cfg", {})}


def export_open_clip(name: str | ClipConfig, params: Mapping, path: str | os.PathLike,
                     preprocess: Mapping | None = None) -> Path:
  """Writes fp32 open_clip weights.

  A path ending in .safetensors gets the file only (load with
  `open_clip.create_model(name, pretrained=path)`); any other path is a directory with
  open_clip_model.safetensors and open_clip_config.json (load with `local-dir:DIR` or push to the
  Hugging Face hub and load with `hf-hub:`); a model with a Hugging Face tokenizer (CLIPA, CLIPS)
  also gets its tokenizer files there. `preprocess` is the preprocess_cfg written beside the
  config (default: the registry's for a model name, OpenAI CLIP's for a ClipConfig).
  """
  cfg = get_model_config(name)
  state_dict = params_to_state_dict(params, name)
  path = Path(path)
  if path.suffix == ".safetensors":
    write_safetensors(state_dict, path)
    return path
  path.mkdir(parents=True, exist_ok=True)
  write_safetensors(state_dict, path / hub.SAFE_WEIGHTS)
  if preprocess is None:
    preprocess = preprocess_for(name if isinstance(name, str) else "")
  preprocess = {k: list(v) if isinstance(v, tuple) else v for k, v in preprocess.items()}
  config = {"model_cfg": config_to_open_clip(cfg), "preprocess_cfg": preprocess}
  (path / CONFIG_FILE).write_text(json.dumps(config, indent=2))
  if cfg.text.hf_tokenizer_name:
    _write_tokenizer_files(cfg, path)
  return path


def _write_tokenizer_files(cfg: ClipConfig, directory: Path) -> None:
  """open_clip's local-dir (and clic_jax.get_tokenizer) read a Hugging Face tokenizer's files from
  the model directory itself, so they are copied there (from the hub cache or a local folder)."""
  from clic_jax.model_tokenizer import tokenizer_for_config
  try:
    tokenizer_for_config(cfg).save(directory)
  except (OSError, ImportError) as e:
    warnings.warn(f"{directory} has no tokenizer files: could not get {cfg.text.hf_tokenizer_name!r}"
                  f" ({e}). Copy its tokenizer.json/vocab.txt and tokenizer_config.json there "
                  "before loading it with 'local-dir:'.")


__all__ = ["CheckpointMismatchError", "export_open_clip", "export_transformers", "load_open_clip",
           "load_transformers", "params_to_state_dict", "preprocess_config", "read_state_dict",
           "resolve", "state_dict_to_params"]
