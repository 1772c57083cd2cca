"""A non-finite loss stops the run with the iteration (`stop`) or drops the update (`skip`)."""

import pytest
import torch
from megatron.core.optimizer import OptimizerConfig

from megatron_ponder.training.optimizer import wrap_and_build_optimizer
from megatron_ponder.training.step import NonFiniteLossError, train_step
from tiny_models import random_batch, tiny_model


def _poisoned_training_state():
    model = tiny_model("llama", ponder_mode="latent", calculate_per_token_loss=True)
    with torch.no_grad():
        model.embedding.word_embeddings.weight[3].fill_(float("nan"))
    chunks, optimizer = wrap_and_build_optimizer([model], OptimizerConfig(optimizer="adam", lr=1e-3))
    tokens, labels, positions = random_batch(2, 8)
    tokens[0, 0] = 3  # the poisoned row is used
    batch = dict(tokens=tokens, labels=labels, position_ids=positions, loss_mask=torch.ones_like(tokens),
                 attention_mask=None)
    return model, chunks, optimizer, [batch]


def test_stop_policy_raises_with_the_iteration(megatron_world_of_one):
    _, chunks, optimizer, batches = _poisoned_training_state()
    # iteration 7 (0-based, as the loop passes it) is logged as iteration 8: the message uses the log's number
    with pytest.raises(NonFiniteLossError, match="iteration 8"):
        train_step(chunks, optimizer, batches, 2, 8, iteration=7, nan_policy="stop")


def test_skip_policy_drops_the_update(megatron_world_of_one):
    model, chunks, optimizer, batches = _poisoned_training_state()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    result = train_step(chunks, optimizer, batches, 2, 8, iteration=0, nan_policy="skip")
    assert result.skipped
    for name, param in model.named_parameters():
        # nan_to_num: the poisoned row is NaN on both sides (NaN != NaN under torch.equal)
        assert torch.equal(torch.nan_to_num(param), torch.nan_to_num(before[name])), name
