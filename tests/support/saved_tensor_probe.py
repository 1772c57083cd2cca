"""Measure activation memory: bytes of tensors autograd saves for backward, alive at the peak.

Every tensor a graph node saves passes through ``saved_tensors_hooks``' pack hook. We keep a
detached alias instead of the tensor (same storage) and watch it with a finalizer: the alias dies
when autograd frees the saved variable (after that node's backward, or with the graph). Bytes
are counted per storage (a saved view keeps its whole base alive), parameters excluded, so the
running sum is the memory that activations hold; its maximum over a step is the peak.
"""

from __future__ import annotations

import weakref
from contextlib import contextmanager
from typing import Dict, Iterable

import torch


class SavedTensorPeak:
    """Context manager: ``peak`` = max bytes of saved non-parameter storages alive at once."""

    def __init__(self, parameters: Iterable[torch.nn.Parameter]):
        self.parameter_storages = {p.untyped_storage().data_ptr() for p in parameters}
        self.live: Dict[int, list] = {}  # storage pointer -> [alias count, bytes]
        self.alive = 0
        self.peak = 0

    def _release(self, key: int) -> None:
        entry = self.live[key]
        entry[0] -= 1
        if entry[0] == 0:
            self.alive -= entry[1]
            del self.live[key]

    def _pack(self, tensor: torch.Tensor):
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key in self.parameter_storages or storage.nbytes() == 0:
            return tensor
        alias = tensor.detach()
        if key in self.live:
            self.live[key][0] += 1
        else:
            self.live[key] = [1, storage.nbytes()]
            self.alive += storage.nbytes()
            self.peak = max(self.peak, self.alive)
        weakref.finalize(alias, self._release, key)
        return alias

    @contextmanager
    def measuring(self):
        with torch.autograd.graph.saved_tensors_hooks(self._pack, lambda alias: alias):
            yield self


def parameter_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())
