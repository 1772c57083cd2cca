"""A trainer SIGKILLed during a synchronous save never blocks the next run, and leaves no process
behind (issue 26, finding 3). Megatron forks shard writers for the save and spawns a Manager()
(with multiprocessing's resource tracker) for their results; they used to outlive the trainer
(the Manager, 276 MB, for good), and a forked writer could keep the run's lock. Repeated, because
the kill has to land while the writers run."""

import os
import signal
import subprocess
import sys
import time
import uuid

import psutil
import pytest

from support.torchrun import child_env

ARGS = ["--mock-data", "--seq-length", "32", "--micro-batch-size", "2", "--global-batch-size", "4",
        "--eval-iters", "0", "--log-interval", "1", "--ponder-mode", "none", "--save-interval", "1",
        "--train-iters", "10000"]
ATTEMPTS = 4
TAG = "MEGATRON_PONDER_KILL_TEST"


def _pretrain(run, *extra):
    return [sys.executable, "-m", "megatron_ponder.pretrain", *ARGS, "--save", str(run), "--load", str(run), *extra]


def _save_in_flight(run, after: int) -> bool:
    """A checkpoint folder newer than the latest pointer, which is past ``after``: its shards are
    being written (and the helpers of the earlier saves, the Manager among them, exist)."""
    pointer = run / "latest_checkpointed_iteration.txt"
    try:
        latest = int(pointer.read_text()) if pointer.exists() else 0
        return latest > after and any(int(folder.name[5:]) > latest for folder in run.glob("iter_*"))
    except (OSError, ValueError):  # the pointer being replaced right now
        return False


def _tagged(tag: str):
    """Every live process started (directly or not) by the trainer of this attempt: they inherit its
    environment, tag included, however they were started and whoever their parent is now."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.environ().get(TAG) == tag and process.status() != psutil.STATUS_ZOMBIE:
                found.append(f"{process.pid} {' '.join(process.cmdline())[:100]}")
        except psutil.Error:
            continue
    return found


@pytest.mark.slow
def test_a_kill_during_a_synchronous_save_never_blocks_the_next_run(tmp_path):
    run = tmp_path / "run"
    hits = 0
    for attempt in range(ATTEMPTS):
        tag = uuid.uuid4().hex
        trainer = subprocess.Popen(_pretrain(run), env={**child_env(), TAG: tag}, start_new_session=True,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        pointer = run / "latest_checkpointed_iteration.txt"
        started_at = int(pointer.read_text()) if pointer.exists() else 0
        deadline = time.time() + 240
        while time.time() < deadline and trainer.poll() is None and not _save_in_flight(run, started_at):
            time.sleep(0.005)
        time.sleep(0.04 * attempt)  # a little later into the save each time: before and while the writers run
        hits += _save_in_flight(run, started_at)
        os.kill(trainer.pid, signal.SIGKILL)  # the trainer alone: its helpers must follow by themselves
        trainer.wait()
        deadline = time.time() + 20
        while _tagged(tag) and time.time() < deadline:
            time.sleep(0.2)
        assert not _tagged(tag), f"attempt {attempt}: left running after the trainer was killed: {_tagged(tag)}"

        latest = int(pointer.read_text())
        resumed = subprocess.run(_pretrain(run, "--exit-interval", str(latest + 1)), env=child_env(),
                                 capture_output=True, text=True, timeout=300, check=False)
        assert resumed.returncode == 0, resumed.stderr[-2000:]
        assert f"resumed from {run} at iteration {latest}" in resumed.stdout
    assert hits >= ATTEMPTS - 1, f"only {hits} of {ATTEMPTS} kills landed during a save"
