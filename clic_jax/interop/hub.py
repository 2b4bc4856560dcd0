"""Where weights come from: pretrained tags, `hf-hub:org/repo` and `local-dir:DIR` names.

The tag table holds facts from open_clip's pretrained registry (which Hugging Face repository holds
which weights and whether they need QuickGELU); downloads go through huggingface_hub, so its cache,
HF_HOME, HF_HUB_OFFLINE and tokens behave as users expect.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

HF_HUB_PREFIX, LOCAL_DIR_PREFIX = "hf-hub:", "local-dir:"
SAFE_WEIGHTS, TORCH_WEIGHTS = "open_clip_model.safetensors", "open_clip_pytorch_model.bin"


@dataclasses.dataclass(frozen=True)
class PretrainedTag:
  repo_id: str
  quick_gelu: bool = False


# (architecture without -quickgelu, tag) -> Hugging Face repository (open_clip's registry).
PRETRAINED: dict[tuple[str, str], PretrainedTag] = {
    ("ViT-B-32", "openai"): PretrainedTag("timm/vit_base_patch32_clip_224.openai", True),
    ("ViT-B-16", "openai"): PretrainedTag("timm/vit_base_patch16_clip_224.openai", True),
    ("ViT-L-14", "openai"): PretrainedTag("timm/vit_large_patch14_clip_224.openai", True),
    ("ViT-L-14-336", "openai"): PretrainedTag("timm/vit_large_patch14_clip_336.openai", True),
    ("ViT-B-32", "laion2b_s34b_b79k"): PretrainedTag("laion/CLIP-ViT-B-32-laion2B-s34B-b79K"),
    ("ViT-B-32", "datacomp_xl_s13b_b90k"): PretrainedTag("laion/CLIP-ViT-B-32-DataComp.XL-s13B-b90K"),
    ("ViT-B-16", "laion2b_s34b_b88k"): PretrainedTag("laion/CLIP-ViT-B-16-laion2B-s34B-b88K"),
    ("ViT-B-16", "datacomp_xl_s13b_b90k"): PretrainedTag("laion/CLIP-ViT-B-16-DataComp.XL-s13B-b90K"),
    ("ViT-L-14", "datacomp_xl_s13b_b90k"): PretrainedTag("laion/CLIP-ViT-L-14-DataComp.XL-s13B-b90K"),
    ("ViT-H-14", "laion2b_s32b_b79k"): PretrainedTag("laion/CLIP-ViT-H-14-laion2B-s32B-b79K"),
    ("ViT-bigG-14", "laion2b_s39b_b160k"): PretrainedTag("laion/CLIP-ViT-bigG-14-laion2B-39B-b160k"),
}
# UCSC-VLAA's CLIPA weights live in repositories named "<architecture>-<tag, final b as B>".
_CLIPA_TAGS = {"ViT-L-14-CLIPA": ("datacomp1b",), "ViT-L-14-CLIPA-336": ("datacomp1b",),
               "ViT-H-14-CLIPA": ("datacomp1b",), "ViT-H-14-CLIPA-336": ("laion2b", "datacomp1b"),
               "ViT-bigG-14-CLIPA": ("datacomp1b",), "ViT-bigG-14-CLIPA-336": ("datacomp1b",)}
PRETRAINED.update({(name, tag): PretrainedTag(f"UCSC-VLAA/{name}-{tag[:-1]}B")
                   for name, tags in _CLIPA_TAGS.items() for tag in tags})


def base_name(name: str) -> str:
  return name[: -len("-quickgelu")] if name.endswith("-quickgelu") else name


def find_tag(name: str, tag: str) -> PretrainedTag | None:
  return PRETRAINED.get((base_name(name), tag))


def tags_for(name: str) -> list[str]:
  return sorted(t for (n, t) in PRETRAINED if n == base_name(name))


def download(repo_id: str, filename: str, cache_dir: str | None = None) -> Path:
  """One file of a Hugging Face repository, through huggingface_hub's cache."""
  try:
    from huggingface_hub import hf_hub_download
  except ImportError as e:
    raise ImportError("Downloading weights needs `pip install huggingface_hub`.") from e
  return Path(hf_hub_download(repo_id=repo_id, filename=filename, cache_dir=cache_dir))


def download_weights(repo_id: str, cache_dir: str | None = None) -> Path:
  """The repository's open_clip weights, preferring safetensors like open_clip does."""
  errors = []
  for filename in (SAFE_WEIGHTS, TORCH_WEIGHTS):
    try:
      return download(repo_id, filename, cache_dir)
    except Exception as e:                       # noqa: BLE001 - report every attempt below
      errors.append(f"{filename}: {type(e).__name__}: {e}")
  raise FileNotFoundError(
      f"Could not get weights from Hugging Face repo {repo_id!r} (offline? set HF_HUB_OFFLINE=0 and "
      "check the network, or pass a local file). Tried:\n  " + "\n  ".join(errors))


def split_schema(name: str) -> tuple[str | None, str]:
  for prefix in (HF_HUB_PREFIX, LOCAL_DIR_PREFIX):
    if name.startswith(prefix):
      rest = name[len(prefix):]
      if not rest:
        raise ValueError(f"{name!r}: nothing after {prefix!r}")
      return prefix[:-1], rest
  return None, name


def config_file(schema: str, identifier: str, cache_dir: str | None = None) -> Path:
  """open_clip_config.json of an `hf-hub:` or `local-dir:` model (downloaded for hf-hub)."""
  from clic_jax.interop.files import CONFIG_FILE
  if schema == "local-dir":
    directory = Path(os.path.expanduser(identifier))
    if not directory.is_dir():
      raise FileNotFoundError(f"local-dir:{identifier}: {directory} is not a directory")
    if not (directory / CONFIG_FILE).is_file():
      raise FileNotFoundError(f"local-dir:{identifier} has no {CONFIG_FILE}; export with "
                              "clic_jax.export_open_clip(name, params, DIR) to write one.")
    return directory / CONFIG_FILE
  return download(identifier, CONFIG_FILE, cache_dir)


def resolve_repo_files(schema: str, identifier: str, cache_dir: str | None = None
                       ) -> tuple[Path, Path]:
  """(open_clip_config.json, weights file) of an `hf-hub:` or `local-dir:` model."""
  from clic_jax.interop.files import find_weights_in_dir
  config = config_file(schema, identifier, cache_dir)
  if schema == "local-dir":
    return config, find_weights_in_dir(config.parent)
  return config, download_weights(identifier, cache_dir)
