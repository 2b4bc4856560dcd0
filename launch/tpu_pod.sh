#!/usr/bin/env bash
# Train clic_jax on every worker of a Cloud TPU VM slice (v4-32, v5e-64, ...), from your workstation.
#
# Three phases, each on all workers at once (gcloud ... --worker=all):
#   1. copy the code: this checkout (tracked + untracked, not ignored files) with `tpu-vm scp
#      --recurse`, or a `git clone` of $REPO_URL;
#   2. build a virtual environment from requirements.txt, then `pip install -U "jax[tpu]"` (the
#      requirements pull CPU jax); skipped when requirements.txt has not changed since the last build;
#   3. mount the Cloud Storage buckets named by WORKDIR (and --mount-bucket) at /gcs/BUCKET, then run
#      `python -m clic_jax.main ... --multihost` in the foreground, every worker teeing its output
#      to ~/clic_jax_logs/train-<hostname>.log on that worker.
# Rerunning the same command resumes from the latest checkpoint in WORKDIR. See launch/README.md.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch/tpu_pod.sh [OPTIONS] TPU_NAME ZONE CONFIG WORKDIR [--config.FIELD=VALUE ...]

Copies this repository to every worker of the TPU VM slice TPU_NAME, builds a Python environment
there (requirements.txt + jax[tpu]), and runs on all workers at once:
  python -m clic_jax.main --config=CONFIG --workdir=WORKDIR --multihost [--config.FIELD=VALUE ...]

  TPU_NAME   name of an existing TPU VM (gcloud compute tpus tpu-vm create ...)
  ZONE       its zone, e.g. us-central2-b
  CONFIG     config file relative to the repository root, e.g. configs/b32.py
  WORKDIR    checkpoints, metrics.jsonl, TensorBoard events. All workers must share it, and it
             must outlive the TPU VMs: use gs://BUCKET/PATH. The bucket is mounted with gcsfuse
             at /gcs/BUCKET on every worker and training writes /gcs/BUCKET/PATH (prefer a bucket
             with hierarchical namespace: checkpoints are committed by directory renames).
             A worker's local disk does not work for a multi-host run.

Options:
  --skip-setup              do not copy the code or build the environment (reuse the last ones)
  --setup-only              copy the code and build the environment, do not train
  --mount-bucket=BUCKET     also mount gs://BUCKET at /gcs/BUCKET on every worker (repeatable).
                            Buckets of WORKDIR and of /gcs/BUCKET/... values in the
                            --config flags (e.g. the data) are mounted without it.
  --restart-on-preemption   when the run stops because of a preemption (the trainer saved and said
                            "rerun to resume", or the TPU left the READY state), wait until the TPU
                            is READY again, set it up again and resume (at most MAX_RESTARTS times)
  -h, --help                show this help

Environment:
  PROJECT        Google Cloud project (default: gcloud's configured project)
  GCS_DIRECT=1   pass a gs:// WORKDIR to the trainer unchanged instead of through the mount
  REPO_URL       clone this git URL on the workers instead of copying the local checkout
  REPO_REF       branch or tag to clone (with REPO_URL; default: the remote's default branch)
  GCLOUD_FLAGS   extra flags for every gcloud tpu-vm scp/ssh, e.g. "--internal-ip"
  TRAIN_ENV      environment assignments for the training processes, e.g. "LIBTPU_INIT_ARGS=..."
  MAX_RESTARTS   restarts allowed by --restart-on-preemption (default 20)
  POLL_S         seconds between TPU state checks while waiting for READY (default 60)

Detach: the run stays in the foreground and stops (without a checkpoint) if this terminal's SSH
sessions die. Run the launcher inside tmux/screen, or
  nohup launch/tpu_pod.sh ... > tpu_launch.log 2>&1 &
EOF
}

die_usage() {
  echo "error: $*" >&2
  echo "Run 'launch/tpu_pod.sh --help' for usage." >&2
  exit 2
}

log() { echo "[tpu_pod] $*" >&2; }

# ---------------------------------------------------------------------------------------------
# Arguments.

SETUP=1
TRAIN=1
RESTART=0
MOUNT_BUCKETS=()
positional=()
while (($#)) && ((${#positional[@]} < 4)); do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --skip-setup) SETUP=0 ;;
    --setup-only) TRAIN=0 ;;
    --restart-on-preemption) RESTART=1 ;;
    --mount-bucket=*) bucket="${1#--mount-bucket=}"; bucket="${bucket#gs://}"
                      MOUNT_BUCKETS+=("${bucket%%/*}") ;;
    --*) die_usage "unknown option '$1' (options come before TPU_NAME)" ;;
    *) positional+=("$1") ;;
  esac
  shift
