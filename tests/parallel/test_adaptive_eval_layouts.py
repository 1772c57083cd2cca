"""Adaptive Jacobi rounds at evaluation (``--jacobi-eval-tol``) under TP+SP and CP.

Under sequence parallelism each tensor-parallel rank holds L/tp of the thoughts, under context
parallelism each context-parallel rank its slice: the stop rule all-reduces the residual over
those groups, so every rank runs the same rounds (the same number of stop checks) and the
evaluation equals the single process: the same mean rounds, the same loss (to fp32 rounding of
the layout), at every tolerance, including ones that stop some microbatches early.
"""

import json
from pathlib import Path

import pytest

from support.torchrun import run_torchrun

WORKER = Path(__file__).with_name("adaptive_eval_worker.py")
CAP = 4
LAYOUTS = {"tp2-sp": ["--tp", "2", "--sp"], "cp2": ["--cp", "2"]}


def _results(out, ranks):
    return [json.loads(open(f"{out}.rank{r}.json").read()) for r in range(ranks)]


@pytest.fixture(scope="module")
def single_process(tmp_path_factory):
    folder = tmp_path_factory.mktemp("adaptive")
    init, out = folder / "init", folder / "single.json"
    run_torchrun(WORKER, 1, ["--init", str(init), "--save-init", "--out", str(out)])
    return init, _results(out, 1)[0]


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_adaptive_evaluation_in_layout_equals_single_process(single_process, tmp_path, layout):
    init, expected = single_process
    rounds = {tol: result["mean_rounds"] for tol, result in expected.items()}
    assert rounds["0"] == CAP and rounds["1e9"] == 1.0
    assert any(1.0 < r < CAP for r in rounds.values()), f"no tolerance stops between 1 and {CAP}: {rounds}"
    out = tmp_path / "layout.json"
    run_torchrun(WORKER, 2, [*LAYOUTS[layout], "--init", str(init), "--out", str(out)])
    ranks = _results(out, 2)
    for tol, single in expected.items():
        checks = {rank[tol]["stop_checks"] for rank in ranks}
        assert len(checks) == 1, f"tol {tol}: ranks ran different rounds ({checks})"
        if float(tol) == 0:
            assert checks == {0}  # tolerance 0 never reads the residual
        for rank in ranks:
            assert rank[tol]["mean_rounds"] == single["mean_rounds"], tol
            assert rank[tol]["loss"] == pytest.approx(single["loss"], rel=1e-5), tol
