"""A Hugging Face cache laid out on disk exactly as huggingface_hub writes it, so the real
download code (hf_hub_download with HF_HUB_OFFLINE set) finds the files with no network."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def fake_hf_cache(cache: Path, repo_id: str, files: Mapping[str, Callable[[Path], object]],
                  repo_type: str = "model") -> Path:
  """Writes each file (name -> writer(path)) into the repository's snapshot; returns it."""
  repo = Path(cache) / f"{repo_type}s--{repo_id.replace('/', '--')}"
  (repo / "refs").mkdir(parents=True)
  (repo / "refs" / "main").write_text(COMMIT)
  snapshot = repo / "snapshots" / COMMIT
  for name, writer in files.items():
    (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
    writer(snapshot / name)
  return snapshot
