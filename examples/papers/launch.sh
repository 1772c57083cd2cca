# Shared launcher of the paper recipes (sourced, not run): data flags, schedule arithmetic, torchrun.
#
# A recipe sets RECIPE_FLAGS (the paper's settings as pretrain flags), LR, TRAIN_ITERS,
# WARMUP_PERCENT and PRESET, then calls `launch_recipe "$@"`. Everything below can be overridden
# from the environment; flags given to the recipe are appended last and win over the recipe's.
#
#   DATA_PATH     your preprocessed corpus: indexed-dataset prefix(es), "[W1] P1 [W2] P2 ..."
#                 (tools/preprocess_data.py; the papers used the Pile)
#   TOKENIZER     the tokenizer folder / tokenizer.json used for preprocessing (HuggingFaceTokenizer)
#   NPROC         processes on this node (default: number of GPUs, else 1)
#   GLOBAL_BATCH_SIZE, MICRO_BATCH_SIZE, TRAIN_ITERS, PRESET, SEQ_LENGTH: schedule / shape
#   BF16=1        bf16 (the papers' precision); BF16=0 for fp32 (CPU smoke runs)
#   RUN_DIR       checkpoints and TensorBoard logs (default runs/<recipe name>)
#   PRINT_FLAGS=1 print the pretrain flags (one per line) instead of launching, e.g. for Slurm:
#                 sbatch examples/slurm/pretrain_ponder_gpt.sbatch $(PRINT_FLAGS=1 bash RECIPE ...)

set -euo pipefail

fail() { echo "$(basename "$0"): $*" >&2; exit 2; }

# Float arithmetic for the schedule (bash has integers only).
calc() { python -c "import math; print('%.10g' % ($1))"; }

launch_recipe() {
    local name
    name=$(basename "$0" .sh)
    RUN_DIR=${RUN_DIR:-runs/$name}
    GLOBAL_BATCH_SIZE=${GLOBAL_BATCH_SIZE:-1024}
    MICRO_BATCH_SIZE=${MICRO_BATCH_SIZE:-4}
    SEQ_LENGTH=${SEQ_LENGTH:-2048}
    BF16=${BF16:-1}

    local data=()
    local user_gives_data=0
    for arg in "$@"; do
        if [[ "$arg" == "--data-path" || "$arg" == "--mock-data" ]]; then user_gives_data=1; fi
    done
    if [[ -n "${DATA_PATH:-}" ]]; then
        # shellcheck disable=SC2206  # a blend is several words on purpose
        data=(--data-path $DATA_PATH)
    elif [[ "$user_gives_data" == 0 ]]; then
        fail "set DATA_PATH to your preprocessed corpus (and TOKENIZER to its tokenizer); see docs/papers.md"
    fi
    if [[ -n "${TOKENIZER:-}" ]]; then
        data+=(--tokenizer-type HuggingFaceTokenizer --tokenizer-model "$TOKENIZER")
    fi

    # Warm-up: WARMUP_PERCENT of the steps; cosine decay to 10% of the peak LR.
    local warmup min_lr
    warmup=$(calc "max(1, round($TRAIN_ITERS * $WARMUP_PERCENT / 100))")
    min_lr=$(calc "$LR / 10")
    local flags=(
        --preset "$PRESET" --seq-length "$SEQ_LENGTH"
        "${RECIPE_FLAGS[@]}"
        --lr "$LR" --min-lr "$min_lr" --lr-decay-style cosine --lr-warmup-iters "$warmup"
        --train-iters "$TRAIN_ITERS" --global-batch-size "$GLOBAL_BATCH_SIZE" --micro-batch-size "$MICRO_BATCH_SIZE"
        --adam-beta1 0.9 --adam-beta2 0.95
        "${data[@]}"
        --save "$RUN_DIR/checkpoints" --load "$RUN_DIR/checkpoints"
        --tensorboard-dir "$RUN_DIR/tensorboard"
    )
    if [[ "$BF16" == 1 ]]; then flags+=(--bf16); fi
    flags+=("$@")

    if [[ "${PRINT_FLAGS:-0}" == 1 ]]; then
        printf '%s\n' "${flags[@]}"
        return 0
    fi
    if [[ -z "${NPROC:-}" ]]; then
        NPROC=$(python -c "import torch; print(torch.cuda.device_count() or 1)" 2>/dev/null || echo 1)
    fi
    python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null \
        || export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
    echo "$name: $NPROC process(es), preset $PRESET, $TRAIN_ITERS steps x $GLOBAL_BATCH_SIZE x $SEQ_LENGTH tokens"
    exec python -m torch.distributed.run --nproc-per-node "$NPROC" --master-addr 127.0.0.1 \
        --master-port "${MASTER_PORT:-29500}" -m megatron_ponder.pretrain "${flags[@]}"
}
