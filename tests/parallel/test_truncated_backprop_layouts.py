"""Truncated backprop (issue 24) in every kind of layout equals the single process.

Modes ``ponder_k1`` (S=2, gradient through the last step only: pass 0 runs without a graph) and
``latent2_k1`` (N=2, J drawn from {2,3}, gradient through the last round only: 3 or 4 leading
passes without a graph) train 3 steps from the same checkpoint in TP+SP, CP, DP with the
distributed optimizer, the looped pipeline (PP=2, and PP=4 where each pass without a graph also
crosses two middle stages) and PP with full recompute; losses and grad norms match the world of one
to rel. 1e-5 in fp32 (tests/parallel/test_layouts_match_single_process.py's tolerance). The
untruncated ``ponder`` mode runs beside them: it must differ from ``ponder_k1``, or equal
numbers would prove nothing about the truncation.

A few layouts, not the cross product: the truncation is one ``torch.no_grad`` per pass on a stage
(run_plan) or per chunk (looped pipeline); the layouts differ in where a pass's message and its
zero gradient travel.
"""

import json
from pathlib import Path

import pytest

from support.torchrun import run_torchrun

WORKER = Path(__file__).with_name("layout_worker.py")
MODES = ["ponder", "ponder_k1", "latent2_k1"]
LAYERS = 4  # a layer per stage at PP=4
LAYOUTS = {
    "tp2-sp": (2, ["--tp", "2", "--sp"]),
    "cp2": (2, ["--cp", "2"]),
    "dp2-distopt": (2, ["--distributed-optimizer"]),
    "pp2-recompute-full": (2, ["--pp", "2", "--recompute", "full"]),
    "pp4-middle-stages": (4, ["--pp", "4"]),
}


@pytest.fixture(scope="module")
def single_process(tmp_path_factory):
    folder = tmp_path_factory.mktemp("truncated")
    init, out = folder / "init", folder / "single.json"
    common = ["--layers", str(LAYERS), "--init", str(init)]
    run_torchrun(WORKER, 1, [*common, "--save-init"])
    run_torchrun(WORKER, 1, [*common, "--modes", ",".join(MODES), "--out", str(out)])
    return init, json.loads(out.read_text())


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_truncated_backprop_layout_reproduces_single_process(single_process, tmp_path, layout):
    init, expected = single_process
    nproc, flags = LAYOUTS[layout]
    out = tmp_path / "layout.json"
    run_torchrun(WORKER, nproc, [*flags, "--layers", str(LAYERS), "--init", str(init), "--modes", ",".join(MODES),
                                 "--out", str(out)])
    got = json.loads(out.read_text())
    for mode in MODES:
        for key in ("losses", "grad_norms"):
            for step, (value, want) in enumerate(zip(got[mode][key], expected[mode][key], strict=True)):
                assert abs(value - want) / abs(want) < 1e-5, (mode, key, step, value, want)
    # Same forward at step 0, another gradient: the truncation is there.
    assert got["ponder_k1"]["losses"][0] == pytest.approx(got["ponder"]["losses"][0], rel=1e-6)
    assert abs(got["ponder_k1"]["grad_norms"][0] / got["ponder"]["grad_norms"][0] - 1) > 1e-3
