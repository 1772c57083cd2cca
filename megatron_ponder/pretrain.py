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
from typing import List, Optional, Tuple

import torch

from megatron_ponder.runtime.parallel_init import print_rank0

_STARTED = time.monotonic()  # --exit-duration-in-mins counts from here, as Megatron's from its start

if __name__ == "__mp_main__":
    # A process multiprocessing spawned from the trainer (Megatron's checkpoint Manager() server):
    # it must end with the trainer, SIGKILL included (runtime/child_processes.py).
    from megatron_ponder.runtime.child_processes import die_with_parent

    die_with_parent()


def _evaluate(args, chunks, valid_stream) -> Tuple[float, Optional[float]]:
    """(validation loss, mean Jacobi rounds per microbatch: latent mode, else None)."""
    from megatron_ponder.training.step import evaluation_step

    total, tokens, rounds = 0.0, 0, []
    for _ in range(args.eval_iters):
        result = evaluation_step(chunks, valid_stream.next_step(), args.micro_batch_size, args.seq_length)
        total += result.loss * result.tokens
        tokens += result.tokens
        if result.mean_jacobi_rounds is not None:
            rounds.append(result.mean_jacobi_rounds)
    return total / max(tokens, 1), (sum(rounds) / len(rounds) if rounds else None)


