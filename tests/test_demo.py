"""A very short run of the offline demo (configs/demo.py) through every real stage."""
from __future__ import annotations

import json
import math

from clic_jax import demo
from configs import demo as demo_config


def test_tiny_demo_run_writes_before_after_table(tmp_path, capsys):
  config = demo_config.get_config()
  config.global_batch_size = 16
  config.log_every_steps = 2
  config.tensorboard = False
  d = config.demo_settings
  d.num_train, d.num_test, d.eval_batch_size = 80, 24, 32
  d.pretrain.total_steps, d.clic.total_steps = 4, 4
  results = demo.run(config, tmp_path)

  written = json.loads((tmp_path / "demo_results.json").read_text())
  assert written == json.loads(json.dumps(results))
  for bench in ("sugarcrepe", "sugarcrepe_pp/itt", "sugarcrepe_pp/tot", "retrieval"):
    assert bench in written, bench
    for category, values in written[bench].items():
      assert set(values) == {"before", "after"}, (bench, category)
      assert all(0.0 <= v <= 1.0 and math.isfinite(v) for v in values.values())
  assert {"swap_att", "swap_obj", "replace_att", "replace_rel"} <= set(written["sugarcrepe"])
  assert (tmp_path / "clic" / "open_clip" / "open_clip_config.json").is_file()
  assert (tmp_path / "clic" / "metrics.jsonl").is_file()
  out = capsys.readouterr().out
  assert "before" in out and "swap_att" in out
