"""The ponder mixing GEMM ``p @ E`` through Transformer Engine FP8 GEMMs (GPU only).

Importing this module imports Transformer Engine: only
:func:`megatron_ponder.model.vocab_mixing.probability_weighted_embedding` does, and only when FP8
is on. The GEMM costs as much as the output layer (``2 * s*b * V/tp * h`` FLOPs per feedback
pass), so with FP8 training it runs in FP8 too:

* forward   ``out [M, h] = p [M, V] @ E [V, h]``      p and E quantised to E4M3;
* backward  ``dp [M, V] = dout [M, h] @ E^T``          dout in E5M2 (``hybrid``) or E4M3 (``e4m3``);
            ``dE [V, h] = p^T @ dout``.

Scaling is per-tensor *current* scaling (TE's ``Float8CurrentScalingQuantizer``: scale =
E4M3_max / amax of the tensor being cast), whatever the recipe of the transformer layers: the
probabilities change every pass, so a delayed (history) scale has nothing stable to track. The
three GEMMs are the ones TE's own Linear issues (fprop ``TN``, dgrad ``NN``, wgrad ``NT``),
called through TE's ``general_gemm`` (the function Megatron-Core's ``te_general_gemm`` wraps)
with the split accumulator on: the reductions here are long (V/tp ~ 50k terms in forward, s*b
tokens in wgrad), and Hopper's fast FP8 accumulation, which ``te_general_gemm`` hard-codes,
loses precision over such lengths (TE's own recipes use the split accumulator for dgrad and
wgrad for the same reason). Shapes that FP8 GEMMs cannot take (a dim not a multiple of 16) fall
back to the GEMM in the embedding's dtype.

docs/benchmarks/vocab_mixing.md measures the error of E4M3 probabilities against fp32 on CPU.
"""

from __future__ import annotations

import torch
from torch import Tensor

from megatron_ponder.runtime.transformer_engine import transformer_engine_unusable_reason

_reason = transformer_engine_unusable_reason()
if _reason is not None:
    raise ImportError(f"FP8 vocabulary mixing needs Transformer Engine: {_reason}")

import transformer_engine_torch as tex  # noqa: E402
from transformer_engine.pytorch.cpp_extensions import general_gemm  # noqa: E402
from transformer_engine.pytorch.module.base import get_workspace  # noqa: E402
from transformer_engine.pytorch.tensor.float8_tensor import Float8CurrentScalingQuantizer  # noqa: E402

FP8_FORMATS = ("e4m3", "hybrid")
# FP8 GEMMs (cuBLASLt) need every dimension to be a multiple of 16.
FP8_GEMM_ALIGNMENT = 16


def _fp8_gemm(A: Tensor, B: Tensor, out_dtype: torch.dtype, layout: str, grad: bool) -> Tensor:
    """TE GEMM of two Float8Tensors with full-precision (split) accumulation.

    Layouts as TE's: ``NN`` = B @ A, ``TN`` = B @ A^T, ``NT`` = B^T @ A.
    """
    return general_gemm(
        A, B, workspace=get_workspace(), out_dtype=out_dtype, layout=layout, grad=grad,
        use_split_accumulator=True,
    )[0]


def _quantize(tensor: Tensor, fp8_dtype) -> Tensor:
    """Float8Tensor of ``tensor`` with its own amax scale; row- and column-wise data (the NN and
    NT GEMMs read the transpose)."""
    quantizer = Float8CurrentScalingQuantizer(fp8_dtype, device=tensor.device, rowwise=True, columnwise=True)
    return quantizer(tensor.contiguous())


class FP8MixingMatmul(torch.autograd.Function):
    """``p @ E`` with FP8 operands in forward and backward (see the module docstring)."""

    @staticmethod
    def forward(ctx, probs: Tensor, weight: Tensor, fp8_format: str) -> Tensor:
        """probs [M, V] (fp32 or bf16), weight [V, h] -> [M, h] in the weight's dtype."""
        # Keep the operands in the weight's dtype (as the BF16 path does) and quantise again in
        # backward: plain tensors are safe to save, FP8 tensor subclasses need TE's own helpers.
        probs_hp = probs.to(weight.dtype)
        ctx.save_for_backward(probs_hp, weight)
        ctx.probs_dtype = probs.dtype
        ctx.grad_fp8_dtype = tex.DType.kFloat8E5M2 if fp8_format == "hybrid" else tex.DType.kFloat8E4M3
        probs_fp8 = _quantize(probs_hp, tex.DType.kFloat8E4M3)
        weight_fp8 = _quantize(weight, tex.DType.kFloat8E4M3)
        # "NN" = B @ A (the dgrad form of a Linear with weight A): p [M, V] @ E [V, h].
        return _fp8_gemm(weight_fp8, probs_fp8, weight.dtype, layout="NN", grad=False)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        probs_hp, weight = ctx.saved_tensors
        grad_fp8 = _quantize(grad_out, ctx.grad_fp8_dtype)
        grad_probs = grad_weight = None
        if ctx.needs_input_grad[0]:
            weight_fp8 = _quantize(weight, tex.DType.kFloat8E4M3)
            # layout "TN" = B @ A^T (fprop form): dout [M, h] @ E^T -> [M, V].
            grad_probs = _fp8_gemm(weight_fp8, grad_fp8, ctx.probs_dtype, layout="TN", grad=True)
        if ctx.needs_input_grad[1]:
            probs_fp8 = _quantize(probs_hp, tex.DType.kFloat8E4M3)
            # layout "NT" = B^T @ A (wgrad form): p^T [V, M] @ dout [M, h] -> [V, h].
            grad_weight = _fp8_gemm(grad_fp8, probs_fp8, weight.dtype, layout="NT", grad=True)
        return grad_probs, grad_weight, None


def fp8_mixing_matmul(probs: Tensor, weight: Tensor, fp8_format: str) -> Tensor:
    """``probs @ weight`` through TE FP8 GEMMs.

    Args:
        probs: [s, b, V/tp] probabilities (fp32 from the softmax).
        weight: [V/tp, h] this rank's embedding rows (bf16 on GPU).
        fp8_format: ``e4m3`` (E4M3 everywhere) or ``hybrid`` (E5M2 gradients), as ``config.fp8``.

    Returns:
        [s, b, h] in the weight's dtype (the GEMM in that dtype if a dim is not a multiple of 16).
    """
    if fp8_format not in FP8_FORMATS:
        raise ValueError(f"fp8 format must be one of {FP8_FORMATS}; got {fp8_format!r}")
    leading = probs.shape[:-1]
    probs_2d = probs.reshape(-1, probs.size(-1))
    if any(dim % FP8_GEMM_ALIGNMENT for dim in (probs_2d.size(0), *weight.shape)):
        return torch.matmul(probs.to(weight.dtype), weight)
    return FP8MixingMatmul.apply(probs_2d, weight, fp8_format).view(*leading, weight.size(1))
