"""Ponder mode's feedback: softmax over the vocabulary, then the probability-weighted embedding.

``mix = softmax(logits) @ E.weight`` with the vocabulary split across tensor-parallel ranks the
way Megatron splits it (``VocabParallelEmbedding``/the output layer: rank r owns rows
[r*V/tp, (r+1)*V/tp)). The softmax is finished across ranks (max and sum all-reduced), each rank
multiplies its probability columns by its embedding rows, and the partial [s, b, h] results are
summed: by all-reduce, or by reduce-scatter along the sequence under sequence parallelism, which
leaves each rank its sequence shard exactly as the embedding layer does.

Two variants of the same mixture:
* dense (:func:`probability_weighted_embedding`): the GEMM ``p [s*b, V/tp] @ E [V/tp, h]``, in the
  embedding's dtype, or through Transformer Engine FP8 GEMMs when ``fp8_format`` is given
  (:mod:`megatron_ponder.model.fp8_mixing`, imported only then);
* top-K (:func:`vocab_parallel_topk_mixture`): softmax over the K largest logits only and the
  weighted sum of those K embedding rows (the paper's sparse variant).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist
from torch import Tensor

from megatron.core.tensor_parallel.mappings import (
    copy_to_tensor_model_parallel_region,
    gather_from_tensor_model_parallel_region,
    reduce_from_tensor_model_parallel_region,
    reduce_scatter_to_sequence_parallel_region,
)


def _group_size(group: Optional[dist.ProcessGroup]) -> int:
    return 1 if group is None else dist.get_world_size(group)


def _mask_padding(logits: Tensor, vocab_start_index: int, valid_vocab_size: Optional[int]) -> Tensor:
    """Columns whose global id is >= ``valid_vocab_size`` (vocabulary padding) set to -inf."""
    if valid_vocab_size is None or vocab_start_index + logits.size(-1) <= valid_vocab_size:
        return logits
    column_ids = torch.arange(logits.size(-1), device=logits.device) + vocab_start_index
    return logits.masked_fill(column_ids >= valid_vocab_size, float("-inf"))


def _sum_partial_mixtures(partial: Tensor, tp_group, sequence_parallel: bool) -> Tensor:
    """Sum each rank's [s, b, h] partial mixture: all-reduce, or reduce-scatter to [s/tp, b, h]."""
    if _group_size(tp_group) == 1:
        return partial
    if sequence_parallel:
        return reduce_scatter_to_sequence_parallel_region(partial, group=tp_group)
    return reduce_from_tensor_model_parallel_region(partial, group=tp_group)


def vocab_parallel_softmax(
    logits: Tensor,
    tp_group: Optional[dist.ProcessGroup],
    vocab_start_index: int = 0,
    valid_vocab_size: Optional[int] = None,
) -> Tensor:
    """Softmax over a vocabulary split across the tensor-parallel group, in fp32.

    Args:
        logits: [s, b, V/tp] this rank's vocabulary columns.
        tp_group: tensor-parallel group (None or size 1: plain softmax).
        vocab_start_index: global id of this rank's first column.
        valid_vocab_size: columns with global id >= this (vocabulary padding) get probability 0.

    Returns:
        [s, b, V/tp] fp32 probabilities of this rank's columns (rows sum to 1 across ranks).
    """
    logits = _mask_padding(logits.float(), vocab_start_index, valid_vocab_size)
    if _group_size(tp_group) == 1:
        return torch.softmax(logits, dim=-1)
    # The max only stabilises exp(); any constant works, so it carries no gradient.
    row_max = logits.detach().amax(dim=-1, keepdim=True)
    dist.all_reduce(row_max, op=dist.ReduceOp.MAX, group=tp_group)
    exp = torch.exp(logits - row_max)
    # Every rank's probabilities depend on the global sum, so its backward must also sum the
    # gradients of all ranks: an all-reduce in both directions (Megatron's
    # reduce_from_tensor_model_parallel_region has an identity backward and would be wrong here).
    row_sum = dist.nn.functional.all_reduce(exp.sum(dim=-1, keepdim=True), group=tp_group)
    return exp / row_sum


