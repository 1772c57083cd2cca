"""torchrun worker: load ``--load``'s latest checkpoint in this layout, then save it again to ``--save``.

The model, optimizer and schedule are built by the training entry point's own builders from the
pretrain flags given (layout, ``--ckpt-fully-parallel-load/-save`` included); the state loaded
by ``load_checkpoint`` is written unchanged by ``save_checkpoint`` under the same iteration.
A test then compares the two folders' global tensors: equal tensors mean the load in this layout
restored exactly what the other layout saved.

    torchrun --nproc-per-node 2 tests/parallel/checkpoint_reshard_worker.py <pretrain flags> \\
        --load SAVED --save RESAVED --tensor-model-parallel-size 2
"""

from __future__ import annotations

import os
import sys


def main(argv) -> None:
    from megatron_ponder.runtime.parallel_init import initialize_parallel, shutdown_parallel
    from megatron_ponder.training.arguments import finalize_args, parse_args
    from megatron_ponder.training.build import build_training_state, prepare_data
    from megatron_ponder.training.checkpointing.save_load import load_checkpoint, save_checkpoint
    from megatron_ponder.training.model_config import model_config

    args = parse_args(argv)
    finalize_args(args, int(os.environ.get("WORLD_SIZE", "1")))
    initialize_parallel(tensor_model_parallel_size=args.tensor_model_parallel_size,
                        pipeline_model_parallel_size=args.pipeline_model_parallel_size,
                        context_parallel_size=args.context_parallel_size, seed=args.seed)
    prepare_data(args)
    model, _, optimizer, scheduler = build_training_state(args, model_config(args))
    resumed = load_checkpoint(args.load, model, optimizer, scheduler, load_optimizer=True,
                              distributed_optimizer=args.use_distributed_optimizer,
                              fully_parallel=args.ckpt_fully_parallel_load)
    assert resumed is not None, f"no checkpoint in {args.load}"
    os.makedirs(args.save, exist_ok=True)
    save_checkpoint(args.save, resumed.iteration, model, optimizer, scheduler, resumed.consumed_samples,
                    run_args={}, distributed_optimizer=args.use_distributed_optimizer,
                    fully_parallel=args.ckpt_fully_parallel_save)
    shutdown_parallel()


if __name__ == "__main__":
    main(sys.argv[1:])
