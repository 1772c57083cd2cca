"""The pass plan of a step, and the method's operations on it, written once.

A step of a multi-pass model is an ordered list of passes (:func:`plan_passes`). Each pass runs
the transformer M over a slot sequence of k slots per token; between passes a *fed-back state*
carries what the method keeps:

* ponder (PonderLM): S ``PONDER_FEEDBACK`` passes, then ``FINAL``. The state is the mixture
  fed back (``ponder_accumulate``: the running sum m_1 + .. + m_v of the mixtures so far; else
  the last mixture m_v); the next pass's input is e_0 + state.
* latent (PonderLM-2): N ``INITIAL_THOUGHT`` passes, J ``JACOBI_ROUND`` passes, then ``FINAL``.
  The state is the thoughts [L, n, b, h] (n per token); the next pass's input interleaves the
  tokens with them.
* none: one ``FINAL`` pass (the planner's view of vanilla GPT).

Two drivers run a plan: :meth:`PonderGPTModel.run_plan` on one stage (a loop over the passes)
and :mod:`megatron_ponder.parallel.looped_pipeline` around the pipeline ring (a pass per
virtual stage). Both call the operations below and nothing else of the method:
:func:`first_stage_input` (a), :func:`carried_state` and :func:`pass_feedback` (b),
:func:`final_hidden`, and :func:`jacobi_residual` (c). The planner reads the same plan.

Shapes are Megatron's [s, b, h]; L is the number of (local) tokens, so a pass's sequence is
[k*L, b, h] and one "block" of state is L slots.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch
from torch import Tensor

from megatron_ponder.model.interleave import (
    group_slots,
    interleave_attention_mask,
    interleave_position_ids,
    interleave_thoughts,
    jacobi_update,
    last_slot_of_each_group,
)
from megatron_ponder.runtime.trace_ranges import trace_range


class PassKind(enum.Enum):
    """What a pass does with its output hidden states."""

    PONDER_FEEDBACK = "ponder feedback"  # feeds back the vocabulary mixture
    INITIAL_THOUGHT = "initial thought"  # builds thought k = index + 1 of every token
    JACOBI_ROUND = "jacobi round"  # refines all N thoughts at once
    FINAL = "final"  # the loss (logits) pass


@dataclass(frozen=True)
class Pass:
    """One pass of a step.

    index: position in the step (= virtual pipeline stage of the looped pipeline).
    kind: see :class:`PassKind`.
    slots_per_token: k, the slots of each token in this pass's sequence (kL slots).
    state_blocks: L-blocks of fed-back state the pass reads (0: nothing fed back yet).
    carried_blocks: L-blocks of that state its feedback reads again after the transformer
        (ponder accumulate: the running sum; latent passes read nothing back: they build every
        thought from their output), which the pipeline carries from the first to the last stage.
    feedback_blocks: L-blocks of state it hands to the next pass (0 for ``FINAL``).
    builds_graph: whether a training step keeps this pass's autograd graph. False only for the
        leading passes that ``--jacobi-grad-rounds`` / ``--ponder-grad-steps`` run without
        autograd (truncated backpropagation: the state they hand on enters the next pass
        detached, so they keep no activations and have no backward).
    """

    index: int
    kind: PassKind
    slots_per_token: int
    state_blocks: int
    carried_blocks: int
    feedback_blocks: int
    builds_graph: bool = True


PassPlan = Tuple[Pass, ...]


def plan_passes(
    mode: str,
    ponder_steps: int = 0,
    ponder_accumulate: bool = True,
    num_latent_thoughts: int = 0,
    jacobi_rounds: int = 0,
    ponder_grad_steps: Optional[int] = None,
    jacobi_grad_rounds: Optional[int] = None,
) -> PassPlan:
    """The ordered passes of one step for the method's fields (``PonderConfig``'s names).

    ``ponder_grad_steps`` K (ponder) / ``jacobi_grad_rounds`` K (latent): only the last K feedback
    passes / Jacobi rounds (and the final pass) build the autograd graph; every pass before them
    (the first S-K ponder passes; the initial-thought passes and the first J-K rounds) has
    ``builds_graph=False``. None, or K at least the passes there are, keeps every graph (the
    papers).
    """
    plan = _method_passes(mode, ponder_steps, ponder_accumulate, num_latent_thoughts, jacobi_rounds)
    if mode == "ponder":
        without_graph = _leading_passes_without_graph(ponder_steps, ponder_grad_steps, 0)
    elif mode == "latent":
        without_graph = _leading_passes_without_graph(jacobi_rounds, jacobi_grad_rounds, num_latent_thoughts)
    else:
        without_graph = 0
    return tuple(replace(p, builds_graph=False) if p.index < without_graph else p for p in plan)


def _leading_passes_without_graph(repeats: int, grad_repeats: Optional[int], passes_before: int) -> int:
    """Passes at the start of a plan that run without autograd: the ``passes_before`` passes and
    the first ``repeats - grad_repeats`` of the ``repeats`` that follow them; 0 when every
    repeat builds its graph (``grad_repeats`` None or >= ``repeats``)."""
    if grad_repeats is None or grad_repeats >= repeats:
        return 0
    return passes_before + repeats - grad_repeats


def _method_passes(
    mode: str, ponder_steps: int, ponder_accumulate: bool, num_latent_thoughts: int, jacobi_rounds: int
) -> PassPlan:
    """Every pass of the step, each building its graph (see :func:`plan_passes`)."""
    if mode == "none":
        return (Pass(0, PassKind.FINAL, 1, 0, 0, 0),)
    if mode == "ponder":
        plan = tuple(
            # Pass 0 has no sum yet; replace mode never reads one back.
            Pass(v, PassKind.PONDER_FEEDBACK, 1, int(v > 0), int(ponder_accumulate and v > 0), 1)
            for v in range(ponder_steps)
        )
        return plan + (Pass(ponder_steps, PassKind.FINAL, 1, 1, 0, 0),)
    if mode == "latent":
        n = num_latent_thoughts
        # The initial-thought rule lives in ``carried_blocks`` (0): pass v (v+1 slots per token)
        # keeps none of the thoughts fed back; the outputs of slots 0..v of each group become
        # thoughts 1..v+1 (see pass_feedback), i.e. the earlier thoughts are refreshed as in a
        # Jacobi round and the group's last slot gives the new one. This is the papers' released
        # code (docs/methods.md, "Initial thoughts").
        plan = tuple(Pass(v, PassKind.INITIAL_THOUGHT, v + 1, v, 0, v + 1) for v in range(n))
        plan += tuple(Pass(n + j, PassKind.JACOBI_ROUND, n + 1, n, 0, n) for j in range(jacobi_rounds))
        return plan + (Pass(n + jacobi_rounds, PassKind.FINAL, n + 1, n, 0, 0),)
    raise ValueError(f"unknown ponder_mode {mode!r}: choose none, ponder or latent")


def plan_for_config(config, jacobi_rounds: int) -> PassPlan:
    """:func:`plan_passes` for a ``PonderConfig`` and this step's J (ignored outside latent mode)."""
    return plan_passes(
        config.ponder_mode,
        config.ponder_steps,
        config.ponder_accumulate,
        config.num_latent_thoughts,
        jacobi_rounds if config.ponder_mode == "latent" else 0,
        config.ponder_grad_steps,
        config.jacobi_grad_rounds,
    )


