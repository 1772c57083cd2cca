"""Pipeline parallelism for multi-pass models: every pass through every stage, one set of weights.

Each pass of pondering or latent thoughts needs the whole model, and gradients flow through all
passes, so a training step loops around the pipeline ring: pass v ends on the last stage and its
feedback starts pass v+1 on the first stage. Megatron-Core's interleaved (virtual pipeline)
schedule already moves activations chunk by chunk around that ring and back-propagates through
them, so we hand it one thin :class:`PassChunk` per pass, all sharing the stage's single model
(and its DDP grad buffers): "virtual stage v" = "pass v".

What travels in the pipeline tensor (fixed shape, so the schedule needs no shape exchange):
  * between stages of pass v: the hidden states of its k_v*L slots, then the state the last
    stage will need to build the feedback (ponder, accumulate: the running mixture sum; latent
    initial pass v: the v thoughts already built), zero-padded to T*L slots;
  * last stage of pass v -> first stage of pass v+1 (the ring): the feedback (ponder: the
    mixture sum to add to e_0; latent: the thoughts of every token), zero-padded.
State crosses passes only through these tensors, never through autograd edges between chunks:
the schedule runs each chunk's backward on its own and would not see such edges.

The first stage recomputes the token embeddings in every pass (the same E(x), so gradients add
up exactly as with one shared tensor); the stage holding the output layer does the ponder
feedback (its word-embedding rows: see ``PonderGPTModel.mixing_embedding_weight``).

Per pass and token, the slots are L (token-level) units; on a rank they are local units:
L_local = L / cp / (tp under sequence parallelism).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor

from megatron.core import parallel_state
from megatron.core.pipeline_parallel.schedules import forward_backward_pipelining_with_interleaving

from megatron_ponder.model.interleave import (
    interleave_attention_mask,
    interleave_position_ids,
    interleave_thoughts,
    jacobi_update,
    last_slot_of_each_group,
)
from megatron_ponder.model.wrappers import unwrap_model


@dataclass(frozen=True)
class PassSpec:
    """One pass of a training step.

    index: position in the step (= virtual pipeline stage).
    kind: ``ponder`` (feeds back a mixture), ``initial_thoughts`` (builds thought k = index+1),
        ``jacobi`` (one Jacobi round), ``final`` (the loss pass).
    slots_per_token: k, the slots each token occupies in this pass's sequence.
    carried_blocks: L-sized blocks of state carried through the stages beside the hidden states.
    feedback_blocks: L-sized blocks sent from the last stage to the next pass (0 for ``final``).
    """

    index: int
    kind: str
    slots_per_token: int
    carried_blocks: int
    feedback_blocks: int


def plan_passes(config, num_jacobi_rounds: int) -> List[PassSpec]:
    """The passes of one step for ``config.ponder_mode`` (``ponder`` or ``latent``)."""
    if config.ponder_mode == "ponder":
        steps = config.ponder_steps
        plan = [
            # Pass 0 has no running sum yet; replace mode never needs one.
            PassSpec(v, "ponder", 1, int(config.ponder_accumulate and v > 0), 1)
            for v in range(steps)
        ]
        return plan + [PassSpec(steps, "final", 1, 0, 0)]
    if config.ponder_mode == "latent":
        n = config.num_latent_thoughts
        plan = [PassSpec(v, "initial_thoughts", v + 1, v, v + 1) for v in range(n)]
        plan += [PassSpec(n + j, "jacobi", n + 1, 0, n) for j in range(num_jacobi_rounds)]
        return plan + [PassSpec(n + num_jacobi_rounds, "final", n + 1, 0, 0)]
    raise ValueError(f"the looped pipeline runs multi-pass modes; got ponder_mode={config.ponder_mode!r}")


def message_blocks(plan: List[PassSpec]) -> int:
    """T: the pipeline tensor holds T*L slots, enough for every message of the plan."""
    return max(max(p.slots_per_token + p.carried_blocks, p.feedback_blocks) for p in plan)


def _pad_to(slots: Tensor, length: int) -> Tensor:
    """[s, b, h] -> [length, b, h], zeros after (zeros carry no gradient)."""
    if slots.size(0) == length:
        return slots
    return torch.cat([slots, slots.new_zeros(length - slots.size(0), *slots.shape[1:])])


class _Residuals:
    """Jacobi residuals measured on the first stage: the change of the received thoughts."""

    def __init__(self, num_thoughts: int):
        self.num_thoughts = num_thoughts
        self.previous: Dict[int, Tensor] = {}  # microbatch -> thoughts received by the last pass
        self.per_microbatch: Dict[int, List[Tensor]] = {}

    def record(self, spec: PassSpec, microbatch: int, thoughts: Tensor) -> None:
        thoughts = thoughts.detach()
        if spec.index > self.num_thoughts:  # input produced by a Jacobi round
            change = (thoughts - self.previous[microbatch]).float().pow(2).mean()
            self.per_microbatch.setdefault(microbatch, []).append(change)
        self.previous[microbatch] = thoughts


class PassChunk(torch.nn.Module):
    """Virtual pipeline stage = one pass of the shared model on this pipeline stage.

    Holds the DDP-wrapped model by reference (not as a submodule: the parameters stay owned
    once). Called by Megatron's schedule like a model chunk.
    """

    def __init__(self, ddp_model, spec: PassSpec, plan: List[PassSpec], schedule_config, residuals: _Residuals):
        super().__init__()
        object.__setattr__(self, "ddp_model", ddp_model)
        self.spec = spec
        self.plan = plan
        self.config = schedule_config
        self.model_type = unwrap_model(ddp_model).model_type
        self.residuals = residuals
        self.input_tensor: Optional[Tensor] = None
        self.microbatch = 0
        self.message_blocks = message_blocks(plan)

    def set_input_tensor(self, input_tensor) -> None:
        self.input_tensor = input_tensor[0] if isinstance(input_tensor, (list, tuple)) else input_tensor

    def forward(
        self,
        input_ids: Tensor,
        position_ids: Tensor,
        attention_mask: Optional[Tensor],
        labels: Optional[Tensor] = None,
    ) -> Tensor:
        """Message [T*L_local, b, h] for the next stage/pass, or the loss [b, L] (logits [b, L, V]
        without labels) on the last stage of the final pass."""
        model = unwrap_model(self.ddp_model)
        spec = self.spec
        config = model.config
        local_tokens = input_ids.size(1)
        if config.sequence_parallel:
            local_tokens //= config.tensor_model_parallel_size
        slots = spec.slots_per_token

        if model.pre_process:
            hidden, carried = self._first_stage_input(model, input_ids, position_ids, local_tokens)
        else:
            received = self.input_tensor
            hidden = received[: slots * local_tokens]
            carried = received[slots * local_tokens : (slots + spec.carried_blocks) * local_tokens]
        self.microbatch += 1

        output = model.transformer_pass(
            hidden,
            interleave_attention_mask(attention_mask, slots),
            model.rotary_for_positions(interleave_position_ids(position_ids, slots)),
        )
        message_length = self.message_blocks * local_tokens
        if not model.post_process:
            return _pad_to(torch.cat([output, carried]), message_length)
        if spec.kind == "final":
            if config.ponder_mode == "latent":
                output = last_slot_of_each_group(output, slots)
            logits = model.output_logits(output)
            if labels is None:
                return logits.transpose(0, 1).contiguous()
            return model.compute_language_model_loss(labels, logits)
        return _pad_to(self._feedback(model, spec, output, carried, local_tokens), message_length)

    def _first_stage_input(self, model, input_ids, position_ids, local_tokens) -> Tuple[Tensor, Tensor]:
        """(slot sequence [k*L, b, h], carried state [c*L, b, h]) of this pass on the first stage."""
        spec = self.spec
        token_inputs = model.input_embeddings(input_ids, position_ids)
        if spec.index == 0:
            return token_inputs, token_inputs[:0]
        received = self.input_tensor
        previous = self.plan[spec.index - 1]
        feedback = received[: previous.feedback_blocks * local_tokens]
        if model.config.ponder_mode == "ponder":
            return token_inputs + feedback, feedback[: spec.carried_blocks * local_tokens]
        self.residuals.record(spec, self.microbatch, feedback)
        thoughts = feedback.unflatten(0, (local_tokens, spec.slots_per_token - 1))
        return interleave_thoughts(token_inputs, thoughts), feedback[: spec.carried_blocks * local_tokens]

    @staticmethod
    def _feedback(model, spec: PassSpec, output: Tensor, carried: Tensor, local_tokens: int) -> Tensor:
        """What the next pass's first stage needs, computed on the last stage: [f*L, b, h]."""
        if spec.kind == "ponder":
            mixture = model.ponder_mixture(output)
            return carried + mixture if carried.numel() else mixture
        if spec.kind == "initial_thoughts":
            new_thought = last_slot_of_each_group(output, spec.slots_per_token).unsqueeze(1)
            earlier = carried.unflatten(0, (local_tokens, spec.carried_blocks))
            return torch.cat([earlier, new_thought], dim=1).flatten(0, 1)
        return jacobi_update(output, model.config.num_latent_thoughts).flatten(0, 1)


