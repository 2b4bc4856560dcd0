"""launch/*: syntax, --help, argument errors, and the exact gcloud / srun / python invocations.

gcloud, srun, scontrol, squeue, nvidia-smi and the venv's python are replaced by small fakes placed
first on PATH that append their arguments (and a few environment variables) to a JSON-lines log,
so the scripts run end to end on any machine without touching a cloud or a cluster.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TPU = REPO / "launch" / "tpu_pod.sh"
SLURM = REPO / "launch" / "gpu_slurm.sbatch"
SINGLE = REPO / "launch" / "gpu_single_node.sh"
SCRIPTS = (TPU, SLURM, SINGLE)
CONFIG = "configs/tiny.py"

_ENV_KEYS = ("JAX_LOCAL_DEVICE_IDS", "JAX_COORDINATOR_ADDRESS", "XLA_FLAGS", "PYTHONUNBUFFERED")


def make_fake(bin_dir: Path, name: str, log: Path, behaviour: str = "") -> Path:
  """An executable `name` that logs {tool, args, env} to `log`, then runs `behaviour` (Python)."""
  bin_dir.mkdir(parents=True, exist_ok=True)
  path = bin_dir / name
  path.write_text(
      f"#!{sys.executable}\n"
      "import json, os, sys\n"
      "args = sys.argv[1:]\n"
      f"record = {{'tool': {name!r}, 'args': args,\n"
      f"          'env': {{k: os.environ.get(k) for k in {_ENV_KEYS!r}}}}}\n"
      f"with open({str(log)!r}, 'a') as f:\n"
      "  f.write(json.dumps(record) + '\\n')\n"
      + behaviour)
  path.chmod(0o755)
  return path


def read_log(log: Path, tool: str | None = None) -> list[dict]:
  if not log.exists():
    return []
  rows = [json.loads(line) for line in log.read_text().splitlines()]
  return [r for r in rows if tool is None or r["tool"] == tool]


def run(script: Path, *args: str, env: dict | None = None, path_first: Path | None = None,
        cwd: Path | None = None) -> subprocess.CompletedProcess:
  full_env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
  full_env.pop("JAX_COORDINATOR_ADDRESS", None)
  full_env.pop("XLA_FLAGS", None)
  if path_first is not None:
    full_env["PATH"] = f"{path_first}{os.pathsep}{full_env['PATH']}"
  full_env.update(env or {})
  return subprocess.run(["bash", str(script), *args], capture_output=True, text=True,
                        env=full_env, cwd=cwd or REPO, timeout=60)


# ---------------------------------------------------------------------------------------------
# All scripts.


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_bash_syntax(script):
  result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
  assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_help_prints_usage_and_calls_nothing(script, tmp_path):
  log = tmp_path / "calls.jsonl"
  for tool in ("gcloud", "srun", "scontrol", "squeue", "nvidia-smi", "python3"):
    make_fake(tmp_path / "bin", tool, log)
  for flag in ("--help", "-h"):
    result = run(script, flag, path_first=tmp_path / "bin")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Usage:")
    assert "CONFIG" in result.stdout and "WORKDIR" in result.stdout
  assert read_log(log) == []


@pytest.mark.parametrize("script,args", [
    (TPU, ()), (TPU, ("tpu", "zone", CONFIG)),
    (TPU, ("--no-such-option", "tpu", "zone", CONFIG, "gs://b/r")),
    (TPU, ("tpu", "zone", "configs/missing.py", "gs://b/r")),
    (TPU, ("tpu", "zone", CONFIG, "gs://b/r", "stray")),
    (TPU, ("tpu", "zone", CONFIG, "gs://b/r", "--restart-on-preemption")),
    (SLURM, ()), (SLURM, (CONFIG,)), (SLURM, (CONFIG, "/shared/run", "stray")),
    (SINGLE, ()), (SINGLE, (CONFIG,)), (SINGLE, ("configs/missing.py", "runs/x")),
    (SINGLE, ("--config.x=1", "runs/x")),
], ids=lambda a: " ".join(a) if isinstance(a, tuple) else a.name)
def test_wrong_arguments_give_a_usage_error(script, args, tmp_path):
  log = tmp_path / "calls.jsonl"
  for tool in ("gcloud", "srun", "scontrol", "squeue", "nvidia-smi"):
    make_fake(tmp_path / "bin", tool, log)
  result = run(script, *args, path_first=tmp_path / "bin",
               env={"SLURM_JOB_ID": "7", "SLURM_SUBMIT_DIR": str(REPO)})
  assert result.returncode == 2, (result.stdout, result.stderr)
  assert "error:" in result.stderr and "--help" in result.stderr
  assert read_log(log) == []


# ---------------------------------------------------------------------------------------------
# TPU pod.

# scp: records whether the staged copy holds the code and leaves the venv out.
_SCP_BEHAVIOUR = """
if 'scp' in args:
  src = args[args.index('--recurse') + 1]
  with open(LOG, 'a') as f:
    f.write(json.dumps({'tool': 'staged', 'args': [
        str(os.path.isfile(os.path.join(src, 'clic_jax', 'main.py'))),
        str(os.path.isfile(os.path.join(src, 'requirements.txt'))),
        str(os.path.exists(os.path.join(src, '.venv')))], 'env': {}}) + '\\n')
