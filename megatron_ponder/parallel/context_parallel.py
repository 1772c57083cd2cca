"""Context parallelism: this rank's slice of a batch (Megatron's load-balanced split).

Megatron splits a sequence for context parallelism into 2*cp chunks and gives rank r the chunks
r and 2cp-1-r (load balance under causal attention). Latent mode needs nothing more: the batch is
split at token level, and the model interleaves thoughts *after* the split, so each of the 2*cp
chunks of the interleaved sequence holds whole token groups (L/2cp tokens, each followed by its N
thoughts), which is exactly Megatron's split of the interleaved sequence. Positions travel with
their tokens, so the rotary table built from the local position ids is the CP slice of the full
table. The core attention the local spec installs under CP is
:mod:`megatron_ponder.model.context_parallel_attention`.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch.distributed as dist

from megatron.core import parallel_state

from megatron_ponder.runtime.megatron_compat import get_batch_on_this_cp_rank

from megatron_ponder.sequence_layout import check_sequence_layout


def split_batch_for_context_parallel(
    batch: Dict[str, Any], cp_group: Optional[dist.ProcessGroup] = None
) -> Dict[str, Any]:
    """This CP rank's chunks (r and 2cp-1-r) of every [b, L] tensor in ``batch``.

    ``attention_mask`` (document masks [b, 1, L, L], or None for causal attention) keeps every
    key column and loses the query rows of the other ranks (Megatron's split of a mask:
    [b, 1, L/cp, L]); the context-parallel attention applies it on top of its causal order.
    """
    cp_group = cp_group or parallel_state.get_context_parallel_group()
    cp_size = dist.get_world_size(cp_group)
    if cp_size == 1:
        return batch
    length = batch["tokens"].size(1)
    check_sequence_layout(length, 1, False, cp_size)
    # Megatron's helper rewrites the dict in place; the looped pipeline reads every microbatch
    # once per pass, so split a copy.
    return get_batch_on_this_cp_rank(dict(batch), cp_group=cp_group)
