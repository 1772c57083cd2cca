"""FP8 on a GPU (compute capability >= 8.9): every pass of both methods through Megatron's FP8
context, the ponder mixing GEMM through TE FP8 GEMMs; loss close to BF16, gradients finite."""

import math

import pytest
import torch

from support.gpu_models import MODES, SIZES, VOCAB, loss_and_grads, requires_fp8, te_model
from megatron_ponder.model.fp8_emulation import emulated_fp8_mixing

pytestmark = [pytest.mark.gpu, requires_fp8]


def _cosine(a, b):
    a = torch.cat([g.flatten() for g in a.values()])
    b = torch.cat([g.flatten() for g in b.values()])
    return float(a @ b / (a.norm() * b.norm()))


@pytest.mark.parametrize("recipe", ["delayed", "tensorwise"])
@pytest.mark.parametrize("mode", list(MODES))
def test_fp8_loss_is_close_to_bf16_and_gradients_finite(megatron_world_of_one, mode, recipe):
    model = te_model(mode, fp8="hybrid", fp8_recipe=recipe, fp8_amax_history_len=4, fp8_amax_compute_algo="max")
    for _ in range(2):  # delayed scaling: fill the amax history, as after the first steps of training
        loss_and_grads(model)
    fp8_loss, fp8_grads = loss_and_grads(model)
    model.config.fp8 = None  # the same model and weights, BF16 GEMMs (config is read at forward time)
    try:
        bf16_loss, bf16_grads = loss_and_grads(model)
    finally:
        model.config.fp8 = "hybrid"
    assert math.isfinite(float(fp8_loss)) and all(torch.isfinite(g).all() for g in fp8_grads.values())
    assert float(fp8_loss) != float(bf16_loss)  # FP8 really ran
    assert abs(float(fp8_loss) - float(bf16_loss)) < 0.02 * float(bf16_loss)
    assert _cosine(fp8_grads, bf16_grads) > 0.9


@pytest.mark.parametrize("mode", ["none", "ponder"])
def test_fp8_weights_are_requantised_when_a_step_starts_and_only_then(megatron_world_of_one, mode):
    """After an optimizer step (here: weights scaled in place), a call flagged "first microbatch"
    computes with the new weights; an unflagged one reuses the FP8 copy of the old weights (which
    is why the looped pipeline must pass the schedule's flag on: parallel/looped_pipeline.py)."""
    model = te_model(mode, fp8="hybrid", fp8_recipe="tensorwise")
    loss_and_grads(model)
    with torch.no_grad():
        for param in model.parameters():
            param.mul_(1.25)
    stale, _ = loss_and_grads(model, first_microbatch=False)
    fresh, _ = loss_and_grads(model)
    rebuilt = te_model(mode, fp8="hybrid", fp8_recipe="tensorwise")  # same seed: the same weights
    with torch.no_grad():
        for param in rebuilt.parameters():
            param.mul_(1.25)
    expected, _ = loss_and_grads(rebuilt)
    assert float(fresh) == pytest.approx(float(expected), rel=1e-6)
    assert float(stale) != pytest.approx(float(expected), rel=1e-4)


def test_the_mixing_weight_is_quantised_once_per_step(megatron_world_of_one, monkeypatch):
    from megatron_ponder.model import fp8_mixing

    quantised = []
    original = fp8_mixing._quantize
    monkeypatch.setattr(fp8_mixing, "_quantize", lambda t, dtype: quantised.append(tuple(t.shape)) or original(t, dtype))
    model = te_model("ponder", fp8="hybrid", fp8_recipe="tensorwise")
    loss_and_grads(model)
    weight_shape = (VOCAB, SIZES["hidden_size"])
    # S feedback passes: S probability tensors and S output gradients, the weight once.
    assert quantised.count(weight_shape) == 1
    assert len(quantised) == 1 + 2 * model.config.ponder_steps
    quantised.clear()
    loss_and_grads(model)  # the next step: the weight again, once
    assert quantised.count(weight_shape) == 1


def test_ponder_mixing_runs_through_the_fp8_gemm_in_every_feedback_pass(megatron_world_of_one, monkeypatch):
    from megatron_ponder.model import fp8_mixing

    calls = []
    original = fp8_mixing.FP8MixingMatmul.apply
    monkeypatch.setattr(fp8_mixing.FP8MixingMatmul, "apply", lambda *a: calls.append(1) or original(*a))
    model = te_model("ponder", fp8="hybrid", fp8_recipe="tensorwise")
    fp8_loss, _ = loss_and_grads(model)
    assert len(calls) == model.config.ponder_steps
    model.config.ponder_fp8_mixing = False
    bf16_mixing_loss, _ = loss_and_grads(model)
    assert len(calls) == model.config.ponder_steps
    assert float(fp8_loss) != float(bf16_mixing_loss)


@pytest.mark.parametrize("fmt", ["e4m3", "hybrid"])
def test_fp8_mixing_gemm_matches_the_cpu_emulation(fmt):
    from megatron_ponder.model.fp8_mixing import fp8_mixing_matmul

    generator = torch.Generator().manual_seed(0)
    probs = torch.softmax(3.0 * torch.randn(4, 64, 1024, generator=generator), -1).cuda().requires_grad_()
    weight = (0.05 * torch.randn(1024, 128, generator=generator)).bfloat16().cuda().requires_grad_()
    out = fp8_mixing_matmul(probs, weight, fmt)
    assert out.shape == (4, 64, 128) and out.dtype == torch.bfloat16
    emulated = emulated_fp8_mixing(probs.detach().cpu(), weight.detach().cpu(), "e4m3")
    exact = probs.detach().cpu().double() @ weight.detach().cpu().double()
    out_cpu = out.detach().float().cpu()
    # Same quantisation as the emulation, up to accumulation order and the bf16 output.
    assert float((out_cpu - emulated).norm() / emulated.norm()) < 1e-2
    assert 0 < float((out_cpu.double() - exact).norm() / exact.norm()) < 0.1

    grad_out = torch.randn(4, 64, 128, generator=generator).bfloat16().cuda()
    out.backward(grad_out)
    reference_probs = probs.detach().clone().requires_grad_()
    reference_weight = weight.detach().float().clone().requires_grad_()
    (reference_probs @ reference_weight).backward(grad_out.float())
    for got, want in ((probs.grad, reference_probs.grad), (weight.grad, reference_weight.grad)):
        got, want = got.float().flatten(), want.float().flatten()
        assert torch.isfinite(got).all()
        assert float(got @ want / (got.norm() * want.norm())) > 0.98
