"""The device a rank computes on: its CUDA device when there is one, else the CPU.

Everything a step creates (batches moved from the loader, loss reports, flags for collectives)
goes on this device: on a GPU machine NCCL only reduces CUDA tensors, and a CPU tensor meeting a
CUDA one in an op is an error. Without CUDA (gloo, :mod:`megatron_ponder.runtime.cpu`) it is the
CPU. ``torch.cuda.current_device()`` is the device ``initialize_parallel`` selected from
``LOCAL_RANK``.
"""

from __future__ import annotations

from typing import Dict, Optional

import torch
from torch import Tensor


def compute_device() -> torch.device:
    """``cuda:<current>`` when CUDA is available, else ``cpu``."""
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def batch_to_device(batch: Dict[str, Optional[Tensor]], device: Optional[torch.device] = None) -> Dict[str, Optional[Tensor]]:
    """The batch's tensors on ``device`` (default :func:`compute_device`); None entries stay None.

    Host-to-device copies are ``non_blocking``: the loader's tensors may be pinned, and the copy
    then overlaps with the previous microbatch's compute, as in Megatron-LM's ``get_batch``.
    """
    device = compute_device() if device is None else device
    return {key: None if value is None else value.to(device, non_blocking=True) for key, value in batch.items()}
