"""Token/thought interleaving for latent mode (PonderLM-2).

The interleaved sequence puts the N thoughts of token i right after it:
``[x_1, z_1^1..z_1^N, x_2, z_2^1..z_2^N, ...]``. We keep it as *groups*: a tensor of shape
``[L, k, b, h]`` (token group i = its k slots) whose flattening to ``[k*L, b, h]`` is the slot
order. Every operation here works on whole groups, so it is correct on any shard that holds
whole groups (sequence-parallel and context-parallel shards do, see docs/parallelism.md) and needs no
communication.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


def interleave_thoughts(token_embeddings: Tensor, thoughts: Tensor) -> Tensor:
    """Build the slot sequence from token slots and thought slots.

    Args:
        token_embeddings: [L, b, h] input embeddings of the L (local) tokens.
        thoughts: [L, k, b, h] the k thoughts currently attached to each token (k may be 0).

    Returns:
        [(k+1)*L, b, h] slots in the order x_1, z_1^1..z_1^k, x_2, ...
    """
    groups = torch.cat([token_embeddings.unsqueeze(1), thoughts], dim=1)
    return groups.flatten(0, 1)


def group_slots(hidden: Tensor, slots_per_token: int) -> Tensor:
    """View a slot sequence [k*L, b, h] as token groups [L, k, b, h]."""
    if hidden.size(0) % slots_per_token != 0:
        raise ValueError(
            f"sequence of {hidden.size(0)} slots does not split into groups of {slots_per_token}"
        )
    return hidden.unflatten(0, (hidden.size(0) // slots_per_token, slots_per_token))


def jacobi_update(hidden: Tensor, num_thoughts: int) -> Tensor:
    """One Jacobi round's update: every thought takes the output of the slot before it.

    z_i^1 <- H[slot of x_i], z_i^k <- H[slot of z_i^{k-1}]: within each group, the outputs of
    slots 0..N-1 become thoughts 1..N.

    Args:
        hidden: [(N+1)*L, b, h] output hidden states of a pass over the interleaved sequence.

    Returns:
        [L, N, b, h] the new thoughts.
    """
    return group_slots(hidden, num_thoughts + 1)[:, :num_thoughts]


def last_slot_of_each_group(hidden: Tensor, slots_per_token: int) -> Tensor:
    """[k*L, b, h] -> [L, b, h]: the output at the last slot of every token group.

    With k = N+1 that is the last thought of every token, where latent mode takes its loss;
    during the initial passes (k = 1..N) it is the state that becomes the next thought.
    """
    return group_slots(hidden, slots_per_token)[:, -1]


def interleave_position_ids(position_ids: Tensor, slots_per_token: int) -> Tensor:
    """[b, L] -> [b, k*L]: every slot of a token shares the token's position id."""
    return position_ids.repeat_interleave(slots_per_token, dim=1)


def interleave_attention_mask(
    attention_mask: Optional[Tensor], slots_per_token: int
) -> Optional[Tensor]:
    """Expand a token-level mask [b|1, 1, L, L] (True = masked) to slots [b|1, 1, kL, kL].

    Slot a of token i may attend to slot c of token j iff token i may attend to token j and
    c <= a in slot order. For a causal token mask this is exactly the causal slot mask; for
    document masks (reset at end-of-document) no slot ever sees another document.
    None stays None (the attention then applies its own causal mask over the slots).

    A context-parallel rank's rows of a mask, [b|1, 1, L_local, L] (every key, in global order),
    become [b|1, 1, k*L_local, k*L] by the expansion alone: the order of slots within a token
    group is then added by the context-parallel attention, which masks every key after the query
    in global slot order (:mod:`megatron_ponder.model.context_parallel_attention`).
    """
    if attention_mask is None or slots_per_token == 1:
        return attention_mask
    expanded = attention_mask.repeat_interleave(slots_per_token, dim=-1).repeat_interleave(
        slots_per_token, dim=-2
    )
    num_slots = expanded.size(-1)
    if expanded.size(-2) != num_slots:  # a context-parallel shard's rows
        return expanded
    after = torch.ones(num_slots, num_slots, dtype=torch.bool, device=expanded.device).triu(1)
    return expanded | after