if 'describe' in args:
  print(os.environ.get('FAKE_TPU_STATE', 'READY'))
command = next((a for a in args if a.startswith('--command=')), '')
if 'clic_jax.main' in command:
  counter = LOG + '.runs'
  n = int(open(counter).read()) if os.path.exists(counter) else 0
  open(counter, 'w').write(str(n + 1))
  if n < int(os.environ.get('FAKE_PREEMPTIONS', '0')):
    print('INFO clic_jax: done: step 3/10 (preempted; rerun to resume)')
  sys.exit(int(os.environ.get('FAKE_TRAIN_RC', '0')))
"""


def fake_gcloud(tmp_path: Path) -> tuple[Path, Path]:
  log = tmp_path / "calls.jsonl"
  make_fake(tmp_path / "bin", "gcloud", log,
            f"LOG = {str(log)!r}\n" + _SCP_BEHAVIOUR)
  return tmp_path / "bin", log


def ssh_commands(log: Path) -> list[str]:
  return [a[len("--command="):] for r in read_log(log, "gcloud") for a in r["args"]
          if a.startswith("--command=")]


def training_commands(log: Path) -> list[str]:
  return [c for c in ssh_commands(log) if "clic_jax.main" in c]


def test_tpu_pod_copies_builds_and_trains_on_all_workers(tmp_path):
  bin_dir, log = fake_gcloud(tmp_path)
  result = run(TPU, "--mount-bucket=gs://extra", "my-tpu", "us-central2-b", CONFIG,
               "gs://bucket/runs/tiny", "--config.total_steps=5",
               "--config.data.csv=/gcs/data-bucket/a b.csv", "--config.init_from=/gcs/bucket/w.pt",
               path_first=bin_dir, env={"PROJECT": "my-proj"})
  assert result.returncode == 0, result.stderr
  calls = read_log(log, "gcloud")
  for call in calls:
    if "describe" not in call["args"]:
      assert call["args"][:3] == ["compute", "tpus", "tpu-vm"]
      assert {"my-tpu", "--zone=us-central2-b", "--worker=all", "--project=my-proj"} <= set(
          call["args"]) | {a.split(":")[0] for a in call["args"]}
  scp = [c["args"] for c in calls if c["args"][3] == "scp"]
  assert len(scp) == 1 and "--recurse" in scp[0] and "my-tpu:clic_jax_upload" in scp[0]
  assert read_log(log, "staged")[0]["args"] == ["True", "True", "False"]

  commands = ssh_commands(log)
  for command in commands:                           # what the workers' bash will parse
    check = subprocess.run(["bash", "-n", "-c", command], capture_output=True, text=True)
    assert check.returncode == 0, (command, check.stderr)
  setup = next(c for c in commands if "requirements.txt" in c)
  assert setup.index("-r clic_jax/requirements.txt") < setup.index('-U "jax[tpu]"')
  (train,) = training_commands(log)
  assert commands[-1] == train                       # copy, build, mount, then train
  mounts = [c for c in commands if "gcsfuse --implicit-dirs" in c]
  # WORKDIR's bucket, the data's, and --mount-bucket's, each once.
  assert [m.split()[-1] for m in mounts] == ["/gcs/bucket", "/gcs/data-bucket", "/gcs/extra"]
  assert commands.index(setup) < commands.index(mounts[0])
  assert "tee -a ~/clic_jax_logs/train-$(hostname).log" in train
  argv = shlex.split(train.split("PYTHONUNBUFFERED=1", 1)[1].split("2>&1")[0])
  # The gs:// workdir is written through the bucket's mount on every worker.
  assert argv == ["python", "-m", "clic_jax.main", f"--config={CONFIG}",
                  "--workdir=/gcs/bucket/runs/tiny", "--multihost", "--config.total_steps=5",
                  "--config.data.csv=/gcs/data-bucket/a b.csv", "--config.init_from=/gcs/bucket/w.pt"]


def test_tpu_pod_gcs_direct_passes_the_bucket_path_through(tmp_path):
  bin_dir, log = fake_gcloud(tmp_path)
  result = run(TPU, "--skip-setup", "t", "z", CONFIG, "gs://bucket/run", path_first=bin_dir,
               env={"GCS_DIRECT": "1"})
  assert result.returncode == 0, result.stderr
  assert [c for c in ssh_commands(log) if "gcsfuse" in c] == []
  (train,) = training_commands(log)
  assert "--workdir=gs://bucket/run --multihost" in train


def test_tpu_pod_training_command_runs_on_a_worker(tmp_path):
  """The remote training command, run by bash in a fake worker home, calls python as intended."""
  bin_dir, log = fake_gcloud(tmp_path)
  result = run(TPU, "--skip-setup", "t", "z", CONFIG, "/shared/r", "--config.data.csv=/x y.csv",
               path_first=bin_dir)
  assert result.returncode == 0, result.stderr
  assert "not a gs:// path" in result.stderr                          # a warning, not an error
  assert [c["args"][3] for c in read_log(log, "gcloud")] == ["ssh"]   # no copy, build, mount
  (train,) = training_commands(log)

  home = tmp_path / "home"
  (home / "clic_jax").mkdir(parents=True)
  venv_bin = home / "clic_jax_venv" / "bin"
  worker_log = tmp_path / "worker.jsonl"
  make_fake(venv_bin, "python", worker_log, "print('training output')\n")
  (venv_bin / "activate").write_text(f'export PATH="{venv_bin}:$PATH"\n')
  done = subprocess.run(["bash", "-c", train], env={**os.environ, "HOME": str(home)},
                        capture_output=True, text=True, timeout=30)
  assert done.returncode == 0, done.stderr
  (call,) = read_log(worker_log, "python")
  assert call["args"] == ["-m", "clic_jax.main", f"--config={CONFIG}", "--workdir=/shared/r",
                          "--multihost", "--config.data.csv=/x y.csv"]
  assert call["env"]["PYTHONUNBUFFERED"] == "1"
  (per_worker_log,) = (home / "clic_jax_logs").glob("train-*.log")
  assert "training output" in per_worker_log.read_text()


_WORKER_PYTHON3 = """
if args[:1] == ['-c'] and 'version_info' in args[1]:
  sys.exit(1 if os.environ.get('FAKE_OLD_PYTHON') else 0)