done
if ((${#positional[@]} < 4)); then
  die_usage "expected TPU_NAME ZONE CONFIG WORKDIR, got ${#positional[@]} argument(s)"
fi
TPU_NAME="${positional[0]}"
ZONE="${positional[1]}"
CONFIG="${positional[2]}"
WORKDIR="${positional[3]}"
EXTRA_FLAGS=("$@")       # everything after WORKDIR goes to clic_jax.main unchanged
for flag in ${EXTRA_FLAGS[@]+"${EXTRA_FLAGS[@]}"}; do
  case "$flag" in
    -h|--help) usage; exit 0 ;;
    --skip-setup|--setup-only|--restart-on-preemption|--mount-bucket=*)
      die_usage "launcher option '$flag' must come before TPU_NAME" ;;
    --*) ;;
    *) die_usage "unexpected argument '$flag' after WORKDIR (only --config.FIELD=VALUE flags)" ;;
  esac
done
((SETUP || TRAIN)) || die_usage "--skip-setup and --setup-only together leave nothing to do"

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -z "${REPO_URL:-}" && ! -f "$REPO_DIR/$CONFIG" ]]; then
  die_usage "config '$CONFIG' not found in $REPO_DIR (give it relative to the repository root)"
fi
# A gs:// WORKDIR is read and written through its gcsfuse mount: clic_jax's trainer writes the
# workdir with ordinary file operations.
TRAIN_WORKDIR="$WORKDIR"
case "$WORKDIR" in
  gs://*)
    if [[ "${GCS_DIRECT:-0}" != 1 ]]; then
      bucket="${WORKDIR#gs://}"
      MOUNT_BUCKETS+=("${bucket%%/*}")
      TRAIN_WORKDIR="/gcs/${WORKDIR#gs://}"
    fi ;;
  /gcs/*) bucket="${WORKDIR#/gcs/}"; MOUNT_BUCKETS+=("${bucket%%/*}") ;;
  *) log "warning: WORKDIR '$WORKDIR' is not a gs:// path: every worker must see the same" \
         "directory (a shared mount), or multi-host checkpoints break." ;;
esac
# Flags naming /gcs/BUCKET/... paths (data, init_from) get their bucket mounted too.
for flag in ${EXTRA_FLAGS[@]+"${EXTRA_FLAGS[@]}"}; do
  value="${flag#*=}"
  if [[ "$flag" == *=* && "$value" == /gcs/?* ]]; then
    bucket="${value#/gcs/}"
    MOUNT_BUCKETS+=("${bucket%%/*}")
  fi
done
if ! command -v gcloud >/dev/null 2>&1; then
  echo "error: gcloud not found on PATH. Install the Google Cloud CLI" \
       "(https://cloud.google.com/sdk/docs/install) and run 'gcloud auth login'." >&2
  exit 127
fi
MAX_RESTARTS="${MAX_RESTARTS:-20}"
POLL_S="${POLL_S:-60}"

# Remote layout, relative to each worker's home directory: code, upload area, venv, logs.
REMOTE_CODE="clic_jax"
REMOTE_UPLOAD="clic_jax_upload"
REMOTE_VENV="clic_jax_venv"
REMOTE_LOGS="clic_jax_logs"

# ---------------------------------------------------------------------------------------------
# gcloud wrappers: every call names the TPU, zone and project, and reaches all workers.

gcloud_flags=(--zone="$ZONE" --worker=all)
[[ -n "${PROJECT:-}" ]] && gcloud_flags+=(--project="$PROJECT")
read -r -a extra_gcloud_flags <<<"${GCLOUD_FLAGS:-}"
gcloud_flags+=(${extra_gcloud_flags[@]+"${extra_gcloud_flags[@]}"})

on_all_workers() {   # on_all_workers COMMAND: runs a bash command line on every worker at once
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${gcloud_flags[@]}" --command="$1"
}

tpu_state() {
  local flags=(--zone="$ZONE" --format='value(state)')
  [[ -n "${PROJECT:-}" ]] && flags+=(--project="$PROJECT")
  gcloud compute tpus tpu-vm describe "$TPU_NAME" "${flags[@]}" 2>/dev/null || echo UNKNOWN
}

# ---------------------------------------------------------------------------------------------
# Phase 1 and 2: code and environment on every worker.

stage_local_checkout() {   # prints a temporary directory holding a clean copy of this checkout
  local stage
  stage="$(mktemp -d)/$REMOTE_UPLOAD"
  mkdir -p "$stage"
  if git -C "$REPO_DIR" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    # Tracked and untracked-but-not-ignored files: leaves out .venv/, runs/, caches, .git.
    (cd "$REPO_DIR" && git ls-files -z --cached --others --exclude-standard |
      while IFS= read -r -d '' f; do [[ -e "$f" ]] && printf '%s\0' "$f"; done |
      tar --null -T - -cf -) | tar -xf - -C "$stage"
  else
    tar -C "$REPO_DIR" --exclude=.git --exclude=.venv --exclude='.venv*' --exclude=runs \
        --exclude=__pycache__ -cf - . | tar -xf - -C "$stage"
  fi
  echo "$stage"
}

copy_code() {
  if [[ -n "${REPO_URL:-}" ]]; then
    log "cloning $REPO_URL${REPO_REF:+ ($REPO_REF)} on every worker"
    local q_url q_ref=""
    q_url="$(printf '%q' "$REPO_URL")"
    [[ -n "${REPO_REF:-}" ]] && q_ref="--branch $(printf '%q' "$REPO_REF")"
    on_all_workers "set -euo pipefail; cd ~; rm -rf $REMOTE_UPLOAD;
      git clone --depth=1 $q_ref $q_url $REMOTE_UPLOAD"
  else
    local stage
    stage="$(stage_local_checkout)"
    log "copying $REPO_DIR ($(du -sh "$stage" | cut -f1)) to every worker"
    on_all_workers "rm -rf ~/$REMOTE_UPLOAD"
    gcloud compute tpus tpu-vm scp --recurse "$stage" "$TPU_NAME:$REMOTE_UPLOAD" "${gcloud_flags[@]}"
    rm -rf "$(dirname "$stage")"
  fi
}

# The environment build, run on each worker. jax needs Python >= 3.11; older TPU VM images ship
# 3.10, so then uv provides a standalone 3.11. pip is re-run only when requirements.txt changes.
read -r -d '' REMOTE_SETUP <<EOF || true
set -euo pipefail
cd ~
rm -rf $REMOTE_CODE && mv $REMOTE_UPLOAD $REMOTE_CODE
if [[ ! -x $REMOTE_VENV/bin/python ]]; then
  if python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null &&
     python3 -m venv $REMOTE_VENV 2>/dev/null; then
    :
  else
    rm -rf $REMOTE_VENV
    command -v uv >/dev/null || [[ -x ~/.local/bin/uv ]] ||
      curl -LsSf https://astral.sh/uv/install.sh | sh
    PATH="\$HOME/.local/bin:\$PATH" uv venv --seed --python 3.11 $REMOTE_VENV
  fi
fi
stamp="\$(sha256sum $REMOTE_CODE/requirements.txt | cut -c1-64)"
if [[ "\$(cat $REMOTE_VENV/.clic_requirements 2>/dev/null)" != "\$stamp" ]]; then
  $REMOTE_VENV/bin/python -m pip install -q -U pip
  $REMOTE_VENV/bin/python -m pip install -q -r $REMOTE_CODE/requirements.txt
  $REMOTE_VENV/bin/python -m pip install -q -U "jax[tpu]"
  echo "\$stamp" > $REMOTE_VENV/.clic_requirements
fi
echo "\$(hostname): \$($REMOTE_VENV/bin/python -c 'import jax; print("jax", jax.__version__)')"
EOF

# gcsfuse mount of a bucket at /gcs/BUCKET, installing gcsfuse from Google's apt repository.
mount_bucket_command() {
  local bucket="$1"
  cat <<EOF
set -euo pipefail
if ! command -v gcsfuse >/dev/null; then
  codename="\$(lsb_release -c -s)"
  echo "deb [signed-by=/usr/share/keyrings/cloud.google.asc] https://packages.cloud.google.com/apt gcsfuse-\$codename main" |
    sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null
  curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null
  sudo apt-get update -q && sudo apt-get install -y -q gcsfuse
fi
sudo mkdir -p /gcs/$bucket && sudo chown "\$USER" /gcs/$bucket
# --rename-dir-limit: orbax commits a checkpoint by renaming its temporary directory; flat buckets
# allow that only below this many files (hierarchical-namespace buckets rename natively).
mountpoint -q /gcs/$bucket || gcsfuse --implicit-dirs --rename-dir-limit=200000 $bucket /gcs/$bucket
EOF
}

setup_workers() {
  copy_code
  log "building the environment on every worker (first time: several minutes)"
  on_all_workers "$REMOTE_SETUP"
}

mount_buckets() {   # idempotent: a mounted bucket is left as it is
  local bucket
  for bucket in $(printf '%s\n' ${MOUNT_BUCKETS[@]+"${MOUNT_BUCKETS[@]}"} | sort -u); do
    log "mounting gs://$bucket at /gcs/$bucket on every worker"
    on_all_workers "$(mount_bucket_command "$bucket")"
  done
}

# ---------------------------------------------------------------------------------------------
# Phase 3: training on all workers at once.

train_command() {
  local args=(python -m clic_jax.main --config="$CONFIG" --workdir="$TRAIN_WORKDIR" --multihost
              ${EXTRA_FLAGS[@]+"${EXTRA_FLAGS[@]}"})
  local quoted
  quoted="$(printf '%q ' "${args[@]}")"
  # Output goes to the terminal (all workers interleaved; only process 0 logs progress) and to a
  # per-worker log file. PYTHONUNBUFFERED keeps the streams live.
  echo "set -o pipefail; cd ~/$REMOTE_CODE && source ~/$REMOTE_VENV/bin/activate &&" \
       "mkdir -p ~/$REMOTE_LOGS && env PYTHONUNBUFFERED=1 ${TRAIN_ENV:-} $quoted 2>&1 |" \
       "tee -a ~/$REMOTE_LOGS/train-\$(hostname).log"
}

# The trainer's final line after a preemption checkpoint contains this (clic_jax/main.py).
PREEMPTED_MARKER="(preempted; rerun to resume)"

wait_until_ready() {
  local state
  while state="$(tpu_state)"; [[ "$state" != READY ]]; do
    log "TPU $TPU_NAME is $state; checking again in ${POLL_S}s (recreate it, e.g. with a queued resource)"
    sleep "$POLL_S"
  done
}

run_once() {   # runs training once; sets RUN_RC and RUN_PREEMPTED
  local out
  out="$(mktemp)"
  log "training: $(train_command | sed 's/.*activate && //')"
  set +e
  on_all_workers "$(train_command)" 2>&1 | tee "$out"
  RUN_RC=${PIPESTATUS[0]}
  set -e
  RUN_PREEMPTED=0
  if grep -qF "$PREEMPTED_MARKER" "$out"; then
    RUN_PREEMPTED=1
  elif ((RUN_RC != 0)) && [[ "$(tpu_state)" != READY ]]; then
    RUN_PREEMPTED=1      # the VMs went away under the SSH sessions
  fi
  rm -f "$out"
}

((SETUP)) && setup_workers
mount_buckets
((TRAIN)) || { log "setup done"; exit 0; }

restarts=0
while :; do
  run_once
  if ((RUN_PREEMPTED == 0)); then
    if ((RUN_RC == 0)); then log "training finished"; else log "training failed (exit $RUN_RC)"; fi
    exit "$RUN_RC"
  fi
  if ((RESTART == 0)); then
    log "preempted: rerun the same command to resume from the last checkpoint in $WORKDIR"
    exit "$RUN_RC"
  fi
  if ((restarts >= MAX_RESTARTS)); then
    log "preempted again after $restarts restarts (MAX_RESTARTS); giving up"
    exit 1
  fi
  restarts=$((restarts + 1))
  log "preempted; restart $restarts/$MAX_RESTARTS once the TPU is READY"
  wait_until_ready
  setup_workers      # a recreated TPU has fresh disks and no mounts
  mount_buckets
done
