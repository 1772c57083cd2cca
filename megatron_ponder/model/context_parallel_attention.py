"""Causal core attention under context parallelism for the local (non-Transformer-Engine) spec.

Megatron's own local attention refuses CP (only TE's attention implements it), so CPU runs use
:class:`ContextParallelLocalAttention`: keys/values are all-gathered over the CP group and the
causal mask is built from the global slot index of every local query and key, under Megatron's
load-balanced split (rank r holds chunks r and 2cp-1-r of 2*cp). A document mask (this rank's
query rows, every key) is applied on top. The TE spec uses it too for document masks under CP
(TE's own CP attention takes no arbitrary mask).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.distributed as dist
from torch import Tensor

from megatron.core import parallel_state, tensor_parallel
from megatron.core.transformer.module import MegatronModule

from megatron_ponder.config import LOCAL_ATTENTIONS
from megatron_ponder.model.sdpa_attention import attention_dropout_rng, sdpa_context


def global_slot_indices(local_length: int, cp_rank: int, cp_size: int, device=None) -> Tensor:
    """Global sequence index of each local position under the 2*cp load-balanced split.

    The local sequence is chunk ``cp_rank`` followed by chunk ``2*cp_size - 1 - cp_rank``.
    """
    chunk = local_length // 2
    first = torch.arange(chunk, device=device) + cp_rank * chunk
    second = torch.arange(chunk, device=device) + (2 * cp_size - 1 - cp_rank) * chunk
    return torch.cat([first, second])


class _AllGatherSequence(torch.autograd.Function):
    """[s_local, ...] -> [cp, s_local, ...]; backward sums the gradients of all ranks."""

    @staticmethod
    def forward(ctx, local: Tensor, group: dist.ProcessGroup) -> Tensor:
        ctx.group = group
        gathered = [torch.empty_like(local) for _ in range(dist.get_world_size(group))]
        dist.all_gather(gathered, local.contiguous(), group=group)
        return torch.stack(gathered)

    @staticmethod
    def backward(ctx, grad: Tensor):
        """grad [cp, s_local, ...] -> this rank's slice summed over ranks [s_local, ...]."""
        grad = grad.contiguous()
        if dist.get_backend(ctx.group) == dist.Backend.GLOO:
            # gloo has no reduce_scatter: all-reduce the whole gathered gradient, keep our slice.
            dist.all_reduce(grad, group=ctx.group)
            return grad[dist.get_rank(ctx.group)], None
        # NCCL: each rank receives only its own slice (1/cp of the all-reduce's traffic and output).
        local = torch.empty_like(grad[0])
        dist.reduce_scatter_tensor(local, grad.flatten(0, 1), group=ctx.group)
        return local, None


def _to_global_order(gathered: Tensor) -> Tensor:
    """[cp, s_local, ...] in rank order -> [2*cp*chunk, ...] in global sequence order."""
    cp_size, local_length = gathered.shape[:2]
    chunk = local_length // 2
    chunks = [None] * (2 * cp_size)
    for rank in range(cp_size):
        chunks[rank] = gathered[rank, :chunk]
        chunks[2 * cp_size - 1 - rank] = gathered[rank, chunk:]
    return torch.cat(chunks)


class ContextParallelLocalAttention(MegatronModule):
    """Causal core attention over a context-parallel sequence, plain torch (CPU and any GPU).

    Same constructor and forward signature as Megatron's ``DotProductAttention``, plus ``kernel``:
    ``sdpa`` (:func:`megatron_ponder.model.sdpa_attention.sdpa_context`, no [b, np, s, s_global]
    probabilities kept for backward) or ``unfused`` (einsum + softmax).
    Shapes: query [s_local, b, np, hn], key/value [s_local, b, ng, hn] -> [s_local, b, np*hn],
    with np/ng the heads/query groups of this tensor-parallel rank.
    """

    def __init__(
        self,
        config,
        layer_number: int,
        attn_mask_type,
        attention_type: str,
        attention_dropout: Optional[float] = None,
        softmax_scale: Optional[float] = None,
        cp_comm_type: Optional[str] = None,
        pg_collection=None,
        kernel: str = "sdpa",
    ):
        super().__init__(config=config)
        if kernel not in LOCAL_ATTENTIONS:
            raise ValueError(f"unknown local attention kernel {kernel!r}; choose one of {', '.join(LOCAL_ATTENTIONS)}")
        self.kernel = kernel
        tp_size = config.tensor_model_parallel_size
        self.heads = config.num_attention_heads // tp_size
        self.groups = config.num_query_groups // tp_size
        self.head_dim = config.kv_channels
        self.softmax_scale = softmax_scale or 1.0 / math.sqrt(self.head_dim)
        dropout = config.attention_dropout if attention_dropout is None else attention_dropout
        self.dropout = torch.nn.Dropout(dropout)

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        attention_mask: Optional[Tensor],
        attn_mask_type=None,
        attention_bias: Optional[Tensor] = None,
        packed_seq_params=None,
    ) -> Tensor:
        """``attention_mask``: None (causal), or this rank's rows of a mask in global key order,
        [b|1, 1, s_local, s_global] bool, True = masked (document masks: the batch's token mask
        split by Megatron's ``get_batch_on_this_cp_rank``, which keeps every key column); it is
        applied on top of the causal order of the global slot indices."""
        if attention_bias is not None or packed_seq_params is not None:
            raise NotImplementedError(
                "ContextParallelLocalAttention takes no attention bias or packed sequences"
            )
        group = parallel_state.get_context_parallel_group()
        cp_size = dist.get_world_size(group)
        cp_rank = dist.get_rank(group)
        key = _to_global_order(_AllGatherSequence.apply(key, group))
        value = _to_global_order(_AllGatherSequence.apply(value, group))
        query_index = global_slot_indices(query.size(0), cp_rank, cp_size, query.device)
        key_index = torch.arange(key.size(0), device=query.device)
        future = key_index[None, :] > query_index[:, None]  # [s_local, s_global]
        if attention_mask is not None:
            if attention_mask.shape[-2:] != future.shape:
                raise ValueError(
                    f"context-parallel attention mask {tuple(attention_mask.shape)}: expected this rank's "
                    f"rows of the global mask [b, 1, {future.size(0)}, {future.size(1)}]"
                )
            future = future | attention_mask  # [b|1, 1, s_local, s_global]
        if self.kernel == "sdpa":
            dropout_p = self.dropout.p if self.training else 0.0
            with attention_dropout_rng(self.config, dropout_p):
                return sdpa_context(query, key, value, future, False, self.softmax_scale, dropout_p)
        if self.heads != self.groups:
            key = key.repeat_interleave(self.heads // self.groups, dim=2)
            value = value.repeat_interleave(self.heads // self.groups, dim=2)

        scores = torch.einsum("sbnd,tbnd->bnst", query, key) * self.softmax_scale
        probs = torch.softmax(scores.float().masked_fill(future, float("-inf")), dim=-1)
        probs = probs.to(query.dtype)
        if self.config.sequence_parallel:
            probs = self.dropout(probs)
        else:
            with tensor_parallel.get_cuda_rng_tracker().fork():
                probs = self.dropout(probs)
        context = torch.einsum("bnst,tbnd->sbnd", probs, value)
        return context.reshape(query.size(0), query.size(1), self.heads * self.head_dim)
