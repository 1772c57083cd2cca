"""The main job's three launch forms, two CPU processes and two steps each:

    bash examples/pretrain_ponder_gpt.sh                                (starts torchrun itself)
    torchrun --nproc-per-node 2 examples/pretrain_ponder_gpt.sh         (the file run as Python)
    torchrun --no-python --nproc-per-node 2 examples/pretrain_ponder_gpt.sh   (run as bash)
"""

import os
import subprocess
import sys

import pytest

from support.torchrun import REPO, child_env, free_port

SCRIPT = REPO / "examples" / "pretrain_ponder_gpt.sh"
FLAGS = ["--mock-data", "--seq-length", "32", "--train-iters", "2", "--eval-interval", "2",
         "--eval-iters", "1", "--log-interval", "1", "--save-interval", "2"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
            "--master-addr", "127.0.0.1"]
FORMS = {
    "bash": lambda port: ["bash", str(SCRIPT)],
    "torchrun": lambda port: [*TORCHRUN, "--master-port", str(port), str(SCRIPT)],
    "torchrun-no-python": lambda port: [*TORCHRUN, "--master-port", str(port), "--no-python", str(SCRIPT)],
}


@pytest.mark.slow
@pytest.mark.parametrize("form", list(FORMS))
def test_launch_form_trains_with_the_script_defaults(tmp_path, form):
    run_dir, port = tmp_path / "run", free_port()
    # `python` on PATH is this interpreter, as for a user whose environment is active.
    path = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
    done = subprocess.run(
        [*FORMS[form](port), *FLAGS],
        env=child_env(RUN_DIR=str(run_dir), MASTER_PORT=str(port), NPROC="2", PATH=path),
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    launcher = "2 process(es), mode latent" if form == "bash" else "torchrun worker 0 of 2, mode latent"
    assert f"pretrain_ponder_gpt.sh: {launcher}, preset cpu-tiny" in out
    assert out.count("pretrain_ponder_gpt.sh:") == 1  # one launch, no torchrun inside torchrun
    assert "megatron_ponder pretrain: 2 process(es), CPU (gloo)" in out
    assert "iteration      2/2" in out
    # The script's defaults reached the entry point: run folder, checkpoints, learning rate.
    assert (run_dir / "checkpoints" / "latest_checkpointed_iteration.txt").read_text() == "2"
    assert "  lr: 0.003\n" in out
    # A first run shows the project's lines: no Megatron / torch notice that does not apply
    # (0.16: "full scope is deprecated"; 0.19: absl, MIMO, async save; CUDA torch on CPU).
    for notice in ("Warning", "full scope is deprecated", "async save is deprecated", "No CUDA runtime"):
        assert notice not in done.stderr, done.stderr[-2000:]
    # The script passes --tensorboard-dir: the events are written, with no line about TensorBoard.
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert "tensorboard" not in done.stderr.lower() and "tensorboard is not installed" not in out
