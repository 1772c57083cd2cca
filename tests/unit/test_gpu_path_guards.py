"""The GPU path's decisions, checked on CPU against stand-ins (issue 23's findings 3-9):
TE API differences by signature, TE import failures of every kind as one line (after the rank's
device is selected), FP8 recipes by device, masks the TE spec would drop, norms placed with the
other layers, fusions only where their kernels are, the looped pipeline's first-microbatch call,
and no host synchronisation in the RoPE table."""

import types

import pytest
import torch

from megatron_ponder.model.specs import SequenceParallelTorchNorm, check_attention_mask_supported
from megatron_ponder.runtime import transformer_engine as te_runtime
from megatron_ponder.runtime.transformer_engine import fp8_recipe_unsupported_reason, general_gemm_version_arguments
from megatron_ponder.training.fusions import FUSION_FLAGS, fusions_with_kernels
from support.tiny_models import tiny_config, tiny_model


# ---- finding 3: general_gemm's workspace argument exists in TE 2.9 only -----------------------
def _gemm_2_9(A, B, workspace, out_dtype=None, layout="TN", grad=False, use_split_accumulator=False):
    return A, B, workspace


def _gemm_2_10(A, B, out_dtype=None, layout="TN", grad=False, use_split_accumulator=False):
    return A, B


def test_general_gemm_gets_a_workspace_only_where_its_signature_takes_one():
    workspace = object()
    assert general_gemm_version_arguments(_gemm_2_9, load_workspace=lambda: workspace) == {"workspace": workspace}

    def no_workspace_function():
        raise AssertionError("TE >= 2.10 has no get_workspace: it must not be asked for")

    assert general_gemm_version_arguments(_gemm_2_10, load_workspace=no_workspace_function) == {}


# ---- findings 6 and 9: TE import failures are one line, after the rank's device is chosen ----
@pytest.fixture
def pretend_cuda(monkeypatch):
    """torch.cuda says a GPU exists; set_device and TE's import are recorded, in order."""
    events = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: events.append(("set_device", device)))
    monkeypatch.setenv("LOCAL_RANK", "3")
    te_runtime.transformer_engine_unusable_reason.cache_clear()
    yield events
    te_runtime.transformer_engine_unusable_reason.cache_clear()


@pytest.mark.parametrize("error", [
    AssertionError("Transformer Engine package version 2.14.0 does not match transformer-engine-torch 2.12.0"),
    RuntimeError("libcudnn.so.9: cannot open shared object file"),
    ImportError("No module named 'transformer_engine'"),
])
def test_every_te_import_failure_is_one_line_and_comes_after_set_device(pretend_cuda, monkeypatch, error):
    def import_module(name):
        pretend_cuda.append(("import", name))
        raise error

    monkeypatch.setattr(te_runtime.importlib, "import_module", import_module)
    reason = te_runtime.transformer_engine_unusable_reason()
    assert reason is not None and "\n" not in reason
    assert type(error).__name__ in reason and str(error).split(":")[0] in reason
    assert 'pip install -e ".[gpu]"' in reason
    assert pretend_cuda == [("set_device", 3), ("import", "transformer_engine.pytorch")]


def test_te_that_imports_is_usable(pretend_cuda, monkeypatch):
    monkeypatch.setattr(te_runtime.importlib, "import_module", lambda name: pretend_cuda.append(("import", name)))
    assert te_runtime.transformer_engine_unusable_reason() is None
    assert pretend_cuda[0] == ("set_device", 3)


