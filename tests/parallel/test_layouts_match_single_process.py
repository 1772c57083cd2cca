"""Every parallel layout reproduces the single-process run.

From the same initial checkpoint, modes none, ponder (S=2) and latent (N=1, N=2; J drawn per
step from {1,2,3}) train 3 optimizer steps on the same global batch of 8 samples (4 microbatches
of 2, or 2 microbatches of 4 with ``--micro-batch-size 4``; split over DP ranks). Losses and
grad norms must match the world-of-one run to rel. 1e-5 in fp32.

Pipeline layouts run every pass through every stage (the looped pipeline), including untied
ponder feedback (LLaMA style: a copy of E on the last stage) and tied (GPT-2 style). GPT-NeoX
style (parallel residual) runs under TP + SP.

Top-K mixing (ponder S=2, K=8 of 64 tokens) runs in the TP=2 and TP=2+SP layouts too: each rank holds half
the vocabulary, so the global top-K, the softmax gradient and the embedding-row gradients cross
the rank boundary, and the mixture is all-reduced or reduce-scattered to sequence shards.
"""

import json
from pathlib import Path

import pytest

from support.torchrun import run_torchrun

WORKER = Path(__file__).with_name("layout_worker.py")
MODES = ["none", "ponder", "latent1", "latent2"]
TOPK_MODE, TOPK_LAYOUTS = "ponder_topk", ("tp2", "tp2-sp")  # LLaMA style

LAYOUTS = {
    # name: (processes, worker flags)
    "tp2": (2, ["--tp", "2"]),
    "tp2-sp": (2, ["--tp", "2", "--sp"]),
    "cp2": (2, ["--cp", "2"]),
    "dp2-distopt": (2, ["--distributed-optimizer"]),
    "tp2-cp2": (4, ["--tp", "2", "--cp", "2"]),
    "tp2-dp2": (4, ["--tp", "2"]),
    "tp2-sp-cp2": (4, ["--tp", "2", "--sp", "--cp", "2"]),
    "pp2-mb4": (2, ["--pp", "2"]),
    "pp2-mb2": (2, ["--pp", "2", "--micro-batch-size", "4"]),
    "pp2-recompute-full": (2, ["--pp", "2", "--recompute", "full"]),
    "pp2-tp2": (4, ["--pp", "2", "--tp", "2"]),
    "pp2-tp2-sp-mb2": (4, ["--pp", "2", "--tp", "2", "--sp", "--micro-batch-size", "4"]),
    "pp2-cp2": (4, ["--pp", "2", "--cp", "2"]),
    "pp2-dp2-distopt": (4, ["--pp", "2", "--distributed-optimizer"]),
}
# GPT-2 style (learned positions, tied embeddings, biases) on the layouts that treat the
# sequence or the embeddings differently; LLaMA style (RoPE, GQA, untied) on all of them.
GPT2_LAYOUTS = ("tp2-sp", "cp2", "dp2-distopt", "pp2-mb4", "pp2-tp2-sp-mb2")
# GPT-NeoX style (parallel residual: both branches reduce(-scatter) into one sum; partial RoPE)
# where its layer differs from the others: tensor and sequence parallelism.
NEOX_LAYOUTS = ("tp2-sp",)
# Layouts where rank 0's pipeline measures the Jacobi residuals on the single process's last
# microbatch, whole (no DP, CP or SP split, same micro-batch size): rank 0 must report the same
# residuals (under PP they come from the last stage with the loss report).
SAME_LAST_MICROBATCH = ("tp2", "pp2-mb4", "pp2-recompute-full", "pp2-tp2")
CASES = ([("llama", name) for name in LAYOUTS] + [("gpt2", name) for name in GPT2_LAYOUTS]
         + [("neox", name) for name in NEOX_LAYOUTS])


@pytest.fixture(scope="module")
def single_process_runs(tmp_path_factory):
    """Per style: the initial checkpoint and the world-of-one results."""
    runs = {}
    for style in ("llama", "gpt2", "neox"):
        folder = tmp_path_factory.mktemp(style)
        init = folder / "init"
        run_torchrun(WORKER, 1, ["--style", style, "--init", str(init), "--save-init"])
        out = folder / "single.json"
        modes = MODES + ([TOPK_MODE] if style == "llama" else [])
        run_torchrun(WORKER, 1, ["--style", style, "--init", str(init), "--modes", ",".join(modes), "--out", str(out)])
        runs[style] = (init, json.loads(out.read_text()))
    return runs


def _relative(a, b):
    return abs(a - b) / abs(b)


@pytest.mark.parametrize("style, layout", CASES, ids=[f"{s}-{l}" for s, l in CASES])
def test_layout_reproduces_single_process(single_process_runs, tmp_path, style, layout):
    init, expected = single_process_runs[style]
    nproc, flags = LAYOUTS[layout]
    out = tmp_path / "layout.json"
    modes = MODES + ([TOPK_MODE] if style == "llama" and layout in TOPK_LAYOUTS else [])
    run_torchrun(WORKER, nproc, ["--style", style, *flags, "--init", str(init), "--modes", ",".join(modes),
                                 "--out", str(out)])
    got = json.loads(out.read_text())
    for mode in modes:
        assert len(got[mode]["losses"]) == 3
        for step, (loss, want) in enumerate(zip(got[mode]["losses"], expected[mode]["losses"], strict=True)):
            assert _relative(loss, want) < 1e-5, (mode, step, loss, want)
        for step, (norm, want) in enumerate(zip(got[mode]["grad_norms"], expected[mode]["grad_norms"], strict=True)):
            assert _relative(norm, want) < 1e-5, (mode, step, norm, want)
        if mode.startswith("latent") and layout in SAME_LAST_MICROBATCH:
            for step, (residuals, want) in enumerate(zip(got[mode]["jacobi_residuals"],
                                                         expected[mode]["jacobi_residuals"], strict=True)):
                assert residuals == pytest.approx(want, rel=1e-3), (mode, step, residuals, want)
    # The runs must differ between modes, or equal numbers would prove nothing about the passes.
    assert len({round(got[mode]["losses"][0], 6) for mode in modes}) == len(modes)
