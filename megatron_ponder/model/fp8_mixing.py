"""The ponder mixing GEMM ``p @ E`` through Transformer Engine FP8 GEMMs (GPU only).

Importing this module imports Transformer Engine: only
:func:`megatron_ponder.model.vocab_mixing.probability_weighted_embedding` and
:class:`megatron_ponder.model.ponder_gpt.PonderGPTModel` (for its weight cache) do, and only when
FP8 is on. The GEMM costs as much as the output layer (``2 * s*b * V/tp * h`` FLOPs per feedback
pass), so with FP8 training it runs in FP8 too:

* forward   ``out [M, h] = p [M, V] @ E [V, h]``      p and E quantised to E4M3;
* backward  ``dp [M, V] = dout [M, h] @ E^T``          dout in E5M2 (``hybrid``) or E4M3 (``e4m3``);
            ``dE [V, h] = p^T @ dout``.

Each operand is quantised once: the probabilities in forward (kept for backward in FP8, row- and
column-wise), the embedding once per training step (:class:`FP8WeightCache`, refreshed on
Megatron's "first microbatch" signal, the same contract as TE's own layers: the weights change
only at the optimizer step, and every feedback pass of every microbatch mixes with them), and
the output gradient in backward.

Scaling is per-tensor *current* scaling (TE's ``Float8CurrentScalingQuantizer``: scale =
E4M3_max / amax of the tensor being cast), whatever the recipe of the transformer layers: the
probabilities change every pass, so a delayed (history) scale has nothing stable to track. The
three GEMMs are the ones TE's own Linear issues (fprop ``TN``, dgrad ``NN``, wgrad ``NT``),
called through TE's ``general_gemm`` (the function Megatron-Core's ``te_general_gemm`` wraps)
with the split accumulator on: the reductions here are long (V/tp ~ 50k terms in forward, s*b
tokens in wgrad), and Hopper's fast FP8 accumulation loses precision over such lengths (TE's own
recipes use the split accumulator for dgrad and wgrad for the same reason). Shapes that FP8
GEMMs cannot take (a dim not a multiple of 16) fall back to the GEMM in the embedding's dtype.

TE API across the supported range (2.9 - 2.20): the quantizer and the save/restore helpers are
imported from ``transformer_engine.pytorch`` itself (public in every version); ``general_gemm``
took a cuBLAS ``workspace`` argument in 2.9 only
(:func:`megatron_ponder.runtime.transformer_engine.general_gemm_version_arguments`).

docs/benchmarks/vocab_mixing.md measures the error of E4M3 probabilities against fp32 on CPU.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from megatron_ponder.runtime.transformer_engine import (
    general_gemm_version_arguments,
    transformer_engine_unusable_reason,
)

_reason = transformer_engine_unusable_reason()
if _reason is not None:
    raise ImportError(f"FP8 vocabulary mixing needs Transformer Engine: {_reason}")

import transformer_engine_torch as tex  # noqa: E402
from transformer_engine.pytorch import (  # noqa: E402
    Float8CurrentScalingQuantizer,
    prepare_for_saving,
    restore_from_saved,
)
from transformer_engine.pytorch.cpp_extensions import general_gemm  # noqa: E402

FP8_FORMATS = ("e4m3", "hybrid")
# FP8 GEMMs (cuBLASLt) need every dimension to be a multiple of 16.
FP8_GEMM_ALIGNMENT = 16


def _fp8_gemm(A: Tensor, B: Tensor, out_dtype: torch.dtype, layout: str, grad: bool) -> Tensor:
    """TE GEMM of two Float8Tensors with full-precision (split) accumulation.

    Layouts as TE's: ``NN`` = B @ A, ``TN`` = B @ A^T, ``NT`` = B^T @ A.
    """
    return general_gemm(
        A, B, out_dtype=out_dtype, layout=layout, grad=grad, use_split_accumulator=True,
        **general_gemm_version_arguments(general_gemm),
    )[0]


def _quantize(tensor: Tensor, fp8_dtype) -> Tensor:
    """Float8Tensor of ``tensor`` with its own amax scale; row- and column-wise data (the NN and
    NT GEMMs read the transpose)."""
    quantizer = Float8CurrentScalingQuantizer(fp8_dtype, device=tensor.device, rowwise=True, columnwise=True)
    return quantizer(tensor.contiguous())


class FP8WeightCache(torch.nn.Module):
    """The E4M3 copy of the mixing weight, quantised once per training step.

    Holds no parameters. ``is_first_microbatch`` is the attribute Megatron's
    ``MegatronModule.set_is_first_microbatch`` sets on every submodule that has it when the
    schedule starts a step's first microbatch (with FP8 on); the next :meth:`get` re-quantises and
    every later call of the step (other passes, other microbatches, backward) reuses the copy.
    A weight of another shape, dtype or storage (e.g. after a checkpoint load) is re-quantised too.
    """

    def __init__(self):
        super().__init__()
        self.is_first_microbatch = True
        self._source = None
        self._fp8: Optional[Tensor] = None

    def get(self, weight: Tensor) -> Tensor:
        """Float8Tensor [V/tp, h] of ``weight`` (row- and column-wise data)."""
        source = (weight.data_ptr(), tuple(weight.shape), weight.dtype, weight.device)
        if self.is_first_microbatch or self._fp8 is None or source != self._source:
            self._fp8 = _quantize(weight.detach(), tex.DType.kFloat8E4M3)
            self._source = source
            self.is_first_microbatch = False
        return self._fp8


class FP8MixingMatmul(torch.autograd.Function):
    """``p @ E`` with FP8 operands in forward and backward (see the module docstring)."""

    @staticmethod
    def forward(ctx, probs: Tensor, weight: Tensor, fp8_format: str, weight_cache: Optional[FP8WeightCache]) -> Tensor:
        """probs [M, V] (fp32 or bf16), weight [V, h] -> [M, h] in the weight's dtype."""
        ctx.probs_dtype = probs.dtype
        ctx.grad_fp8_dtype = tex.DType.kFloat8E5M2 if fp8_format == "hybrid" else tex.DType.kFloat8E4M3
        probs_fp8 = _quantize(probs.to(weight.dtype), tex.DType.kFloat8E4M3)
        weight_fp8 = weight_cache.get(weight) if weight_cache is not None else _quantize(weight, tex.DType.kFloat8E4M3)
        # FP8 tensors are saved through TE's helpers (their data and scales as plain tensors).
        saved, ctx.fp8_objects = prepare_for_saving(probs_fp8, weight_fp8)
        ctx.save_for_backward(*saved)
        ctx.weight_dtype = weight.dtype
        # "NN" = B @ A (the dgrad form of a Linear with weight A): p [M, V] @ E [V, h].
        return _fp8_gemm(weight_fp8, probs_fp8, weight.dtype, layout="NN", grad=False)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        probs_fp8, weight_fp8 = restore_from_saved(ctx.fp8_objects, ctx.saved_tensors)
        grad_fp8 = _quantize(grad_out, ctx.grad_fp8_dtype)
        grad_probs = grad_weight = None
        if ctx.needs_input_grad[0]:
            # layout "TN" = B @ A^T (fprop form): dout [M, h] @ E^T -> [M, V].
            grad_probs = _fp8_gemm(weight_fp8, grad_fp8, ctx.probs_dtype, layout="TN", grad=True)
        if ctx.needs_input_grad[1]:
            # layout "NT" = B^T @ A (wgrad form): p^T [V, M] @ dout [M, h] -> [V, h].
            grad_weight = _fp8_gemm(grad_fp8, probs_fp8, ctx.weight_dtype, layout="NT", grad=True)
        return grad_probs, grad_weight, None, None


