"""Pipeline parallelism for multi-pass models: every pass through every stage, one set of weights.

Each pass of pondering or latent thoughts needs the whole model, and gradients flow through all
passes, so a training step loops around the pipeline ring: pass v ends on the last stage and its
feedback starts pass v+1 on the first stage. Megatron-Core's interleaved (virtual pipeline)
schedule already moves activations chunk by chunk around that ring and back-propagates through
them, so we hand it one thin :class:`PassChunk` per pass, all sharing the stage's single model
(and its DDP grad buffers): "virtual stage v" = "pass v".

What travels in the pipeline tensor (fixed shape, so the schedule needs no shape exchange):
  * between stages of pass v: the hidden states of its k_v*L slots, then the state the last
    stage will need to build the feedback (``Pass.carried_blocks``: ponder accumulate, the
    running mixture sum; latent passes build every thought from their output and carry nothing),
    zero-padded to T*L slots;
  * last stage of pass v -> first stage of pass v+1 (the ring): the feedback (ponder: the
    mixture sum to add to e_0; latent: the thoughts of every token), zero-padded.

The passes and what each does are the step's plan (:mod:`megatron_ponder.model.passes`), the
same plan :meth:`PonderGPTModel.run_plan` runs on one stage; a :class:`PassChunk` adds only what
is pipeline-specific: which stage builds the input and which the feedback, slicing and padding
of the fixed-size message, and the carried state through the middle stages.

State crosses passes only through these tensors, never through autograd edges between chunks:
the schedule runs each chunk's backward on its own and would not see such edges.

Truncated backprop (``Pass.builds_graph`` False for the leading passes): such a chunk runs under
``torch.no_grad`` and its backward is one node that hands the schedule zeros
(:class:`_NoGraphOutput`); the schedule still runs and communicates it (docs/methods.md,
"Truncated backpropagation").

The first stage recomputes the token embeddings in every pass (the same E(x), so gradients add
up exactly as with one shared tensor); the stage holding the output layer does the ponder
feedback (its word-embedding rows: see ``PonderGPTModel.mixing_embedding_weight``) and, in latent
mode, measures the Jacobi residuals (it builds both the old and the new thoughts).

Per pass and token, the slots are L (token-level) units; on a rank they are local units:
L_local = L / cp / (tp under sequence parallelism).
"""

from __future__ import annotations

import copy
import functools
from typing import Dict, List, Optional

import torch
from torch import Tensor

from megatron.core import parallel_state
from megatron.core.pipeline_parallel.schedules import forward_backward_pipelining_with_interleaving
from megatron.core.utils import unwrap_model

from megatron_ponder.model.passes import (
    Pass,
    PassKind,
    PassPlan,
    SlotLayouts,
    carried_state,
    final_hidden,
    first_stage_input,
    jacobi_residual,
    message_blocks,
    pass_feedback,
    pass_range,
    plan_for_config,
    stack_residuals,
)


def _pad_to(slots: Tensor, length: int) -> Tensor:
    """[s, b, h] -> [length, b, h], zeros after (zeros carry no gradient)."""
    if slots.size(0) == length:
        return slots
    return torch.cat([slots, slots.new_zeros(length - slots.size(0), *slots.shape[1:])])


class StepMemo:
    """What the chunks of one step share, per microbatch: slot layouts and Jacobi residuals.

    Each chunk counts its own microbatches (the schedule runs them in order on every chunk);
    a microbatch's entries go when this stage runs its final pass, which comes after all its
    other passes here.
    """

    def __init__(self, model):
        self.model = model
        self.layouts: Dict[int, SlotLayouts] = {}
        self.sent: Dict[int, Tensor] = {}  # last stage: the thoughts sent by the previous pass
        self.residuals: Dict[int, List[Tensor]] = {}

    def slot_layouts(self, microbatch: int, position_ids: Tensor, attention_mask) -> SlotLayouts:
        if microbatch not in self.layouts:
            self.layouts[microbatch] = SlotLayouts(position_ids, attention_mask, self.model.rotary_for_positions)
        return self.layouts[microbatch]

    def after_feedback(self, p: Pass, microbatch: int, feedback: Tensor) -> None:
        """Last stage, latent mode: the residual of a Jacobi round against the thoughts before it."""
        if p.kind is PassKind.JACOBI_ROUND:
            self.residuals.setdefault(microbatch, []).append(jacobi_residual(self.sent[microbatch], feedback))
        self.sent[microbatch] = feedback.detach()

    def finish(self, microbatch: int, device: torch.device) -> Tensor:
        """Forget the microbatch; its Jacobi residuals [J] on ``device`` (last stage)."""
        self.layouts.pop(microbatch, None)
        self.sent.pop(microbatch, None)
        return stack_residuals(self.residuals.pop(microbatch, []), device)


