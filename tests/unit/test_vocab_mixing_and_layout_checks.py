"""Vocabulary mixing at one rank (padding masked) and the layout errors of parallel runs."""

import pytest
import torch

from megatron_ponder.model.vocab_mixing import probability_weighted_embedding, vocab_parallel_softmax
from megatron_ponder.model.context_parallel_attention import global_slot_indices
from megatron_ponder.sequence_layout import ContextParallelLayoutError, check_sequence_layout


def test_softmax_gives_padded_vocabulary_rows_zero_probability():
    logits = torch.randn(5, 2, 10)
    probs = vocab_parallel_softmax(logits, None, valid_vocab_size=7)
    assert torch.all(probs[..., 7:] == 0)
    torch.testing.assert_close(probs.sum(-1), torch.ones(5, 2))
    torch.testing.assert_close(probs[..., :7], torch.softmax(logits[..., :7], -1))


def test_softmax_masks_by_global_column_id_on_a_later_shard():
    # This rank owns columns 8..15 of a vocabulary whose real size is 12.
    probs = vocab_parallel_softmax(torch.zeros(1, 1, 8), None, vocab_start_index=8, valid_vocab_size=12)
    assert probs[0, 0, :4].tolist() == [0.25] * 4 and probs[0, 0, 4:].abs().sum() == 0


def test_mixture_is_probability_weighted_embedding_rows():
    weight = torch.randn(6, 4)
    probs = torch.zeros(3, 1, 6)
    probs[0, 0, 2] = 1.0
    probs[1, 0, :2] = 0.5
    mixed = probability_weighted_embedding(probs, weight, None, sequence_parallel=False)
    torch.testing.assert_close(mixed[0, 0], weight[2])
    torch.testing.assert_close(mixed[1, 0], (weight[0] + weight[1]) / 2)
    assert mixed[2].abs().sum() == 0


@pytest.mark.parametrize(
    "length, tp, sp, cp, fragment",
    [(10, 4, True, 1, "tensor-parallel size 4"), (10, 1, False, 2, "2 x context-parallel size = 4"),
     (6, 2, True, 2, "context-parallel")],
)
def test_layouts_that_would_split_a_token_group_are_refused(length, tp, sp, cp, fragment):
    with pytest.raises(ContextParallelLayoutError, match=fragment) as error:
        check_sequence_layout(length, tp, sp, cp)
    assert "\n" not in str(error.value)


def test_layouts_that_keep_groups_whole_pass():
    check_sequence_layout(16, 4, True, 2)
    check_sequence_layout(10, 4, False, 1)  # no SP: TP does not split the sequence


def test_global_slot_indices_follow_megatrons_load_balanced_split():
    # cp=2, 8 slots -> 4 chunks of 2: rank 0 holds chunks 0 and 3, rank 1 chunks 1 and 2.
    assert global_slot_indices(4, 0, 2).tolist() == [0, 1, 6, 7]
    assert global_slot_indices(4, 1, 2).tolist() == [2, 3, 4, 5]
