"""examples/slurm/pretrain_ponder_gpt.sbatch under a real single-machine Slurm (Debian's slurm-wlm
and munge, as .ci/run installs them): the job trains, is preempted with ``scancel --signal=TERM``,
saves through the signal handler, is resubmitted and resumes with exactly the losses of an
uninterrupted run.

One node with one task (torchrun with two CPU processes): Debian's Slurm cannot run two slurmd
nodes on one machine without a multiple-slurmd build; the two-host case is test_two_hosts.py.
The cluster (its own slurm.conf, state and ports under tmp_path) is started and stopped here;
it needs root (slurmd) and the packages: ``apt-get install -y slurm-wlm munge``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time

import pytest

from test_pretrain_resume import BASE, PRETRAIN, train_losses
from support.torchrun import REPO, child_env, free_port, run_torchrun

SCRIPT = REPO / "examples" / "slurm" / "pretrain_ponder_gpt.sbatch"
NEEDED = ("munged", "slurmctld", "slurmd", "sbatch")


def _conf(folder, host):
    return f"""ClusterName=ponder
SlurmctldHost={host}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd.log
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
KillWait=60
NodeName={host} CPUs={os.cpu_count()} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
"""


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    missing = [d for d in NEEDED if shutil.which(d) is None]
    if missing or os.geteuid() != 0:
        pytest.skip(f"needs root and Debian's slurm-wlm + munge (missing: {missing}): apt-get install -y slurm-wlm munge")
    folder = tmp_path_factory.mktemp("slurm")
    for sub in ("state", "spool"):
        (folder / sub).mkdir()
    conf = folder / "slurm.conf"
    conf.write_text(_conf(folder, socket.gethostname()))
    env = dict(os.environ, SLURM_CONF=str(conf))
    started = []
    if subprocess.run(["munge", "-n"], capture_output=True).returncode != 0:
        os.makedirs("/run/munge", exist_ok=True)
        subprocess.run(["munged", "--force"], check=True)
        started.append("/run/munge/munged.pid")
    subprocess.run(["slurmctld", "-f", str(conf)], env=env, check=True)
    subprocess.run(["slurmd", "-f", str(conf)], env=env, check=True)
    started += [str(folder / "slurmctld.pid"), str(folder / "slurmd.pid")]
    deadline = time.time() + 60
    while time.time() < deadline:
        state = subprocess.run(["sinfo", "-h", "-o", "%t"], env=env, capture_output=True, text=True).stdout.strip()
        if state == "idle":
            break
        time.sleep(0.5)
    assert state == "idle", (state, (folder / "slurmctld.log").read_text()[-2000:])
    yield env
    for pid_file in reversed(started):
        try:
            os.kill(int(open(pid_file).read()), 15)
        except (OSError, ValueError):
            pass


def _submit(env, out, args):
    job_env = child_env(**{k: env[k] for k in ("SLURM_CONF",)}, GPUS_PER_NODE="2", PYTHON="python",
                        MASTER_PORT=str(free_port()), MAX_RESTARTS="0")
    done = subprocess.run(["sbatch", "--parsable", "--nodes=1", "--gpus-per-node=0", "--exclusive=user",
                           f"--output={out}", f"--chdir={REPO}", str(SCRIPT), *map(str, args)],
                          env=job_env, capture_output=True, text=True, check=True)
    return done.stdout.strip().split(";")[0]


def _wait_until_gone(env, job, timeout=600):
    deadline = time.time() + timeout
    while time.time() < deadline:
        queued = subprocess.run(["squeue", "-h", "-j", job], env=env, capture_output=True, text=True).stdout
        if not queued.strip():
            return
        time.sleep(0.5)
    raise AssertionError(f"job {job} still queued after {timeout} s")


@pytest.mark.slow
def test_preempted_job_saves_and_the_resubmitted_job_resumes_exactly(slurm, tmp_path):
    iters = 30
    reference = tmp_path / "reference.jsonl"
    run_torchrun(PRETRAIN, 2, BASE + ["--train-iters", iters, "--metrics-file", reference])

    metrics, checkpoints = tmp_path / "metrics.jsonl", tmp_path / "ckpt"
    args = BASE + ["--train-iters", iters, "--metrics-file", metrics, "--save", checkpoints, "--load", checkpoints]
    first = _submit(slurm, tmp_path / "first.out", args)
    deadline = time.time() + 300
    while time.time() < deadline and (not metrics.exists() or max(train_losses(metrics), default=0) < 4):
        time.sleep(0.2)
    subprocess.run(["scancel", "--signal=TERM", first], env=slurm, check=True)  # as preemption does
    _wait_until_gone(slurm, first)
    log = (tmp_path / "first.out").read_text()
    assert "received SIGTERM: stopping after iteration" in log, log[-3000:]
    stopped_at = int((checkpoints / "latest_checkpointed_iteration.txt").read_text())
    assert 4 <= stopped_at < iters, "the job was not preempted in the middle"

    second = _submit(slurm, tmp_path / "second.out", args)
    _wait_until_gone(slurm, second)
    log = (tmp_path / "second.out").read_text()
    assert f"resumed from {checkpoints} at iteration {stopped_at}" in log, log[-3000:]
    assert train_losses(metrics) == train_losses(reference)
