"""A one-line warning when a step's gradient norm jumps far above its recent typical value.

A method trained at too high a learning rate shows it in the gradient norm long before the loss
diverges (docs/training_dynamics.md). The log line has the norm; this makes the jump stand out:
a step whose norm exceeds ``factor`` times the median of the previous ``window`` steps' norms
prints one warning. The median, not the mean, so that one spike does not hide the next.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from typing import Optional

# Steps before the median counts as typical. The first steps' norms move fast (warm-up, the initial
# fall of the loss): in the training-dynamics study, runs that trained well had 5-10x jumps up to
# step 30 and none after step 50, while every run at too high an LR jumped after step 50.
MIN_HISTORY = 50


class GradNormSpikeWatch:
    """Running median of the last ``window`` finite grad norms; :meth:`check` each step."""

    def __init__(self, factor: float, window: int = 100):
        self.factor = factor
        self.history = deque(maxlen=window)

    def check(self, iteration: int, grad_norm: Optional[float]) -> Optional[str]:
        """The warning line for this step's norm, or None; then the norm joins the history.

        ``factor`` 0 disables the watch; skipped steps (norm None or non-finite) are not counted.
        """
        if not self.factor or grad_norm is None or not math.isfinite(grad_norm):
            return None
        warning = None
        if len(self.history) >= MIN_HISTORY:
            median = statistics.median(self.history)
            if median > 0 and grad_norm > self.factor * median:
                warning = (f"warning: iteration {iteration}: grad norm {grad_norm:.3g} is {grad_norm / median:.1f}x "
                           f"the median {median:.3g} of the last {len(self.history)} steps "
                           f"(--grad-norm-spike-factor {self.factor:g}); repeated spikes mean the learning rate is "
                           "too high for this mode: lower --lr (docs/training.md)")
        self.history.append(grad_norm)
        return warning
