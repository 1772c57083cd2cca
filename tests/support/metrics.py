"""Read a run's ``--metrics-file`` (one JSON line per step and evaluation)."""

from __future__ import annotations

import json
from typing import Dict


def train_losses(metrics_file) -> Dict[int, float]:
    """iteration -> loss of the last record for it (a resumed run rewrites the iterations it redoes)."""
    losses = {}
    for line in open(metrics_file):
        record = json.loads(line)
        if record["kind"] == "train":
            losses[record["iteration"]] = record["loss"]
    return losses
