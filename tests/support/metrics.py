"""Read a run's ``--metrics-file`` (one JSON line per step and evaluation)."""

from __future__ import annotations

import json
from typing import Dict


def losses(metrics_file, kind: str) -> Dict[int, float]:
    """iteration -> loss of the last ``kind`` ("train" / "valid") record for it (a resumed run
    rewrites the iterations it redoes)."""
    found = {}
    for line in open(metrics_file):
        record = json.loads(line)
        if record["kind"] == kind:
            found[record["iteration"]] = record["loss"]
    return found


def train_losses(metrics_file) -> Dict[int, float]:
    return losses(metrics_file, "train")
