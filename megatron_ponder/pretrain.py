"""Pretrain entry point: ``torchrun --nproc-per-node N -m megatron_ponder.pretrain [flags]``.

A flat path from data to loss: parse flags -> initialise TP/PP/CP/DP -> tokenizer and datasets ->
PonderGPTModel -> Megatron DDP + optimizer + LR schedule -> resume -> train / evaluate / save.
Flags are Megatron-LM's (``--help``); bad input stops with ``error: <one line>`` and exit code 2.
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
import torch.distributed as dist


def _print_rank0(*parts) -> None:
    if not dist.is_initialized() or dist.get_rank() == 0:
        print(*parts, flush=True)


# ---------------------------------------------------------------------------- set-up
def prepare_data(args):
    """(train, valid) datasets for the chosen data source; sets the model vocabulary size."""
    from megatron_ponder.data.datasets import build_gpt_datasets, check_vocab_fits
    from megatron_ponder.data.tokenizer import build_tokenizer

    data_path, valid_path = args.data_path, args.valid_data_path
    if args.default_corpus:
        from megatron_ponder.data.default_corpus import prepare_default_corpus

        corpus = prepare_default_corpus(args.default_corpus)  # rank 0 builds, the others reuse
        data_path, valid_path = [str(corpus.train_prefix)], [str(corpus.valid_prefix)]
        args.tokenizer_type, args.tokenizer_model = "HuggingFaceTokenizer", str(corpus.tokenizer_dir)
        _print_rank0(f"default corpus: {corpus.train_prefix} (+ valid), tokenizer {corpus.tokenizer_dir}")
    tokenizer_type = args.tokenizer_type or ("NullTokenizer" if args.mock_data else "HuggingFaceTokenizer")
    tokenizer = build_tokenizer(tokenizer_type, args.tokenizer_model, vocab_size=args.vocab_size or 512)
    multiple = args.make_vocab_size_divisible_by * args.tensor_model_parallel_size
    if args.vocab_size is None:
        args.vocab_size = int(math.ceil(tokenizer.vocab_size / multiple) * multiple)
    check_vocab_fits(tokenizer.vocab_size, args.vocab_size)
    args.tokenizer_vocab_size = tokenizer.vocab_size

    samples_per_eval = args.eval_iters * args.global_batch_size
    evaluations = args.train_iters // max(args.eval_interval, 1) + 1
    train, valid, _ = build_gpt_datasets(
        data_path,
        split=args.split,
        seq_length=args.seq_length,
        seed=args.seed,
        tokenizer=tokenizer,
        num_samples=(args.train_iters * args.global_batch_size, evaluations * samples_per_eval, 0),
        mock=args.mock_data,
        valid_data_path=valid_path,
        cache_dir=args.data_cache_path,
    )
    return train, valid


def model_config(args):
    """The PonderConfig the run's flags describe (also used by the HF converters)."""
    from megatron_ponder.model.architectures import make_ponder_config, tanh_gelu

    recompute = {}
    if args.recompute_granularity == "full":
        recompute = dict(recompute_granularity="full", recompute_method=args.recompute_method,
                         recompute_num_layers=args.recompute_num_layers)
    elif args.recompute_granularity == "selective":
        recompute = dict(recompute_granularity="selective")
    shape = dict(layernorm_epsilon=args.norm_epsilon)
    if args.openai_gelu:
        shape["activation_func"] = tanh_gelu
    precision = dict(bf16=True, params_dtype=torch.bfloat16, pipeline_dtype=torch.bfloat16) if args.bf16 \
        else dict(pipeline_dtype=torch.float32)
    if args.fp8_format is not None:
        precision.update(fp8=args.fp8_format, fp8_recipe=args.fp8_recipe,
                         fp8_amax_history_len=args.fp8_amax_history_len, fp8_amax_compute_algo="max")
    return make_ponder_config(
        args.architecture,
        num_layers=args.num_layers,
        hidden_size=args.hidden_size,
        num_attention_heads=args.num_attention_heads,
        num_query_groups=args.num_query_groups or args.num_attention_heads,
        ffn_hidden_size=args.ffn_hidden_size,
        init_method_std=args.init_method_std,
        hidden_dropout=args.hidden_dropout,
        attention_dropout=args.attention_dropout,
        tensor_model_parallel_size=args.tensor_model_parallel_size,
        pipeline_model_parallel_size=args.pipeline_model_parallel_size,
        context_parallel_size=args.context_parallel_size,
        sequence_parallel=args.sequence_parallel,
        use_cpu_initialization=not torch.cuda.is_available(),
        calculate_per_token_loss=True,
        ponder_mode=args.ponder_mode,
        ponder_steps=args.ponder_steps,
        ponder_accumulate=not args.ponder_replace,
        ponder_topk=args.ponder_topk,
        ponder_fp8_mixing=not args.no_fp8_mixing,
        ponder_vocab_size=args.tokenizer_vocab_size,
        num_latent_thoughts=args.num_latent_thoughts,
        jacobi_train_rounds=tuple(args.jacobi_iters),
        jacobi_eval_rounds=args.jacobi_eval_iters,
        jacobi_seed=args.jacobi_seed,
        input_embedding_scale=args.input_embedding_scale,
        **shape,
        **precision,
        **recompute,
    )


