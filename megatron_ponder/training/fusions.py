"""Kernel fusions: on where their kernels exist, as Megatron-LM's defaults, each with its flag off.

Megatron-LM turns these on by default and offers ``--no-*`` flags; Megatron-Core's
``TransformerConfig`` defaults them to False. Here each is on when asked for (the default) *and*
its kernel is present on this machine, because a fusion without its kernel either fails at the
first forward or changes nothing:

| field | flag to turn off | kernel it needs |
|---|---|---|
| ``bias_dropout_fusion`` | ``--no-bias-dropout-fusion`` | CUDA + Triton: Megatron fuses bias-dropout-add with ``torch.compile``, whose GPU backend is Triton (on CPU it needs a C++ compiler and changes fp32 rounding) |
| ``masked_softmax_fusion`` | ``--no-masked-softmax-fusion`` | CUDA + Megatron's fused softmax extensions (``scaled_masked_softmax_cuda``, ``scaled_upper_triang_masked_softmax_cuda``); used by the local spec's unfused attention |
| ``apply_rope_fusion`` | ``--no-rope-fusion`` | Transformer Engine's fused RoPE (TE layer spec) |
| ``gradient_accumulation_fusion`` | ``--no-gradient-accumulation-fusion`` | apex's ``fused_weight_gradient_mlp_cuda``, with either spec: the output layer is always Megatron's ``ColumnParallelLinear``, which refuses the fusion without it (TE's layers would fuse on their own) |

On CPU none applies, so the CPU suite runs the same unfused code as before. Some runs rule a fusion
out whatever the kernels (:func:`blocked_fusions`, logged with the reason): TE's fused RoPE with
per-sample positions, and TE's fused weight-gradient accumulation in ponder and latent mode.
"""

from __future__ import annotations

import importlib.util
from typing import Callable, Dict, Optional

FUSION_FLAGS: Dict[str, str] = {
    "bias_dropout_fusion": "--no-bias-dropout-fusion",
    "masked_softmax_fusion": "--no-masked-softmax-fusion",
    "apply_rope_fusion": "--no-rope-fusion",
    "gradient_accumulation_fusion": "--no-gradient-accumulation-fusion",
}


def module_present(name: str) -> bool:
    """Whether ``import name`` would find a module (without importing it)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def rope_fusion_blocked_reason(args) -> Optional[str]:
    """Why this run's data rules out TE's fused RoPE, or None.

    The fused kernel takes one RoPE table for the whole microbatch ([s, 1, 1, d]); with
    ``--reset-position-ids`` each sample has its own positions, so a microbatch of several
    samples needs the unfused RoPE, which takes a table per sample
    (``PonderGPTModel.rotary_for_positions``).
    """
    if getattr(args, "reset_position_ids", False) and args.micro_batch_size > 1:
        return ("--reset-position-ids with --micro-batch-size > 1 gives every sample its own positions; "
                "the fused RoPE kernel takes one table per microbatch")
    return None


def grad_accumulation_fusion_blocked_reason(args, transformer_impl: str) -> Optional[str]:
    """Why the TE layers of this run must not fuse the weight-gradient accumulation, or None.

    Transformer Engine's layers *overwrite* ``main_grad`` instead of adding to it in the backward
    of a call flagged as the first microbatch (``accumulate = fuse_wgrad_accumulation and not
    is_first_microbatch``, in every TE linear module). Megatron's schedule flags the first forward
    of a step, which in a multi-pass step is pass 0 of microbatch 0, and pass 0's backward runs
    *after* the later passes' backwards: the fused path would drop their weight gradients. Unfused,
    TE returns the weight gradient and Megatron's DDP hook adds it, which is correct in any order.
    (Megatron's own linear layers, the local spec and the output layer, always add.)
    """
    if transformer_impl == "transformer_engine" and getattr(args, "ponder_mode", "none") != "none":
        return (f"--ponder-mode {args.ponder_mode} runs several passes per microbatch, and TE's fused weight-gradient "
                "accumulation overwrites main_grad in the first microbatch's backward, which runs after the later "
                "passes' backwards")
    return None


def blocked_fusions(args, transformer_impl: str) -> Dict[str, str]:
    """``{field: why it is off}`` for the fusions this run's data or method rules out."""
    reasons = {
        "apply_rope_fusion": rope_fusion_blocked_reason(args),
        "gradient_accumulation_fusion": grad_accumulation_fusion_blocked_reason(args, transformer_impl),
    }
    return {field: reason for field, reason in reasons.items() if reason}


def fusions_with_kernels(
    requested: Dict[str, bool], cuda: bool, transformer_impl: str, has_module: Callable[[str], bool] = module_present
) -> Dict[str, bool]:
    """``{field: on}`` for the four fusions: requested and their kernels present.

    Args:
        requested: ``{field: bool}`` from the flags (True unless ``--no-*``).
        cuda: a CUDA device is available.
        transformer_impl: the resolved layer implementation (``local`` or ``transformer_engine``).
        has_module: whether a module can be imported (tests pass a stand-in).
    """
    te = transformer_impl == "transformer_engine"
    available = {
        "bias_dropout_fusion": cuda and has_module("triton"),
        "masked_softmax_fusion": cuda and has_module("scaled_masked_softmax_cuda")
        and has_module("scaled_upper_triang_masked_softmax_cuda"),
        "apply_rope_fusion": te,
        "gradient_accumulation_fusion": cuda and has_module("fused_weight_gradient_mlp_cuda"),
    }
    return {field: bool(requested.get(field, True)) and available[field] for field in FUSION_FLAGS}
