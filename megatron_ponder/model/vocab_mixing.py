"""Ponder mode's feedback: softmax over the vocabulary, then the probability-weighted embedding.

``mix = softmax(logits) @ E.weight`` with the vocabulary split across tensor-parallel ranks the
way Megatron splits it (``VocabParallelEmbedding``/the output layer: rank r owns rows
[r*V/tp, (r+1)*V/tp)). The softmax is finished across ranks (max and sum all-reduced), each rank
multiplies its probability columns by its embedding rows, and the partial [s, b, h] results are
summed: by all-reduce, or by reduce-scatter along the sequence under sequence parallelism, which
leaves each rank its sequence shard exactly as the embedding layer does.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist
from torch import Tensor

from megatron.core.tensor_parallel.mappings import (
    reduce_from_tensor_model_parallel_region,
    reduce_scatter_to_sequence_parallel_region,
)


def _group_size(group: Optional[dist.ProcessGroup]) -> int:
    return 1 if group is None else dist.get_world_size(group)


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
    logits = logits.float()
    if valid_vocab_size is not None and vocab_start_index + logits.size(-1) > valid_vocab_size:
        column_ids = torch.arange(logits.size(-1), device=logits.device) + vocab_start_index
        logits = logits.masked_fill(column_ids >= valid_vocab_size, float("-inf"))
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
) -> Tensor:
    """``probs @ E`` summed over the vocabulary shards of all tensor-parallel ranks.

    Args:
        probs: [s, b, V/tp] probabilities of this rank's vocabulary columns (full sequence).
        embedding_weight: [V/tp, h] this rank's rows of the word-embedding table.
        tp_group: tensor-parallel group.
        sequence_parallel: return this rank's sequence shard [s/tp, b, h] instead of [s, b, h].

    Returns:
        [s, b, h] (or [s/tp, b, h] under sequence parallelism) in the embedding's dtype.
    """
    partial = torch.matmul(probs.to(embedding_weight.dtype), embedding_weight)
    if _group_size(tp_group) == 1:
        return partial
    if sequence_parallel:
        return reduce_scatter_to_sequence_parallel_region(partial, group=tp_group)
    return reduce_from_tensor_model_parallel_region(partial, group=tp_group)
