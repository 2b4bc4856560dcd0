#!/usr/bin/env bash
# Everything the speed issue asks of one GPU lease, as one script with a time budget.
#
#   OUT=/tmp/gpu BUDGET_S=540 bash benchmarks/gpu_session.sh
#   MODELS=ViT-B-32 BIG=ViT-B-32 BATCH=2 STEPS=2 ATTN=default bash benchmarks/gpu_session.sh   # CPU dry run
#
# Stages, most important first; each gets what is left of BUDGET_S (seconds), and each writes its
# JSON after every row, so a stage cut short still leaves what it finished:
#   1. machine and versions (nvidia-smi, jax/flax/torch);
#   2. clic_jax CLIC step, ViT-L-14 and ViT-B-16, batch 200, bf16, cuDNN and XLA attention;
#   3. the same CLIC step in PyTorch open_clip (eager, bf16 autocast: what the reference runs);
#      open_clip comes from wheels in .whl/ when it is not installed (see benchmarks/RESULTS.md);
#   4. extras for ViT-L-14: the plain CLIP step, the CLIC step with remat, with token rows cut
#      to 48 (what trimming batches to their longest caption buys), and with the last blocks run
#      for every token (what the pooled last block buys);
#   5. exact gradient accumulation: ViT-B-16 at the paper's batch of 800, whole against 4
#      micro-batches (memory and step time).
# Output: $OUT/{machine.txt, accelerator.json, torch.json, clip.json, remat.json, len48.json,
#         full_last_block.json, grad_accum.json, session.log}.
set -u
OUT=${OUT:-/tmp/gpu_session}
BUDGET_S=${BUDGET_S:-540}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
MODELS=${MODELS:-ViT-L-14,ViT-B-16}
BIG=${BIG:-ViT-L-14}
BATCH=${BATCH:-200}
STEPS=${STEPS:-10}
ATTN=${ATTN:-cudnn}      # attention for the extras
end=$((SECONDS + BUDGET_S))
left() { echo $((end - SECONDS)); }
log() { echo "[gpu_session +${SECONDS}s] $*" | tee -a "$OUT/session.log"; }

log "stage 1: machine"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1
  $PY -c "import jax, flax, optax, numpy; print('jax', jax.__version__, 'flax', flax.__version__,
'optax', optax.__version__, 'numpy', numpy.__version__); print(jax.devices())" 2>&1
  $PY -c "import torch; print('torch', torch.__version__)" 2>&1
  nproc
} | tee "$OUT/machine.txt"

if ! $PY -c "import open_clip" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
    .whl/*.whl && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi

log "stage 2: clic_jax CLIC step (left $(left) s)"
timeout $(( $(left) - 150 )) $PY -m benchmarks.accelerator --models="$MODELS" \
  --batch="$BATCH" --attention_impl=cudnn,default --warmup=2 --steps="$STEPS" \
  --json="$OUT/accelerator.json" 2>&1 | grep -v "^WARNING: All log messages" | tee -a "$OUT/session.log"

log "stage 3: PyTorch open_clip CLIC step (left $(left) s)"
timeout $(( $(left) - 60 > 30 ? $(left) - 60 : 30 )) $PY -m benchmarks.accelerator_torch \
  --models="$MODELS" --batch="$BATCH" --warmup=2 --steps="$STEPS" --json="$OUT/torch.json" 2>&1 \
  | tee -a "$OUT/session.log"

for extra in "clip --remat=false clip" "clic --remat=true remat" "clic --text_length=48 len48" \
             "clic --full_last_block full_last_block"; do
  set -- $extra
  if [ "$(left)" -gt 40 ]; then
    log "stage 4: $BIG $1 $2 (left $(left) s)"
    timeout $(( $(left) - 5 )) $PY -m benchmarks.accelerator --models="$BIG" --batch="$BATCH" \
      --kinds="$1" "$2" --attention_impl="$ATTN" --warmup=2 --steps="$STEPS" \
      --json="$OUT/$3.json" 2>&1 | grep -v "^WARNING: All log messages" | tee -a "$OUT/session.log"
  fi
done
if [ "$(left)" -gt 60 ]; then
  log "stage 5: exact gradient accumulation, ViT-B-16 batch 800, k=1,4 (left $(left) s)"
  timeout $(( $(left) - 5 )) $PY -m benchmarks.grad_accum --model=ViT-B-16 --batch=800 \
    --accum=1,4 --dtype=bfloat16 --no_trained_vision --json="$OUT/grad_accum.json" 2>&1 \
    | tee -a "$OUT/session.log"
fi
log "done (left $(left) s)"
