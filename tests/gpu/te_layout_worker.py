"""torchrun worker (CUDA, NCCL): Transformer Engine models trained a few steps in one TP layout.

Like tests/parallel/layout_worker.py, on GPUs: every mode starts from the same initial
checkpoint (``--save-init`` at TP=1), trains ``--steps`` steps on the same batches (fp32, so
layouts can be compared tightly) and rank 0 writes the losses and grad norms of every step.

    torchrun --nproc-per-node 2 tests/gpu/te_layout_worker.py --tp 2 --sp --init DIR --out F
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings

sys.path[:0] = [os.path.join(os.path.dirname(__file__), ".."), os.path.join(os.path.dirname(__file__), "..", "..")]
warnings.filterwarnings("ignore")

import torch  # noqa: E402

GLOBAL_BATCH, MICRO_BATCH = 4, 2


def microbatches(step: int):
    from gpu_models import BATCH, batch

    assert BATCH == MICRO_BATCH
    out = []
    for micro in range(GLOBAL_BATCH // MICRO_BATCH):
        tokens, labels, positions = batch(seed=100 * step + micro)
        out.append(dict(tokens=tokens, labels=labels, position_ids=positions,
                        loss_mask=torch.ones_like(tokens, dtype=torch.float32), attention_mask=None))
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--sp", action="store_true")
    parser.add_argument("--modes", default="none,ponder,ponder_topk,latent")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--init", required=True)
    parser.add_argument("--save-init", action="store_true")
    parser.add_argument("--out")
    args = parser.parse_args()

    from megatron.core import dist_checkpointing
    from megatron.core.optimizer import OptimizerConfig

    from gpu_models import SEQ, te_model
    from megatron_ponder.runtime.parallel_init import initialize_parallel, shutdown_parallel
    from megatron_ponder.training.optimizer import wrap_and_build_optimizer
    from megatron_ponder.training.step import train_step

    torch.backends.cuda.matmul.allow_tf32 = False
    initialize_parallel(tensor_model_parallel_size=args.tp)
    fields = dict(tensor_model_parallel_size=args.tp, sequence_parallel=args.sp)
    if args.save_init:
        model = te_model("none", "transformer_engine", dtype=torch.float32, **fields)
        os.makedirs(args.init, exist_ok=True)
        dist_checkpointing.save(model.sharded_state_dict(), args.init)
        shutdown_parallel()
        return
    results = {}
    for mode in args.modes.split(","):
        model = te_model(mode, "transformer_engine", dtype=torch.float32, **fields)
        model.load_state_dict(dist_checkpointing.load(model.sharded_state_dict(), args.init))
        chunks, optimizer = wrap_and_build_optimizer(
            [model], OptimizerConfig(optimizer="adam", lr=1e-3, clip_grad=1.0, adam_eps=1e-3))
        losses, norms = [], []
        for step in range(args.steps):
            result = train_step(chunks, optimizer, microbatches(step), MICRO_BATCH, SEQ, iteration=step)
            losses.append(result.loss)
            norms.append(result.grad_norm)
        results[mode] = dict(losses=losses, grad_norms=norms)
    if torch.distributed.get_rank() == 0 and args.out:
        with open(args.out, "w") as handle:
            json.dump(results, handle, indent=1)
    shutdown_parallel()


if __name__ == "__main__":
    main()
