"""The Slurm script builds the right srun + torchrun command (fake srun/scontrol on PATH)."""

import os
import stat
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "slurm" / "pretrain_ponder_gpt.sbatch"


def _fake(bin_dir: Path, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def _run(tmp_path, env_extra, args):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "srun.txt"
    # scontrol expands the node list; srun records its argv one per line.
    _fake(bin_dir, "scontrol", 'echo gpu-node-07; echo gpu-node-08\n')
    _fake(bin_dir, "srun", f'printf "%s\\n" "$@" > {record}\n')
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", **env_extra)
    done = subprocess.run(["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True)
    return done, record.read_text().splitlines() if record.exists() else []


def test_srun_launches_torchrun_with_rendezvous_on_the_first_node(tmp_path):
    done, argv = _run(
        tmp_path,
        dict(SLURM_JOB_NODELIST="gpu-node-[07-08]", SLURM_NNODES="2", SLURM_JOB_ID="4242", GPUS_PER_NODE="4"),
        ["--preset", "pythia-1.4b", "--data-path", "0.3 a", "--bf16"],
    )
    assert done.returncode == 0, done.stderr
    assert argv[:3] == ["--kill-on-bad-exit=1", "--ntasks-per-node=1", "python"]
    joined = " ".join(argv)
    assert "-m torch.distributed.run --nnodes 2 --nproc-per-node 4 --rdzv-id 4242" in joined
    assert "--rdzv-backend c10d --rdzv-endpoint gpu-node-07:29500 --max-restarts 3" in joined
    # User arguments arrive unchanged (one argv entry each, spaces kept), after the module.
    assert argv[argv.index("megatron_ponder.pretrain") + 1:] == ["--exit-signal-handler", "--preset", "pythia-1.4b",
                                                                 "--data-path", "0.3 a", "--bf16"]
    assert "2 node(s) x 4 GPU(s), rendezvous gpu-node-07:29500, job 4242" in done.stdout


def test_outside_slurm_it_says_to_use_sbatch(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    done = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True)
    assert done.returncode != 0
    assert "run this script through sbatch" in done.stderr
