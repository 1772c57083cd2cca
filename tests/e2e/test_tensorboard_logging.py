"""--tensorboard-dir with --log-memory-to-tensorboard and --log-timers-to-tensorboard: a tiny
latent run, its event file read back with TensorBoard's own reader. The scalars carry Megatron-LM's
names and agree with the metrics file and the log line: every step's ``lm loss`` (and " vs
samples" at the consumed samples), the validation losses, a throughput above 0 equal to the
line's, memory above 0, each Jacobi round's residual; and nothing about TensorBoard on stderr."""

import json

import pytest

from support.metrics import losses

MEGATRON_NAMES = {"lm loss", "lm loss vs samples", "learning-rate", "learning-rate vs samples", "batch-size",
                  "batch-size vs samples", "grad-norm", "grad-norm vs samples", "iteration-time", "throughput",
                  "lm loss validation", "lm loss validation vs samples"}


def _scalars(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: {event.step: event.value for event in events.Scalars(tag)} for tag in events.Tags()["scalars"]}


def _line_fields(out):
    """iteration -> {field: value} of each training log line."""
    found = {}
    for line in out.splitlines():
        if line.startswith("iteration"):
            parts = line.split(" | ")
            found[int(parts[0].split()[1].split("/")[0])] = dict(p.split(": ", 1) for p in parts if ": " in p)
    return found


def test_tensorboard_event_file_has_megatron_names_and_the_logged_values(tmp_path, capfd):
    from megatron_ponder.pretrain import main

    metrics, board = tmp_path / "metrics.jsonl", tmp_path / "tensorboard"
    argv = ["--mock-data", "--seq-length", "32", "--micro-batch-size", "2", "--train-iters", "4",
            "--ponder-mode", "latent", "--jacobi-train-rounds", "2,3", "--eval-iters", "1", "--eval-interval", "2",
            "--log-interval", "1", "--metrics-file", metrics, "--tensorboard-dir", board,
            "--log-memory-to-tensorboard", "--log-timers-to-tensorboard"]
    assert main([str(a) for a in argv]) == 0
    captured = capfd.readouterr()
    assert "tensorboard" not in captured.err.lower(), captured.err

    scalars = _scalars(board)
    assert MEGATRON_NAMES <= set(scalars), sorted(scalars)
    train, valid = losses(metrics, "train"), losses(metrics, "valid")
    assert sorted(train) == [1, 2, 3, 4] and sorted(valid) == [0, 2, 4]
    # TensorBoard keeps float32: equal to the float32 of the logged loss.
    assert scalars["lm loss"] == pytest.approx(train, rel=1e-7)
    assert scalars["lm loss validation"] == pytest.approx(valid, rel=1e-7)
    records = [json.loads(line) for line in open(metrics)]
    consumed = {r["iteration"]: r["consumed_samples"] for r in records if r["kind"] == "train"}
    assert scalars["lm loss vs samples"] == pytest.approx({consumed[i]: train[i] for i in train}, rel=1e-7)
    assert set(scalars["batch-size"].values()) == {2.0}

    lines = _line_fields(captured.out)
    assert sorted(lines) == [1, 2, 3, 4]
    for iteration, fields in lines.items():
        # --log-interval 1: the line's loss is the step's loss (printed to 7 significant digits)
        assert float(fields["lm loss"]) == pytest.approx(train[iteration], rel=1e-6)
        line_throughput = float(fields["throughput per process (TFLOP/s/process)"])
        assert line_throughput > 0 and scalars["throughput"][iteration] == pytest.approx(line_throughput, rel=1e-3)
        assert scalars["iteration-time"][iteration] * 1000 == pytest.approx(
            float(fields["elapsed time per iteration (ms)"]), abs=0.06)
        assert "MFU" not in fields  # a CPU has no peak TFLOP/s
        # each round's residual, as the line prints it (J is drawn from {2, 3} per step)
        residuals = [float(r) for r in fields["jacobi residual per round"].split()]
        assert len(residuals) in (2, 3)
        for k, residual in enumerate(residuals, start=1):
            assert scalars[f"jacobi-residual/round-{k}"][iteration] == pytest.approx(residual, rel=0.06, abs=1e-12)
    assert all(value > 2**20 for value in scalars["mem-max-rss-bytes"].values())  # CPU: the peak RSS, bytes
    assert sorted(scalars["mem-max-rss-bytes"]) == [1, 2, 3, 4]