def looped_forward_backward(
    forward_step_func,
    ddp_model,
    microbatches: List[dict],
    micro_batch_size: int,
    seq_length: int,
    forward_only: bool,
    finalize_model_grads_func=None,
):
    """One step of a multi-pass model through Megatron's interleaved schedule.

    Args:
        forward_step_func: Megatron ``forward_step_func(data_iterator, model)``; ``model`` is a
            :class:`PassChunk`, called like the model (tokens, positions, mask, labels=...).
        ddp_model: the DDP-wrapped PonderGPTModel of this pipeline stage.
        microbatches: the step's microbatches (every pass reads all of them).
        seq_length: tokens per sample (before context-parallel splitting).
        finalize_model_grads_func: what the schedule calls after the last backward, with the
            real model list ``[ddp_model]`` (default: the model config's).

    p2p settings come from the model config (``training.step.forward_backward`` turns batched
    p2p off on gloo, where it is silently wrong for PP=2).

    Returns what the schedule returns (the loss reports of the final pass on the last stage).
    """
    model = unwrap_model(ddp_model)
    config = model.config
    rounds = model.jacobi_rounds() if config.ponder_mode == "latent" else 0
    plan = plan_passes(config, rounds)
    if len(microbatches) < parallel_state.get_pipeline_model_parallel_world_size():
        raise ValueError(
            f"{len(microbatches)} microbatches for {parallel_state.get_pipeline_model_parallel_world_size()} "
            "pipeline stages: the looped pipeline needs at least one microbatch per stage"
        )
    schedule_config = copy.copy(config)
    # Passes are the virtual stages. Set only on the schedule's copy: on the build config it
    # would change which layers each stage owns.
    schedule_config.virtual_pipeline_model_parallel_size = len(plan)
    finalize = finalize_model_grads_func or config.finalize_model_grads_func
    if finalize is not None:
        schedule_config.finalize_model_grads_func = lambda _chunks, *args, **kwargs: finalize(
            [ddp_model], *args, **kwargs
        )
    residuals = _Residuals(config.num_latent_thoughts)
    chunks = [PassChunk(ddp_model, spec, plan, schedule_config, residuals) for spec in plan]
    reports = forward_backward_pipelining_with_interleaving(
        forward_step_func=forward_step_func,
        data_iterator=[iter(microbatches) for _ in plan],
        model=chunks,
        num_microbatches=len(microbatches),
        seq_length=message_blocks(plan) * seq_length,
        micro_batch_size=micro_batch_size,
        forward_only=forward_only,
    )
    if residuals.per_microbatch:
        model.last_jacobi_residuals = residuals.per_microbatch[max(residuals.per_microbatch)]
    return reports
