"""Every rank stops with the same one-line error, whichever rank found the problem.

An error seen by some ranks only (a lock held, a shard that will not write) would leave the
other ranks waiting in their next collective until the timeout. These helpers share the
message first (one small object collective), so every rank raises the same error and exits
with the same code; rank 0 prints it.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist


def _object_device():
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None


def agree_on_error(message: Optional[str]) -> Optional[str]:
    """Global rank 0's ``message`` on every rank (a collective; None when rank 0 has none)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return message
    holder = [message]
    dist.broadcast_object_list(holder, src=0, device=_object_device())
    return holder[0]


def agree_any_error(message: Optional[str]) -> Optional[str]:
    """The first rank's non-None ``message`` on every rank (a collective), or None."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return message
    messages = [None] * dist.get_world_size()
    dist.all_gather_object(messages, message)
    return next((m for m in messages if m), None)