def train(args) -> dict:
    """Run the whole job; returns a summary (losses, paths) for callers and tests."""
    from megatron.core import parallel_state

    from megatron_ponder.training.build import build_training_state, microbatch_stream, prepare_data
    from megatron_ponder.training.checkpointing.save_load import AsyncSaves, load_checkpoint, save_checkpoint
    from megatron_ponder.training.checkpointing.exit_signals import ExitConditions
    from megatron_ponder.training.flops import step_flops
    from megatron_ponder.training.grad_overlap import gather_parameters_now
    from megatron_ponder.training.model_config import model_config
    from megatron_ponder.training.nan_guard import SkipLimit, check_parameters_finite
    from megatron_ponder.training.profiling import StepProfiler
    from megatron_ponder.training.checkpointing.run_identity import prepare_resume, verify_resume
    from megatron_ponder.training.checkpointing.run_lock import acquire_run_lock
    from megatron_ponder.training.run_logger import RunLogger
    from megatron_ponder.training.nan_guard import NonFiniteLossError
    from megatron_ponder.training.step import train_step

    acquire_run_lock(args.save)  # refuses a second run on this --save; released at exit
    prepare_resume(args)  # --save/--load folder rules, --use-checkpoint-args
    train_set, valid_set = prepare_data(args)
    verify_resume(args)  # the checkpoint's shape/method flags = these
    config = model_config(args)
    from megatron_ponder.training.fusions import FUSION_FLAGS, blocked_fusions

    # The flags above say what was asked for; these are what this machine's kernels allow.
    print_rank0("kernel fusions: " + ", ".join(f"{field} {'on' if getattr(config, field) else 'off'}"
                                              for field in FUSION_FLAGS))
    if config.transformer_impl == "transformer_engine":  # only TE's kernels are ruled out by a run
        for field, reason in blocked_fusions(args, config.transformer_impl).items():
            print_rank0(f"{field} off: {reason}")
    # Before the build: --record-memory-history sees the model's allocations.
    profiler = StepProfiler(args, torch.distributed.get_rank(), torch.distributed.get_world_size())
    model, chunks, optimizer, scheduler = build_training_state(args, config)

    start_iteration, consumed = 0, 0
    if args.load:
        resumed = load_checkpoint(args.load, model, optimizer, scheduler,
                                  load_optimizer=not (args.no_load_optim or args.finetune),
                                  distributed_optimizer=args.use_distributed_optimizer, load_rng=not args.finetune,
                                  load_scheduler=not args.finetune, fully_parallel=args.ckpt_fully_parallel_load)
        if resumed is not None and args.finetune:
            print_rank0(f"--finetune: weights of {args.load} (iteration {resumed.iteration}), new run from iteration 0")
        elif resumed is not None:
            start_iteration, consumed = resumed.iteration, resumed.consumed_samples
            print_rank0(f"resumed from {args.load} at iteration {start_iteration} ({consumed} samples consumed)"
                        + ("" if resumed.rng_restored else "; random generators not restored (saved with another "
                           "layout or without them): dropout differs from an uninterrupted run")
                        + ("" if resumed.schedule_restored or start_iteration == 0 else "; the LR/WD schedule starts "
                           "again from warm-up (the checkpoint holds no schedule state)"))
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
        loss, jacobi_rounds = _evaluate(args, chunks, valid_stream())
        summary["valid_losses"].append((iteration, loss))
        logger.log_evaluation(iteration, loss, jacobi_rounds)

    async_saves = AsyncSaves() if args.async_save and args.save else None

    def saved(folders):
        for folder in folders:
            summary["checkpoints"].append(folder)
            print_rank0(f"saved checkpoint {folder}")

    def save(iteration):
        gather_parameters_now(chunks)  # --overlap-param-gather leaves the last all-gather to the next forward
        check_parameters_finite(model, iteration, last_saved)  # NaN weights never become the latest
        if async_saves is not None:  # the previous one is finalized first
            saved(async_saves.maybe_finalize_async_calls(blocking=True))
        folder = save_checkpoint(args.save, iteration, model, optimizer, scheduler, stream.consumed_samples,
                                 run_args, args.use_distributed_optimizer, save_optimizer=not args.no_save_optim,
                                 keep_last=args.keep_last_checkpoints, async_saves=async_saves,
                                 fully_parallel=args.ckpt_fully_parallel_save)
        saved([folder] if folder else [])

    def finish_saves():
        """--async-save: wait until the save in flight is complete on every rank and the pointer names it."""
        if async_saves is not None:
            saved(async_saves.maybe_finalize_async_calls(blocking=True))

    if start_iteration == 0 and args.eval_iters > 0:
        evaluate(0)
    last_saved = start_iteration
    done = start_iteration
    skips = SkipLimit(args.nan_skip_limit)
    exit_conditions = ExitConditions(args.exit_signal_handler, args.exit_duration_in_mins, _STARTED)
    try:
        for iteration in range(start_iteration, args.train_iters):
            profiler.step_begins(iteration)  # --profile: Megatron-LM's hooks (training/profiling.py)
            started = time.perf_counter()
            result = train_step(chunks, optimizer, stream.next_step(), args.micro_batch_size, args.seq_length,
                                iteration, nan_policy=args.nan_policy)
            if not result.skipped:
                scheduler.step(increment=args.global_batch_size)
            done = iteration + 1
            skips.record(done, result.skipped)
            flops = step_flops(config, args.seq_length, args.global_batch_size, args.vocab_size, result.jacobi_rounds)
            summary["train_losses"].append((done, result.loss))
            logger.log_step(done, result, optimizer.param_groups[0]["lr"], time.perf_counter() - started,
                            flops, stream.consumed_samples)
            profiler.step_ended(done)
            if async_saves is not None:
                saved(async_saves.maybe_finalize_async_calls(blocking=False))
            exiting = bool(args.exit_interval) and done % args.exit_interval == 0
            if args.save and (exiting or (args.save_interval and done % args.save_interval == 0)):
                save(done)
                last_saved = done
            if exiting:
                finish_saves()
                print_rank0(f"exiting at iteration {done} (--exit-interval {args.exit_interval})")
                logger.close()
                return summary
            stop = exit_conditions.reason()  # SIGTERM/SIGINT or --exit-duration-in-mins, agreed by all ranks
            if stop:
                if args.save and last_saved != done:
                    save(done)
                finish_saves()
                where = f"saved iteration {done} in {args.save}, resume with --load {args.save}" if args.save \
                    else "no --save: nothing saved"
                print_rank0(f"{stop}: stopping after iteration {done} ({where})")
                logger.close()
                return summary
            if args.eval_iters and args.eval_interval and done % args.eval_interval == 0 and done != args.train_iters:
                evaluate(done)
        if args.eval_iters:
            evaluate(done)
        if args.save and last_saved != done:
            save(done)
        finish_saves()
    except NonFiniteLossError:  # every rank stops here (agreed): the last good save still completes
        finish_saves()
        raise
    except BaseException:  # a failure of some ranks only: no collectives, the writer is stopped
        if async_saves is not None:
            async_saves.abort()
        raise
    finally:
        profiler.close()  # a profile still recording is written, nsys's capture ends
    logger.close()
    return summary


