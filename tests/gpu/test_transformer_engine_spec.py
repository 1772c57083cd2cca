"""The Transformer Engine layer spec on a GPU: chosen automatically, and the same model as the
local spec (same weights -> same loss) in every mode; BF16 training steps stay finite."""

import math

import pytest
import torch

from support.gpu_models import MODES, loss_and_grads, requires_transformer_engine, te_model
from megatron_ponder.model.specs import resolve_transformer_impl

pytestmark = [pytest.mark.gpu, requires_transformer_engine]

# TE fuses each layer's input norm into the following linear; the local spec keeps them apart.
TE_TO_LOCAL = {
    "self_attention.linear_qkv.layer_norm_weight": "input_layernorm.weight",
    "mlp.linear_fc1.layer_norm_weight": "pre_mlp_layernorm.weight",
}


def _local_state_from_te(te_state):
    mapped = {}
    for name, tensor in te_state.items():
        if name.endswith("_extra_state"):
            continue
        for te_suffix, local_suffix in TE_TO_LOCAL.items():
            if name.endswith(te_suffix):
                name = name[: -len(te_suffix)] + local_suffix
        mapped[name] = tensor
    return mapped


def test_auto_picks_transformer_engine_layers(megatron_world_of_one):
    from megatron.core.extensions.transformer_engine import TELayerNormColumnParallelLinear

    assert resolve_transformer_impl("auto") == "transformer_engine"
    model = te_model("ponder")
    assert isinstance(model.decoder.layers[0].self_attention.linear_qkv, TELayerNormColumnParallelLinear)


@pytest.mark.parametrize("mode", list(MODES))
def test_transformer_engine_spec_equals_local_spec(megatron_world_of_one, monkeypatch, mode):
    # The local model in true fp32; TE's cuBLASLt GEMMs may still use TF32 for fp32 inputs, so the
    # tolerances below are TF32-level (~1e-3 per GEMM, compounded over the passes), not fp32-level.
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    te = te_model(mode, "transformer_engine", dtype=torch.float32)
    local = te_model(mode, "local", seed=1, dtype=torch.float32)
    state = _local_state_from_te(te.state_dict())
    missing, unexpected = local.load_state_dict(state, strict=False)
    assert [k for k in missing if not k.endswith("_extra_state")] == [] and unexpected == []
    te_loss, te_grads = loss_and_grads(te)
    local_loss, local_grads = loss_and_grads(local)
    assert abs(float(te_loss) - float(local_loss)) <= 2e-3 * abs(float(local_loss))
    te_norm = torch.stack([g.norm() for g in te_grads.values()]).norm()
    local_norm = torch.stack([g.norm() for g in local_grads.values()]).norm()
    assert abs(float(te_norm) - float(local_norm)) <= 1e-2 * float(local_norm)


@pytest.mark.parametrize("mode", list(MODES))
def test_bf16_training_step_is_finite(megatron_world_of_one, mode):
    model = te_model(mode)
    loss, grads = loss_and_grads(model)
    assert math.isfinite(float(loss))
    assert all(torch.isfinite(g).all() for g in grads.values())
    assert len(grads) == len([p for p in model.parameters() if p.requires_grad])
