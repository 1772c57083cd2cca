"""Latent mode under TP=2 + SP issues exactly the collectives of its extra passes, nothing more."""

import json
from pathlib import Path

from support.torchrun import run_torchrun

WORKER = Path(__file__).with_name("collective_count_worker.py")


def test_latent_mode_adds_only_the_collectives_of_its_extra_passes(tmp_path):
    out = tmp_path / "counts.json"
    run_torchrun(WORKER, 2, [str(out)])
    counts = json.loads(out.read_text())
    none, one_pass = counts["none"], counts["one_pass"]
    assert sum(one_pass.values()) > 0, "a sequence-parallel pass must communicate"
    for thoughts, rounds in [(1, 2), (2, 3)]:
        extra_passes = thoughts + rounds
        expected = {
            name: none.get(name, 0) + extra_passes * one_pass.get(name, 0)
            for name in set(none) | set(one_pass)
        }
        got = counts[f"latent_N{thoughts}_J{rounds}"]
        assert {k: v for k, v in got.items() if v} == {k: v for k, v in expected.items() if v}
