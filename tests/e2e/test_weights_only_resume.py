"""A weights-only checkpoint (``--no-save-optim``) resumed with ``--no-load-optim`` continues the
LR schedule where it was (issue 26, finding 9): the checkpoint keeps the schedule's state, as
Megatron-LM keeps the iteration and the scheduler apart from the optimizer."""

import json

from megatron_ponder.pretrain import main

ARGS = ["--mock-data", "--seq-length", "32", "--micro-batch-size", "2", "--global-batch-size", "4", "--lr", "1e-3",
        "--lr-warmup-iters", "4", "--lr-decay-style", "cosine", "--eval-iters", "0", "--log-interval", "1",
        "--ponder-mode", "none"]


def _learning_rates(metrics):
    return {r["iteration"]: r["lr"] for r in map(json.loads, open(metrics)) if r["kind"] == "train"}


def test_the_schedule_continues_after_a_weights_only_resume(tmp_path, capsys):
    straight = tmp_path / "straight.jsonl"
    assert main([*ARGS, "--train-iters", "8", "--metrics-file", str(straight)]) == 0
    run, metrics = tmp_path / "run", tmp_path / "resumed.jsonl"
    assert main([*ARGS, "--train-iters", "8", "--exit-interval", "3", "--save", str(run), "--no-save-optim",
                 "--metrics-file", str(metrics)]) == 0
    capsys.readouterr()
    assert main([*ARGS, "--train-iters", "8", "--load", str(run), "--save", str(run), "--no-load-optim",
                 "--metrics-file", str(metrics)]) == 0
    assert "resumed from" in capsys.readouterr().out
    expected, got = _learning_rates(straight), _learning_rates(metrics)
    assert set(got) == set(range(1, 9))
    # Warm-up ends at iteration 4: a restarted schedule would give iteration 4 the LR of iteration 1.
    assert got == expected
