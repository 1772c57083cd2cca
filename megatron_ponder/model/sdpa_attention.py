"""Core attention on ``torch.nn.functional.scaled_dot_product_attention`` for the local spec.

Megatron's local ``DotProductAttention`` materialises the scores and the probabilities
[b, heads, sq, sk] and autograd keeps both for backward, on every pass of every layer. SDPA
(flash / memory-efficient kernels on CPU and CUDA) keeps only its inputs, the output and the
per-row log-sum-exp, so the local spec (CPU runs, GPUs without Transformer Engine) no longer
pays O(s^2) activation memory per layer and pass.

:class:`SDPAttention` is a drop-in for ``DotProductAttention`` (same constructor, same forward):

* causal attention with no mask tensor (``attention_mask=None``) runs SDPA's ``is_causal``:
  plain causal order over the slots (latent mode's interleaved sequence is causal in slot order);
* an explicit boolean mask [b|1, 1, sq, sk] (True = masked, Megatron's convention, e.g. document
  masks) is passed to SDPA inverted (SDPA's True = may attend);
* grouped-query attention uses SDPA's ``enable_gqa`` (the same head -> group map as Megatron's
  ``repeat_interleave``, without materialising the repeated K/V);
* dropout is drawn inside Megatron's CUDA RNG tracker fork (the model-parallel stream), like
  ``DotProductAttention``; under sequence parallelism from the default stream, also like it;
* the softmax scale is Megatron's: ``softmax_scale`` (from ``config.softmax_scale``) or
  1/sqrt(kv_channels).

:func:`sdpa_context` is the kernel alone; the context-parallel local attention
(:class:`megatron_ponder.parallel.context_parallel.ContextParallelLocalAttention`) calls it with
its global-slot-index mask.
"""

from __future__ import annotations

import contextlib
import math
from typing import ContextManager, Optional

import torch.nn.functional as F
from torch import Tensor

from megatron.core import tensor_parallel
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.utils import is_layer_window_attention


def sdpa_context(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    masked: Optional[Tensor],
    causal: bool,
    scale: float,
    dropout_p: float,
) -> Tensor:
    """Attention in Megatron's layout through SDPA.

    Args:
        query: [sq, b, np, hn].
        key, value: [sk, b, ng, hn], ng dividing np (grouped-query attention when ng < np).
        masked: None, or a boolean mask broadcastable to [b, np, sq, sk], True = masked.
        causal: causal over positions (needs sq == sk, ``masked`` None).
        scale: multiplier of q.k.
        dropout_p: attention dropout probability (draws from the current default generator).

    Returns:
        context [sq, b, np*hn].
    """
    sq, batch, heads, head_dim = query.shape
    groups = key.size(2)
    # [s, b, n, d] -> [b, n, s, d] (views; SDPA accepts strided inputs).
    q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))
    context = F.scaled_dot_product_attention(
        q,
        k,
        v,
        attn_mask=None if masked is None else ~masked,
        dropout_p=dropout_p,
        is_causal=causal,
        scale=scale,
        enable_gqa=groups != heads,
    )  # [b, np, sq, hn]
    return context.permute(2, 0, 1, 3).reshape(sq, batch, heads * head_dim)


def attention_dropout_rng(config, dropout_p: float) -> ContextManager:
    """Where attention dropout draws, as in ``DotProductAttention``: the model-parallel RNG
    tracker's fork, or the default generator under sequence parallelism (or nothing to draw)."""
    if dropout_p == 0.0 or config.sequence_parallel:
        return contextlib.nullcontext()
    return tensor_parallel.get_cuda_rng_tracker().fork()


class SDPAttention(MegatronModule):
    """``DotProductAttention`` on SDPA (local spec). Shapes: query [sq, b, np, hn], key/value
    [sk, b, ng, hn] -> [sq, b, np*hn], np/ng the heads/query groups of this tensor-parallel rank."""

    def __init__(
        self,
        config,
        layer_number: int,
        attn_mask_type: AttnMaskType,
        attention_type: str,
        attention_dropout: Optional[float] = None,
        softmax_scale: Optional[float] = None,
        cp_comm_type: Optional[str] = None,
        pg_collection=None,
    ):
        super().__init__(config=config)
        unsupported = {
            "context_parallel_size > 1 (the spec uses ContextParallelLocalAttention)":
                config.context_parallel_size > 1,
            "apply_query_key_layer_scaling": config.apply_query_key_layer_scaling,
            f"softmax_type={config.softmax_type!r}": config.softmax_type != "vanilla",
            "window attention": is_layer_window_attention(
                config.window_size, config.window_attn_skip_freq, layer_number
            ),
        }
        for what, present in unsupported.items():
            if present:
                raise ValueError(
                    f"the SDPA local attention does not implement {what}: pass "
                    "--local-attention unfused (Megatron's DotProductAttention)"
                )
        tp_size = config.tensor_model_parallel_size
        self.heads = config.num_attention_heads // tp_size
        self.groups = config.num_query_groups // tp_size
        self.attn_mask_type = attn_mask_type
        self.softmax_scale = softmax_scale or 1.0 / math.sqrt(config.kv_channels)
        self.dropout_p = config.attention_dropout if attention_dropout is None else attention_dropout

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        attention_mask: Optional[Tensor],
        attn_mask_type: Optional[AttnMaskType] = None,
        attention_bias: Optional[Tensor] = None,
        packed_seq_params=None,
    ) -> Tensor:
        if attention_bias is not None or packed_seq_params is not None:
            raise NotImplementedError(
                "the SDPA local attention takes no attention bias or packed sequences "
                "(neither does Megatron's DotProductAttention)"
            )
        sq, sk = query.size(0), key.size(0)
        # Like DotProductAttention's softmax: the layer's mask type decides, and a causal layer
        # without a mask tensor is causal (a single query, e.g. a decode step, sees every key).
        causal = attention_mask is None and self.attn_mask_type == AttnMaskType.causal and sq > 1
        if causal and sq != sk:
            raise ValueError(f"causal attention without a mask needs as many queries as keys ({sq} vs {sk})")
        dropout_p = self.dropout_p if self.training else 0.0
        with attention_dropout_rng(self.config, dropout_p):
            return sdpa_context(query, key, value, attention_mask, causal, self.softmax_scale, dropout_p)