def fp8_mixing_matmul(
    probs: Tensor, weight: Tensor, fp8_format: str, weight_cache: Optional[FP8WeightCache] = None
) -> Tensor:
    """``probs @ weight`` through TE FP8 GEMMs.

    Args:
        probs: [s, b, V/tp] probabilities (fp32 from the softmax).
        weight: [V/tp, h] this rank's embedding rows (bf16 on GPU).
        fp8_format: ``e4m3`` (E4M3 everywhere) or ``hybrid`` (E5M2 gradients), as ``config.fp8``.
        weight_cache: the model's :class:`FP8WeightCache` (quantise the weight once per step);
            None quantises it on every call.

    Returns:
        [s, b, h] in the weight's dtype (the GEMM in that dtype if a dim is not a multiple of 16).
    """
    if fp8_format not in FP8_FORMATS:
        raise ValueError(f"fp8 format must be one of {FP8_FORMATS}; got {fp8_format!r}")
    leading = probs.shape[:-1]
    probs_2d = probs.reshape(-1, probs.size(-1))
    if any(dim % FP8_GEMM_ALIGNMENT for dim in (probs_2d.size(0), *weight.shape)):
        return torch.matmul(probs.to(weight.dtype), weight)
    return FP8MixingMatmul.apply(probs_2d, weight, fp8_format, weight_cache).view(*leading, weight.size(1))
