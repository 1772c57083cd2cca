"""The README's main job: `bash examples/pretrain_ponder_gpt.sh` on its built-in default
(stdlib corpus, trained tokenizer, 2 CPU processes), shortened to 40 steps."""

import re
import subprocess

import pytest

from support.torchrun import REPO, child_env


@pytest.mark.slow
def test_default_run_trains_evaluates_and_saves(tmp_path):
    run_dir = tmp_path / "run"
    done = subprocess.run(
        ["bash", str(REPO / "examples" / "pretrain_ponder_gpt.sh"), "--eval-interval", "20"],
        env=child_env(RUN_DIR=str(run_dir), TRAIN_ITERS="40", SAVE_INTERVAL="20", MASTER_PORT="29517"),
        capture_output=True, text=True, timeout=900, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "2 process(es), CPU (gloo)" in out
    assert re.search(r"iteration +40/40 .*jacobi residual", out)
    first, last = map(float, re.search(r"validation loss: ([\d.]+) -> ([\d.]+)", out).groups())
    assert last < first - 1.0  # from ~8.3 (uniform over 4096 tokens) down by more than a nat
    assert (run_dir / "checkpoints" / "latest_checkpointed_iteration.txt").read_text() == "40"
    assert (run_dir / "checkpoints" / "iter_0000020").is_dir()
    assert f"checkpoints: {run_dir / 'checkpoints'}" in out
    assert (run_dir / "data" / "tokenizer" / "tokenizer.json").is_file()
