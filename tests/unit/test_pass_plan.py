"""One pass plan (model/passes.py) drives the single-stage forward, the pipeline and the planner.

The pipeline check chains the looped pipeline's ``PassChunk``s by hand on one process: the stage
is both first and last, so every chunk builds its pass input from the received (padded) message,
runs M, and builds the feedback message or the loss, exactly the pipeline's code minus the p2p.
It must visit the same passes as ``PonderGPTModel.run_plan`` with the same plan object, and give
the same loss, Jacobi residuals and gradients. (The real ring, with middle stages and p2p, is
checked against the single process by tests/parallel/test_layouts_match_single_process.py.)
"""

import pytest
import torch

from megatron_ponder.model.passes import PassKind, message_blocks, plan_for_config, plan_passes
from megatron_ponder.parallel.looped_pipeline import PassChunk, StepMemo
from megatron_ponder.planning.schedule import step_passes
from megatron_ponder.planning.shapes import Method
from support.tiny_models import random_batch, tiny_config, tiny_model

I, J, P, F = PassKind.INITIAL_THOUGHT, PassKind.JACOBI_ROUND, PassKind.PONDER_FEEDBACK, PassKind.FINAL
BATCH, LENGTH = 2, 8
CASES = {
    "ponder-accumulate": dict(ponder_mode="ponder", ponder_steps=3),
    "ponder-replace": dict(ponder_mode="ponder", ponder_steps=2, ponder_accumulate=False),
    "latent1": dict(ponder_mode="latent", num_latent_thoughts=1),
    "latent2": dict(ponder_mode="latent", num_latent_thoughts=2),
}


def test_plans_of_each_method():
    assert [(p.kind, p.slots_per_token) for p in plan_passes("none")] == [(F, 1)]
    ponder = plan_passes("ponder", ponder_steps=2, ponder_accumulate=True)
    assert [(p.kind, p.slots_per_token, p.carried_blocks) for p in ponder] == [(P, 1, 0), (P, 1, 1), (F, 1, 0)]
    latent = plan_passes("latent", num_latent_thoughts=2, jacobi_rounds=2)
    assert [(p.kind, p.slots_per_token) for p in latent] == [(I, 1), (I, 2), (J, 3), (J, 3), (F, 3)]
    assert [p.index for p in latent] == list(range(5))
    # Each pass reads what the one before fed back.
    for before, after in zip(latent, latent[1:]):
        assert after.state_blocks == before.feedback_blocks
    assert message_blocks(latent) == 3 and message_blocks(ponder) == 2
    with pytest.raises(ValueError, match="ponder_mode"):
        plan_passes("pondering")


def test_planner_plans_the_models_passes():
    """The planner's passes are the model's plan for the same method fields."""
    config = tiny_config("llama", ponder_mode="latent", num_latent_thoughts=2)
    method = Method("latent", num_latent_thoughts=2)
    assert step_passes(method, 3) == plan_for_config(config, 3)
    config = tiny_config("llama", ponder_mode="ponder", ponder_steps=2, ponder_accumulate=False)
    assert step_passes(Method("ponder", ponder_steps=2, ponder_accumulate=False), 3) == plan_for_config(config, 0)


def _recording(model, slots_seen):
    """Wrap the model's transformer pass to record the slots per token of every pass it runs."""
    original = model.transformer_pass

    def transformer_pass(hidden, attention_mask, rotary):
        slots_seen.append(hidden.size(0) // LENGTH)
        return original(hidden, attention_mask, rotary)

    model.transformer_pass = transformer_pass


def _grads(model):
    grads = {name: param.grad.clone() for name, param in model.named_parameters()}
    model.zero_grad()
    return grads


@pytest.mark.parametrize("case", list(CASES))
def test_single_stage_and_pipeline_chunks_run_one_plan_alike(megatron_world_of_one, case):
    model = tiny_model("llama", **CASES[case])
    plan = plan_for_config(model.config, 2)
    tokens, labels, positions = random_batch(BATCH, LENGTH)
    slots_single, slots_pipeline = [], []

    _recording(model, slots_single)
    logits, residuals = model.run_plan(plan, tokens, positions, None)
    loss = model.compute_language_model_loss(labels, logits)
    loss.sum().backward()
    single_grads = _grads(model)

    del model.transformer_pass  # back to the class's method
    _recording(model, slots_pipeline)
    memo = StepMemo(model)
    chunks = [PassChunk(model, spec, plan, model.config, memo) for spec in plan]
    message = None
    for chunk in chunks:
        chunk.set_input_tensor(message)
        message = chunk(tokens, positions, None, labels=labels, return_jacobi_residuals=True)
        if chunk.spec.kind is not PassKind.FINAL:
            assert message.size(0) == message_blocks(plan) * LENGTH  # fixed-size pipeline message
    pipeline_loss, pipeline_residuals = message
    pipeline_loss.sum().backward()
    pipeline_grads = _grads(model)

    assert slots_single == slots_pipeline == [p.slots_per_token for p in plan]
    assert len(residuals) == sum(p.kind is PassKind.JACOBI_ROUND for p in plan)
    assert torch.equal(pipeline_residuals, residuals)
    assert torch.equal(pipeline_loss, loss)
    for name, grad in single_grads.items():
        # The pipeline re-embeds the tokens every pass, so embedding gradients add in another order.
        torch.testing.assert_close(pipeline_grads[name], grad, rtol=1e-5, atol=1e-7, msg=name)


def test_plan_changes_what_both_drivers_compute(megatron_world_of_one):
    """A plan with one more Jacobi round changes the loss: the drivers follow the plan they get."""
    model = tiny_model("llama", ponder_mode="latent", num_latent_thoughts=1)
    tokens, labels, positions = random_batch(BATCH, LENGTH)
    with torch.no_grad():
        short, _ = model.run_plan(plan_for_config(model.config, 1), tokens, positions, None)
        long, residuals = model.run_plan(plan_for_config(model.config, 2), tokens, positions, None)
    assert len(residuals) == 2
    assert not torch.equal(short, long)


def test_pipeline_chunk_refuses_a_different_j(megatron_world_of_one):
    model = tiny_model("llama", ponder_mode="latent", num_latent_thoughts=1)
    plan = plan_for_config(model.config, 2)
    chunk = PassChunk(model, plan[0], plan, model.config, StepMemo(model))
    tokens, labels, positions = random_batch(BATCH, LENGTH)
    with pytest.raises(ValueError, match="planned with J=2"):
        chunk(tokens, positions, None, labels=labels, num_jacobi_rounds=3)
