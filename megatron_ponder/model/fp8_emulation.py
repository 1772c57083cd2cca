"""CPU emulation of the FP8 mixing GEMM, to measure what FP8 does to ``p @ E`` without a GPU.

It reproduces the numerics of :mod:`megatron_ponder.model.fp8_mixing` (Transformer Engine's
per-tensor *current* scaling, ``Float8CurrentScalingQuantizer``): for each operand

    amax  = max |x| over the whole tensor
    scale = FP8_MAX / amax            (1 when amax is 0; FP8_MAX = 448 for E4M3, 57344 for E5M2)
    x_fp8 = cast_fp8(clamp(x * scale, -FP8_MAX, FP8_MAX))     round to nearest even
    x     ~ x_fp8 / scale

then the GEMM of the dequantised operands in fp32 (the tensor cores accumulate in higher
precision; their exact accumulation order is not emulated). TE's *delayed* scaling uses the
largest amax of a history window instead of the current one: a scale that is never larger, so
at most as fine; for probabilities, whose amax is close to 1 in every batch, the two coincide.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

FP8_DTYPES = {"e4m3": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2}


def fp8_max(fmt: str) -> float:
    return float(torch.finfo(FP8_DTYPES[fmt]).max)


def quantize_dequantize(x: Tensor, fmt: str = "e4m3", amax: Optional[Tensor] = None) -> Tensor:
    """``x`` after a round trip through FP8 with per-tensor current scaling, in fp32.

    Args:
        x: any shape, any float dtype.
        fmt: ``e4m3`` or ``e5m2``.
        amax: scale from this amax instead of ``x``'s own (delayed scaling's history maximum).
    """
    x = x.float()
    limit = fp8_max(fmt)
    amax = x.abs().amax() if amax is None else amax.float()
    scale = torch.where(amax > 0, limit / amax, torch.ones_like(amax))
    quantized = (x * scale).clamp(-limit, limit).to(FP8_DTYPES[fmt])
    return quantized.float() / scale


def emulated_fp8_mixing(probs: Tensor, weight: Tensor, weight_fmt: Optional[str] = "e4m3") -> Tensor:
    """``probs @ weight`` with E4M3 probabilities (and ``weight_fmt`` weights; None keeps them fp32).

    Args:
        probs: [..., V] probabilities.
        weight: [V, h] embedding rows.

    Returns:
        [..., h] fp32.
    """
    weight = weight.float() if weight_fmt is None else quantize_dequantize(weight, weight_fmt)
    return quantize_dequantize(probs, "e4m3") @ weight
