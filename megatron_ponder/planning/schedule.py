"""Passes of a step and the pipeline schedule that runs them: order, in-flight chunks, bubble.

The passes are the model's plan (:mod:`megatron_ponder.model.passes`). The project's PP runs
every pass as a virtual stage of Megatron's interleaved schedule
(:mod:`megatron_ponder.parallel.looped_pipeline`); mode ``none`` uses plain 1F1B. This module
replays the schedule's order (Megatron's ``get_schedule_table`` and warm-up count) so the peak of
activations alive on a rank follows the schedule in use, with passes of different sizes.
"""

from __future__ import annotations

from typing import Callable, List, Sequence, Tuple

from megatron_ponder.model.passes import Pass, PassPlan, message_blocks, plan_passes
from megatron_ponder.planning.shapes import Method


def step_passes(method: Method, jacobi_rounds: int) -> PassPlan:
    """The passes of one step: the model's own plan (mode none: one ``FINAL`` pass), the leading
    passes without a graph marked as truncated backprop asks (``Pass.builds_graph``)."""
    return plan_passes(method.mode, method.ponder_steps, method.ponder_accumulate,
                       method.num_latent_thoughts, jacobi_rounds if method.mode == "latent" else 0,
                       method.ponder_grad_steps, method.jacobi_grad_rounds)


def pipeline_message_blocks(passes: Sequence[Pass]) -> int:
    """T: pipeline messages hold T*L slots (1 for mode none)."""
    return message_blocks(passes)


def bubble_fraction(pp: int, num_microbatches: int, num_passes: int) -> float:
    """(p-1) / (m*v + p - 1), v = passes per step (docs/pipeline.md)."""
    return (pp - 1) / (num_microbatches * num_passes + pp - 1)


def schedule_order(
    pp: int, rank: int, num_microbatches: int, num_chunks: int, peak_only: bool = False
) -> List[Tuple[str, int, int]]:
    """("F"|"B", microbatch, chunk) in the order rank ``rank`` runs them.

    ``peak_only``: stop after two periods (2*pp*chunks) of the steady 1F1B phase. The table
    repeats every pp microbatches, so the alive set does too, and cool-down only frees: the
    truncated order has the same peak, at a cost independent of the number of microbatches.

    Interleaved (num_chunks > 1): Megatron's schedule table (groups of pp microbatches, every
    chunk in turn), (pp-rank-1)*2 + (chunks-1)*pp warm-up forwards, then 1F1B, then cool-down;
    backward visits chunks in reverse. num_chunks == 1 with pp > 1: 1F1B with pp-rank-1 warm-up.
    """
    total = num_microbatches * num_chunks
    if pp == 1:
        order = []
        for microbatch in range(1 if peak_only else num_microbatches):  # microbatches alike
            order += [("F", microbatch, c) for c in range(num_chunks)]
            order += [("B", microbatch, c) for c in reversed(range(num_chunks))]
        return order
    if num_chunks == 1:
        table = [(microbatch, 0) for microbatch in range(num_microbatches)]
        warmup = pp - rank - 1
    else:
        table = []
        for start in range(0, num_microbatches, pp):
            group = range(start, num_microbatches) if start + pp >= num_microbatches else range(start, start + pp)
            table += [(microbatch, chunk) for chunk in range(num_chunks) for microbatch in group]
        warmup = (pp - rank - 1) * 2 + (num_chunks - 1) * pp
    warmup = min(warmup, total)
    forwards = [("F", mb, c) for mb, c in table]
    backwards = [("B", mb, num_chunks - 1 - c) for mb, c in table]
    order = forwards[:warmup]
    steady = total - warmup
    for k in range(min(steady, 2 * pp * num_chunks + pp) if peak_only else steady):
        order += [forwards[warmup + k], backwards[k]]
    if peak_only and steady > 2 * pp * num_chunks + pp:
        return order
    return order + backwards[total - warmup:]


def peak_in_flight(
    order: Sequence[Tuple[str, int, int]],
    chunk_bytes: Callable[[int], float],
    backward_extra: Callable[[int], float] = lambda chunk: 0.0,
) -> float:
    """Peak of activation bytes alive: a chunk's bytes live from its forward to its backward.

    ``backward_extra(chunk)``: the change at the start of that chunk's backward (the recompute
    working set minus what the loss head frees first), when positive it adds to the peak.
    """
    alive, peak = 0.0, 0.0
    for kind, _microbatch, chunk in order:
        if kind == "F":
            alive += chunk_bytes(chunk)
            peak = max(peak, alive)
        else:
            peak = max(peak, alive + backward_extra(chunk))
            alive -= chunk_bytes(chunk)
    return peak


def max_in_flight_chunks(pp: int, rank: int, num_microbatches: int, num_chunks: int) -> int:
    """Most (microbatch, pass) chunks whose activations are alive at once on ``rank``."""
    return int(peak_in_flight(schedule_order(pp, rank, num_microbatches, num_chunks), lambda chunk: 1.0))
