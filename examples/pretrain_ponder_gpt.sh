#!/usr/bin/env bash
# Pretrain a GPT that thinks before each token, with Megatron-Core.
#
# With no arguments, on any machine and offline: builds the built-in corpus (the Python standard
# library sources of this interpreter) and a byte-level BPE tokenizer trained on it, trains a
# small latent-thought model (PonderLM-2, N=1 thought per token, J in {2,3} Jacobi rounds, the
# gradient through the last 2 passes) for a few minutes, evaluates it, saves a checkpoint and
# prints where everything went.
# One process per GPU; without a GPU, 2 CPU processes over gloo (data parallel).
#
# Three ways to launch it (the settings below hold for all three):
#   bash examples/pretrain_ponder_gpt.sh [flags]                     starts torchrun itself
#   torchrun --nproc-per-node N examples/pretrain_ponder_gpt.sh [flags]      (as a Python file)
#   torchrun --no-python --nproc-per-node N examples/pretrain_ponder_gpt.sh [flags]
# The file is valid bash and valid Python: bash reads the `''':'` line below as the no-op `:` and
# runs the bash part; Python reads the bash part as a string and runs the few lines at the end,
# which hand each torchrun worker to the bash part. Under torchrun (LOCAL_RANK set) the bash part
# runs the entry point directly instead of launching torchrun again.
#
# Settings (environment variables; any pretrain flag can also be appended and wins):
#   RUN_DIR=runs/default       where data, checkpoints and TensorBoard logs go
#   PONDER_MODE=latent         latent | ponder | none
#   PRESET=cpu-tiny            model shape: cpu-tiny cpu-small pythia-70m ... pythia-2.8b llama-1.4b
#   TRAIN_ITERS=300            optimizer steps
#   MICRO_BATCH_SIZE=4         samples per process per microbatch
#   GLOBAL_BATCH_SIZE=         samples per step (default: micro batch x data-parallel size)
#   LR=                        peak learning rate (cosine decay); default per mode, below
#   INIT_STYLE=                megatron | ponderlm (the papers' init); default per mode, below
#   INPUT_EMBEDDING_SCALE=     multiplier of E(x): a number or sqrt-hidden; default per mode, below
#                              (empty: the mode's own, 1 for ponder/none, 1/init-std for latent)
#   LR_WARMUP_FRACTION=        warm-up as a fraction of the steps; default per mode, below (empty:
#                              the entry point's min(20, steps/5); an appended --lr-warmup-iters N wins)
#   GRAD_PASSES=               K, the last ponder steps (--ponder-grad-steps) or Jacobi rounds
#                              (--jacobi-grad-rounds) that build the autograd graph; `all` backpropagates
#                              through every one (the papers); default per mode, below
# Per-mode defaults, from the training-dynamics study (docs/training_dynamics.md; the table in
# docs/training.md): LR=3e-3 and INIT_STYLE=ponderlm for every mode; LR_WARMUP_FRACTION=0.2
# (60 of the 300 steps) for none, the entry point's 20 steps for ponder and latent;
# INPUT_EMBEDDING_SCALE=sqrt-hidden for ponder; GRAD_PASSES=2 for ponder and latent (truncated
# backprop study: within 0.02 nats of all passes on both corpora, 0.82x / 0.89x the FLOPs).
#   SAVE_INTERVAL=100          checkpoint every N steps
#   PYTHON=python              interpreter that runs the entry point
# When this script starts torchrun itself (bash form):
#   NPROC=                     processes (default: number of GPUs, else 2)
#   MAX_RESTARTS=0             torchrun restarts; a restarted run resumes from the latest checkpoint
#   MASTER_PORT=29500
# Examples:
#   bash examples/pretrain_ponder_gpt.sh
#   PONDER_MODE=ponder TRAIN_ITERS=100 bash examples/pretrain_ponder_gpt.sh --ponder-steps 2
#   bash examples/pretrain_ponder_gpt.sh --data-path my_corpus_text_document \
#        --tokenizer-type HuggingFaceTokenizer --tokenizer-model my_tokenizer/ --preset pythia-160m --bf16
''':'
set -euo pipefail

RUN_DIR=${RUN_DIR:-runs/default}
PONDER_MODE=${PONDER_MODE:-latent}
PRESET=${PRESET:-cpu-tiny}
TRAIN_ITERS=${TRAIN_ITERS:-300}
MICRO_BATCH_SIZE=${MICRO_BATCH_SIZE:-4}
# Per-mode defaults (docs/training_dynamics.md): the settings each method trained best with.
case "$PONDER_MODE" in
    none)   MODE_LR=3e-3; MODE_INIT_STYLE=ponderlm; MODE_WARMUP_FRACTION=0.2; MODE_SCALE= ;          MODE_GRAD_PASSES= ;;
    ponder) MODE_LR=3e-3; MODE_INIT_STYLE=ponderlm; MODE_WARMUP_FRACTION=;    MODE_SCALE=sqrt-hidden; MODE_GRAD_PASSES=2 ;;
    latent) MODE_LR=3e-3; MODE_INIT_STYLE=ponderlm; MODE_WARMUP_FRACTION=;    MODE_SCALE= ;          MODE_GRAD_PASSES=2 ;;
    *) echo "pretrain_ponder_gpt.sh: PONDER_MODE=$PONDER_MODE: use latent, ponder or none" >&2; exit 2 ;;
esac
LR=${LR:-$MODE_LR}
INIT_STYLE=${INIT_STYLE:-$MODE_INIT_STYLE}
LR_WARMUP_FRACTION=${LR_WARMUP_FRACTION-$MODE_WARMUP_FRACTION}
SCHEDULE_ARGS=()
if [[ -n "$LR_WARMUP_FRACTION" ]]; then SCHEDULE_ARGS=(--lr-warmup-fraction "$LR_WARMUP_FRACTION"); fi
INPUT_EMBEDDING_SCALE=${INPUT_EMBEDDING_SCALE-$MODE_SCALE}
if [[ -n "$INPUT_EMBEDDING_SCALE" ]]; then SCHEDULE_ARGS+=(--input-embedding-scale "$INPUT_EMBEDDING_SCALE"); fi
GRAD_PASSES=${GRAD_PASSES-$MODE_GRAD_PASSES}
if [[ -n "$GRAD_PASSES" ]]; then
    case "$PONDER_MODE" in
        ponder) SCHEDULE_ARGS+=(--ponder-grad-steps "$GRAD_PASSES") ;;
        latent) SCHEDULE_ARGS+=(--jacobi-grad-rounds "$GRAD_PASSES") ;;
        *) echo "pretrain_ponder_gpt.sh: GRAD_PASSES=$GRAD_PASSES: only ponder and latent have passes to truncate; unset GRAD_PASSES for PONDER_MODE=$PONDER_MODE" >&2; exit 2 ;;
    esac
fi
SAVE_INTERVAL=${SAVE_INTERVAL:-100}
PYTHON=${PYTHON:-python}
MAX_RESTARTS=${MAX_RESTARTS:-0}
MASTER_PORT=${MASTER_PORT:-29500}

# One thread per CPU process: two threads per process on two cores made a step 40x slower.
"$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null || export OMP_NUM_THREADS=1

DATA_ARGS=(--default-corpus "$RUN_DIR/data")
for arg in "$@"; do
    if [[ "$arg" == "--data-path" || "$arg" == "--mock-data" || "$arg" == "--default-corpus" ]]; then DATA_ARGS=(); fi
done
BATCH_ARGS=(--micro-batch-size "$MICRO_BATCH_SIZE")
if [[ -n "${GLOBAL_BATCH_SIZE:-}" ]]; then BATCH_ARGS+=(--global-batch-size "$GLOBAL_BATCH_SIZE"); fi
PRETRAIN=(-m megatron_ponder.pretrain
    --preset "$PRESET"
    --ponder-mode "$PONDER_MODE"
    "${DATA_ARGS[@]}"
    "${BATCH_ARGS[@]}"
    --train-iters "$TRAIN_ITERS"
    --lr "$LR" "${SCHEDULE_ARGS[@]}" --init-style "$INIT_STYLE"
    --eval-interval 100 --eval-iters 4 --log-interval 10
    --save "$RUN_DIR/checkpoints" --load "$RUN_DIR/checkpoints" --save-interval "$SAVE_INTERVAL"
    --tensorboard-dir "$RUN_DIR/tensorboard"
    "$@")

if [[ -n "${LOCAL_RANK:-}" ]]; then
    # A torchrun worker already (torchrun [--no-python] ... this file): run the entry point.
    if [[ "${RANK:-0}" == 0 ]]; then
        echo "pretrain_ponder_gpt.sh: torchrun worker 0 of ${WORLD_SIZE:-1}, mode $PONDER_MODE, preset $PRESET, run folder $RUN_DIR"
    fi
    exec "$PYTHON" "${PRETRAIN[@]}"
fi

if [[ -z "${NPROC:-}" ]]; then
    GPUS=$("$PYTHON" -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)
    if [[ "$GPUS" -gt 0 ]]; then NPROC=$GPUS; else NPROC=2; fi
fi
echo "pretrain_ponder_gpt.sh: $NPROC process(es), mode $PONDER_MODE, preset $PRESET, run folder $RUN_DIR"
exec "$PYTHON" -m torch.distributed.run --nproc-per-node "$NPROC" --master-addr 127.0.0.1 --master-port "$MASTER_PORT" \
    --max-restarts "$MAX_RESTARTS" "${PRETRAIN[@]}"
# bash never gets past the exec above; for its parser the Python part is a here-document up to `pass`.
: <<'pass'
'''
# Python part: `torchrun ... examples/pretrain_ponder_gpt.sh` runs this file with Python in every
# worker; each one becomes the bash part above (same process, so torchrun still watches it).
import os
import sys

os.environ.setdefault("PYTHON", sys.executable)
os.execvp("bash", ["bash", os.path.abspath(__file__), *sys.argv[1:]])
pass