# ---- finding 7: FP8 recipes by device ---------------------------------------------------------
@pytest.mark.parametrize("recipe, name, capability, cuda, supported", [
    ("delayed", "NVIDIA H100 80GB HBM3", (9, 0), "12.8", True),
    ("tensorwise", "NVIDIA L40S", (8, 9), "12.4", True),
    ("blockwise", "NVIDIA H100 80GB HBM3", (9, 0), "12.8", False),  # CUDA 12.9 needed
    ("blockwise", "NVIDIA H200", (9, 0), "12.9", True),
    ("mxfp8", "NVIDIA H100 80GB HBM3", (9, 0), "13.0", False),  # Blackwell only
    ("mxfp8", "NVIDIA B200", (10, 0), "12.8", True),
    ("delayed", "NVIDIA A100-SXM4-80GB", (8, 0), "12.8", False),
])
def test_fp8_recipes_are_checked_against_the_device(recipe, name, capability, cuda, supported):
    reason = fp8_recipe_unsupported_reason(recipe, name, capability, cuda)
    assert (reason is None) == supported
    if not supported:
        assert name in reason and f"--fp8-recipe {recipe}" in reason and "\n" not in reason


def test_the_refusal_lists_what_the_device_supports():
    reason = fp8_recipe_unsupported_reason("mxfp8", "NVIDIA H100 80GB HBM3", (9, 0), "12.8")
    assert reason.endswith("supports --fp8-recipe delayed, tensorwise")
    assert "no FP8 recipe" in fp8_recipe_unsupported_reason("delayed", "NVIDIA A100", (8, 0), "12.8")


# ---- finding 5: a mask the TE spec would ignore is refused -----------------------------------
def test_an_attention_mask_on_the_te_spec_is_refused_not_dropped():
    mask = torch.ones(1, 1, 4, 4, dtype=torch.bool).triu(1)
    check_attention_mask_supported(types.SimpleNamespace(transformer_impl="local"), mask)
    check_attention_mask_supported(types.SimpleNamespace(transformer_impl="transformer_engine"), None)
    with pytest.raises(ValueError, match="would ignore attention_mask"):
        check_attention_mask_supported(types.SimpleNamespace(transformer_impl="transformer_engine"), mask)


# ---- finding 8: norms go where Megatron puts its layers ------------------------------------
def test_norms_follow_megatrons_placement_rule(monkeypatch):
    # Megatron builds its layers on torch.cuda.current_device() unless use_cpu_initialization.
    monkeypatch.setattr(torch.cuda, "current_device", lambda: torch.device("meta"))
    on_gpu = SequenceParallelTorchNorm(tiny_config("llama", use_cpu_initialization=False), 32)
    assert {p.device.type for p in on_gpu.parameters()} == {"meta"}
    on_cpu = SequenceParallelTorchNorm(tiny_config("llama"), 32)
    assert {p.device.type for p in on_cpu.parameters()} == {"cpu"}


def test_conversion_models_are_built_on_the_cpu_unfused(monkeypatch):
    from megatron_ponder.hf import build_conversion_model
    from megatron_ponder.training.arguments import parse_args

    captured = {}
    monkeypatch.setattr("megatron_ponder.training.build.build_model", lambda args, config: captured.update(config=config))
    args = parse_args(["--mock-data", "--transformer-impl", "auto"])
    args.tokenizer_vocab_size = 100
    build_conversion_model(args)
    config = captured["config"]
    assert config.use_cpu_initialization and config.transformer_impl == "local"
    assert not any(getattr(config, field) for field in FUSION_FLAGS)


# ---- speed: fusions where their kernels are, each with Megatron-LM's flag --------------------
def test_fusions_need_their_kernels():
    everything = lambda name: True  # noqa: E731
    nothing = lambda name: False  # noqa: E731
    requested = {field: True for field in FUSION_FLAGS}
    assert fusions_with_kernels(requested, cuda=False, transformer_impl="local", has_module=everything) == {
        field: False for field in FUSION_FLAGS}
    on_te = fusions_with_kernels(requested, cuda=True, transformer_impl="transformer_engine", has_module=nothing)
    # Without apex, not even on the TE spec: the output layer is Megatron's ColumnParallelLinear.
    assert on_te == dict(bias_dropout_fusion=False, masked_softmax_fusion=False, apply_rope_fusion=True,
                         gradient_accumulation_fusion=False)
    on_gpu = fusions_with_kernels(requested, cuda=True, transformer_impl="local", has_module=everything)
    assert on_gpu == dict(bias_dropout_fusion=True, masked_softmax_fusion=True, apply_rope_fusion=False,
                          gradient_accumulation_fusion=True)
    asked_off = fusions_with_kernels({**requested, "apply_rope_fusion": False}, cuda=True,
                                     transformer_impl="transformer_engine", has_module=everything)
    assert asked_off["apply_rope_fusion"] is False and asked_off["bias_dropout_fusion"] is True


