"""Adaptive Jacobi rounds (evaluation and generation only): stop once the thoughts stop moving.

Latent mode refines the thoughts with J Jacobi rounds. Where no gradient is needed (evaluation,
``--jacobi-eval-tol``), the rounds can stop early: after round j, if the round's residual

    r_j = ||z^j - z^(j-1)||^2 / numel     (over every thought of the whole microbatch)

is below the tolerance, the remaining rounds are skipped and the final pass runs on z^j; J stays
the cap. The decision is per microbatch, not per sample: the batch runs its rounds together, so
stopping one sample early would save nothing (docs/methods.md, "Adaptive Jacobi rounds").

The decision needs the residual on the host: one synchronisation per round. That is acceptable
at evaluation and never happens in training (a tolerance of 0, the default, never reads it).
Every rank that holds a shard of the same thoughts must run the same rounds (the next round's
layers communicate over the tensor- and context-parallel groups), so the residual's numerator
and element count are all-reduced over those groups first: under sequence parallelism each
tensor-parallel rank holds L/tp of the tokens, under context parallelism each context-parallel
rank holds its slice; without sequence parallelism the tensor-parallel ranks hold the same
thoughts and the reduction only guarantees that they agree. Data-parallel ranks evaluate other
data and may stop at other rounds.
"""

from __future__ import annotations

from typing import Iterable, Optional

import torch
import torch.distributed as dist
from torch import Tensor


def residual_below(
    previous: Tensor, updated: Tensor, tolerance: float, groups: Iterable[Optional[dist.ProcessGroup]] = ()
) -> bool:
    """Whether one round's residual over the thoughts of every shard is below ``tolerance``.

    Args:
        previous, updated: z^(j-1) and z^j, this rank's shard [L_local, N, b, h].
        tolerance: > 0 (0 means fixed rounds: callers do not ask).
        groups: the process groups whose ranks hold the other shards of the same thoughts (the
            tensor- and context-parallel groups); groups of one rank (or None) are skipped.

    Returns:
        sum((z^j - z^(j-1))^2) / count < tolerance, the sums taken over all shards in float64;
        the same answer on every rank of ``groups``. Reads one value pair from the device.
    """
    difference = (updated.detach() - previous.detach()).float()
    stats = torch.stack([
        difference.pow(2).sum(dtype=torch.float64),
        torch.full((), difference.numel(), dtype=torch.float64, device=difference.device),
    ])  # [2]: numerator, element count
    for group in groups:
        if group is not None and dist.get_world_size(group) > 1:
            dist.all_reduce(stats, group=group)
    squares, count = stats.tolist()  # the host read: evaluation / generation only
    return squares / max(count, 1.0) < tolerance
