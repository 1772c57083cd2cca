"""The pretrain entry point under torchrun (2 CPU processes): resume after SIGKILL is exact, a crash
in the middle of a save leaves the previous checkpoint loadable, resuming with another layout
works."""

import os
import signal
import subprocess
import time

import pytest

from support.metrics import train_losses
from support.torchrun import run_torchrun, child_env, torchrun_command

PRETRAIN = "-m megatron_ponder.pretrain"
BASE = [
    "--mock-data", "--seq-length", "32", "--micro-batch-size", "2", "--global-batch-size", "8",
    "--lr-warmup-iters", "2", "--eval-iters", "0", "--log-interval", "1", "--ponder-mode", "latent",
    "--jacobi-train-rounds", "1,3",
]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("uninterrupted")
    metrics = folder / "metrics.jsonl"
    run_torchrun(PRETRAIN, 2, BASE + ["--train-iters", "8", "--metrics-file", metrics])
    return train_losses(metrics)


@pytest.mark.slow
def test_sigkill_then_resume_reproduces_the_uninterrupted_losses(tmp_path, uninterrupted):
    metrics, checkpoints = tmp_path / "metrics.jsonl", tmp_path / "ckpt"
    args = BASE + ["--train-iters", "8", "--metrics-file", metrics, "--save", checkpoints, "--load", checkpoints,
                   "--save-interval", "2"]
    run = subprocess.Popen(torchrun_command(PRETRAIN, 2, args), env=child_env(), start_new_session=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and (not metrics.exists() or max(train_losses(metrics), default=0) < 5):
        time.sleep(0.2)
    os.killpg(run.pid, signal.SIGKILL)  # the launcher and both workers, mid-run
    run.wait()
    interrupted_at = max(train_losses(metrics))
    assert 5 <= interrupted_at < 8, "the run was not interrupted in the middle"

    resumed = run_torchrun(PRETRAIN, 2, args)
    assert "resumed from" in resumed.stdout
    assert train_losses(metrics) == uninterrupted  # every iteration, bit for bit


@pytest.mark.slow
def test_crash_during_save_leaves_the_previous_checkpoint(tmp_path, uninterrupted):
    metrics, checkpoints = tmp_path / "metrics.jsonl", tmp_path / "ckpt"
    args = BASE + ["--train-iters", "8", "--metrics-file", metrics, "--save", checkpoints, "--load", checkpoints,
                   "--save-interval", "2"]
    crashed = run_torchrun(PRETRAIN, 2, args, check=False,
                           env=child_env(PONDER_FAULT_INJECT="after-shards-before-pointer:4"))
    assert crashed.returncode != 0
    assert (checkpoints / "latest_checkpointed_iteration.txt").read_text() == "2"
    resumed = run_torchrun(PRETRAIN, 2, args)
    assert "resumed from" in resumed.stdout and "at iteration 2" in resumed.stdout
    assert train_losses(metrics) == uninterrupted


@pytest.mark.slow
@pytest.mark.parametrize("layout", [["--tensor-model-parallel-size", "2"], ["--pipeline-model-parallel-size", "2"]],
                         ids=["tp2", "pp2"])
def test_resume_with_another_layout(tmp_path, uninterrupted, layout):
    """Saved with DP=2, resumed with TP=2 or PP=2: the continuation matches the uninterrupted run."""
    checkpoints = tmp_path / "ckpt"
    first = tmp_path / "first.jsonl"
    run_torchrun(PRETRAIN, 2, BASE + ["--train-iters", "8", "--lr-decay-iters", "8", "--save", checkpoints,
                                      "--save-interval", "4", "--metrics-file", first, "--exit-interval", "4"])
    second = tmp_path / "second.jsonl"
    resumed = run_torchrun(PRETRAIN, 2, BASE + layout + ["--train-iters", "8", "--load", checkpoints,
                                                         "--metrics-file", second])
    assert "at iteration 4" in resumed.stdout
    losses = train_losses(second)
    assert sorted(losses) == [5, 6, 7, 8]
    for iteration, loss in losses.items():
        assert loss == pytest.approx(uninterrupted[iteration], rel=1e-5), iteration



@pytest.mark.slow
def test_distributed_optimizer_resume_is_exact(tmp_path):
    """ZeRO-1 state (fully reshardable format) saved at iteration 4 and resumed: the same losses.

    Guards two workarounds for megatron-core 0.16.1 with the torch AdamW fallback: the load's
    KeyError 'step', and one step tensor shared by all parameters (advanced once per parameter)."""
    args = BASE + ["--use-distributed-optimizer", "--train-iters", "8"]
    straight, resumed_metrics, checkpoints = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "ckpt"
    run_torchrun(PRETRAIN, 2, args + ["--metrics-file", straight])
    run_torchrun(PRETRAIN, 2, args + ["--metrics-file", resumed_metrics, "--save", checkpoints, "--exit-interval", "4"])
    resumed = run_torchrun(PRETRAIN, 2, args + ["--metrics-file", resumed_metrics, "--load", checkpoints])
    assert "at iteration 4" in resumed.stdout
    assert train_losses(resumed_metrics) == train_losses(straight)


@pytest.mark.slow
def test_torchrun_restart_resumes_from_the_latest_checkpoint(tmp_path, uninterrupted):
    """A worker killed mid-run under --max-restarts 1: torchrun restarts the workers, which resume
    from the latest checkpoint (--load = --save) and finish with the uninterrupted losses."""
    import psutil

    metrics, checkpoints = tmp_path / "metrics.jsonl", tmp_path / "ckpt"
    args = BASE + ["--train-iters", "8", "--metrics-file", metrics, "--save", checkpoints, "--load", checkpoints,
                   "--save-interval", "2"]
    command = torchrun_command(PRETRAIN, 2, args)
    command[command.index("--nproc-per-node"):command.index("--nproc-per-node")] = ["--max-restarts", "1"]
    out = tmp_path / "out.txt"
    with open(out, "w") as handle:
        run = subprocess.Popen(command, env=child_env(), start_new_session=True, stdout=handle,
                               stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + 300
            while time.time() < deadline and (not metrics.exists() or max(train_losses(metrics), default=0) < 5):
                time.sleep(0.2)
            workers = [p for p in psutil.Process(run.pid).children()
                       if "megatron_ponder.pretrain" in " ".join(p.cmdline())]
            assert workers, "no worker process found"
            workers[-1].kill()
            returncode = run.wait(timeout=300)
        finally:
            try:
                os.killpg(run.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    log = out.read_text()
    assert returncode == 0, log[-3000:]
    assert "resumed from" in log
    assert train_losses(metrics) == uninterrupted


def _wait_for_iteration(metrics, iteration, process, deadline_s=300):
    deadline = time.time() + deadline_s
    while time.time() < deadline and (not metrics.exists() or max(train_losses(metrics), default=0) < iteration):
        assert process.poll() is None, "the run ended before it could be signalled"
        time.sleep(0.2)


@pytest.mark.slow
def test_sigterm_saves_exits_0_and_resumes_exactly(tmp_path, uninterrupted):
    """--exit-signal-handler: SIGTERM to one worker (rank 1) only; both finish the step, agree to
    stop, save that iteration and exit 0 with one line; the resume reproduces every loss."""
    import psutil

    metrics, checkpoints = tmp_path / "metrics.jsonl", tmp_path / "ckpt"
    args = BASE + ["--train-iters", "8", "--metrics-file", metrics, "--save", checkpoints, "--load", checkpoints,
                   "--exit-signal-handler"]
    out = tmp_path / "out.txt"
    with open(out, "w") as handle:
        run = subprocess.Popen(torchrun_command(PRETRAIN, 2, args), env=child_env(), start_new_session=True,
                               stdout=handle, stderr=subprocess.STDOUT)
        try:
            _wait_for_iteration(metrics, 3, run)
            workers = sorted((p for p in psutil.Process(run.pid).children()
                              if "megatron_ponder.pretrain" in " ".join(p.cmdline())), key=lambda p: p.pid)
            workers[-1].send_signal(signal.SIGTERM)
            returncode = run.wait(timeout=300)
        finally:
            try:
                os.killpg(run.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    log = out.read_text()
    assert returncode == 0, log[-3000:]
    stops = [line for line in log.splitlines() if line.startswith("received SIGTERM")]
    assert len(stops) == 1 and "resume with --load" in stops[0], log[-3000:]
    stopped_at = int((checkpoints / "latest_checkpointed_iteration.txt").read_text())
    assert 3 <= stopped_at < 8 and max(train_losses(metrics)) == stopped_at  # saved the step it finished

    resumed = run_torchrun(PRETRAIN, 2, args)
    assert f"at iteration {stopped_at}" in resumed.stdout
    assert train_losses(metrics) == uninterrupted


@pytest.mark.slow
def test_dropout_resume_is_exact(tmp_path):
    """Dropout > 0: the generators travel in the checkpoint, so the resumed run draws the same masks."""
    args = BASE + ["--hidden-dropout", "0.2", "--attention-dropout", "0.2", "--train-iters", "6"]
    straight, resumed_metrics, checkpoints = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "ckpt"
    run_torchrun(PRETRAIN, 2, args + ["--metrics-file", straight])
    run_torchrun(PRETRAIN, 2, args + ["--metrics-file", resumed_metrics, "--save", checkpoints, "--exit-interval", "3"])
    resumed = run_torchrun(PRETRAIN, 2, args + ["--metrics-file", resumed_metrics, "--load", checkpoints])
    assert "at iteration 3" in resumed.stdout and "not restored" not in resumed.stdout
    assert train_losses(resumed_metrics) == train_losses(straight)
