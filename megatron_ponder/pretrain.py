"""Pretrain entry point: ``torchrun --nproc-per-node N -m megatron_ponder.pretrain [flags]``.

A flat path from data to loss: parse flags -> initialise TP/PP/CP/DP -> tokenizer and datasets ->
PonderGPTModel -> Megatron DDP + optimizer + LR schedule -> resume -> train / evaluate / save.
Flags are Megatron-LM's (``--help``); bad input stops with ``error: <one line>`` and exit code 2.
The pieces are built by :mod:`megatron_ponder.training.build`; this module is the loop and the
command line only, and nothing in the package imports it.
"""

from __future__ import annotations

import importlib.util
import math
import os
import sys
import time
import warnings
from typing import List, Optional

import torch

from megatron_ponder.runtime.parallel_init import print_rank0


def _evaluate(args, chunks, valid_stream) -> float:
    from megatron_ponder.training.step import evaluation_step

    total, tokens = 0.0, 0
    for _ in range(args.eval_iters):
        result = evaluation_step(chunks, valid_stream.next_step(), args.micro_batch_size, args.seq_length)
        total += result.loss * result.tokens
        tokens += result.tokens
    return total / max(tokens, 1)


def train(args) -> dict:
    """Run the whole job; returns a summary (losses, paths) for callers and tests."""
    from megatron.core import parallel_state

    from megatron_ponder.training.build import build_training_state, microbatch_stream, prepare_data
    from megatron_ponder.training.checkpointing import load_checkpoint, save_checkpoint
    from megatron_ponder.training.flops import step_flops
    from megatron_ponder.training.model_config import model_config
    from megatron_ponder.training.grad_overlap import gather_parameters_now
    from megatron_ponder.training.run_logger import RunLogger
    from megatron_ponder.training.step import train_step

    train_set, valid_set = prepare_data(args)
    config = model_config(args)
    model, chunks, optimizer, scheduler = build_training_state(args, config)

    start_iteration, consumed = 0, 0
    if args.load:
        resumed = load_checkpoint(args.load, model, optimizer, scheduler,
                                  load_optimizer=not args.no_load_optim,
                                  distributed_optimizer=args.use_distributed_optimizer)
        if resumed is not None:
            start_iteration, consumed = resumed.iteration, resumed.consumed_samples
            print_rank0(f"resumed from {args.load} at iteration {start_iteration} ({consumed} samples consumed)")
        else:
            print_rank0(f"no checkpoint in {args.load} yet: starting from scratch")

    dp_rank = parallel_state.get_data_parallel_rank()
    dp_size = parallel_state.get_data_parallel_world_size()
    stream = microbatch_stream(args, train_set, dp_rank, dp_size, consumed)
    valid_stream = lambda: microbatch_stream(args, valid_set, dp_rank, dp_size)  # noqa: E731

    logger = RunLogger(args, total_iters=args.train_iters, start_iteration=start_iteration)
    run_args = {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool, type(None), list, tuple))}
    summary = dict(train_losses=[], valid_losses=[], checkpoints=[])

    def evaluate(iteration):
        loss = _evaluate(args, chunks, valid_stream())
        summary["valid_losses"].append((iteration, loss))
        logger.log_evaluation(iteration, loss)

    def save(iteration):
        gather_parameters_now(chunks)  # --overlap-param-gather leaves the last all-gather to the next forward
        folder = save_checkpoint(args.save, iteration, model, optimizer, scheduler, stream.consumed_samples,
                                 run_args, args.use_distributed_optimizer)
        summary["checkpoints"].append(folder)
        print_rank0(f"saved checkpoint {folder}")

    if start_iteration == 0 and args.eval_iters > 0:
        evaluate(0)
    last_saved = start_iteration
    done = start_iteration
    for iteration in range(start_iteration, args.train_iters):
        started = time.perf_counter()
        result = train_step(chunks, optimizer, stream.next_step(), args.micro_batch_size, args.seq_length,
                            iteration, nan_policy=args.nan_policy)
        if not result.skipped:
            scheduler.step(increment=args.global_batch_size)
        done = iteration + 1
        flops = step_flops(config, args.seq_length, args.global_batch_size, args.vocab_size, result.jacobi_rounds)
        summary["train_losses"].append((done, result.loss))
        logger.log_step(done, result, optimizer.param_groups[0]["lr"], time.perf_counter() - started,
                        flops, stream.consumed_samples)
        exiting = bool(args.exit_interval) and done % args.exit_interval == 0
        if args.save and (exiting or (args.save_interval and done % args.save_interval == 0)):
            save(done)
            last_saved = done
        if exiting:
            print_rank0(f"exiting at iteration {done} (--exit-interval {args.exit_interval})")
            logger.close()
            return summary
        if args.eval_iters and args.eval_interval and done % args.eval_interval == 0 and done != args.train_iters:
            evaluate(done)
    if args.eval_iters:
        evaluate(done)
    if args.save and last_saved != done:
        save(done)
    logger.close()
    return summary


def main(argv: Optional[List[str]] = None) -> int:
    warnings.filterwarnings("ignore", message=".*Transformer Engine and Apex are not installed.*")
    warnings.filterwarnings("ignore", message=".*Apex is not installed.*")
    from megatron_ponder.config import PonderConfigError
    from megatron_ponder.data.errors import DataError
    from megatron_ponder.sequence_layout import ContextParallelLayoutError
    from megatron_ponder.runtime.parallel_init import initialize_parallel, shutdown_parallel
    from megatron_ponder.training.arguments import ArgumentError, describe, finalize_args, parse_args
    from megatron_ponder.training.checkpointing import CheckpointError
    from megatron_ponder.training.step import NonFiniteLossError

    user_errors = (ArgumentError, DataError, PonderConfigError, ContextParallelLayoutError, CheckpointError,
                   NonFiniteLossError)
    args = parse_args(argv)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    try:
        finalize_args(args, world_size)
        initialize_parallel(
            tensor_model_parallel_size=args.tensor_model_parallel_size,
            pipeline_model_parallel_size=args.pipeline_model_parallel_size,
            context_parallel_size=args.context_parallel_size,
            seed=args.seed,
        )
        print_rank0(f"megatron_ponder pretrain: {world_size} process(es), "
                    f"{'CUDA' if torch.cuda.is_available() else 'CPU (gloo)'}")
        print_rank0("\n".join(describe(args)))
        summary = train(args)
    except user_errors as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        return 2
    if args.save:
        print_rank0(f"checkpoints: {args.save} (to Hugging Face: python tools/convert_checkpoint.py export "
                    f"--load {args.save} --out HF_DIR)")
    if args.tensorboard_dir and importlib.util.find_spec("tensorboard") is not None:
        print_rank0(f"tensorboard: {args.tensorboard_dir}")
    if summary["valid_losses"]:
        first, last = summary["valid_losses"][0][1], summary["valid_losses"][-1][1]
        print_rank0(f"validation loss: {first:.4f} -> {last:.4f} (ppl {math.exp(min(first, 50)):.1f} -> "
                    f"{math.exp(min(last, 50)):.1f})")
    shutdown_parallel()
    return 0


if __name__ == "__main__":
    sys.exit(main())
