"""The planner's memory model against the tensors the project's model really keeps (one process).

Activation memory = peak bytes of storages autograd saves for backward over a forward+backward
(tests/support/saved_tensor_probe.py); parameter memory = bytes of the model's parameters. Every mode,
recompute none / selective / full, the three architecture styles (neox: parallel residual, partial
rotary), both core attentions of the local spec (SDPA, unfused); tolerance 10% (observed < 1%).
"""

import pytest

from megatron_ponder.planning.memory import plan_memory
from megatron_ponder.planning.shapes import Layout
from megatron_ponder.variants import RECOMPUTE
from support.planning_shapes import METHODS, tiny_run
from support.saved_tensor_probe import SavedTensorPeak, parameter_bytes
from support.tiny_models import MODE_FIELDS, random_batch, tiny_model

PLANNED_RECOMPUTE = ("none", "selective", "full")  # the planner's recompute policies
BATCH, LENGTH = 2, 8


@pytest.mark.parametrize("kernel", ["sdpa", "unfused"])
@pytest.mark.parametrize("style", ["llama", "gpt2", "neox"])
@pytest.mark.parametrize("mode", list(METHODS))
def test_predicted_memory_matches_saved_tensors(megatron_world_of_one, style, mode, kernel):
    run = tiny_run(style, mode, LENGTH, BATCH, local_attention=kernel)
    tokens, labels, positions = random_batch(BATCH, LENGTH)
    measured = {}
    for recompute in PLANNED_RECOMPUTE:
        model = tiny_model(style, **MODE_FIELDS[mode], **RECOMPUTE[recompute], local_attention=kernel)
        model.train()
        probe = SavedTensorPeak(model.parameters())
        with probe.measuring():
            model(tokens, positions, None, labels=labels, num_jacobi_rounds=2).sum().backward()
        plan = plan_memory(run, Layout(recompute=recompute, micro_batch_size=BATCH))
        measured[recompute] = probe.peak
        assert plan.activations == pytest.approx(probe.peak, rel=0.10), recompute
        if style == "neox":  # ignoring the shared norm input / partial rotary would be ~10% off
            assert plan.activations == pytest.approx(probe.peak, rel=0.02), recompute
        assert plan.weights == parameter_bytes(model)
    # The measurement itself must show what recompute is for.
    assert measured["full"] < measured["selective"] < measured["none"]


@pytest.mark.parametrize("kernel", ["sdpa", "unfused"])
def test_passes_multiply_activation_memory(kernel):
    """Without recompute every pass is alive at backward: ponder S=2 keeps ~3 vanilla passes,
    latent N=1 J=2 one pass at L and three at 2L."""
    none = plan_memory(tiny_run("gpt2", "none", 64, 1, kernel), Layout()).activations_per_pass[0]
    ponder = plan_memory(tiny_run("gpt2", "ponder", 64, 1, kernel), Layout())
    latent = plan_memory(tiny_run("gpt2", "latent1", 64, 1, kernel), Layout())
    assert len(ponder.activations_per_pass) == 3 and len(latent.activations_per_pass) == 4
    assert ponder.activations == pytest.approx(sum(ponder.activations_per_pass))
    assert 2.8 * none < ponder.activations < 4 * none
    ratio = latent.activations_per_pass[1] / latent.activations_per_pass[0]
    if kernel == "unfused":
        assert ratio > 2  # the s^2 probabilities grow 4x at 2L
    else:
        assert 1.8 < ratio <= 2  # SDPA keeps no s x s matrix: linear in the slots