def message_blocks(plan: Sequence[Pass]) -> int:
    """T: L-blocks of the largest message of the plan (hidden + carried state, or feedback)."""
    return max(max(p.slots_per_token + p.carried_blocks, p.feedback_blocks) for p in plan)


def pass_range_name(p: Pass, plan: Sequence[Pass]) -> str:
    """The pass's name in a profile: 'pass 3/5 jacobi round 2', 'pass 1/4 ponder feedback'.

    1-based pass number of the plan's length, the kind, and for initial thoughts and Jacobi
    rounds which one (thought k, round j).
    """
    name = f"pass {p.index + 1}/{len(plan)} {p.kind.value}"
    if p.kind in (PassKind.INITIAL_THOUGHT, PassKind.JACOBI_ROUND):
        name += f" {sum(q.kind is p.kind for q in plan[: p.index + 1])}"
    return name


def pass_range(p: Pass, plan: Sequence[Pass]):
    """Context manager: the pass as a named range of the profiler that runs on this rank
    (``runtime/trace_ranges.py``); nothing at all when none does."""
    return trace_range(lambda: pass_range_name(p, plan))


# ---------------------------------------------------------------------------- operations
def first_stage_input(p: Pass, token_inputs: Tensor, state: Optional[Tensor]) -> Tensor:
    """(a) The slot sequence a pass feeds to M.

    Args:
        token_inputs: [L, b, h] the token embeddings e_0 = s*E(x).
        state: None before the first feedback; ponder [L, b, h] (mixture or running sum);
            latent [L, k-1, b, h] (the thoughts).

    Returns:
        [k*L, b, h]: e_0 (+ state) for ponder, tokens interleaved with their thoughts for latent.
    """
    if state is None:
        return token_inputs
    if p.slots_per_token == 1:
        return token_inputs + state
    return interleave_thoughts(token_inputs, state)


