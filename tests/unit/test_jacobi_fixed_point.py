"""Latent mode's Jacobi iteration converges to the sequential definition of the thoughts.

Sequential definition (= KV-cached decoding): z_i^k = H(x_<=i, z_<i, z_i^<k) at the last slot,
computed slot by slot by the reference. Jacobi reaches it exactly after J = N*L rounds, and the
difference shrinks every round until it hits fp32 rounding.
"""

import itertools

import pytest
import torch

from reference.methods import latent_sequential_loss
from support.tiny_models import random_batch, reference_copy, relative_error, tiny_model

FP32_FLOOR = 1e-6


@pytest.mark.parametrize("style", ["llama", "gpt2"])
@pytest.mark.parametrize("thoughts, length", [(1, 6), (2, 4)])
def test_jacobi_converges_to_sequential_definition(megatron_world_of_one, style, thoughts, length):
    model = tiny_model(style, ponder_mode="latent", num_latent_thoughts=thoughts)
    reference = reference_copy(model, style)
    tokens, labels, positions = random_batch(2, length)
    sequential = latent_sequential_loss(
        reference, tokens, labels, positions, thoughts, model.config.input_embedding_scale
    ).detach()
    errors = []
    with torch.no_grad():
        for rounds in range(thoughts * length + 1):
            loss = model(tokens, positions, None, labels=labels, num_jacobi_rounds=rounds)
            errors.append(relative_error(loss, sequential))
    assert errors[0] > 1e-3, "initial thoughts already at the fixed point: test is not sensitive"
    assert errors[-1] < 1e-5, errors
    for before, after in itertools.pairwise(errors):
        if before > FP32_FLOOR:
            assert after < before, errors


def test_jacobi_residual_shrinks_on_a_briefly_trained_model(megatron_world_of_one):
    torch.manual_seed(0)
    model = tiny_model("llama", ponder_mode="latent", num_latent_thoughts=1, init_method_std=0.02,
                       jacobi_train_rounds=(2, 3))
    tokens, labels, positions = random_batch(4, 12, seed=3)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    first_loss = None
    for iteration in range(40):
        rounds = model.config.jacobi_rounds_for_iteration(iteration)
        loss = model(tokens, positions, None, labels=labels, num_jacobi_rounds=rounds).mean()
        first_loss = first_loss if first_loss is not None else loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.5 * first_loss  # it did train

    model.eval()
    with torch.no_grad():
        _, residuals = model(tokens, positions, None, labels=labels, num_jacobi_rounds=8, return_jacobi_residuals=True)
    residuals = [float(r) for r in residuals]
    assert len(residuals) == 8
    assert residuals[0] > 1e-6
    for before, after in itertools.pairwise(residuals):
        if before > 1e-12:
            assert after < before, residuals