def test_te_fused_weight_gradient_accumulation_is_off_in_multi_pass_modes():
    """TE overwrites main_grad in the backward of a call flagged first microbatch; in a multi-pass
    step that backward (pass 0's) runs after the other passes', so the fused path would drop them."""
    from types import SimpleNamespace

    from megatron_ponder.training.fusions import blocked_fusions

    def run(mode, **flags):
        return SimpleNamespace(**{"ponder_mode": mode, "micro_batch_size": 2, "reset_position_ids": False, **flags})

    for mode in ("ponder", "latent"):
        blocked = blocked_fusions(run(mode), "transformer_engine")
        assert list(blocked) == ["gradient_accumulation_fusion"] and "overwrites main_grad" in blocked[
            "gradient_accumulation_fusion"]
        assert blocked_fusions(run(mode), "local") == {}  # Megatron's own layers always add
    assert blocked_fusions(run("none"), "transformer_engine") == {}
    assert list(blocked_fusions(run("none", reset_position_ids=True), "transformer_engine")) == ["apply_rope_fusion"]


def test_fusion_flags_are_megatron_lms():
    from megatron_ponder.training.arguments import parse_args

    default = parse_args(["--mock-data"])
    assert all(getattr(default, field) for field in FUSION_FLAGS)
    off = parse_args(["--mock-data", *FUSION_FLAGS.values()])
    assert not any(getattr(off, field) for field in FUSION_FLAGS)


# ---- finding 4: the looped pipeline passes the schedule's first-microbatch call on -----------
def test_pass_chunks_forward_first_microbatch_from_the_first_pass_only():
    from megatron_ponder.model.passes import plan_for_config
    from megatron_ponder.parallel.looped_pipeline import PassChunk, StepMemo

    calls = []
    ddp_model = types.SimpleNamespace(set_is_first_microbatch=lambda: calls.append(1))
    stage = types.SimpleNamespace(model_type=None)
    config = types.SimpleNamespace(ponder_mode="ponder", ponder_steps=2)
    plan = plan_for_config(tiny_config("llama", ponder_mode="ponder", ponder_steps=2), 0)
    chunks = [PassChunk(ddp_model, spec, plan, config, StepMemo(stage)) for spec in plan]
    for chunk in chunks:  # Megatron's interleaved schedule: each chunk's first microbatch
        chunk.set_is_first_microbatch()
    assert len(chunks) == 3 and calls == [1]


# ---- speed: the RoPE table without a host synchronisation ------------------------------------
def test_rope_table_is_gathered_per_sample_and_shared_under_rope_fusion(megatron_world_of_one):
    model = tiny_model("llama")
    positions = torch.tensor([[0, 0, 1, 1, 2, 2], [0, 1, 2, 3, 4, 5]])
    table = model.rotary_for_positions(positions)
    full = model.rotary_pos_emb.get_emb(16)
    assert table.shape == (6, 2, 1, full.size(-1))
    assert torch.equal(table[:, 1], full[positions[1], 0]) and torch.equal(table[:, 0], full[positions[0], 0])
    model.config.apply_rope_fusion = True  # read at forward time; TE's fused kernel takes [s, 1, 1, d]
    try:
        assert torch.equal(model.rotary_for_positions(positions[:1].expand(2, -1)), full[positions[0]])
    finally:
        model.config.apply_rope_fusion = False
