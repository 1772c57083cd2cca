"""Preemption-safe exit: ``--exit-signal-handler`` and ``--exit-duration-in-mins`` (Megatron's flags).

Slurm preemption and time limits send SIGTERM (then SIGKILL after ``KillWait``); Ctrl-C sends
SIGINT. With ``--exit-signal-handler`` such a signal only sets a flag: the current step
finishes, the run saves (with ``--save``) and exits with status 0 and one line, so a resubmitted
job resumes from that step. ``--exit-duration-in-mins`` does the same once the run has lasted
that long (start the job with a margin below the time limit for the save).

All ranks must stop after the same step: after every step the flags of all ranks are combined
with one MAX all-reduce of two numbers (a signal may reach only some processes, and clocks
differ), so every rank takes the same decision.
"""

from __future__ import annotations

import signal
import time
from typing import Optional

import torch
import torch.distributed as dist

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class ExitConditions:
    """Installs the handlers (with ``signal_handler``); :meth:`reason` is the per-step collective."""

    def __init__(self, signal_handler: bool, duration_mins: Optional[float], started: Optional[float] = None):
        self.enabled = signal_handler or duration_mins is not None
        self.duration_s = None if duration_mins is None else 60.0 * duration_mins
        self.started = time.monotonic() if started is None else started
        self.received: Optional[int] = None
        self.previous = {}
        if signal_handler:
            for number in SIGNALS:
                self.previous[number] = signal.signal(number, self._on_signal)

    def _on_signal(self, number, frame) -> None:
        if self.received is None:
            self.received = number

    def reason(self) -> Optional[str]:
        """Why the run should stop now (the same on every rank), or None. A collective."""
        if not self.enabled:
            return None
        elapsed = time.monotonic() - self.started
        flags = [float(self.received or 0), float(self.duration_s is not None and elapsed >= self.duration_s)]
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
        combined = torch.tensor(flags, device=device)
        dist.all_reduce(combined, op=dist.ReduceOp.MAX)
        received, overdue = int(combined[0].item()), bool(combined[1].item())
        if received:
            return f"received {signal.Signals(received).name}"
        if overdue:
            return f"--exit-duration-in-mins {self.duration_s / 60:g} reached"
        return None

    def restore(self) -> None:
        for number, handler in self.previous.items():
            signal.signal(number, handler)
        self.previous = {}