if args[:2] == ['-m', 'venv'] or args[:1] == ['venv']:
  bin_dir = os.path.join(args[-1], 'bin')
  os.makedirs(bin_dir)
  os.symlink(os.environ['FAKE_VENV_PYTHON'], os.path.join(bin_dir, 'python'))
"""


@pytest.mark.parametrize("old_python", [False, True], ids=["python3.11+", "python3.10"])
def test_tpu_pod_environment_build_runs_on_a_worker(tmp_path, old_python):
  """The remote setup script, run in a fake worker home: venv, pip order, no rebuild when unchanged."""
  bin_dir, log = fake_gcloud(tmp_path)
  assert run(TPU, "--setup-only", "t", "z", CONFIG, "/gcs/b/r", path_first=bin_dir).returncode == 0
  (setup,) = [c for c in ssh_commands(log) if "requirements.txt" in c]

  home, worker_bin, worker_log = tmp_path / "home", tmp_path / "worker_bin", tmp_path / "w.jsonl"
  venv_python = make_fake(tmp_path / "fakes", "venv-python", worker_log, "print('jax 0.10')\n")
  for tool in ("python3", "uv"):
    make_fake(worker_bin, tool, worker_log, _WORKER_PYTHON3)
  env = {**os.environ, "HOME": str(home), "PATH": f"{worker_bin}{os.pathsep}{os.environ['PATH']}",
         "FAKE_VENV_PYTHON": str(venv_python), "FAKE_OLD_PYTHON": "1" if old_python else ""}
  for attempt in range(2):
    (home / "clic_jax_upload").mkdir(parents=True)
    (home / "clic_jax_upload" / "requirements.txt").write_text("jax\n")
    done = subprocess.run(["bash", "-c", setup], env=env, capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0, done.stderr
    assert (home / "clic_jax" / "requirements.txt").is_file()     # upload moved into place
    assert "jax 0.10" in done.stdout
  calls = [(r["tool"], r["args"]) for r in read_log(worker_log)]
  creators = [c for c in calls if c[1][:2] in (["-m", "venv"], ["venv", "--seed"])]
  assert creators == [("uv" if old_python else "python3",
                       ["venv", "--seed", "--python", "3.11", "clic_jax_venv"] if old_python
                       else ["-m", "venv", "clic_jax_venv"])]
  pips = [args for tool, args in calls if tool == "venv-python" and args[:2] == ["-m", "pip"]]
  assert pips == [["-m", "pip", "install", "-q", "-U", "pip"],     # once: the second run is a no-op
                  ["-m", "pip", "install", "-q", "-r", "clic_jax/requirements.txt"],
                  ["-m", "pip", "install", "-q", "-U", "jax[tpu]"]]


def test_tpu_pod_reports_preemption_and_restarts_when_asked(tmp_path):
  bin_dir, log = fake_gcloud(tmp_path)
  args = ("t", "z", CONFIG, "gs://b/r")
  once = run(TPU, "--skip-setup", *args, path_first=bin_dir, env={"FAKE_PREEMPTIONS": "1"})
  assert once.returncode == 0
  assert "rerun the same command to resume" in once.stderr
  assert len(training_commands(log)) == 1

  log.unlink()
  Path(str(log) + ".runs").unlink()
  looped = run(TPU, "--restart-on-preemption", "--skip-setup", *args, path_first=bin_dir,
               env={"FAKE_PREEMPTIONS": "2", "POLL_S": "0"})
  assert looped.returncode == 0, looped.stderr
  assert len(training_commands(log)) == 3            # preempted twice, then finished
  assert "training finished" in looped.stderr
  # A recreated TPU has fresh disks: every restart copies the code and builds the env again.
  assert len(read_log(log, "staged")) == 2


def test_tpu_pod_crash_on_a_ready_tpu_is_not_retried(tmp_path):
  bin_dir, log = fake_gcloud(tmp_path)
  result = run(TPU, "--restart-on-preemption", "--skip-setup", "t", "z", CONFIG, "gs://b/r",
               path_first=bin_dir, env={"FAKE_TRAIN_RC": "1"})
  assert result.returncode == 1
  assert len(training_commands(log)) == 1
  assert "training failed" in result.stderr


def test_tpu_pod_without_gcloud_says_so(tmp_path):
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  for tool in ("bash", "dirname"):                  # a PATH without gcloud
    (bin_dir / tool).symlink_to(shutil.which(tool))
  result = subprocess.run([str(bin_dir / "bash"), str(TPU), "t", "z", CONFIG, "gs://b/r"],
                          capture_output=True, text=True, env={"PATH": str(bin_dir)}, timeout=30)
  assert result.returncode == 127
  assert "gcloud not found" in result.stderr


# ---------------------------------------------------------------------------------------------
# SLURM.

_SLURM_BEHAVIOUR = """
if args[:2] == ['show', 'hostnames']:
  print('gpu07\\ngpu08')