def build_model(args, config):
    """This rank's PonderGPTModel stage for the run's flags (also used by the HF converters)."""
    from megatron_ponder.model.architectures import build_ponder_gpt

    return build_ponder_gpt(config, args.architecture, args.vocab_size, args.max_position_embeddings,
                            share_embeddings_and_output_weights=args.tie_embeddings,
                            rotary_percent=args.rotary_percent, rotary_base=args.rotary_base,
                            transformer_impl=args.transformer_impl)


def build_training_state(args, config):
    """(model, DDP-wrapped chunks, optimizer, LR scheduler) for the run's flags (also used by benchmarks)."""
    from megatron.core.optimizer import OptimizerConfig
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler
    from megatron.core.transformer.module import Float16Module

    from megatron_ponder.training.optimizer import wrap_and_build_optimizer

    torch.manual_seed(args.seed)  # identical CPU init on every rank: shards are slices of one model
    model = build_model(args, config)
    if torch.cuda.is_available():
        model.cuda(torch.cuda.current_device())
    wrapped = Float16Module(config, model) if args.bf16 else model
    chunks, optimizer = wrap_and_build_optimizer(
        [wrapped],
        OptimizerConfig(
            optimizer="adam", lr=args.lr, min_lr=args.min_lr, weight_decay=args.weight_decay,
            adam_beta1=args.adam_beta1, adam_beta2=args.adam_beta2, adam_eps=args.adam_eps,
            clip_grad=args.clip_grad, bf16=args.bf16, use_distributed_optimizer=args.use_distributed_optimizer,
        ),
    )
    scheduler = OptimizerParamScheduler(
        optimizer,
        init_lr=0.0,
        max_lr=args.lr,
        min_lr=args.min_lr,
        lr_warmup_steps=args.lr_warmup_iters * args.global_batch_size,
        lr_decay_steps=args.lr_decay_iters * args.global_batch_size,
        lr_decay_style=args.lr_decay_style,
        start_wd=args.weight_decay,
        end_wd=args.weight_decay,
        wd_incr_steps=args.train_iters * args.global_batch_size,
        wd_incr_style="constant",
    )
    return model, chunks, optimizer, scheduler


def _microbatch_stream(args, dataset, dp_rank: int, dp_size: int, consumed: int = 0):
    """This rank's microbatches of ``dataset`` from ``consumed`` samples on, read by the chosen loader
    (both give the same batches; see megatron_ponder.data.dali_loader)."""
    if args.dataloader_type == "dali":
        from megatron_ponder.data.dali_loader import DaliMicrobatchStream

        return DaliMicrobatchStream(dataset, args.global_batch_size, args.micro_batch_size, dp_rank, dp_size,
                                    consumed, py_workers=args.dali_py_workers)
    from megatron_ponder.data.datasets import MicrobatchStream

    return MicrobatchStream(dataset, args.global_batch_size, args.micro_batch_size, dp_rank, dp_size, consumed)


