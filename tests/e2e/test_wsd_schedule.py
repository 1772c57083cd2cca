"""--lr-decay-style WSD as Megatron-LM defines it: warm-up, stable at --lr, then the last
--lr-wsd-decay-iters anneal to --min-lr in --lr-wsd-decay-style; a resume continues it exactly."""

import json
import math

from megatron_ponder.pretrain import main

LR, MIN_LR = 1e-3, 1e-4
ARGS = ["--mock-data", "--seq-length", "32", "--micro-batch-size", "2", "--global-batch-size", "2",
        "--eval-iters", "0", "--log-interval", "1", "--ponder-mode", "none", "--lr", str(LR), "--min-lr", str(MIN_LR),
        "--lr-warmup-iters", "2", "--lr-decay-style", "WSD", "--lr-wsd-decay-style", "linear",
        "--lr-wsd-decay-iters", "4", "--train-iters", "10"]


def _learning_rates(metrics):
    return {r["iteration"]: r["lr"] for r in map(json.loads, open(metrics)) if r["kind"] == "train"}


def _expected(step: int) -> float:
    """Megatron's WSD with 2 warm-up and 4 decay steps of 10, as the log gives it: after the step's
    scheduler update (``done`` = steps taken, including this one)."""
    done = step
    if done <= 2:
        return LR * done / 2
    if done <= 10 - 4:
        return LR
    return MIN_LR + (LR - MIN_LR) * (1.0 - (done - 6) / 4)


def test_wsd_warms_up_holds_then_decays_and_resumes_exactly(tmp_path, capsys):
    straight = tmp_path / "straight.jsonl"
    assert main([*ARGS, "--metrics-file", str(straight)]) == 0
    got = _learning_rates(straight)
    assert all(math.isclose(got[step], _expected(step), rel_tol=1e-9, abs_tol=1e-12) for step in got), sorted(got.items())
    assert got[5] == LR and got[10] < LR
    run, resumed = tmp_path / "run", tmp_path / "resumed.jsonl"
    assert main([*ARGS, "--exit-interval", "5", "--save", str(run), "--metrics-file", str(resumed)]) == 0
    assert main([*ARGS, "--load", str(run), "--save", str(run), "--metrics-file", str(resumed)]) == 0
    assert _learning_rates(resumed) == got


def test_wsd_without_its_decay_length_is_one_line(capsys):
    argv = [a for a in ARGS if a not in ("--lr-wsd-decay-iters", "4")]
    assert main(argv) == 2
    assert "--lr-decay-style WSD needs --lr-wsd-decay-iters" in capsys.readouterr().err