if args[:1] == ['-h']:
  print(os.environ.get('FAKE_TIME_LEFT', '10:00:00'))
sys.exit(int(os.environ.get('FAKE_SRUN_RC', '0')) if 'clic_jax.main' in args else 0)
"""


def slurm_job(tmp_path: Path, **overrides: str) -> tuple[dict, Path, Path]:
  """The environment of the batch shell of a 2-node x 8-GPU job, and the fakes' bin and log."""
  log = tmp_path / "calls.jsonl"
  for tool in ("srun", "scontrol", "squeue"):
    make_fake(tmp_path / "bin", tool, log, _SLURM_BEHAVIOUR)
  venv = tmp_path / "venv"
  (venv / "bin").mkdir(parents=True)
  (venv / "bin" / "activate").write_text("export CLIC_FAKE_VENV=1\n")
  env = {"SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_NNODES": "2",
         "SLURM_JOB_NUM_NODES": "2", "SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "1",
         "SLURM_GPUS_ON_NODE": "8", "SLURM_SUBMIT_DIR": str(REPO), "VENV": str(venv)}
  env.update(overrides)
  return env, tmp_path / "bin", log


def test_slurm_headers_ask_for_nodes_gpus_signal_and_requeue():
  headers = re.findall(r"^#SBATCH (\S+)", SLURM.read_text(), flags=re.M)
  assert {"--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=8", "--signal=TERM@120",
          "--requeue"} <= set(headers)


