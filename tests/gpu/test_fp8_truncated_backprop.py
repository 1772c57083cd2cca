"""FP8 with truncated backprop (issue 24) on a GPU (compute capability >= 8.9).

With ``--ponder-grad-steps 1`` / ``--jacobi-grad-rounds 1`` the first pass of a step runs under
``torch.no_grad`` and is the one that gets Megatron's "first microbatch" flag: TE then
re-quantises the FP8 weight copy with the usages a forward without backward needs (row-wise
only) and the first pass with a graph, which needs the column-wise copy too, finds the cached
copy lacking it and quantises again (TE 2.9-2.20: ``_is_weight_workspace_valid`` /
``get_weight_workspace``'s cache reset; a GPU whose GEMMs take non-TN layouts builds the
column-wise form from the row-wise data in backward). Checked here: after an optimizer step
(weights scaled in place) the flagged step's loss and every gradient equal those of a model built
with the new weights (no stale FP8 copy anywhere), and FP8 stays close to BF16 with truncation.
"""

import math

import pytest
import torch

from support.gpu_models import loss_and_grads, requires_fp8, te_model

pytestmark = [pytest.mark.gpu, requires_fp8]

TRUNCATED = {"ponder": dict(ponder_grad_steps=1), "latent1": dict(jacobi_grad_rounds=1)}  # S=2 / J=2


def _cosine(a, b):
    a = torch.cat([g.flatten() for g in a.values()])
    b = torch.cat([g.flatten() for g in b.values()])
    return float(a @ b / (a.norm() * b.norm()))


@pytest.mark.parametrize("recipe", ["delayed", "tensorwise"])
@pytest.mark.parametrize("mode", list(TRUNCATED))
def test_fp8_with_truncation_is_close_to_bf16(megatron_world_of_one, mode, recipe):
    model = te_model(mode, fp8="hybrid", fp8_recipe=recipe, fp8_amax_history_len=4, fp8_amax_compute_algo="max",
                     **TRUNCATED[mode])
    for _ in range(2):
        loss_and_grads(model)
    fp8_loss, fp8_grads = loss_and_grads(model)
    model.config.fp8 = None
    try:
        bf16_loss, bf16_grads = loss_and_grads(model)
    finally:
        model.config.fp8 = "hybrid"
    assert math.isfinite(float(fp8_loss)) and all(torch.isfinite(g).all() for g in fp8_grads.values())
    assert float(fp8_loss) != float(bf16_loss)
    assert abs(float(fp8_loss) - float(bf16_loss)) < 0.02 * float(bf16_loss)
    assert _cosine(fp8_grads, bf16_grads) > 0.9


@pytest.mark.parametrize("mode", list(TRUNCATED))
def test_the_first_pass_with_a_graph_uses_the_new_weights(megatron_world_of_one, mode):
    model = te_model(mode, fp8="hybrid", fp8_recipe="tensorwise", **TRUNCATED[mode])
    loss_and_grads(model)  # caches FP8 copies with both usages
    with torch.no_grad():
        for param in model.parameters():
            param.mul_(1.25)
    loss, grads = loss_and_grads(model)
    rebuilt = te_model(mode, fp8="hybrid", fp8_recipe="tensorwise", **TRUNCATED[mode])
    with torch.no_grad():
        for param in rebuilt.parameters():
            param.mul_(1.25)
    expected_loss, expected_grads = loss_and_grads(rebuilt)
    assert float(loss) == pytest.approx(float(expected_loss), rel=1e-6)
    assert grads.keys() == expected_grads.keys()
    for name in grads:
        assert torch.allclose(grads[name], expected_grads[name], rtol=1e-5, atol=1e-7), name
