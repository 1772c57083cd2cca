"""Top-K vocabulary mixing: K = V is dense mixing, K < V matches the plain-PyTorch reference.

The function itself (one rank): the mixture is the probability-weighted sum of the K rows with
the largest logits, padded rows are never mixed, gradients reach exactly the K selected logits
and rows. The model: ponder mode with ``ponder_topk`` = V gives dense mixing's loss and
gradients; with K < V it matches ``reference.methods.ponder_loss(topk=K)``.
"""

import pytest
import torch

from conftest import causal_mask
from megatron_ponder.model.vocab_mixing import (
    probability_weighted_embedding,
    vocab_parallel_softmax,
    vocab_parallel_topk_mixture,
)
from reference.methods import ponder_loss
from support.tiny_models import VOCAB, gradients_in_reference_layout, random_batch, reference_copy, relative_error, tiny_model

BATCH, LENGTH = 2, 8


def test_topk_mixture_is_the_weighted_sum_of_the_k_largest_rows():
    torch.manual_seed(0)
    logits = torch.randn(3, 2, 10, requires_grad=True)
    weight = torch.randn(10, 4, requires_grad=True)
    mixed = vocab_parallel_topk_mixture(logits, weight, 3, None, sequence_parallel=False)
    values, ids = logits.detach().topk(3, dim=-1)
    expected = (torch.softmax(values, -1).unsqueeze(-1) * weight.detach()[ids]).sum(-2)
    torch.testing.assert_close(mixed, expected)

    mixed.pow(2).sum().backward()
    selected = torch.zeros(3, 2, 10, dtype=torch.bool).scatter_(-1, ids, True)
    assert torch.all(logits.grad[~selected] == 0) and torch.all(logits.grad[selected] != 0)
    rows_used = torch.zeros(10, dtype=torch.bool)
    rows_used[ids.unique()] = True
    assert torch.all(weight.grad[~rows_used] == 0) and torch.all(weight.grad[rows_used].abs().sum(-1) > 0)


def test_padded_rows_are_never_mixed_even_when_k_exceeds_the_real_vocabulary():
    logits = torch.zeros(1, 1, 8)
    logits[..., 6:] = 50.0  # padding columns with the largest logits
    weight = torch.arange(8.0).unsqueeze(-1).repeat(1, 2)
    mixed = vocab_parallel_topk_mixture(logits, weight, 8, None, False, valid_vocab_size=6)
    torch.testing.assert_close(mixed[0, 0], weight[:6].mean(0))  # uniform over the 6 real rows


def test_topk_with_k_equal_to_the_vocabulary_is_dense_mixing():
    torch.manual_seed(1)
    logits = torch.randn(4, 2, 12, dtype=torch.float64)
    weight = torch.randn(12, 5, dtype=torch.float64)
    dense = probability_weighted_embedding(vocab_parallel_softmax(logits, None), weight, None, False)
    torch.testing.assert_close(vocab_parallel_topk_mixture(logits, weight, 12, None, False), dense.to(weight.dtype))


def _assert_gradients_close(actual, expected, tolerance):
    """Each gradient within ``tolerance`` of its own norm, or of 1% of the global norm for the
    gradients that are zero in exact arithmetic (e.g. the key bias) and hold only rounding noise."""
    global_norm = torch.stack([g.norm() for g in expected.values()]).norm()
    for name, grad in expected.items():
        assert (actual[name] - grad).norm() <= tolerance * max(grad.norm(), 1e-2 * global_norm), name


def _loss_and_grads(model, style, tokens, labels, positions):
    loss = model(tokens, positions, causal_mask(LENGTH), labels=labels)
    loss.sum().backward()
    return loss.detach(), gradients_in_reference_layout(model, style)


@pytest.mark.parametrize("style", ["llama", "gpt2"])
def test_model_with_k_equal_to_vocabulary_matches_dense_mixing(megatron_world_of_one, style):
    tokens, labels, positions = random_batch(BATCH, LENGTH)
    dense = tiny_model(style, ponder_mode="ponder", ponder_steps=2)
    topk = tiny_model(style, ponder_mode="ponder", ponder_steps=2, ponder_topk=VOCAB)
    dense_loss, dense_grads = _loss_and_grads(dense, style, tokens, labels, positions)
    topk_loss, topk_grads = _loss_and_grads(topk, style, tokens, labels, positions)
    assert relative_error(topk_loss, dense_loss) < 1e-5
    _assert_gradients_close(topk_grads, dense_grads, 1e-4)


@pytest.mark.parametrize("style", ["llama", "gpt2"])
def test_model_topk_matches_reference_and_differs_from_dense(megatron_world_of_one, style):
    k = 5
    model = tiny_model(style, ponder_mode="ponder", ponder_steps=2, ponder_topk=k)
    reference = reference_copy(model, style)
    tokens, labels, positions = random_batch(BATCH, LENGTH)
    loss = model(tokens, positions, causal_mask(LENGTH), labels=labels)
    expected = ponder_loss(reference, tokens, labels, positions, 2, True, scale=1.0, topk=k)
    dense = ponder_loss(reference, tokens, labels, positions, 2, True, scale=1.0)
    assert relative_error(dense.detach(), expected.detach()) > 1e-3  # K matters, or this proves nothing
    assert relative_error(loss.detach(), expected.detach()) < 1e-5
    loss.sum().backward()
    expected.sum().backward()
    reference_grads = {name: param.grad for name, param in reference.named_parameters()}
    _assert_gradients_close(gradients_in_reference_layout(model, style), reference_grads, 1e-5)


def test_topk_mixing_runs_in_bf16():
    torch.manual_seed(2)
    logits = torch.randn(4, 2, 32, dtype=torch.bfloat16, requires_grad=True)
    weight = torch.randn(32, 8, dtype=torch.bfloat16, requires_grad=True)
    mixed = vocab_parallel_topk_mixture(logits, weight, 32, None, False)
    dense = vocab_parallel_softmax(logits.detach(), None) @ weight.detach().float()
    assert mixed.dtype == torch.bfloat16
    assert relative_error(mixed.float(), dense) < 1e-2
    mixed.float().sum().backward()
    assert logits.grad.dtype == torch.bfloat16 and torch.isfinite(weight.grad).all()
