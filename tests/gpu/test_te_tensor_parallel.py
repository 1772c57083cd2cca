"""Transformer Engine models under TP=2 (and TP=2 + SP) on 2 GPUs reproduce TP=1, every mode
(none, ponder dense, ponder top-K, latent), from the same initial checkpoint, fp32."""

import json
from pathlib import Path

import pytest
import torch

from support.gpu_models import requires_transformer_engine
from support.torchrun import run_torchrun

WORKER = Path(__file__).with_name("te_layout_worker.py")

pytestmark = [
    pytest.mark.gpu,
    requires_transformer_engine,
    pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs"),
]


@pytest.fixture(scope="module")
def tp1_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("te_tp")
    init = folder / "init"
    run_torchrun(WORKER, 1, ["--init", str(init), "--save-init"])
    out = folder / "tp1.json"
    run_torchrun(WORKER, 1, ["--init", str(init), "--out", str(out)])
    return init, json.loads(out.read_text())


@pytest.mark.parametrize("flags", [["--tp", "2"], ["--tp", "2", "--sp"]], ids=["tp2", "tp2-sp"])
def test_tp2_reproduces_tp1(tp1_run, tmp_path, flags):
    init, expected = tp1_run
    out = tmp_path / "tp2.json"
    run_torchrun(WORKER, 2, [*flags, "--init", str(init), "--out", str(out)])
    got = json.loads(out.read_text())
    for mode, want in expected.items():
        assert got[mode]["losses"] == pytest.approx(want["losses"], rel=1e-4), mode
        assert got[mode]["grad_norms"] == pytest.approx(want["grad_norms"], rel=1e-3), mode
