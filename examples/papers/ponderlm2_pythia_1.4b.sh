#!/usr/bin/env bash
# PonderLM-2 (arXiv 2509.23184) on Pythia-1.4B: one latent thought per token, from scratch.
#
#   DATA_PATH=pile_text_document TOKENIZER=pythia_tokenizer/ \
#       bash examples/papers/ponderlm2_pythia_1.4b.sh [layout flags]
#
# Pythia-1.4B shape (preset pythia-1.4b: neox style, untied) and Pythia's own schedule, which the
# paper's 300B-token comparison with the Pythia suite follows: 143k steps x 1024 x 2048 tokens,
# LR 2e-4, 1% warm-up, cosine to 10%, weight decay 0.01, AdamW betas (0.9, 0.95), bf16. The
# method as in the LLaMA recipe: N = 1, J drawn from {2, 3}, J = 3 at evaluation, the papers'
# init (GPT-NeoX file: output projections / sqrt(2 layers (N+1))). docs/papers.md says which of
# these the paper states and which are assumed.
# Environment overrides and PRINT_FLAGS: examples/papers/launch.sh.
source "$(dirname "$0")/launch.sh"

PRESET=${PRESET:-pythia-1.4b}
TRAIN_ITERS=${TRAIN_ITERS:-143000}
LR=2e-4
WARMUP_PERCENT=1
RECIPE_FLAGS=(
    --ponder-mode latent --num-latent-thoughts 1 --jacobi-train-rounds 2,3 --jacobi-eval-rounds 3
    --init-style ponderlm --untie-embeddings-and-output-weights
    --weight-decay 0.01
)
launch_recipe "$@"
