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

On CPU none applies, so the CPU suite runs the same unfused code as before.
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
