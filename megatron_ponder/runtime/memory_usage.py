"""The memory figures of the training log and of ``--log-memory-to-tensorboard``.

On CUDA: the caching allocator's counters of this process's device (what Megatron-LM writes:
``mem-reserved-bytes``, ``mem-allocated-bytes``, ``mem-max-allocated-bytes``,
``mem-allocated-count``) plus the peak reserved bytes. On CPU: the process's peak resident set size
(``mem-max-rss-bytes``), the one figure the operating system keeps. Reading them is a host-side
query (no device synchronisation), so the log may read them at any step.
"""

from __future__ import annotations

import resource
import sys
from typing import Dict

import torch


def peak_rss_bytes() -> int:
    """This process's peak resident set size in bytes (``getrusage``: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def memory_figures(cuda: bool) -> Dict[str, int]:
    """TensorBoard name -> value (bytes, or a count for ``mem-allocated-count``)."""
    if not cuda:
        return {"mem-max-rss-bytes": peak_rss_bytes()}
    stats = torch.cuda.memory_stats()
    return {
        "mem-reserved-bytes": stats.get("reserved_bytes.all.current", 0),
        "mem-allocated-bytes": stats.get("allocated_bytes.all.current", 0),
        "mem-max-allocated-bytes": stats.get("allocated_bytes.all.peak", 0),
        "mem-max-reserved-bytes": stats.get("reserved_bytes.all.peak", 0),
        "mem-allocated-count": stats.get("allocation.all.current", 0),
    }


def memory_summary(figures: Dict[str, int]) -> str:
    """The log line's memory field, in GiB."""
    gib = 1024 ** 3
    if "mem-max-rss-bytes" in figures:
        return f"peak RSS (GiB): {figures['mem-max-rss-bytes'] / gib:.2f}"
    return (f"mem max allocated / reserved (GiB): {figures['mem-max-allocated-bytes'] / gib:.2f} / "
            f"{figures['mem-max-reserved-bytes'] / gib:.2f}")
