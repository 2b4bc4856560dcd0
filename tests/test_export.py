"""`python -m clic_jax.export`: a training checkpoint -> open_clip weights with the same embeddings."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import open_clip
import pytest
import torch

from clic_jax import models
from clic_jax.train import checkpoint as ckpt_lib
from clic_jax.train import optimizer as opt_lib
from clic_jax.train import step as step_lib


def _fake_workdir(workdir, seed=5):
  """A workdir as training leaves it: model.json and an orbax checkpoint of a train state."""
  model, params = models.create_model("tiny", seed=seed)
  tx = opt_lib.make_optimizer(params, total_steps=4, lr=1e-3, lr_start=1e-4, lr_end=1e-5,
                              warmup_fraction=0.0, freeze=("^visual/",))
  state = step_lib.create_state(params, tx, ("^visual/",))
  ckpt_lib.write_model_info(workdir, "tiny", model.cfg)
  saver = ckpt_lib.Checkpointer(workdir, use_async=False)
  saver.save(7, state)
  saver.close()
  return model, params


def _run_export(*args):
  return subprocess.run([sys.executable, "-m", "clic_jax.export", *args], capture_output=True,
                        text=True, timeout=300)


def test_export_cli_round_trips_to_open_clip(tmp_path):
  model, params = _fake_workdir(tmp_path / "wd")
  result = _run_export(f"--workdir={tmp_path / 'wd'}", f"--out_dir={tmp_path / 'out'}")
  assert result.returncode == 0, result.stderr
  tmodel = open_clip.create_model(f"local-dir:{tmp_path / 'out'}").eval()
  rng = np.random.default_rng(0)
  images = rng.standard_normal((2, 32, 32, 3)).astype(np.float32)
  tokens = open_clip.get_tokenizer("ViT-B-32")(["a red cube", "a blue ball left of it"])
  with torch.no_grad():
    t_img = tmodel.encode_image(torch.from_numpy(images.transpose(0, 3, 1, 2).copy())).numpy()
    t_txt = tmodel.encode_text(tokens).numpy()
  j_img = np.asarray(model.apply({"params": params}, images, method="encode_image"))
  j_txt = np.asarray(model.apply({"params": params}, tokens.numpy().astype(np.int32),
                                 method="encode_text"))
  for a, b in ((j_img, t_img), (j_txt, t_txt)):
    assert np.max(np.linalg.norm(a - b, axis=-1) / np.linalg.norm(b, axis=-1)) < 1e-4


@pytest.mark.parametrize("args,message", [
    (["--out=x.safetensors"], "usage"),
    (["--workdir=WD", "--out=model.bin"], "must end in .safetensors"),
    (["--workdir=MISSING", "--out=x.safetensors"], "not a clic_jax training workdir"),
])
def test_export_cli_errors(tmp_path, args, message):
  args = [a.replace("WD", str(tmp_path)).replace("MISSING", str(tmp_path / "none")) for a in args]
  result = _run_export(*args)
  assert result.returncode != 0 and message in result.stderr
