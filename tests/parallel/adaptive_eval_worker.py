"""torchrun worker: adaptive-round evaluation (``--jacobi-eval-tol``) of a tiny latent model.

Loads the initial checkpoint (``--init``; written first with ``--save-init`` in a world of one),
then runs ``evaluation_step`` on the same batches at each tolerance of ``--tols``, and records
per tolerance the global loss, the reported mean rounds and, per rank, how many rounds this rank
ran (the calls of the stop rule): every rank writes ``out.rank<r>.json``.

    torchrun --nproc-per-node 2 tests/parallel/adaptive_eval_worker.py --cp 2 --init DIR --out F
"""

from __future__ import annotations

import argparse

import torch

from layout_worker import SEQ_LENGTH, build, microbatches
from megatron_ponder.variants import variant
from support.worker import run_worker, save_initial_checkpoint

CAP = 4  # jacobi_eval_rounds
MODE = variant("latent2", rounds=(1, 3), jacobi_eval_rounds=CAP)


def parse_args():
    parser = argparse.ArgumentParser()
    for flag in ("--tp", "--cp"):
        parser.add_argument(flag, type=int, default=1)
    parser.add_argument("--sp", action="store_true")
    parser.add_argument("--tols", default="0,1e-2,1e-3,1e9")
    parser.add_argument("--init", required=True)
    parser.add_argument("--save-init", action="store_true")
    parser.add_argument("--out")
    args = parser.parse_args()
    # What layout_worker.build reads besides these.
    args.style, args.pp, args.untied, args.layers, args.recompute = "llama", 1, False, None, "none"
    return args


def evaluate(args):
    from megatron.core import dist_checkpointing, parallel_state

    from megatron_ponder.model import ponder_gpt
    from megatron_ponder.runtime.parallel_init import initialize_parallel
    from megatron_ponder.training.step import evaluation_step

    initialize_parallel(tensor_model_parallel_size=args.tp, context_parallel_size=args.cp)
    if args.save_init:
        save_initial_checkpoint(build(args, variant("none")), args.init)
    model = build(args, MODE)
    model.load_state_dict(dist_checkpointing.load(model.sharded_state_dict(), args.init))
    calls = []
    counted = ponder_gpt.residual_below
    ponder_gpt.residual_below = lambda *a, **k: calls.append(1) or counted(*a, **k)
    dp_rank = parallel_state.get_data_parallel_rank()
    dp_size = parallel_state.get_data_parallel_world_size()
    results = {}
    for text in args.tols.split(","):
        model.config.jacobi_eval_tol = float(text)
        calls.clear()
        result = evaluation_step([model], microbatches(0, dp_rank, dp_size, 2), 2, SEQ_LENGTH)
        results[text] = dict(loss=result.loss, mean_rounds=result.mean_jacobi_rounds, stop_checks=len(calls),
                             rank=torch.distributed.get_rank())
    return results


if __name__ == "__main__":
    arguments = parse_args()
    run_worker(lambda: evaluate(arguments), arguments.out, every_rank=True)
