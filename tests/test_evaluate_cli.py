"""`python -m clic_jax.evaluate` end to end on generated fixtures, on 4 fake CPU devices."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from clic_jax.evaluate import Embedder, evaluate
from clic_jax.interop import export_open_clip
from clic_jax.models import create_model

sys.path.insert(0, os.path.dirname(__file__))
from test_evaluate_benchmarks import write_fixtures  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cli(*args, devices: int = 1) -> subprocess.CompletedProcess:
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  return subprocess.run([sys.executable, "-m", "clic_jax.evaluate", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)


def _rounded(tree):
  """Nested results with floats rounded, for an exact comparison of metric fractions."""
  if isinstance(tree, dict):
    return {k: _rounded(v) for k, v in tree.items()}
  return round(tree, 9) if isinstance(tree, float) else tree


def test_help_lists_the_flags():
  out = _cli("--help")        # absl prints the help and exits (with status 1, absl's choice)
  assert "Evaluates a clic_jax training workdir" in out.stdout, out.stderr
  for flag in ("--workdir", "--open_clip", "--benchmarks", "--sugarcrepe_dir", "--coco_dir",
               "--winoground_dir", "--imagenet_dir", "--retrieval_json", "--on_missing"):
    assert flag in out.stdout


def test_missing_data_flag_is_a_usage_error():
  out = _cli("--open_clip=x.safetensors", "--model=tiny", "--benchmarks=sugarcrepe")
  assert out.returncode != 0
  assert "needs --sugarcrepe_dir, --coco_dir" in out.stderr


def test_cli_writes_json_equal_to_the_python_api(tmp_path):
  paths = write_fixtures(tmp_path / "data")
  model, params = create_model("tiny", seed=0)
  export_dir = export_open_clip("tiny", params, str(tmp_path / "export"))   # local-dir layout
  out_file = tmp_path / "results" / "eval.json"
  run = _cli(f"--open_clip=local-dir:{export_dir}",
             "--benchmarks=sugarcrepe,sugarcrepe_pp,winoground,retrieval,classification",
             f"--sugarcrepe_dir={paths['sugarcrepe']}",
             f"--sugarcrepe_pp_dir={paths['sugarcrepe_pp']}",
             f"--coco_dir={paths['coco']}", f"--winoground_dir={paths['winoground']}",
             f"--retrieval_json={paths['retrieval_json']}",
             f"--retrieval_image_root={paths['retrieval_root']}",
             f"--classification_dir={paths['classes']}", f"--classnames_file={paths['classnames']}",
             f"--templates_file={paths['templates']}",
             "--batch_size=6", f"--out={out_file}", devices=4)
  assert run.returncode == 0, run.stderr[-3000:]
  assert "sugarcrepe_pp" in run.stdout and "image_to_text_R@1" in run.stdout   # the table
  got = json.loads(out_file.read_text())

  # Same numbers from the Python API on one device with another batch size.
  expected = evaluate(model, params, {
      "sugarcrepe": {"data_dir": paths["sugarcrepe"], "coco_dir": paths["coco"]},
      "sugarcrepe_pp": {"data_dir": paths["sugarcrepe_pp"], "coco_dir": paths["coco"]},
      "winoground": {"data_dir": paths["winoground"]},
      "retrieval": {"annotation_file": paths["retrieval_json"],
                    "image_root": paths["retrieval_root"]},
      "classification": {"data_dir": paths["classes"], "classnames": paths["classnames"],
                         "templates": paths["templates"]},
  }, embedder=Embedder(model, params, batch_size=16))
  assert _rounded(got) == _rounded(json.loads(json.dumps(expected)))
  for category in ("replace_obj", "swap_att"):
    assert set(got["sugarcrepe_pp"][category]) == {"itt", "tot"}
    assert 0.0 <= got["sugarcrepe_pp"][category]["itt"] <= 1.0


def test_cli_on_missing_error_stops_with_the_file_name(tmp_path):
  paths = write_fixtures(tmp_path / "data")
  os.remove(os.path.join(paths["winoground"], "images", "ex_3_img_1.png"))
  _, params = create_model("tiny", seed=0)
  export_dir = export_open_clip("tiny", params, str(tmp_path / "export"))
  args = [f"--open_clip=local-dir:{export_dir}", f"--winoground_dir={paths['winoground']}"]
  failed = _cli(*args, "--on_missing=error")
  assert failed.returncode != 0
  assert "ex_3_img_1.png" in failed.stderr and "--on_missing=skip" in failed.stderr
  skipped = _cli(*args, f"--out={tmp_path / 'w.json'}")
  assert skipped.returncode == 0, skipped.stderr[-3000:]
  result = json.loads((tmp_path / "w.json").read_text())["winoground"]
  assert result["num_examples"] == 15 and result["skipped"] == {"missing_image": 1}
