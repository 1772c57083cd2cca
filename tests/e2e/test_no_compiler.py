"""The default (llama) run trains on a CPU machine without a C++ compiler (issue 26, finding 7):
Megatron's torch.compile-fused SwiGLU is used only where it compiles (runtime/kernels.py)."""

import subprocess
import sys

from support.torchrun import child_env


def test_the_default_run_trains_without_a_cpp_compiler(tmp_path):
    env = {**child_env(), "PATH": str(tmp_path)}  # no g++/clang++ anywhere on PATH
    env.pop("CXX", None)
    run = subprocess.run(
        [sys.executable, "-m", "megatron_ponder.pretrain", "--mock-data", "--train-iters", "2", "--seq-length", "32",
         "--micro-batch-size", "2", "--eval-iters", "0", "--log-interval", "1"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Traceback" not in run.stderr
