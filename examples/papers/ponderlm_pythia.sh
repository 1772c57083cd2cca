#!/usr/bin/env bash
# PonderLM (arXiv 2505.20674) on the Pythia shapes: pondering with S = 3 steps, from scratch.
#
#   DATA_PATH=pile_text_document TOKENIZER=pythia_tokenizer/ \
#       bash examples/papers/ponderlm_pythia.sh 410m [layout flags, e.g. --tensor-model-parallel-size 2]
#
# SIZE: 70m | 160m | 410m | 1b | 1.4b. The papers' settings (their reference scripts):
#   AdamW betas (0.9, 0.95), 1% warm-up, cosine to 10% of the peak LR, untied embeddings (the
#   neox style), bf16, 1024 x 2048 tokens (about 2.1M) per step, the papers' init
#   (--init-style ponderlm), inputs and mixture scaled by sqrt(h), mixture accumulated.
#   size     LR       weight decay
#   70m      1e-3     0.01
#   160m     6e-4     0.01
#   410m     3e-4     0.1
#   1b       2.5e-4   0.01
#   1.4b     2e-4     0.01
# TRAIN_ITERS defaults to 143000 steps (300B tokens, Pythia's schedule; see docs/papers.md).
# Environment overrides and PRINT_FLAGS: examples/papers/launch.sh.
source "$(dirname "$0")/launch.sh"

SIZE=${1:-}
case "$SIZE" in
    70m)  LR=1e-3;   WEIGHT_DECAY=0.01 ;;
    160m) LR=6e-4;   WEIGHT_DECAY=0.01 ;;
    410m) LR=3e-4;   WEIGHT_DECAY=0.1 ;;
    1b)   LR=2.5e-4; WEIGHT_DECAY=0.01 ;;
    1.4b) LR=2e-4;   WEIGHT_DECAY=0.01 ;;
    *) fail "first argument: the Pythia size, one of 70m 160m 410m 1b 1.4b (got '${SIZE}')" ;;
esac
shift

PRESET=${PRESET:-pythia-$SIZE}
RUN_DIR=${RUN_DIR:-runs/ponderlm_pythia_$SIZE}
TRAIN_ITERS=${TRAIN_ITERS:-143000}
WARMUP_PERCENT=1
HIDDEN=$(python -c "from megatron_ponder.training.presets import PRESETS; print(PRESETS['$PRESET']['hidden_size'])")
for ((i = 1; i <= $#; i++)); do  # a --hidden-size given to the recipe sets the scale too
    if [[ "${!i}" == "--hidden-size" ]]; then j=$((i + 1)); HIDDEN=${!j}; fi
done
RECIPE_FLAGS=(
    --ponder-mode ponder --ponder-steps 3
    --input-embedding-scale "$(calc "math.sqrt($HIDDEN)")"
    --init-style ponderlm --untie-embeddings-and-output-weights
    --weight-decay "$WEIGHT_DECAY"
)
launch_recipe "$@"
