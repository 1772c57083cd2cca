"""Truncated backprop through the passes (``--jacobi-grad-rounds K``, ``--ponder-grad-steps K``).

* K at least the rounds/steps there are (K = J, K > J) is bit-identical to K = all (None): loss
  and every gradient, ``torch.equal``, in both modes, with and without activation recompute;
* K < J (K < S) equals the plain reference that detaches the state after round J-K (step S-K)
  (tests/reference/methods.py ``grad_rounds`` / ``grad_steps``), rel. 1e-6 as
  test_methods_match_reference.py (whose tolerance this file shares);
* K does not change the per-step J draw (so resume, which redraws J from the iteration, stays
  exact);
* a pass without a graph saves no tensor for backward, and K = 1 saves fewer bytes than K = all;
* the flags take K or ``all`` and refuse anything else in one line;
* K = 1 under selective and full recompute is bit-identical to K = 1 without.
"""

import pytest
import torch

from conftest import causal_mask
from reference.methods import latent_loss, ponder_loss
from support.tiny_models import gradients_in_reference_layout, random_batch, reference_copy, relative_error, tiny_model

from megatron_ponder.config import PonderConfig
from megatron_ponder.variants import RECOMPUTE

BATCH, LENGTH = 2, 8
PONDER = dict(ponder_mode="ponder", ponder_steps=3)
LATENT = dict(ponder_mode="latent", num_latent_thoughts=2)


def _loss_and_grads(fields, rounds=3):
    model = tiny_model("llama", **fields)
    tokens, labels, positions = random_batch(BATCH, LENGTH)
    loss = model(tokens, positions, causal_mask(LENGTH), labels=labels, num_jacobi_rounds=rounds)
    loss.sum().backward()
    return loss.detach(), {name: param.grad.clone() for name, param in model.named_parameters()}


def _assert_identical(a, b):
    assert torch.equal(a[0], b[0])
    assert a[1].keys() == b[1].keys()
    for name in a[1]:
        assert torch.equal(a[1][name], b[1][name]), name


@pytest.mark.parametrize("recompute", ["none", "full"])
@pytest.mark.parametrize("mode, field, count", [("ponder", "ponder_grad_steps", 3), ("latent", "jacobi_grad_rounds", 3)])
def test_k_at_least_the_passes_is_bit_identical_to_all(megatron_world_of_one, mode, field, count, recompute):
    base = {**(PONDER if mode == "ponder" else LATENT), **RECOMPUTE[recompute]}
    everything = _loss_and_grads(base)
    for k in (count, count + 1):
        _assert_identical(_loss_and_grads({**base, field: k}), everything)
    # And K below the count changes the gradient, or this test could not tell K from all.
    truncated = _loss_and_grads({**base, field: 1})
    assert torch.equal(truncated[0], everything[0])  # the forward is the same
    assert any(not torch.equal(truncated[1][n], everything[1][n]) for n in everything[1])


def _compare(model, megatron_loss, reference, reference_loss):
    """test_methods_match_reference.py's comparison, at rel. 1e-6 for the loss."""
    assert relative_error(megatron_loss, reference_loss) < 1e-6
    megatron_loss.sum().backward()
    reference_loss.sum().backward()
    megatron_grads = gradients_in_reference_layout(model, "llama")
    global_norm = torch.stack([p.grad.norm() for p in reference.parameters()]).norm()
    for name, param in reference.named_parameters():
        error = (megatron_grads[name] - param.grad).norm()
        assert error <= 1e-5 * max(param.grad.norm(), 1e-2 * global_norm), name


@pytest.mark.parametrize("rounds, k", [(2, 1), (3, 1), (3, 2)])
@pytest.mark.parametrize("thoughts", [1, 2])
def test_latent_truncation_matches_reference_detached_after_round_j_minus_k(megatron_world_of_one, thoughts, rounds, k):
    model = tiny_model("llama", ponder_mode="latent", num_latent_thoughts=thoughts, jacobi_grad_rounds=k)
    reference = reference_copy(model, "llama")
    tokens, labels, positions = random_batch(BATCH, LENGTH)
    loss = model(tokens, positions, causal_mask(LENGTH), labels=labels, num_jacobi_rounds=rounds)
    scale = model.config.input_embedding_scale
    expected, _ = latent_loss(reference, tokens, labels, positions, thoughts, rounds, scale, grad_rounds=k)
    _compare(model, loss, reference, expected)


@pytest.mark.parametrize("accumulate", [True, False], ids=["accumulate", "replace"])
@pytest.mark.parametrize("steps, k", [(2, 1), (3, 1), (3, 2)])
def test_ponder_truncation_matches_reference_detached_after_step_s_minus_k(megatron_world_of_one, steps, k, accumulate):
    model = tiny_model("llama", ponder_mode="ponder", ponder_steps=steps, ponder_accumulate=accumulate,
                       ponder_grad_steps=k)
    reference = reference_copy(model, "llama")
    tokens, labels, positions = random_batch(BATCH, LENGTH)
    loss = model(tokens, positions, causal_mask(LENGTH), labels=labels)
    expected = ponder_loss(reference, tokens, labels, positions, steps, accumulate, scale=1.0, grad_steps=k)
    _compare(model, loss, reference, expected)


