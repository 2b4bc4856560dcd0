"""Smoke tests of the speed benchmarks: tiny sizes, documented keys, FLOP count vs XLA's.

No timing asserts: the numbers only have to exist and be finite and positive.
"""
from __future__ import annotations

import json
import math
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from benchmarks import accelerator, flops, run as run_lib, train_step


def _positive(value) -> bool:
  return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_torch_losses_match_clic_jax_losses():
  import torch

  from clic_jax import losses
  rng = np.random.default_rng(0)
  b, d = 6, 16
  unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
  img = unit(rng.standard_normal((b, d))).astype(np.float32)
  txt = unit(rng.standard_normal((5 * b, d))).astype(np.float32)
  want, _ = losses.clic_loss(img, txt[:4 * b].reshape(4, b, d), txt[4 * b:], 20.0)
  got = train_step.torch_clic_loss(torch.from_numpy(img), torch.from_numpy(txt),
                                   torch.tensor(20.0), b)
  np.testing.assert_allclose(float(got), float(want), rtol=1e-5)
  want, _ = losses.clip_loss(img, txt[:b], 20.0)
  got = train_step.torch_clip_loss(torch.from_numpy(img), torch.from_numpy(txt[:b]),
                                   torch.tensor(20.0))
  np.testing.assert_allclose(float(got), float(want), rtol=1e-5)


def test_train_step_benchmark_tiny():
  result = train_step.run(model="tiny", batch_sizes=(2,), kinds=("clic",), warmup=1, repeats=1,
                          verbose=False)
  assert _positive(result["train_step_ratio_vs_torch"])
  row = result["rows"][0]
  assert row["kind"] == "clic" and row["texts_per_step"] == 10
  for key in ("clic_jax_step_s", "torch_step_s", "ratio_vs_torch"):
    assert _positive(row[key]), key
  assert row["loss_rel_diff"] < 1e-4      # all four steps: same weights, same batch, same loss
  # The trainer's rows are cut after the longest caption; the equal-work steps ran beside them.
  assert row["text_length_trainer"] < row["text_length_full"]
  for key in ("clic_jax_full_rows_step_s", "torch_trimmed_rows_step_s", "same_rows_full_ratio",
              "same_rows_trimmed_ratio"):
    assert _positive(row[key]), key
  assert result["malloc"] == "keep" and result["malloc_applied"]
  assert row["clic_jax_minor_faults_per_step"] >= 0
  assert "train step" in train_step.format_table(result)


_REUSE_PROBE = """
import ctypes, ctypes.util, json
from benchmarks import host_malloc
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
SIZE = 64 << 20

def faults_of_a_fresh_block():   # one step's temporaries written and freed, then the next step's
  block = libc.malloc(SIZE)
  ctypes.memset(block, 1, SIZE)
  libc.free(block)
  block = libc.malloc(SIZE)
  before = host_malloc.minor_faults()
  ctypes.memset(block, 1, SIZE)
  faults = host_malloc.minor_faults() - before
  libc.free(block)
  return faults

default = faults_of_a_fresh_block()              # glibc as the process started
with host_malloc.kept_freed_memory() as kept:
  reused = faults_of_a_fresh_block()
print(json.dumps({"default": default, "kept": kept, "reused": reused, "pages": SIZE // 4096}))
"""


def test_kept_freed_memory_reuses_a_freed_block():
  """The XLA:CPU case in small: a 64 MiB block freed and allocated again. glibc's defaults map it
  afresh (a fault per 4 KiB page on first write); inside kept_freed_memory() it is reused. A fresh
  process, so no earlier mallopt call or heap state of the test session decides the outcome."""
  root = pathlib.Path(__file__).resolve().parent.parent
  out = subprocess.run([sys.executable, "-c", _REUSE_PROBE], cwd=root, check=True, text=True,
                       capture_output=True,
                       env=dict(os.environ, PYTHONPATH=str(root))).stdout
  probe = json.loads(out.strip().splitlines()[-1])
  assert probe["kept"]
  assert probe["default"] > 0.5 * probe["pages"] and probe["reused"] < 100, probe