def test_slurm_two_nodes_one_process_per_node(tmp_path, monkeypatch):
  env, bin_dir, log = slurm_job(tmp_path)
  result = run(SLURM, CONFIG, "/shared/runs/tiny", "--config.total_steps=5", env=env,
               path_first=bin_dir, cwd=tmp_path)
  assert result.returncode == 0, result.stderr
  (srun,) = read_log(log, "srun")
  assert srun["args"] == ["--kill-on-bad-exit=1", "python", "-m", "clic_jax.main",
                          f"--config={CONFIG}", "--workdir=/shared/runs/tiny", "--multihost",
                          "--config.total_steps=5"]
  assert srun["env"]["JAX_LOCAL_DEVICE_IDS"] == "0,1,2,3,4,5,6,7"   # all 8 GPUs per process
  assert "--xla_gpu_enable_latency_hiding_scheduler=true" in srun["env"]["XLA_FLAGS"]
  # The explicit coordinator is the one jax's own SLURM detection would pick inside the step.
  from jax._src.clusters.slurm_cluster import SlurmCluster
  monkeypatch.setenv("SLURM_JOB_ID", "4242")
  monkeypatch.setenv("SLURM_STEP_NODELIST", "gpu[07-08]")
  monkeypatch.delenv("JAX_COORDINATOR_PORT", raising=False)
  expected = SlurmCluster.get_coordinator_address(timeout_secs=None,
                                                  override_coordinator_port=None)
  assert srun["env"]["JAX_COORDINATOR_ADDRESS"] == expected == "gpu07:61586"
  assert not [r for r in read_log(log, "scontrol") if r["args"][0] == "requeue"]
  assert "training finished" in result.stderr


@pytest.mark.parametrize("per_node", ["8", "8(x2)", None])
def test_slurm_one_process_per_gpu_leaves_device_choice_to_jax(tmp_path, per_node):
  env, bin_dir, log = slurm_job(tmp_path, SLURM_NTASKS="16", SLURM_NTASKS_PER_NODE=per_node or "")
  if per_node is None:                               # submitted with --ntasks=16 --nodes=2 only
    del env["SLURM_NTASKS_PER_NODE"]
  result = run(SLURM, CONFIG, "/shared/run", env=env, path_first=bin_dir, cwd=tmp_path)
  assert result.returncode == 0, result.stderr
  (srun,) = read_log(log, "srun")
  assert srun["env"]["JAX_LOCAL_DEVICE_IDS"] is None     # jax uses SLURM_LOCALID
  assert "--multihost" in srun["args"]


@pytest.mark.parametrize("time_left,requeued", [
    ("1:30", True), ("00:04:59", True), ("10:00:00", False), ("1-00:00:00", False),
    ("UNLIMITED", False)])
def test_slurm_requeues_after_a_clean_stop_near_the_time_limit(tmp_path, time_left, requeued):
  env, bin_dir, log = slurm_job(tmp_path, FAKE_TIME_LEFT=time_left)
  result = run(SLURM, CONFIG, "/shared/run", env=env, path_first=bin_dir, cwd=tmp_path)
  assert result.returncode == 0, result.stderr
  requeues = [r["args"] for r in read_log(log, "scontrol") if r["args"][0] == "requeue"]
  assert requeues == ([["requeue", "4242"]] if requeued else [])


def test_slurm_failure_is_passed_on_without_requeue(tmp_path):
  env, bin_dir, log = slurm_job(tmp_path, FAKE_SRUN_RC="3", FAKE_TIME_LEFT="0:10")
  result = run(SLURM, CONFIG, "/shared/run", env=env, path_first=bin_dir, cwd=tmp_path)
  assert result.returncode == 3
  assert not [r for r in read_log(log, "scontrol") if r["args"][0] == "requeue"]


