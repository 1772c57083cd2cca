"""Launch a worker script under torchrun (gloo, CPU, one thread per process) from a test."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Sequence

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_torchrun(script: Path, nproc: int, args: Sequence[str], timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``script`` on ``nproc`` local processes; raise with the output tail if it fails."""
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",  # 2 threads per process on 2 cores made a step 40x slower
        PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "tests"), os.environ.get("PYTHONPATH", "")]),
    )
    command = [
        sys.executable, "-m", "torch.distributed.run",
        "--nproc-per-node", str(nproc), "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
        str(script), *args,
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise AssertionError(
            f"torchrun {script.name} {' '.join(args)} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
        )
    return done
