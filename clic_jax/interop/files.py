"""Reading and writing open_clip state dicts: safetensors, torch .bin/.pt/.pth, .npz, dicts."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors",
                "open_clip_pytorch_model.bin", "open_clip_pytorch_model.pth", "model.safetensors",
                "pytorch_model.bin", "pytorch_model.pth", "model.pth")
CONFIG_FILE = "open_clip_config.json"


def _to_numpy(value: Any) -> np.ndarray:
  if hasattr(value, "detach"):                  # a torch tensor; bf16/fp16 have no numpy twin
    return value.detach().float().cpu().numpy()
  return np.asarray(value)


def _strip_wrappers(sd: Mapping[str, Any]) -> dict[str, Any]:
  """Unwraps {"state_dict": ...} and the `module.` (DDP) / `model.` prefixes of training code."""
  if "state_dict" in sd and isinstance(sd["state_dict"], Mapping):
    sd = sd["state_dict"]
  sd = dict(sd)
  for prefix in ("module.", "model."):          # CLIC's reference saves `module.model.*`
    if sd and all(k.startswith(prefix) for k in sd):
      sd = {k[len(prefix):]: v for k, v in sd.items()}
  return sd


def _read_torch(path: Path) -> Mapping[str, Any]:
  try:
    import torch
  except ImportError as e:
    raise ImportError(f"Reading {path} needs PyTorch (`pip install torch`); safetensors files "
                      "load without it.") from e
  try:
    return torch.load(path, map_location="cpu", weights_only=True)
  except RuntimeError as e:
    if "TorchScript" not in str(e) and "constants.pkl" not in str(e):
      raise
    return torch.jit.load(path, map_location="cpu").state_dict()   # OpenAI's original archives


def read_state_dict(source: str | os.PathLike | Mapping[str, Any]) -> dict[str, np.ndarray]:
  """An open_clip state dict as float32-or-native numpy arrays, from a file or a mapping."""
  if isinstance(source, Mapping):
    raw = source
  else:
    path = Path(source)
    if not path.is_file():
      raise FileNotFoundError(f"Weights file {path} does not exist.")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
      from safetensors import safe_open
      try:
        with safe_open(str(path), framework="numpy") as f:
          raw = {k: f.get_tensor(k) for k in f.keys()}
      except (TypeError, ValueError):            # bfloat16 tensors: numpy has no dtype for them
        with safe_open(str(path), framework="pt") as f:
          raw = {k: f.get_tensor(k) for k in f.keys()}
    elif suffix == ".npz":
      with np.load(path) as f:
        raw = dict(f)
    elif suffix in (".bin", ".pt", ".pth", ".ckpt"):
      raw = _read_torch(path)
    else:
      raise ValueError(f"Unknown weights format {path.name!r}: expected .safetensors, .bin, .pt, "
                       ".pth or .npz")
  return {k: _to_numpy(v) for k, v in _strip_wrappers(raw).items()}


def find_weights_in_dir(directory: Path) -> Path:
  for name in WEIGHT_FILES:
    if (directory / name).is_file():
      return directory / name
  candidates = sorted(directory.glob("*.safetensors")) + sorted(directory.glob("*.bin"))
  if not candidates:
    raise FileNotFoundError(f"No weights in {directory}: expected one of {', '.join(WEIGHT_FILES)}")
  return candidates[0]


def read_open_clip_config(path: Path) -> dict:
  if not path.is_file():
    raise FileNotFoundError(f"{path} does not exist; a 'local-dir:'/'hf-hub:' model needs "
                            f"{CONFIG_FILE} beside its weights.")
  with open(path, encoding="utf-8") as f:
    config = json.load(f)
  if "model_cfg" not in config:
    raise ValueError(f"{path} has no 'model_cfg' entry (keys: {sorted(config)}).")
  return config


def write_safetensors(state_dict: Mapping[str, np.ndarray], path: str | os.PathLike,
                      metadata: Mapping[str, str] | None = None) -> None:
  from safetensors.numpy import save_file
  Path(path).parent.mkdir(parents=True, exist_ok=True)
  tmp = Path(str(path) + ".tmp")
  save_file({k: np.array(v, np.float32, order="C") for k, v in state_dict.items()}, str(tmp),
            metadata=dict(metadata or {"format": "pt"}))
  os.replace(tmp, path)                          # never leave a half-written file under the name