def test_accelerator_benchmark_tiny_cpu(tmp_path):
  path = tmp_path / "acc.json"
  result = accelerator.run(models=("tiny",), batch=1, warmup=1, steps=1, peak_tflops=0.1,
                           verbose=False, kinds=("clic", "clip"), text_length=20,
                           json_path=str(path))
  assert json.loads(path.read_text()) == json.loads(json.dumps(result))  # written as it goes
  clic, clip = result["rows"]
  for row in (clic, clip):
    assert "error" not in row, row.get("error")
    for key in ("step_s", "examples_per_s", "mfu", "step_tflop", "compiled_peak_bytes",
                "compile_s"):
      assert _positive(row[key]), key
    assert row["dtype"] == "bfloat16" and row["global_batch"] == row["devices"]
    assert row["text_length"] == 20
  assert clic["kind"] == "clic" and clip["kind"] == "clip"
  assert clic["step_tflop"] > clip["step_tflop"]      # five captions per image against one
  full = accelerator.bench_one("tiny", 1, warmup=1, steps=1, peak_tflops=0.1, text_length=20,
                               pooled_last_block=False)   # gpu_session.sh's --full_last_block
  assert not full["pooled_last_block"] and clic["pooled_last_block"]
  assert full["step_tflop"] > clic["step_tflop"]          # it counts the work it did
  assert abs(full["loss"] - clic["loss"]) < 2e-2 * abs(clic["loss"])   # same step, bf16 rounding
  assert "tiny" in accelerator.format_table(result)
  assert accelerator.peak_tflops_for("NVIDIA H200") == 989.0
  assert accelerator.peak_tflops_for("TPU v5 lite") == 197.0
  assert accelerator.peak_tflops_for("cpu") is None


def test_accelerator_torch_step_runs_on_cpu():
  """The PyTorch GPU baseline's step, on the CPU at batch 1: it runs and gives a finite loss."""
  from benchmarks import accelerator_torch
  row = accelerator_torch.bench_one("ViT-B-32", 1, warmup=1, steps=1)
  assert _positive(row["step_s"]) and math.isfinite(row["loss"]) and row["device"] == "cpu"


def test_cpu_text_backward_benchmark_parts():
  from benchmarks import cpu_text_backward
  rows = cpu_text_backward.depth((1, 2), repeats=1)
  assert [r["layers"] for r in rows] == [1, 2]
  assert all(_positive(r["per_block_s"]) and _positive(r["scan_per_block_s"]) for r in rows)
  families = cpu_text_backward.profile(1)
  assert families and all(_positive(r["seconds"]) for r in families)
  assert all("fusion" in r["kernel_family"] for r in families)


@pytest.mark.parametrize("pooled", [True, False])
def test_flops_match_xla_cost_analysis_tiny(pooled):
  """Compared: XLA's count of the whole compiled step vs our matmul count + optimizer term, with
  the last blocks pooled (the default) and full. The tiny model's two blocks make the difference
  large (a third of the text FLOPs), so each count must follow its own model."""
  ours = flops.step_flops("tiny", 4, "clic", pooled_last_block=pooled)
  xla = flops.xla_step_flops("tiny", 4, "clic", pooled_last_block=pooled)
  assert ours.total + ours.optimizer == pytest.approx(xla, rel=0.2)
  other = flops.step_flops("tiny", 4, "clic", pooled_last_block=not pooled)
  assert other.total + other.optimizer != pytest.approx(xla, rel=0.2)


def test_flops_formula_orders_of_magnitude():
  # ViT-B/16 vision forward is ~2 * 86M params * 197 tokens + attention ~ 35 GFLOP per image.
  assert flops.vision_forward_flops(flops.get_model_config("ViT-B-16")) == pytest.approx(35e9,
                                                                                        rel=0.1)
  clic = flops.step_flops("ViT-L-14", 200, "clic")
  clip = flops.step_flops("ViT-L-14", 200, "clip")
  assert clic.vision == clip.vision and clic.text == 5 * clip.text
  unfrozen = flops.step_flops("ViT-L-14", 200, "clic", freeze_vision=False)
  assert unfrozen.vision == 3 * clic.vision


