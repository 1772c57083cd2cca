"""Launch a script or module under torchrun (gloo, CPU, one thread per process) from a test."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Sequence

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def child_env(**extra) -> dict:
    """The environment for child processes: repo and tests importable, one thread per process."""
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE")}
    env.update(
        OMP_NUM_THREADS="1",  # 2 threads per process on 2 cores made a step 40x slower
        PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "tests"), os.environ.get("PYTHONPATH", "")]),
    )
    env.update(extra)
    return env


def torchrun_command(target, nproc: int, args: Sequence[str]) -> list:
    """``target``: a script Path, or "-m package.module"."""
    target_args = target.split() if isinstance(target, str) else [str(target)]
    return [
        sys.executable, "-m", "torch.distributed.run",
        "--nproc-per-node", str(nproc), "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
        *target_args, *[str(a) for a in args],
    ]


def run_torchrun(target, nproc: int, args: Sequence[str], timeout: int = 600, check: bool = True,
                 env: dict = None) -> subprocess.CompletedProcess:
    """Run ``target`` on ``nproc`` local processes; with ``check``, raise with the output tail on failure."""
    command = torchrun_command(target, nproc, args)
    # Own session, output through files: a SIGKILLed worker can leave a grandchild (the
    # checkpoint writer Megatron spawns) that would hold an output pipe open forever; killing the
    # session afterwards reaps such stragglers.
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        process = subprocess.Popen(command, env=env or child_env(), stdout=out, stderr=err, text=True,
                                   start_new_session=True)
        try:
            returncode = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            # torchrun starts each worker in its own session, out of reach of the killpg below:
            # SIGTERM lets the agent stop them (SIGKILL 30 s later), so a hung test leaves no
            # worker spinning through the rest of the suite.
            process.terminate()
            try:
                process.wait(timeout=45)
            except subprocess.TimeoutExpired:
                pass
            raise
        finally:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        out.seek(0)
        err.seek(0)
        done = subprocess.CompletedProcess(command, returncode, out.read(), err.read())
    if check and done.returncode != 0:
        raise AssertionError(
            f"torchrun {target} {' '.join(map(str, args))} failed ({done.returncode}):\n"
            f"{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
        )
    return done