def carried_state(p: Pass, state: Optional[Tensor]) -> Optional[Tensor]:
    """The part of the fed-back state that :func:`pass_feedback` reads (None if nothing)."""
    return None if p.carried_blocks == 0 else state  # ponder accumulate: the running sum


def pass_feedback(p: Pass, output: Tensor, carried: Optional[Tensor], model) -> Tensor:
    """(b) The state a non-final pass hands to the next one, from its output hidden states.

    Args:
        output: [k*L, b, h] M's output (after the final norm) over this pass's slots.
        carried: :func:`carried_state` of this pass's input state.
        model: the ``PonderGPTModel`` stage holding the output layer (for the ponder mixture).

    Returns:
        ponder: [L, b, h] the mixture, plus the carried running sum when accumulating;
        initial thought: [L, k, b, h] the outputs of the group's k slots: slot j's output becomes
        thought j+1 (z^1..z^{k-1} refreshed as in a Jacobi round, the last slot's is the new z^k);
        Jacobi round: [L, N, b, h] from :func:`jacobi_update`.
    """
    if p.kind is PassKind.PONDER_FEEDBACK:
        mixture = model.ponder_mixture(output)
        return mixture if carried is None else carried + mixture
    if p.kind is PassKind.INITIAL_THOUGHT:
        return group_slots(output, p.slots_per_token)
    if p.kind is PassKind.JACOBI_ROUND:
        return jacobi_update(output, p.slots_per_token - 1)
    raise ValueError(f"pass {p.index} ({p.kind.value}) feeds nothing back")


def final_hidden(p: Pass, output: Tensor) -> Tensor:
    """[k*L, b, h] -> [L, b, h]: the slot of each token that gets logits (its last slot)."""
    return output if p.slots_per_token == 1 else last_slot_of_each_group(output, p.slots_per_token)


def jacobi_residual(previous: Tensor, updated: Tensor) -> Tensor:
    """(c) ||z^j - z^(j-1)||^2 / numel of one Jacobi round: a detached fp32 scalar."""
    return (updated.detach() - previous.detach()).float().pow(2).mean()


def stack_residuals(residuals: Sequence[Tensor], device: torch.device) -> Tensor:
    """The residuals of a step's rounds as one detached fp32 tensor [J] on ``device`` (the
    model's: the loss report meets the losses there); empty for J = 0."""
    return torch.stack(list(residuals)) if residuals else torch.zeros(0, device=device)


class SlotLayouts:
    """Attention mask and RoPE table of the slot sequence, built once per slot count k.

    Passes with the same k (all Jacobi rounds and the final pass; every ponder pass) share them,
    so a step builds each layout once rather than once per pass.

    Args:
        position_ids: [b, L] token positions.
        attention_mask: token-level mask [b|1, 1, L, L] (True = masked) or None (causal).
        rotary_for_positions: the model's [b, s] positions -> RoPE table (or None without RoPE).
    """

    def __init__(
        self,
        position_ids: Tensor,
        attention_mask: Optional[Tensor],
        rotary_for_positions: Callable[[Tensor], Optional[Tensor]],
    ):
        self.position_ids = position_ids
        self.attention_mask = attention_mask
        self.rotary_for_positions = rotary_for_positions
        self._built: Dict[int, Tuple[Optional[Tensor], Optional[Tensor]]] = {}

    def __call__(self, slots_per_token: int) -> Tuple[Optional[Tensor], Optional[Tensor]]:
        """(mask [b|1, 1, kL, kL] or None, RoPE table for the kL slots or None)."""
        if slots_per_token not in self._built:
            positions = interleave_position_ids(self.position_ids, slots_per_token)
            self._built[slots_per_token] = (
                interleave_attention_mask(self.attention_mask, slots_per_token),
                self.rotary_for_positions(positions),
            )
        return self._built[slots_per_token]