def probability_weighted_embedding(
    probs: Tensor,
    embedding_weight: Tensor,
    tp_group: Optional[dist.ProcessGroup],
    sequence_parallel: bool,
    fp8_format: Optional[str] = None,
    fp8_weight_cache=None,
) -> Tensor:
    """``probs @ E`` summed over the vocabulary shards of all tensor-parallel ranks.

    Args:
        probs: [s, b, V/tp] probabilities of this rank's vocabulary columns (full sequence).
        embedding_weight: [V/tp, h] this rank's rows of the word-embedding table.
        tp_group: tensor-parallel group.
        sequence_parallel: return this rank's sequence shard [s/tp, b, h] instead of [s, b, h].
        fp8_format: ``e4m3`` or ``hybrid``: the local GEMM runs in Transformer Engine FP8
            (:func:`megatron_ponder.model.fp8_mixing.fp8_mixing_matmul`); None: embedding dtype.
        fp8_weight_cache: the model's ``FP8WeightCache`` (FP8 only): the embedding quantised
            once per step instead of once per call.

    Returns:
        [s, b, h] (or [s/tp, b, h] under sequence parallelism) in the embedding's dtype.
    """
    if fp8_format is not None:
        from megatron_ponder.model.fp8_mixing import fp8_mixing_matmul  # imports TE: GPU only

        partial = fp8_mixing_matmul(probs, embedding_weight, fp8_format, fp8_weight_cache)
    else:
        partial = torch.matmul(probs.to(embedding_weight.dtype), embedding_weight)
    return _sum_partial_mixtures(partial, tp_group, sequence_parallel)


def vocab_parallel_topk_mixture(
    logits: Tensor,
    embedding_weight: Tensor,
    k: int,
    tp_group: Optional[dist.ProcessGroup],
    sequence_parallel: bool,
    vocab_start_index: int = 0,
    valid_vocab_size: Optional[int] = None,
) -> Tensor:
    """``sum_j softmax(top-K logits)_j * E[id_j]`` over a vocabulary split across TP ranks.

    Each rank takes the top K of its own columns, the (value, global id) pairs of all ranks are
    all-gathered and the global top K kept (identical on every rank); the softmax runs over
    those K logits. Each rank then sums the embedding rows it owns among the K, weighted by
    their probabilities, and the partial sums are reduced exactly as the dense mixture's (one
    all-reduce, or a reduce-scatter under sequence parallelism), so both variants return the
    same layout. Padded vocabulary columns are -inf and carry no weight.

    Gradients reach the K selected logits (through the gather and the top-K indexing) and the
    K selected embedding rows (``embedding_bag``'s backward). The probabilities are replicated
    but each rank uses only its own rows of them, so their gradient is summed across ranks
    (``copy_to_tensor_model_parallel_region``: identity forward, all-reduce backward).

    Args:
        logits: [s, b, V/tp] this rank's vocabulary columns (full sequence).
        embedding_weight: [V/tp, h] this rank's rows of the word-embedding table.
        k: K, the tokens mixed per position (clamped to the vocabulary size).
        tp_group: tensor-parallel group.
        sequence_parallel: return [s/tp, b, h] instead of [s, b, h].
        vocab_start_index: global id of this rank's first column.
        valid_vocab_size: columns with global id >= this are padding.

    Returns:
        [s, b, h] (or [s/tp, b, h] under sequence parallelism) in the embedding's dtype.
    """
    local_vocab = logits.size(-1)
    logits = _mask_padding(logits.float(), vocab_start_index, valid_vocab_size)
    values, local_ids = logits.topk(min(k, local_vocab), dim=-1)  # [s, b, k_local]
    ids = local_ids + vocab_start_index
    if _group_size(tp_group) > 1:
        values = gather_from_tensor_model_parallel_region(values, group=tp_group)  # [s, b, tp*k_local]
        with torch.no_grad():
            ids = gather_from_tensor_model_parallel_region(ids, group=tp_group)
        values, picked = values.topk(min(k, values.size(-1)), dim=-1)
        ids = ids.gather(-1, picked)
    probs = torch.softmax(values, dim=-1)  # [s, b, K]
    if _group_size(tp_group) > 1:
        probs = copy_to_tensor_model_parallel_region(probs, group=tp_group)
    # Rows this rank owns; -inf picks (K beyond the real vocabulary) are padding, never mixed.
    owned = (ids >= vocab_start_index) & (ids < vocab_start_index + local_vocab) & torch.isfinite(values)
    rows = torch.where(owned, ids - vocab_start_index, torch.zeros_like(ids))
    weights = torch.where(owned, probs, torch.zeros_like(probs)).to(embedding_weight.dtype)
    # embedding_bag sums the K weighted rows without materialising a [s, b, K, h] gather.
    partial = torch.nn.functional.embedding_bag(
        rows.flatten(0, -2), embedding_weight, per_sample_weights=weights.flatten(0, -2), mode="sum"
    ).view(*probs.shape[:-1], embedding_weight.size(1))
    return _sum_partial_mixtures(partial, tp_group, sequence_parallel)
