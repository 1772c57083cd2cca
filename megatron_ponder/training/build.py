"""What a training run is built from: data, model and optimizer, for the run's flags.

Used by the entry point (:mod:`megatron_ponder.pretrain`), the HF converters
(:mod:`megatron_ponder.hf`) and the benchmarks, so all of them build the same objects from the
same flags. The flags -> PonderConfig rule is :mod:`megatron_ponder.training.model_config`.
"""

from __future__ import annotations

import math

import torch

from megatron_ponder.runtime.parallel_init import print_rank0


def prepare_data(args):
    """(train, valid) datasets for the chosen data source; sets the model vocabulary size."""
    from megatron_ponder.data.checks import check_validation_set
    from megatron_ponder.data.datasets import build_gpt_datasets, check_data_fits_run, check_vocab_fits
    from megatron_ponder.data.tokenizer import build_tokenizer
    from megatron_ponder.training.checkpointing.run_identity import tokenizer_identity

    data_path, valid_path = args.data_path, args.valid_data_path
    if args.default_corpus:
        from megatron_ponder.data.default_corpus import prepare_default_corpus

        corpus = prepare_default_corpus(args.default_corpus)  # rank 0 builds, the others reuse
        data_path, valid_path = [str(corpus.train_prefix)], [str(corpus.valid_prefix)]
        args.tokenizer_type, args.tokenizer_model = "HuggingFaceTokenizer", str(corpus.tokenizer_dir)
        print_rank0(f"default corpus: {corpus.train_prefix} (+ valid), tokenizer {corpus.tokenizer_dir}")
    tokenizer_type = args.tokenizer_type or ("NullTokenizer" if args.mock_data else "HuggingFaceTokenizer")
    tokenizer = build_tokenizer(tokenizer_type, args.tokenizer_model, vocab_size=args.vocab_size or 512)
    multiple = args.make_vocab_size_divisible_by * args.tensor_model_parallel_size
    if args.vocab_size is None:
        args.vocab_size = int(math.ceil(tokenizer.vocab_size / multiple) * multiple)
    check_vocab_fits(tokenizer.vocab_size, args.vocab_size)
    if not args.mock_data:  # sizes exact, token ids < vocabulary, at least one sample
        check_data_fits_run([data_path] + ([valid_path] if valid_path else []), args.seq_length,
                            tokenizer.vocab_size, args.vocab_size)
    args.tokenizer_vocab_size = tokenizer.vocab_size
    args.tokenizer_identity = tokenizer_identity(tokenizer)  # stored with every checkpoint, compared on resume

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
        # Runs saved before the document flags existed lack them.
        reset_position_ids=getattr(args, "reset_position_ids", False),
        reset_attention_mask=getattr(args, "reset_attention_mask", False),
        eod_mask_loss=getattr(args, "eod_mask_loss", False),
    )
    check_validation_set(valid, args.eval_iters, args.split, args.valid_data_path)
    return train, valid


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
        overlap_grad_reduce=args.overlap_grad_reduce, overlap_param_gather=args.overlap_param_gather,
        bucket_size=args.ddp_bucket_size,
    )
    scheduler = OptimizerParamScheduler(
        optimizer,
        init_lr=0.0,
        max_lr=args.lr,
        min_lr=args.min_lr,
        lr_warmup_steps=args.lr_warmup_iters * args.global_batch_size,
        lr_decay_steps=args.lr_decay_iters * args.global_batch_size,
        lr_decay_style=args.lr_decay_style,
        # WSD (Megatron-LM's flags): the last lr_wsd_decay_iters of the decay anneal to min_lr.
        wsd_decay_steps=(args.lr_wsd_decay_iters * args.global_batch_size
                         if getattr(args, "lr_wsd_decay_iters", None) else None),
        lr_wsd_decay_style=getattr(args, "lr_wsd_decay_style", None),
        start_wd=args.weight_decay,
        end_wd=args.weight_decay,
        wd_incr_steps=args.train_iters * args.global_batch_size,
        wd_incr_style="constant",
        override_opt_param_scheduler=args.override_opt_param_scheduler,
        use_checkpoint_opt_param_scheduler=args.use_checkpoint_opt_param_scheduler,
    )
    return model, chunks, optimizer, scheduler


def microbatch_stream(args, dataset, dp_rank: int, dp_size: int, consumed: int = 0):
    """This rank's microbatches of ``dataset`` from ``consumed`` samples on, read by the chosen loader
    (both give the same batches; see megatron_ponder.data.dali_loader)."""
    if args.dataloader_type == "dali":
        from megatron_ponder.data.dali_loader import DaliMicrobatchStream

        return DaliMicrobatchStream(dataset, args.global_batch_size, args.micro_batch_size, dp_rank, dp_size,
                                    consumed, py_workers=args.dali_py_workers)
    from megatron_ponder.data.datasets import MicrobatchStream

    return MicrobatchStream(dataset, args.global_batch_size, args.micro_batch_size, dp_rank, dp_size, consumed)