def main(argv: Optional[List[str]] = None) -> int:
    warnings.filterwarnings("ignore", message=".*Transformer Engine and Apex are not installed.*")
    warnings.filterwarnings("ignore", message=".*Apex is not installed.*")
    from megatron_ponder.runtime.megatron_compat import quiet_inapplicable_notices

    quiet_inapplicable_notices()
    from megatron_ponder.config import PonderConfigError
    from megatron_ponder.data.errors import DataError
    from megatron_ponder.sequence_layout import ContextParallelLayoutError
    from megatron_ponder.runtime.parallel_init import initialize_parallel, leave_together, shutdown_parallel
    from megatron_ponder.training.arguments import ArgumentError, describe, finalize_args, parse_args
    from megatron_ponder.training.checkpointing.save_load import CheckpointError
    from megatron_ponder.training.checkpointing.run_lock import release_run_locks
    from megatron_ponder.training.nan_guard import NonFiniteLossError

    user_errors = (ArgumentError, DataError, PonderConfigError, ContextParallelLayoutError, CheckpointError,
                   NonFiniteLossError)
    args = parse_args(argv)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    from megatron_ponder.runtime.child_processes import end_children_with_this_process

    end_children_with_this_process()  # Megatron's forked shard writers end with this trainer
    if torch.cuda.is_available():
        # Before anything initialises CUDA (the checks import Transformer Engine): on the default
        # device every rank of a node would open a context on GPU 0.
        from megatron_ponder.runtime.transformer_engine import select_local_device

        select_local_device()
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
        # Every rank raises the same error (deterministic checks, or agreed: rank_agreement);
        # one copy is enough, and every rank exits 2 (none is stopped by torchrun meanwhile).
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"error: {str(error).splitlines()[0] if str(error) else type(error).__name__}", file=sys.stderr,
                  flush=True)
        leave_together()
        return 2
    except KeyboardInterrupt:
        if int(os.environ.get("RANK", "0")) == 0:
            print("error: interrupted (SIGINT): nothing saved since the last checkpoint; pass --exit-signal-handler "
                  "to finish the step and save on SIGINT/SIGTERM", file=sys.stderr, flush=True)
        return 130
    finally:
        release_run_locks()
    if args.save:
        print_rank0(f"checkpoints: {args.save} (to Hugging Face: python tools/convert_checkpoint.py export "
                    f"--load {args.save} --out HF_DIR)")
    if args.tensorboard_dir and importlib.util.find_spec("tensorboard") is not None:
        print_rank0(f"tensorboard: {args.tensorboard_dir}")
    if len(summary["valid_losses"]) == 1:  # a resumed run evaluates only at its end
        (iteration, loss), = summary["valid_losses"]
        print_rank0(f"validation loss at iteration {iteration}: {loss:.4f} (ppl {math.exp(min(loss, 50)):.1f})")
    elif summary["valid_losses"]:
        first, last = summary["valid_losses"][0][1], summary["valid_losses"][-1][1]
        print_rank0(f"validation loss: {first:.4f} -> {last:.4f} (ppl {math.exp(min(first, 50)):.1f} -> "
                    f"{math.exp(min(last, 50)):.1f})")
    shutdown_parallel()
    return 0


if __name__ == "__main__":
    sys.exit(main())
