#!/usr/bin/env bash
# Train clic_jax on one machine with one or more NVIDIA GPUs (no SLURM): one process drives all of
# its GPUs, the global batch split over them.
#
#   launch/gpu_single_node.sh configs/b32.py runs/b32 --config.data.csv=... --config.data.image_root=...
#   CUDA_VISIBLE_DEVICES=0,1 launch/gpu_single_node.sh ...      # a subset of the GPUs
#
# Creates the virtual environment (REPO_DIR/.venv) when missing, installs requirements.txt and
# jax[cuda12] when they are missing, then runs clic_jax.main in the foreground. Rerunning the same
# command resumes from the latest checkpoint in WORKDIR; `kill -TERM PID` saves a checkpoint and
# exits (Ctrl-C stops without saving).
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch/gpu_single_node.sh CONFIG WORKDIR [--config.FIELD=VALUE ...]

Runs on this machine's GPUs:
  python -m clic_jax.main --config=CONFIG --workdir=WORKDIR --nomultihost [--config.FIELD=VALUE ...]

  CONFIG    config file relative to the repository root, e.g. configs/b32.py
  WORKDIR   checkpoints, metrics.jsonl, TensorBoard events

Environment:
  VENV                   virtual environment to use or create (default: REPO_DIR/.venv)
  PYTHON                 interpreter that creates it (default: python3; needs >= 3.11)
  JAX_CUDA_EXTRA         jax extra for the GPU build (default: cuda12)
  SKIP_INSTALL=1         use the environment as it is
  CUDA_VISIBLE_DEVICES   restrict the run to some GPUs
  XLA_FLAGS              appended to the flags this script sets
EOF
}

die_usage() {
  echo "error: $*" >&2
  echo "Usage: launch/gpu_single_node.sh CONFIG WORKDIR [--config.FIELD=VALUE ...] (--help)" >&2
  exit 2
}

log() { echo "[gpu_single_node] $*" >&2; }

for arg in "$@"; do
  [[ "$arg" == -h || "$arg" == --help ]] && { usage; exit 0; }
done
(($# >= 2)) || die_usage "expected CONFIG WORKDIR, got $# argument(s)"
CONFIG="$1"
WORKDIR="$2"
shift 2
[[ "$CONFIG" != -* && "$WORKDIR" != -* ]] || die_usage "CONFIG and WORKDIR come first"
for flag in "$@"; do
  [[ "$flag" == --* ]] || die_usage "unexpected argument '$flag' after WORKDIR (only --config.FIELD=VALUE flags)"
done

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[[ -f "$REPO_DIR/$CONFIG" ]] ||
  die_usage "config '$CONFIG' not found in $REPO_DIR (give it relative to the repository root)"
if ! command -v nvidia-smi >/dev/null 2>&1; then
  echo "error: nvidia-smi not found: this machine has no NVIDIA driver. On a CPU-only machine run" \
       "'python -m clic_jax.main --config=$CONFIG --workdir=$WORKDIR' directly." >&2
  exit 2
fi
cd "$REPO_DIR"

# ---------------------------------------------------------------------------------------------
# Environment: create and fill the venv only where something is missing.

VENV="${VENV:-$REPO_DIR/.venv}"
PYTHON="${PYTHON:-python3}"
JAX_CUDA_EXTRA="${JAX_CUDA_EXTRA:-cuda12}"
if [[ ! -x "$VENV/bin/python" ]]; then
  "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
    { echo "error: $PYTHON is older than 3.11 (jax needs 3.11+); set PYTHON=python3.11 or newer." >&2; exit 2; }
  log "creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
py="$VENV/bin/python"
if [[ "${SKIP_INSTALL:-0}" != 1 ]]; then
  if ! "$py" -c 'import clic_jax.main, optax, grain, orbax.checkpoint' >/dev/null 2>&1; then
    log "installing requirements.txt into $VENV"
    "$py" -m pip install -q -r requirements.txt
  fi
  # The CUDA plugin's presence, from package metadata: no GPU backend is started to find out.
  if ! "$py" -c "import importlib.metadata as m; m.version('jax-${JAX_CUDA_EXTRA}-plugin')" \
       >/dev/null 2>&1; then
    log "installing jax[$JAX_CUDA_EXTRA] into $VENV"
    "$py" -m pip install -q -U "jax[$JAX_CUDA_EXTRA]"
  fi
fi

# ---------------------------------------------------------------------------------------------
# Run. --nomultihost: one process owns every local GPU, even inside a SLURM allocation of several
# tasks (which clic_jax.main would otherwise treat as a multi-host job).

export XLA_FLAGS="--xla_gpu_enable_latency_hiding_scheduler=true ${XLA_FLAGS:-}"
export PYTHONUNBUFFERED=1
log "$(nvidia-smi -L | wc -l) GPU(s) on this machine${CUDA_VISIBLE_DEVICES:+, using $CUDA_VISIBLE_DEVICES}"
exec "$py" -m clic_jax.main --config="$CONFIG" --workdir="$WORKDIR" --nomultihost "$@"
