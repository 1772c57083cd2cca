"""Top-K vocabulary mixing under tensor parallelism reproduces the single-process run.

Ponder mode (S=2) with K=8 of 64 tokens, from the same initial checkpoint, 3 optimizer steps:
TP=2 with sequence parallelism (the mixture reduce-scattered to sequence shards) gives the
world-of-one losses and grad norms to rel. 1e-5. (TP=2 without SP differs only in the final
all-reduce, the same call as dense mixing's, which the layout tests cover; unit tests show that
top-K differs from dense mixing and matches the reference.) Each TP rank holds half the vocabulary,
so the selected tokens are split between ranks and the global top-K, the softmax gradient and
the embedding-row gradients all cross the rank boundary.
"""

import json
from pathlib import Path

import pytest

from torchrun import run_torchrun

WORKER = Path(__file__).with_name("layout_worker.py")


@pytest.fixture(scope="module")
def single_process_topk(tmp_path_factory):
    folder = tmp_path_factory.mktemp("topk")
    init = folder / "init"
    run_torchrun(WORKER, 1, ["--init", str(init), "--save-init"])
    out = folder / "single.json"
    run_torchrun(WORKER, 1, ["--init", str(init), "--modes", "ponder_topk", "--out", str(out)])
    return init, json.loads(out.read_text())


def test_topk_mixing_tp2_sp_reproduces_single_process(single_process_topk, tmp_path):
    init, expected = single_process_topk
    out = tmp_path / "layout.json"
    run_torchrun(WORKER, 2, ["--tp", "2", "--sp", "--init", str(init), "--modes", "ponder_topk", "--out", str(out)])
    got = json.loads(out.read_text())["ponder_topk"]
    want = expected["ponder_topk"]
    assert len(got["losses"]) == 3
    assert got["losses"] == pytest.approx(want["losses"], rel=1e-5)
    assert got["grad_norms"] == pytest.approx(want["grad_norms"], rel=1e-5)