def test_run_reports_failures_and_writes_json(tmp_path, monkeypatch):
  monkeypatch.setitem(run_lib.BENCHMARKS, "broken",
                      ("benchmarks.no_such_benchmark", ("broken_key",), {}, {}))
  out = tmp_path / "report.json"
  assert run_lib.main(["--quick", "--only=flops,broken", f"--json={out}"]) == 0
  report = json.loads(out.read_text())
  assert "error" in report["benchmarks"]["broken"]
  assert report["broken_key"] is None
  assert _positive(report["clic_b32_tflop_per_step"])
  assert "ERROR" in run_lib.format_table(report)


def test_separate_text_calls_give_the_same_step():
  """The ablation wrapper (one encode_text call per caption set) computes the trainer's step."""
  import jax
  import optax

  from benchmarks.text_calls import SeparateTextCalls
  from clic_jax import models
  from clic_jax.train import config as config_lib
  from clic_jax.train import step as step_lib
  model, params = models.create_model("tiny", seed=4)
  tx = optax.sgd(1e-2)
  batch = train_step.make_batch(model.cfg, 16, "clic", seed=0)
  state = step_lib.create_state(params, tx, ())
  results = [jax.device_get(jax.jit(step_lib.make_train_step(
      module, tx, "clic", config_lib.loss_spec()))(state, batch))
             for module in (model, SeparateTextCalls(model, train_step.texts_per_image("clic")))]
  (s_a, m_a), (s_b, m_b) = results
  assert np.isclose(m_a["loss"], m_b["loss"], rtol=1e-6)
  for a, b in zip(jax.tree.leaves(s_a.trainable), jax.tree.leaves(s_b.trainable)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_pipeline_benchmark_reads_the_same_records_from_webdataset_shards(tmp_path):
  from benchmarks import pipeline as pipeline_bench
  from clic_jax.data import pipeline, sources
  csv_path, root = pipeline_bench.make_dataset(str(tmp_path), 12)
  config = pipeline.PipelineConfig(
      source=sources.SourceSpec(csv=csv_path, image_root=root), global_batch_size=4,
      image_size=32, num_extra_positives=2, step_pattern=("clic",), mode="clic", seed=0,
      concat_image_norm="clip", image_dtype="uint8", context_length=77, pos_backend="lexicon",
      num_threads=2)
  result = pipeline_bench._csv_and_webdataset_rates(config, csv_path, root, num_threads=2,
                                                    num_batches=1, rounds=1)
  for key in ("csv_pipeline_samples_per_s", "webdataset_pipeline_samples_per_s",
              "webdataset_ratio_vs_csv", "webdataset_ratio_vs_csv_cpu"):
    assert _positive(result[key]), key
  shards = sources.WebDatasetSource(pipeline_bench._webdataset_shards(csv_path, root))
  csv_source = sources.CsvSource(csv_path, root)
  assert [shards[i]["sentences"] for i in range(12)] == [csv_source[i]["sentences"]
                                                         for i in range(12)]


def test_grad_accum_benchmark_tiny(tmp_path):
  """The accumulation benchmark runs, its k=2 step computes the k=1 step's loss, and XLA plans
  less memory for it (one micro-batch's activations alive at a time)."""
  from benchmarks import grad_accum
  result = grad_accum.run("tiny", 32, (1, 2), trained_vision=False, repeats=1,
                          json_path=str(tmp_path / "grad_accum.json"))
  whole, split = result["rows"]
  assert (whole["micro_batches"], split["micro_batches"], split["micro_batch"]) == (1, 2, 16)
  assert split["loss"] == pytest.approx(whole["loss"], rel=1e-5)
  assert split["temp_bytes"] < whole["temp_bytes"]
  assert all(_positive(r["step_s"]) and _positive(r["peak_bytes"]) for r in result["rows"])
  assert json.loads((tmp_path / "grad_accum.json").read_text()) == result
