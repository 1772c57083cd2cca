"""Activation recompute (Megatron's full and selective) gives bit-identical gradients in every
mode: each pass of pondering and latent thoughts is recomputed exactly as it ran."""

import pytest
import torch

from megatron_ponder.variants import RECOMPUTE
from support.tiny_models import MODE_FIELDS, random_batch, tiny_model

RECOMPUTED = ["full", "full-block", "selective"]


def _gradients(style, mode_fields, recompute_fields):
    model = tiny_model(style, **mode_fields, **recompute_fields)
    model.train()
    tokens, labels, positions = random_batch(2, 8)
    loss = model(tokens, positions, None, labels=labels, num_jacobi_rounds=2)
    loss.sum().backward()
    return loss.detach(), {name: param.grad.clone() for name, param in model.named_parameters()}


@pytest.mark.parametrize("style", ["llama", "gpt2"])
@pytest.mark.parametrize("recompute", RECOMPUTED)
@pytest.mark.parametrize("mode", list(MODE_FIELDS))
def test_recompute_gives_bit_identical_gradients(megatron_world_of_one, mode, recompute, style):
    loss, grads = _gradients(style, MODE_FIELDS[mode], {})
    loss_recomputed, grads_recomputed = _gradients(style, MODE_FIELDS[mode], RECOMPUTE[recompute])
    assert torch.equal(loss, loss_recomputed)
    assert grads.keys() == grads_recomputed.keys()
    for name in grads:
        assert torch.equal(grads[name], grads_recomputed[name]), name