def _in_pass_range(forward):
    """A chunk's forward (one microbatch of one pass on this stage) as the pass's named range in a
    profile (``model/passes.pass_range``; nothing when no profiler records on this rank)."""

    @functools.wraps(forward)
    def in_range(self, *args, **kwargs):
        with pass_range(self.spec, self.plan):
            return forward(self, *args, **kwargs)

    return in_range


class _NoGraphOutput(torch.autograd.Function):
    """The output of a chunk whose pass runs without autograd, as Megatron's schedule needs it.

    Megatron's ``backward_step`` runs ``torch.autograd.backward`` on the chunk's output when it
    requires grad and sends ``input_tensor.grad`` to the previous stage, which waits for it. A pass
    without a graph (``Pass.builds_graph`` False: truncated backprop) computes its message under
    ``torch.no_grad``; this node makes that message the output of a one-node graph whose backward
    hands zeros [input's shape] to the received tensor: no activations kept, no backward compute,
    only the zero gradient the schedule sends (every chunk before it is gradient-free too).
    The message is handed over through a list, not as an argument, so the output is that tensor
    itself and not a view of it (Megatron's ``deallocate_output_tensor`` frees outputs only).
    """

    @staticmethod
    def forward(ctx, received: Tensor, holder: List[Tensor]) -> Tensor:
        ctx.received = (received.shape, received.dtype, received.device)
        return holder.pop()

    @staticmethod
    def backward(ctx, grad: Tensor):
        shape, dtype, device = ctx.received
        return torch.zeros(shape, dtype=dtype, device=device), None


def _graph_only_where_planned(forward):
    """A chunk's forward under ``torch.no_grad`` when its pass builds no graph in a training step
    (the leading passes of ``--jacobi-grad-rounds`` / ``--ponder-grad-steps``), as
    ``PonderGPTModel.run_plan`` runs them on one stage."""

    @functools.wraps(forward)
    def run(self, *args, **kwargs):
        if self.spec.builds_graph or not torch.is_grad_enabled():
            return forward(self, *args, **kwargs)
        with torch.no_grad():
            message = forward(self, *args, **kwargs)
        if self.input_tensor is None:  # pass 0 on the first stage: the schedule sends no gradient
            return message
        return _NoGraphOutput.apply(self.input_tensor, [message])

    return run


