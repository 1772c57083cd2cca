"""A non-finite loss stops the run with the iteration (`stop`) or drops the update (`skip`)."""

import pytest
import torch
from megatron.core.optimizer import OptimizerConfig

from megatron_ponder.training.optimizer import wrap_and_build_optimizer
from megatron_ponder.training.nan_guard import NonFiniteLossError
from megatron_ponder.training.step import train_step
from support.tiny_models import random_batch, tiny_model


def _microbatch(tokens, labels, positions):
    """One training microbatch dict of [2, 8] tensors, every token counted."""
    return dict(tokens=tokens, labels=labels, position_ids=positions, loss_mask=torch.ones_like(tokens),
                attention_mask=None)


def _poisoned_training_state():
    model = tiny_model("llama", ponder_mode="latent", calculate_per_token_loss=True)
    with torch.no_grad():
        model.embedding.word_embeddings.weight[3].fill_(float("nan"))
    chunks, optimizer = wrap_and_build_optimizer([model], OptimizerConfig(optimizer="adam", lr=1e-3))
    tokens, labels, positions = random_batch(2, 8)
    tokens[0, 0] = 3  # the poisoned row is used
    return model, chunks, optimizer, [_microbatch(tokens, labels, positions)]


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


def _training_state_with_nan_gradients():
    """Finite weights and loss, but one parameter's gradient is NaN (as an overflow in backward gives)."""
    model = tiny_model("llama", ponder_mode="latent", calculate_per_token_loss=True)
    chunks, optimizer = wrap_and_build_optimizer([model], OptimizerConfig(optimizer="adam", lr=1e-3, clip_grad=1.0))
    model.output_layer.weight.register_hook(lambda grad: grad * float("nan"))
    return model, chunks, optimizer, [_microbatch(*random_batch(2, 8))]


def test_nan_gradients_with_a_finite_loss_stop_the_run(megatron_world_of_one):
    _, chunks, optimizer, batches = _training_state_with_nan_gradients()
    with pytest.raises(NonFiniteLossError, match="gradients are not finite at iteration 1"):
        train_step(chunks, optimizer, batches, 2, 8, iteration=0, nan_policy="stop")


def test_nan_gradients_never_reach_the_weights_under_skip(megatron_world_of_one):
    """Megatron's optimizer alone would write NaN into every weight (NaN norm skips clipping)."""
    model, chunks, optimizer, batches = _training_state_with_nan_gradients()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    result = train_step(chunks, optimizer, batches, 2, 8, iteration=0, nan_policy="skip")
    assert result.skipped and torch.isfinite(torch.tensor(result.loss))
    for name, param in model.named_parameters():
        assert torch.equal(param, before[name]), name


def test_skip_limit_stops_after_that_many_consecutive_skips():
    from megatron_ponder.training.nan_guard import SkipLimit

    limit = SkipLimit(3)
    for iteration, skipped in [(1, True), (2, True), (3, False), (4, True), (5, True)]:
        limit.record(iteration, skipped)  # never 3 in a row
    with pytest.raises(NonFiniteLossError, match=r"3 consecutive steps skipped .*iterations 4-6, --nan-skip-limit 3"):
        limit.record(6, True)


def test_non_finite_weights_are_never_saved(megatron_world_of_one):
    from megatron_ponder.training.nan_guard import check_parameters_finite

    model, _, _, _ = _poisoned_training_state()
    with pytest.raises(NonFiniteLossError, match="not finite at iteration 5, so they were not saved .*iteration 4"):
        check_parameters_finite(model, 5, last_saved=4)
