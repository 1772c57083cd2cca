"""Named ranges in a profile (NVTX for nsys, ``record_function`` for the PyTorch profiler).

The model marks its passes with :func:`trace_range`; whether a range is recorded, and how, is a
process-wide switch that the training loop's profiler sets (``training/profiling.py``) while it
records on this rank:

* off (the default): :func:`trace_range` returns one shared ``nullcontext``; the range's name is
  not even formatted. No cost, no host synchronisation.
* ``"record_function"``: ``torch.profiler.record_function(name)``, a host-side event in the
  PyTorch profiler's trace (CPU-only op; it never waits for the device).
* ``"nvtx"``: ``torch.cuda.nvtx.range_push/range_pop``, a host-side NVTX range that nsys shows
  over the kernels launched inside it (CUDA builds only; never waits for the device).

Imports nothing else from the package, so ``model/`` can use it.
"""

from __future__ import annotations

import contextlib
from typing import Callable, ContextManager, Optional

import torch

RANGE_KINDS = ("record_function", "nvtx")

_OFF = contextlib.nullcontext()  # reusable: entering it does nothing
_kind: Optional[str] = None


def set_trace_ranges(kind: Optional[str]) -> None:
    """Record ranges as ``kind`` (one of :data:`RANGE_KINDS`) from now on, or stop (None)."""
    global _kind
    if kind is not None and kind not in RANGE_KINDS:
        raise ValueError(f"trace range kind {kind!r}: choose one of {RANGE_KINDS} or None")
    _kind = kind


def trace_ranges_kind() -> Optional[str]:
    """What :func:`trace_range` records now (None: nothing)."""
    return _kind


class _NvtxRange:
    """An NVTX push/pop pair; torch.cuda.nvtx is looked up at entry (tests replace it)."""

    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name

    def __enter__(self):
        torch.cuda.nvtx.range_push(self.name)

    def __exit__(self, *exc):
        torch.cuda.nvtx.range_pop()
        return False


def trace_range(name: Callable[[], str]) -> ContextManager:
    """A context manager that records the range ``name()`` when ranges are on, else does nothing.

    ``name`` is a callable so that a range that is not recorded costs no string formatting.
    """
    if _kind is None:
        return _OFF
    if _kind == "nvtx":
        return _NvtxRange(name())
    return torch.profiler.record_function(name())