class PassChunk(torch.nn.Module):
    """Virtual pipeline stage = one pass of the shared model on this pipeline stage.

    Holds the DDP-wrapped model by reference (not as a submodule: the parameters stay owned
    once). Called by Megatron's schedule like a model chunk.
    """

    def __init__(self, ddp_model, spec: Pass, plan: PassPlan, schedule_config, memo: StepMemo):
        super().__init__()
        object.__setattr__(self, "ddp_model", ddp_model)
        object.__setattr__(self, "model", memo.model)  # the unwrapped PonderGPTModel stage
        self.spec = spec
        self.plan = plan
        self.config = schedule_config
        self.model_type = self.model.model_type
        self.memo = memo
        self.input_tensor: Optional[Tensor] = None
        self.microbatch = 0
        self.message_blocks = message_blocks(plan)

    def set_is_first_microbatch(self) -> None:
        """Megatron's schedule calls this when the chunk starts its first microbatch of a step.

        Transformer Engine's FP8 layers re-quantise their weights only on a call flagged "first
        microbatch" and reuse that FP8 copy for the rest of the step; without this hook the
        schedule's call would stop at the chunk and, after the first step, every pass would run
        on the FP8 weights of step 1. All passes share one set of weights, which change only at
        the optimizer step, so passing on the call of pass 0 (the stage's first chunk to run)
        re-quantises once per step.
        """
        if self.spec.index == 0:
            self.ddp_model.set_is_first_microbatch()

    def set_input_tensor(self, input_tensor) -> None:
        self.input_tensor = input_tensor[0] if isinstance(input_tensor, (list, tuple)) else input_tensor

    @_in_pass_range
    @_graph_only_where_planned
    def forward(
        self,
        input_ids: Tensor,
        position_ids: Tensor,
        attention_mask: Optional[Tensor],
        labels: Optional[Tensor] = None,
        num_jacobi_rounds: Optional[int] = None,
        return_jacobi_residuals: bool = False,
    ):
        """Message [T*L_local, b, h] for the next stage/pass; on the last stage of the final pass
        the loss [b, L] (logits [b, L, V] without labels), as ``PonderGPTModel.forward`` returns it."""
        model, spec = self.model, self.spec
        if num_jacobi_rounds is not None and model.config.ponder_mode == "latent":
            planned = sum(p.kind is PassKind.JACOBI_ROUND for p in self.plan)
            if num_jacobi_rounds != planned:
                raise ValueError(f"the step was planned with J={planned}, the call asks for J={num_jacobi_rounds}")
        tokens = input_ids.size(1)
        if model.config.sequence_parallel:
            tokens //= model.config.tensor_model_parallel_size
        microbatch = self.microbatch
        self.microbatch += 1
        layouts = self.memo.slot_layouts(microbatch, position_ids, attention_mask)

        if model.pre_process:
            state = self._received_state(tokens)
            hidden = first_stage_input(spec, model.input_embeddings(input_ids, position_ids), state)
            carried = carried_state(spec, state)
        else:
            k, c = spec.slots_per_token, spec.carried_blocks
            hidden = self.input_tensor[: k * tokens]
            carried = self._unpack(self.input_tensor[k * tokens : (k + c) * tokens], c, tokens)

        output = model.transformer_pass(hidden, *layouts(spec.slots_per_token))
        message_length = self.message_blocks * tokens
        if not model.post_process:
            return _pad_to(torch.cat([output, self._pack(carried, output)]), message_length)
        if spec.kind is PassKind.FINAL:
            residuals = self.memo.finish(microbatch, output.device)
            logits = model.output_logits(final_hidden(spec, output))
            if labels is None:
                result = logits.transpose(0, 1).contiguous()
            else:
                result = model.compute_language_model_loss(labels, logits)
            return (result, residuals) if return_jacobi_residuals else result
        feedback = pass_feedback(spec, output, carried, model)
        if model.config.ponder_mode == "latent":
            self.memo.after_feedback(spec, microbatch, feedback)
        return _pad_to(self._pack(feedback, output), message_length)

    def _received_state(self, tokens: int) -> Optional[Tensor]:
        """First stage: the state the previous pass fed back (None for the first pass)."""
        if self.spec.index == 0:
            return None
        blocks = self.spec.state_blocks
        return self._unpack(self.input_tensor[: blocks * tokens], blocks, tokens)

    def _unpack(self, flat: Tensor, blocks: int, tokens: int) -> Optional[Tensor]:
        """[n*L, b, h] message slice -> the state's shape (ponder [L, b, h], latent [L, n, b, h])."""
        if blocks == 0:
            return None
        if self.model.config.ponder_mode == "ponder":
            return flat
        return flat.unflatten(0, (tokens, blocks))

    def _pack(self, state: Optional[Tensor], like: Tensor) -> Tensor:
        """The state as message slots [n*L, b, h] (token-major for thoughts)."""
        if state is None:
            return like[:0]
        if self.model.config.ponder_mode == "ponder":
            return state
        return state.flatten(0, 1)


def looped_forward_backward(
    forward_step_func,
    ddp_model,
    microbatches: List[dict],
    micro_batch_size: int,
    seq_length: int,
    forward_only: bool,
    num_jacobi_rounds: int = 0,
    finalize_model_grads_func=None,
):
    """One step of a multi-pass model through Megatron's interleaved schedule.

    Args:
        forward_step_func: Megatron ``forward_step_func(data_iterator, model)``; ``model`` is a
            :class:`PassChunk`, called like the model (tokens, positions, mask, labels=...).
        ddp_model: the DDP-wrapped PonderGPTModel of this pipeline stage.
        microbatches: the step's microbatches (every pass reads all of them).
        seq_length: tokens per sample (before context-parallel splitting).
        num_jacobi_rounds: latent mode: J of this step (the same on every rank).
        finalize_model_grads_func: what the schedule calls after the last backward, with the
            real model list ``[ddp_model]`` (default: the model config's).

    p2p settings come from the model config (``runtime.parallel_init.configure_pipeline_p2p``).

    Returns what the schedule returns (the loss reports of the final pass on the last stage).
    """
    model = unwrap_model(ddp_model)
    config = model.config
    plan = plan_for_config(config, num_jacobi_rounds)
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
    memo = StepMemo(model)
    chunks = [PassChunk(ddp_model, spec, plan, schedule_config, memo) for spec in plan]
    return forward_backward_pipelining_with_interleaving(
        forward_step_func=forward_step_func,
        data_iterator=[iter(microbatches) for _ in plan],
        model=chunks,
        num_microbatches=len(microbatches),
        seq_length=message_blocks(plan) * seq_length,
        micro_batch_size=micro_batch_size,
        forward_only=forward_only,
    )