def test_reference_truncation_changes_the_gradient(megatron_world_of_one):
    """The reference's detach must matter, or the two tests above could not catch a wrong K."""
    model = tiny_model("llama", ponder_mode="latent", num_latent_thoughts=1)
    tokens, labels, positions = random_batch(BATCH, LENGTH)
    grads = []
    for k in (None, 1):
        reference = reference_copy(model, "llama")
        loss, _ = latent_loss(reference, tokens, labels, positions, 1, 3, 1.0, grad_rounds=k)
        loss.sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in reference.parameters()]))
    assert relative_error(grads[1], grads[0]) > 1e-3


def test_k_does_not_change_the_jacobi_draw():
    """J per iteration (and so resume, which redraws it from the iteration) is K's business not."""
    fields = dict(num_layers=1, hidden_size=8, num_attention_heads=2, ponder_mode="latent",
                  jacobi_train_rounds=(2, 4), jacobi_seed=7)
    everything = PonderConfig(**fields)
    truncated = PonderConfig(**fields, jacobi_grad_rounds=1)
    draws = [everything.jacobi_rounds_for_iteration(i) for i in range(64)]
    assert draws == [truncated.jacobi_rounds_for_iteration(i) for i in range(64)]
    assert len(set(draws)) == 3


def _saved_bytes_per_pass(fields, rounds=3):
    """Bytes autograd saves for backward, per pass of one training forward (parameters excluded)."""
    model = tiny_model("llama", **fields)
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    per_pass = []
    transformer_pass = model.transformer_pass

    def counted_pass(*args, **kwargs):
        per_pass.append(0)  # the pass's feedback (the ponder mixture) counts to it too
        return transformer_pass(*args, **kwargs)

    def pack(tensor):
        if tensor.untyped_storage().data_ptr() not in parameters and per_pass:
            per_pass[-1] += tensor.numel() * tensor.element_size()
        return tensor

    model.transformer_pass = counted_pass
    tokens, labels, positions = random_batch(BATCH, LENGTH)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(tokens, positions, causal_mask(LENGTH), labels=labels, num_jacobi_rounds=rounds)
    return per_pass


@pytest.mark.parametrize("mode, field", [("ponder", "ponder_grad_steps"), ("latent", "jacobi_grad_rounds")])
def test_passes_without_graph_save_nothing(megatron_world_of_one, mode, field):
    base = PONDER if mode == "ponder" else LATENT
    everything = _saved_bytes_per_pass(base)
    truncated = _saved_bytes_per_pass({**base, field: 1})
    # ponder S=3: 3 feedback + final; latent N=2, J=3: 2 initial + 3 rounds + final.
    without_graph = 2 if mode == "ponder" else 4
    assert len(truncated) == len(everything)
    assert truncated[:without_graph] == [0] * without_graph
    assert all(saved > 0 for saved in truncated[without_graph:])
    assert all(saved > 0 for saved in everything)
    assert sum(truncated) < sum(everything) - sum(everything[: without_graph - 1])


@pytest.mark.parametrize("flag, field", [("--jacobi-grad-rounds", "jacobi_grad_rounds"),
                                         ("--ponder-grad-steps", "ponder_grad_steps")])
def test_flags_take_a_count_or_all_and_refuse_anything_else_in_one_line(capsys, flag, field):
    from megatron_ponder.training.arguments import parse_args

    assert getattr(parse_args(["--mock-data"]), field) is None  # default: all (the papers)
    assert getattr(parse_args(["--mock-data", flag, "all"]), field) is None
    args = parse_args(["--mock-data", flag, "2"])
    assert getattr(args, field) == 2
    for bad in ("0", "-1", "1.5", "last"):
        with pytest.raises(SystemExit):
            parse_args(["--mock-data", flag, bad])
        error = capsys.readouterr().err.strip().splitlines()[-1]
        assert f"{flag}: {bad!r} is not a count: give an integer >= 1 or all" in error


@pytest.mark.parametrize("recompute", ["selective", "full", "full-block"])
@pytest.mark.parametrize("mode, field", [("ponder", "ponder_grad_steps"), ("latent", "jacobi_grad_rounds")])
def test_recompute_with_truncation_is_bit_identical(megatron_world_of_one, mode, field, recompute):
    """Passes without a graph under Megatron's checkpointing (which then neither saves nor
    recomputes them): the same loss and gradients as without recompute."""
    base = {**(PONDER if mode == "ponder" else LATENT), field: 1}
    _assert_identical(_loss_and_grads({**base, **RECOMPUTE[recompute]}), _loss_and_grads(base))