def test_slurm_outside_a_job_or_without_venv_explains(tmp_path):
  env, bin_dir, log = slurm_job(tmp_path)
  no_job = {k: v for k, v in env.items() if k != "SLURM_JOB_ID"}
  result = run(SLURM, CONFIG, "/shared/run", env=no_job, path_first=bin_dir, cwd=tmp_path)
  assert result.returncode == 2 and "not inside a SLURM job" in result.stderr
  result = run(SLURM, CONFIG, "/shared/run", env={**env, "VENV": str(tmp_path / "nope")},
               path_first=bin_dir, cwd=tmp_path)
  assert result.returncode == 2 and "no virtual environment" in result.stderr
  assert read_log(log, "srun") == []


# ---------------------------------------------------------------------------------------------
# One GPU machine.

_PYTHON_BEHAVIOUR = """
if args[:1] == ['-c'] and 'plugin' in args[1] and os.environ.get('FAKE_NO_CUDA_PLUGIN'):
  sys.exit(1)
"""


def single_node(tmp_path: Path) -> tuple[dict, Path, Path]:
  log = tmp_path / "calls.jsonl"
  make_fake(tmp_path / "bin", "nvidia-smi", log, "print('GPU 0: H100\\nGPU 1: H100')\n")
  make_fake(tmp_path / "venv" / "bin", "python", log, _PYTHON_BEHAVIOUR)
  return {"VENV": str(tmp_path / "venv")}, tmp_path / "bin", log


def test_single_node_runs_main_without_multihost(tmp_path):
  env, bin_dir, log = single_node(tmp_path)
  result = run(SINGLE, CONFIG, "runs/tiny", "--config.seed=3", env=env, path_first=bin_dir)
  assert result.returncode == 0, result.stderr
  calls = [r["args"] for r in read_log(log, "python")]
  assert calls[-1] == ["-m", "clic_jax.main", f"--config={CONFIG}", "--workdir=runs/tiny",
                       "--nomultihost", "--config.seed=3"]
  assert not [c for c in calls if c[:2] == ["-m", "pip"]]      # everything already installed
  assert "2 GPU(s)" in result.stderr


def test_single_node_installs_the_cuda_jax_when_missing(tmp_path):
  env, bin_dir, log = single_node(tmp_path)
  result = run(SINGLE, CONFIG, "runs/tiny", env={**env, "FAKE_NO_CUDA_PLUGIN": "1"},
               path_first=bin_dir)
  assert result.returncode == 0, result.stderr
  calls = [r["args"] for r in read_log(log, "python")]
  install = calls.index(["-m", "pip", "install", "-q", "-U", "jax[cuda12]"])
  assert calls[install + 1][:2] == ["-m", "clic_jax.main"]


def test_single_node_without_nvidia_driver_says_so(tmp_path):
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  for tool in ("bash", "dirname"):                  # a PATH without nvidia-smi
    (bin_dir / tool).symlink_to(shutil.which(tool))
  result = subprocess.run([str(bin_dir / "bash"), str(SINGLE), CONFIG, "runs/x"],
                          capture_output=True, text=True, env={"PATH": str(bin_dir)}, timeout=30)
  assert result.returncode == 2
  assert "nvidia-smi not found" in result.stderr


def test_jax_slurm_detection_keeps_the_local_devices_the_script_sets(monkeypatch):
  """Pins the jax behaviour gpu_slurm.sbatch relies on, inside an srun step of a 2-node job."""
  from jax._src.clusters import ClusterEnv
  step = {"SLURM_JOB_ID": "4242", "SLURM_STEP_NODELIST": "gpu[07-08]", "SLURM_NTASKS": "2",
          "SLURM_PROCID": "1", "SLURM_LOCALID": "0", "SLURM_STEP_NUM_NODES": "2"}
  for key, value in step.items():
    monkeypatch.setenv(key, value)
  monkeypatch.delenv("OMPI_MCA_orte_hnp_uri", raising=False)    # Open MPI is detected before SLURM
  all_gpus = list(range(8))
  detected = ClusterEnv.auto_detect_unset_distributed_params(None, None, None, all_gpus, None, 300)
  assert detected == ("gpu07:61586", 2, 1, all_gpus)       # one process per node: all 8 GPUs
  detected = ClusterEnv.auto_detect_unset_distributed_params(None, None, None, None, None, 300)
  assert detected[3] == [0]                                # without them: GPU SLURM_LOCALID only
