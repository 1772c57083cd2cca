"""torchrun worker (CUDA, NCCL): Transformer Engine models trained a few steps in one TP layout.

Like tests/parallel/layout_worker.py, on GPUs: every mode starts from the same initial
checkpoint (``--save-init`` at TP=1), trains ``--steps`` steps on the same batches (fp32, so
layouts can be compared tightly) and rank 0 writes the losses and grad norms of every step.

    torchrun --nproc-per-node 2 tests/gpu/te_layout_worker.py --tp 2 --sp --init DIR --out F
"""

from __future__ import annotations

import argparse

import torch

from support.worker import run_worker, save_initial_checkpoint, train_from_checkpoint

GLOBAL_BATCH, MICRO_BATCH = 4, 2


def microbatches(step: int):
    from support.gpu_models import BATCH, batch

    assert BATCH == MICRO_BATCH
    out = []
    for micro in range(GLOBAL_BATCH // MICRO_BATCH):
        tokens, labels, positions = batch(seed=100 * step + micro)
        out.append(dict(tokens=tokens, labels=labels, position_ids=positions,
                        loss_mask=torch.ones_like(tokens, dtype=torch.float32), attention_mask=None))
    return out


def parse_args():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--sp", action="store_true")
    parser.add_argument("--modes", default="none,ponder,ponder_topk,latent1")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--init", required=True)
    parser.add_argument("--save-init", action="store_true")
    parser.add_argument("--out")
    return parser.parse_args()


def train_modes(args):
    """The initial checkpoint (``--save-init``, TP=1), or every mode's losses and grad norms."""
    from megatron.core.optimizer import OptimizerConfig

    from megatron_ponder.runtime.parallel_init import initialize_parallel
    from support.gpu_models import SEQ, te_model

    torch.backends.cuda.matmul.allow_tf32 = False
    initialize_parallel(tensor_model_parallel_size=args.tp)
    fields = dict(tensor_model_parallel_size=args.tp, sequence_parallel=args.sp)
    if args.save_init:
        save_initial_checkpoint(te_model("none", "transformer_engine", dtype=torch.float32, **fields), args.init)
        return None
    results = {}
    for mode in args.modes.split(","):
        model = te_model(mode, "transformer_engine", dtype=torch.float32, **fields)
        optimizer_config = OptimizerConfig(optimizer="adam", lr=1e-3, clip_grad=1.0, adam_eps=1e-3)
        results[mode] = train_from_checkpoint(model, args.init, optimizer_config, args.steps, microbatches,
                                              MICRO_BATCH, SEQ)
    return results


if __name__ == "__main__":
    arguments = parse_args()
    run_worker(lambda: train_modes(arguments), arguments.out)
