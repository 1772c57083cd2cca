"""Range checks of every numeric flag of the pretrain entry point, as one table.

Run first in :func:`megatron_ponder.training.arguments.validate_args`, before any consistency
rule reads a value (so ``--train-iters 0`` is named as such, not as a warm-up problem it causes)
and before any model is built. A value outside its range is a one-line error naming the flag,
the value and the allowed range.
"""

from __future__ import annotations

import importlib.util
import math
import os
from typing import NamedTuple, Optional


class Range(NamedTuple):
    low: Optional[float] = None  # None: unbounded
    high: Optional[float] = None
    low_open: bool = False  # True: the bound itself is excluded
    high_open: bool = False

    def holds(self, value: float) -> bool:
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        if self.high is not None and (value > self.high or (self.high_open and value == self.high)):
            return False
        return True

    def describe(self) -> str:
        left = "-inf" if self.low is None else f"{self.low:g}"
        right = "inf" if self.high is None else f"{self.high:g}"
        return f"{'(' if self.low_open or self.low is None else '['}{left}, {right}{')' if self.high_open or self.high is None else ']'}"


AT_LEAST_ONE = Range(1)
NON_NEGATIVE = Range(0)
POSITIVE = Range(0, low_open=True)
PROBABILITY = Range(0, 1, high_open=True)

# dest -> allowed range; a flag left unset (None) is not checked.
NUMERIC_FLAGS = {
    # model shape
    "num_layers": AT_LEAST_ONE, "hidden_size": AT_LEAST_ONE, "num_attention_heads": AT_LEAST_ONE,
    "num_query_groups": AT_LEAST_ONE, "ffn_hidden_size": AT_LEAST_ONE, "seq_length": AT_LEAST_ONE,
    "max_position_embeddings": AT_LEAST_ONE, "vocab_size": AT_LEAST_ONE,
    "make_vocab_size_divisible_by": AT_LEAST_ONE, "init_method_std": POSITIVE, "norm_epsilon": POSITIVE,
    "rotary_base": AT_LEAST_ONE, "hidden_dropout": PROBABILITY, "attention_dropout": PROBABILITY,
    # method
    "ponder_steps": AT_LEAST_ONE, "num_latent_thoughts": AT_LEAST_ONE, "jacobi_eval_rounds": NON_NEGATIVE,
    "jacobi_eval_tol": NON_NEGATIVE,
    "jacobi_seed": NON_NEGATIVE, "input_embedding_scale": POSITIVE,
    # parallel layout
    "tensor_model_parallel_size": AT_LEAST_ONE, "pipeline_model_parallel_size": AT_LEAST_ONE,
    "context_parallel_size": AT_LEAST_ONE,
    # batch and schedule
    "micro_batch_size": AT_LEAST_ONE, "global_batch_size": AT_LEAST_ONE, "train_iters": AT_LEAST_ONE,
    "exit_interval": AT_LEAST_ONE, "lr": NON_NEGATIVE, "min_lr": NON_NEGATIVE, "lr_warmup_iters": NON_NEGATIVE, "lr_warmup_fraction": PROBABILITY,
    "lr_decay_iters": AT_LEAST_ONE, "lr_wsd_decay_iters": AT_LEAST_ONE, "weight_decay": NON_NEGATIVE, "adam_beta1": PROBABILITY,
    "adam_beta2": PROBABILITY, "adam_eps": POSITIVE, "clip_grad": NON_NEGATIVE, "seed": NON_NEGATIVE,
    # precision and memory
    "fp8_amax_history_len": AT_LEAST_ONE, "recompute_num_layers": AT_LEAST_ONE,
    # data
    "dali_py_workers": NON_NEGATIVE,
    # checkpoints, logging, exit
    "save_interval": AT_LEAST_ONE, "eval_interval": AT_LEAST_ONE, "eval_iters": NON_NEGATIVE,
    "log_interval": AT_LEAST_ONE, "grad_norm_spike_factor": NON_NEGATIVE,
    "grad_norm_spike_window": AT_LEAST_ONE, "keep_last_checkpoints": AT_LEAST_ONE, "exit_duration_in_mins": POSITIVE,
    "nan_skip_limit": AT_LEAST_ONE, "tensorboard_log_interval": AT_LEAST_ONE, "peak_tflops": POSITIVE,
}


def flag_name(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def check_numeric_flags(args, error_type) -> None:
    """Raise ``error_type`` (one line) for the first numeric flag outside its range or not finite;
    cap ``--dali-py-workers`` at the CPU count (with a note)."""
    for dest, allowed in NUMERIC_FLAGS.items():
        value = getattr(args, dest, None)
        if value is None:
            continue
        if isinstance(value, float) and not math.isfinite(value):
            raise error_type(f"{flag_name(dest)} must be a finite number, got {value}")
        if not allowed.holds(value):
            raise error_type(f"{flag_name(dest)} must be in {allowed.describe()}, got {value:g}")
    if args.min_lr > args.lr:
        raise error_type(f"--min-lr {args.min_lr:g} is above --lr {args.lr:g}: lower --min-lr")
    if args.wandb_project and importlib.util.find_spec("wandb") is None:
        raise error_type("--wandb-project needs wandb: pip install wandb (the `wandb` extra), or drop the flag")
    cap_dali_workers(args)


def cap_dali_workers(args) -> None:
    """More reader processes than cores only compete for them (and each one DALI starts must be
    joined at exit): at most one per core of this machine, shared by its training processes."""
    cores = os.cpu_count() or 1
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    cap = max(1, cores // local_processes)
    if args.dali_py_workers > cap:
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"note: --dali-py-workers {args.dali_py_workers} capped at {cap} ({cores} CPU cores for "
                  f"{local_processes} training process(es) on this machine: more readers than cores only "
                  "compete for them)", flush=True)
        args.dali_py_workers = cap
