"""Non-finite values never reach the weights or a checkpoint.

* :func:`gradients_are_finite`: the reduced gradients of a step, checked before the optimizer
  applies them. With fp32/bf16 and no loss scaler Megatron's optimizer does not look: a NaN
  gradient norm even skips clipping (``nan < 1`` is False) and Adam writes NaN into every weight.
* :class:`SkipLimit`: ``--nan-policy skip`` gives up after ``--nan-skip-limit`` consecutive
  skipped steps (a diverged run, not a rare bad batch).
* :func:`check_parameters_finite`: before a save, so a checkpoint (and the latest pointer) never
  holds NaN weights.

Each check is one pass over local tensors plus one all-reduce of one number over the world
(every rank holds a different shard: distributed optimizer, TP/PP), so all ranks agree.
"""

from __future__ import annotations

from typing import Iterable, List, Optional

import torch
import torch.distributed as dist

from megatron_ponder.runtime.device import compute_device


class NonFiniteLossError(FloatingPointError):
    """The loss of a training step is NaN or infinite (``--nan-policy stop``), or the weights
    are not finite before a save."""


def _all_finite(tensors: Iterable[torch.Tensor]) -> bool:
    """True when every element of every tensor on every rank is finite (a collective).

    Each tensor is reduced to its largest magnitude (``vector_norm(ord=inf)``: a reduction
    kernel, no buffer-sized temporary such as ``isfinite(t)``'s bool copy), and NaN or inf
    propagates into it. The maxima stay on the tensors' device and are all-reduced there (NCCL
    reduces CUDA tensors only); the single host synchronisation is the final verdict.
    """
    device = compute_device()
    largest = torch.zeros(1, dtype=torch.float32, device=device)
    for tensor in tensors:
        if tensor.numel():
            magnitude = torch.linalg.vector_norm(tensor, ord=float("inf")).float()
            # max() would drop a NaN against a finite value on some backends: turn it into inf first.
            magnitude = torch.nan_to_num(magnitude, nan=float("inf"))
            largest = torch.maximum(largest, magnitude.to(device).reshape(1))
    dist.all_reduce(largest, op=dist.ReduceOp.MAX)
    return bool(torch.isfinite(largest).item())


def gradients_are_finite(model_chunks: List[torch.nn.Module]) -> bool:
    """The gradient buffers of Megatron DDP chunks after the step's reduction (a collective)."""
    buffers = [b for chunk in model_chunks for b in list(getattr(chunk, "buffers", [])) + list(getattr(chunk, "expert_parallel_buffers", []))]
    return _all_finite(b.grad_data for b in buffers)


def check_parameters_finite(model: torch.nn.Module, iteration: int, last_saved: Optional[int]) -> None:
    """NonFiniteLossError instead of a save of non-finite weights (a collective)."""

    if not _all_finite(p.detach() for p in model.parameters()):
        kept = f"the latest checkpoint stays iteration {last_saved}" if last_saved else "nothing was saved"
        raise NonFiniteLossError(f"the weights are not finite at iteration {iteration}, so they were not saved "
                                 f"({kept}): lower --lr or check the data, then resume")


class SkipLimit:
    """Counts consecutive skipped steps; raises NonFiniteLossError at ``limit``."""

    def __init__(self, limit: int):
        self.limit = limit
        self.first: Optional[int] = None
        self.count = 0

    def record(self, iteration: int, skipped: bool) -> None:
    
        if not skipped:
            self.first, self.count = None, 0
            return
        self.first = iteration if self.first is None else self.first
        self.count += 1
        if self.count >= self.limit:
            raise NonFiniteLossError(
                f"{self.count} consecutive steps skipped for a non-finite loss or gradients (iterations "
                f"{self.first}-{iteration}, --nan-skip-limit {self.limit}): the run diverged; lower --lr, "
                "check the data, and resume from the last checkpoint")
