"""Export a training checkpoint as open_clip weights, or in Hugging Face transformers' CLIP format.

  python -m clic_jax.export --workdir=runs/b32 --out=clic_b32.safetensors
  python -m clic_jax.export --workdir=runs/b32 --out_dir=clic_b32/     # + open_clip_config.json
  python -m clic_jax.export --workdir=runs/b32 --out_dir=clic_b32_hf/ --format=transformers

Load the file with open_clip:
  open_clip.create_model("ViT-B-32-quickgelu", pretrained="clic_b32.safetensors")
and a directory with open_clip.create_model("local-dir:clic_b32/") (or push it to the Hugging Face
hub and use "hf-hub:ORG/REPO"). A transformers directory loads with
transformers.CLIPModel.from_pretrained("clic_b32_hf/") (or CLIPVisionModel, as LLaVA loads its
vision tower); only OpenAI-style architectures have that format.
"""
from __future__ import annotations

import sys

from absl import app, flags

_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir (holds checkpoints/, model.json).")
_OUT = flags.DEFINE_string("out", None, "Output .safetensors file.")
_OUT_DIR = flags.DEFINE_string("out_dir", None, "Output directory: weights + open_clip_config.json.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step to export (default: the latest).")
_FORMAT = flags.DEFINE_enum("format", "open_clip", ["open_clip", "transformers"],
                            "open_clip weights, or a transformers CLIPModel directory (--out_dir).")


def export_workdir(workdir: str, out: str, step: int | None = None,
                   fmt: str = "open_clip") -> str:
  from clic_jax import interop
  from clic_jax.train.checkpoint import load_params_for_eval, read_model_info
  name, cfg = read_model_info(workdir)
  _, params = load_params_for_eval(workdir, step)
  export = interop.export_open_clip if fmt == "open_clip" else interop.export_transformers
  path = export(cfg, params, out)
  return f"{path} ({name}, {fmt} format)"


def main(argv):
  del argv
  if not _WORKDIR.value or bool(_OUT.value) == bool(_OUT_DIR.value):
    sys.exit("usage: python -m clic_jax.export --workdir=DIR (--out=FILE.safetensors | --out_dir=DIR)")
  if _OUT.value and not _OUT.value.endswith(".safetensors"):
    sys.exit(f"--out={_OUT.value!r} must end in .safetensors (use --out_dir for a directory)")
  if _FORMAT.value == "transformers" and not _OUT_DIR.value:
    sys.exit("--format=transformers writes a directory: use --out_dir=DIR")
  from clic_jax.interop.transformers_format import NoTransformersTwinError
  try:
    written = export_workdir(_WORKDIR.value, _OUT.value or _OUT_DIR.value, _STEP.value,
                             _FORMAT.value)
  except (FileNotFoundError, NoTransformersTwinError) as e:
    sys.exit(f"error: {e}")
  print(f"wrote {written}")


if __name__ == "__main__":
  app.run(main)
