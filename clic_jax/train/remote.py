"""Files for a remote workdir (gs://..., s3://...), which cannot be appended to.

Checkpoints go there through orbax. Metrics, TensorBoard events and the final export are written
to a local folder first and copied up whole: by the metrics writer every minute or so and when it
closes, by the trainer once after the export. etils.epath is orbax's own path type, so these
copies use the same backends and credentials as the checkpoints.
"""
from __future__ import annotations

from pathlib import Path

from etils import epath


def is_remote(path) -> bool:
  return "://" in str(path)


def join(remote: str, *parts: str) -> str:
  return "/".join([str(remote).rstrip("/"), *parts])


def download_if_exists(remote: str, local: Path) -> bool:
  """Copies a remote file down (e.g. the metrics of the run being resumed); False if absent."""
  source = epath.Path(remote)
  if not source.exists():
    return False
  local.parent.mkdir(parents=True, exist_ok=True)
  local.write_bytes(source.read_bytes())
  return True


def upload_tree(local: Path, remote: str) -> int:
  """Copies every file under `local` to the same relative path under `remote`; returns the count.

  Whole files, overwritten: object stores replace an object in one step, so a reader sees the
  previous copy or the new one, never half of one.
  """
  count = 0
  for path in sorted(p for p in Path(local).rglob("*") if p.is_file()):
    target = epath.Path(join(remote, *path.relative_to(local).parts))
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(path.read_bytes())
    count += 1
  return count
