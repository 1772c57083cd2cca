"""Token/thought interleaving: slot order, group views, positions and masks."""

import torch

from megatron_ponder.model.interleave import (
    group_slots,
    interleave_attention_mask,
    interleave_position_ids,
    interleave_thoughts,
    jacobi_update,
    last_slot_of_each_group,
)


def _labelled(length, thoughts, batch=2):
    """Token slot of token i holds 100*i, thought k holds 100*i + k (in every hidden unit)."""
    tokens = (100.0 * torch.arange(length)).view(length, 1, 1).expand(length, batch, 3)
    ks = torch.arange(1, thoughts + 1).view(1, thoughts, 1, 1)
    z = (100.0 * torch.arange(length)).view(length, 1, 1, 1) + ks
    return tokens, z.expand(length, thoughts, batch, 3)


def test_slot_order_is_token_then_its_thoughts():
    tokens, thoughts = _labelled(length=3, thoughts=2)
    slots = interleave_thoughts(tokens, thoughts)
    assert slots.shape == (9, 2, 3)
    assert slots[:, 0, 0].tolist() == [0, 1, 2, 100, 101, 102, 200, 201, 202]
    assert torch.equal(group_slots(slots, 3)[:, 1:], thoughts)


def test_jacobi_update_takes_the_output_of_the_previous_slot_in_the_group():
    tokens, thoughts = _labelled(length=4, thoughts=2)
    hidden = interleave_thoughts(tokens, thoughts)  # pretend the pass is the identity
    updated = jacobi_update(hidden, num_thoughts=2)
    assert updated.shape == (4, 2, 2, 3)
    # z_i^1 <- slot of x_i (100 i), z_i^2 <- slot of z_i^1 (100 i + 1)
    assert updated[:, :, 0, 0].tolist() == [[0, 1], [100, 101], [200, 201], [300, 301]]
    assert last_slot_of_each_group(hidden, 3)[:, 0, 0].tolist() == [2, 102, 202, 302]


def test_empty_thoughts_give_the_token_sequence():
    tokens, _ = _labelled(length=3, thoughts=1)
    assert torch.equal(interleave_thoughts(tokens, tokens.new_empty(3, 0, 2, 3)), tokens)


def test_position_ids_are_shared_by_a_token_and_its_thoughts():
    positions = torch.tensor([[0, 1, 2], [5, 6, 7]])
    assert interleave_position_ids(positions, 2).tolist() == [[0, 0, 1, 1, 2, 2], [5, 5, 6, 6, 7, 7]]


def test_causal_token_mask_expands_to_causal_slot_mask():
    causal = torch.ones(4, 4, dtype=torch.bool).triu(1)[None, None]
    expanded = interleave_attention_mask(causal, 3)
    assert torch.equal(expanded, torch.ones(12, 12, dtype=torch.bool).triu(1)[None, None])
    assert interleave_attention_mask(None, 3) is None


def test_document_mask_keeps_thoughts_inside_their_document():
    # Two documents of two tokens each: token 2 must not see tokens 0, 1.
    mask = torch.ones(4, 4, dtype=torch.bool).triu(1)
    mask[2:, :2] = True
    expanded = interleave_attention_mask(mask[None, None], 2)[0, 0]
    # slot 4 = token 2, slot 5 = its thought: neither sees slots 0..3 (document one).
    assert expanded[4:, :4].all()
    assert not expanded[5, 4]  # the thought sees its own token
    assert expanded[4, 5]  # the token does not see its thought (causal in slot order)