# ---------------------------------------------------------------------------- loop
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

    from megatron_ponder.training.checkpointing import load_checkpoint, save_checkpoint
    from megatron_ponder.training.flops import step_flops
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
            _print_rank0(f"resumed from {args.load} at iteration {start_iteration} ({consumed} samples consumed)")
        else:
            _print_rank0(f"no checkpoint in {args.load} yet: starting from scratch")

    dp_rank = parallel_state.get_data_parallel_rank()
    dp_size = parallel_state.get_data_parallel_world_size()
    stream = _microbatch_stream(args, train_set, dp_rank, dp_size, consumed)
    valid_stream = lambda: _microbatch_stream(args, valid_set, dp_rank, dp_size)  # noqa: E731

    logger = RunLogger(args, total_iters=args.train_iters, start_iteration=start_iteration)
    run_args = {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool, type(None), list, tuple))}
    summary = dict(train_losses=[], valid_losses=[], checkpoints=[])

    def evaluate(iteration):
        loss = _evaluate(args, chunks, valid_stream())
        summary["valid_losses"].append((iteration, loss))
        logger.log_evaluation(iteration, loss)

    def save(iteration):
        folder = save_checkpoint(args.save, iteration, model, optimizer, scheduler, stream.consumed_samples,
                                 run_args, args.use_distributed_optimizer)
        summary["checkpoints"].append(folder)
        _print_rank0(f"saved checkpoint {folder}")

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
        flops = step_flops(config, args.seq_length, args.global_batch_size, args.vocab_size,
                           model.jacobi_rounds() if config.ponder_mode == "latent" else 0)
        summary["train_losses"].append((done, result.loss))
        logger.log_step(done, result, optimizer.param_groups[0]["lr"], time.perf_counter() - started,
                        flops, stream.consumed_samples)
        exiting = bool(args.exit_interval) and done % args.exit_interval == 0
        if args.save and (exiting or (args.save_interval and done % args.save_interval == 0)):
            save(done)
            last_saved = done
        if exiting:
            _print_rank0(f"exiting at iteration {done} (--exit-interval {args.exit_interval})")
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
    from megatron_ponder.runtime.megatron_compat import quiet_inapplicable_notices

    quiet_inapplicable_notices()
    from megatron_ponder.config import PonderConfigError
    from megatron_ponder.data.errors import DataError
    from megatron_ponder.parallel.context_parallel import ContextParallelLayoutError
    from megatron_ponder.runtime.parallel_init import initialize_parallel, shutdown_parallel
    from megatron_ponder.training.arguments import ArgumentError, describe, parse_args, validate_args
    from megatron_ponder.training.checkpointing import CheckpointError
    from megatron_ponder.training.step import NonFiniteLossError

    user_errors = (ArgumentError, DataError, PonderConfigError, ContextParallelLayoutError, CheckpointError,
                   NonFiniteLossError)
    args = parse_args(argv)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    try:
        validate_args(args, world_size)
        initialize_parallel(
            tensor_model_parallel_size=args.tensor_model_parallel_size,
            pipeline_model_parallel_size=args.pipeline_model_parallel_size,
            context_parallel_size=args.context_parallel_size,
            seed=args.seed,
        )
        _print_rank0(f"megatron_ponder pretrain: {world_size} process(es), "
                     f"{'CUDA' if torch.cuda.is_available() else 'CPU (gloo)'}")
        _print_rank0("\n".join(describe(args)))
        summary = train(args)
    except user_errors as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        return 2
    if args.save:
        _print_rank0(f"checkpoints: {args.save} (to Hugging Face: python tools/convert_checkpoint.py export "
                     f"--load {args.save} --out HF_DIR)")
    if args.tensorboard_dir and importlib.util.find_spec("tensorboard") is not None:
        _print_rank0(f"tensorboard: {args.tensorboard_dir}")
    if summary["valid_losses"]:
        first, last = summary["valid_losses"][0][1], summary["valid_losses"][-1][1]
        _print_rank0(f"validation loss: {first:.4f} -> {last:.4f} (ppl {math.exp(min(first, 50)):.1f} -> "
                     f"{math.exp(min(last, 50)):.1f})")
    shutdown_parallel()
    return 0


if __name__ == "__main__":
    sys.exit(main())
