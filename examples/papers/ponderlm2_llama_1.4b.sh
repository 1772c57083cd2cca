#!/usr/bin/env bash
# PonderLM-2 (arXiv 2509.23184) on LLaMA-1.4B: one latent thought per token, from scratch.
#
#   DATA_PATH=pile_text_document TOKENIZER=tokenizer/ \
#       bash examples/papers/ponderlm2_llama_1.4b.sh [layout flags]
#
# The paper's settings (its reference script): 24 layers, hidden 2048, 32 heads, FFN 5504,
# untied (preset llama-1.4b; vocabulary 50304 with the GPT-NeoX tokenizer); 50k steps x 256 x
# 2048 tokens; LR 2e-4, 2% warm-up, cosine to 10%; weight decay 0.1; AdamW betas (0.9, 0.95);
# bf16; N = 1 thought, J drawn from {2, 3} per step, J = 3 at evaluation; the papers' init
# (--init-style ponderlm: the latent input scale follows, sqrt(2.5 h)).
# Environment overrides and PRINT_FLAGS: examples/papers/launch.sh.
source "$(dirname "$0")/launch.sh"

PRESET=${PRESET:-llama-1.4b}
TRAIN_ITERS=${TRAIN_ITERS:-50000}
GLOBAL_BATCH_SIZE=${GLOBAL_BATCH_SIZE:-256}
LR=2e-4
WARMUP_PERCENT=2
RECIPE_FLAGS=(
    --ponder-mode latent --num-latent-thoughts 1 --jacobi-train-rounds 2,3 --jacobi-eval-rounds 3
    --init-style ponderlm --untie-embeddings-and-output-weights
    --weight-decay 0.1
)
launch_recipe "$@"
