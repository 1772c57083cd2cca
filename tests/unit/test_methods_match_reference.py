"""PonderGPTModel (Megatron) vs the plain-PyTorch reference written from docs/methods.md's equations.

Same weights, same batch: the per-token loss and every gradient agree (fp32, rel. 1e-5) for
ponder mode (S = 1, 2, 3; accumulate and replace) and latent mode (N = 1, 2; J = 1, 2, 3), in
LLaMA, GPT-2 and GPT-NeoX styles.
"""

import pytest
import torch
from megatron.core.optimizer import OptimizerConfig

from conftest import causal_mask
from reference.methods import latent_loss, ponder_loss, vanilla_loss
from support.tiny_models import gradients_in_reference_layout, random_batch, reference_copy, relative_error, tiny_model

from megatron_ponder.training.optimizer import wrap_and_build_optimizer
from megatron_ponder.training.step import train_step

STYLES = ["llama", "gpt2", "neox"]
BATCH, LENGTH = 2, 8


def _compare(model, style, megatron_loss, reference, reference_loss_value):
    """Loss rel. 1e-5; each gradient rel. 1e-5 of its own norm, or of 1% of the global gradient
    norm for gradients that are exactly zero in exact arithmetic (e.g. the key bias: softmax is
    invariant to it), where both sides hold only fp32 rounding noise."""
    assert relative_error(megatron_loss, reference_loss_value) < 1e-5
    megatron_loss.sum().backward()
    reference_loss_value.sum().backward()
    megatron_grads = gradients_in_reference_layout(model, style)
    global_norm = torch.stack([p.grad.norm() for p in reference.parameters()]).norm()
    for name, param in reference.named_parameters():
        error = (megatron_grads[name] - param.grad).norm()
        assert error <= 1e-5 * max(param.grad.norm(), 1e-2 * global_norm), name


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("accumulate", [True, False], ids=["accumulate", "replace"])
@pytest.mark.parametrize("steps", [1, 2, 3])
def test_ponder_mode_matches_reference(megatron_world_of_one, style, steps, accumulate):
    model = tiny_model(style, ponder_mode="ponder", ponder_steps=steps, ponder_accumulate=accumulate)
    reference = reference_copy(model, style)
    tokens, labels, positions = random_batch(BATCH, LENGTH)
    loss = model(tokens, positions, causal_mask(LENGTH), labels=labels)
    expected = ponder_loss(reference, tokens, labels, positions, steps, accumulate, scale=1.0)
    # The feedback must matter, or this comparison could not catch a wrong mixture.
    assert relative_error(vanilla_loss(reference, tokens, labels, positions), expected.detach()) > 1e-3
    _compare(model, style, loss, reference, expected)


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("thoughts", [1, 2])
@pytest.mark.parametrize("rounds", [1, 2, 3])
def test_latent_mode_matches_reference(megatron_world_of_one, style, thoughts, rounds):
    model = tiny_model(style, ponder_mode="latent", num_latent_thoughts=thoughts)
    reference = reference_copy(model, style)
    tokens, labels, positions = random_batch(BATCH, LENGTH)
    loss, model_residuals = model(tokens, positions, causal_mask(LENGTH), labels=labels, num_jacobi_rounds=rounds,
                                  return_jacobi_residuals=True)
    scale = model.config.input_embedding_scale
    expected, residuals = latent_loss(reference, tokens, labels, positions, thoughts, rounds, scale)
    assert [float(r) for r in model_residuals] == pytest.approx(residuals, rel=1e-4, abs=1e-9)
    _compare(model, style, loss, reference, expected)


@pytest.mark.parametrize("style", STYLES)
def test_latent_mode_without_labels_returns_logits_at_last_thoughts(megatron_world_of_one, style):
    model = tiny_model(style, ponder_mode="latent", num_latent_thoughts=2)
    tokens, labels, positions = random_batch(BATCH, LENGTH)
    model.eval()
    logits = model(tokens, positions, None)
    assert logits.shape == (BATCH, LENGTH, 64)
    loss, residuals = model(tokens, positions, None, labels=labels, return_jacobi_residuals=True)
    expected = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none")
    assert relative_error(loss.flatten(), expected) < 1e-6
    assert len(residuals) == model.config.jacobi_eval_rounds


def test_training_step_draws_j_per_iteration(megatron_world_of_one):
    """train_step draws J once per iteration and reports it with that many residuals."""
    model = tiny_model("llama", ponder_mode="latent", jacobi_train_rounds=(1, 4), calculate_per_token_loss=True)
    chunks, optimizer = wrap_and_build_optimizer([model], OptimizerConfig(optimizer="adam", lr=1e-4))
    tokens, labels, positions = random_batch(BATCH, LENGTH)
    batch = dict(tokens=tokens, labels=labels, position_ids=positions, loss_mask=torch.ones_like(tokens))
    drawn = set()
    for iteration in range(6):
        result = train_step(chunks, optimizer, [batch], BATCH, LENGTH, iteration)
        expected = model.config.jacobi_rounds_for_iteration(iteration)
        assert result.jacobi_rounds == expected
        assert len(result.jacobi_residuals) == expected
        drawn.add(expected)
    assert len(drawn) > 1, "the draw never changed J: the test cannot tell a fixed J from the draw"
