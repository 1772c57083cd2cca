"""Which device the suite runs on when pytest starts on a GPU machine.

The CPU suite (tests/unit, parallel, e2e, fake_gpu) proves its results on the CPU with gloo:
with a GPU visible, models would be built on CUDA by some paths and on the CPU by others, and
the torchrun tests would pick NCCL. So pytest hides CUDA (``CUDA_VISIBLE_DEVICES=""``, inherited
by every process a test starts) unless every path it was asked to run lies under tests/gpu,
the tests that need the GPU. Run those on their own: ``python -m pytest tests/gpu``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

GPU_TESTS = Path(__file__).resolve().parents[1] / "gpu"
# Set when the suite hid CUDA: tests/gpu then skips with the reason below instead of "no CUDA".
CUDA_HIDDEN_VARIABLE = "MEGATRON_PONDER_TESTS_HID_CUDA"
CUDA_HIDDEN_REASON = ("CUDA is hidden while the CPU suite runs in this pytest process: run the GPU "
                      "tests on their own, python -m pytest tests/gpu")


def only_gpu_tests_asked(args: Sequence[str], invocation_dir: Path) -> bool:
    """True when every path argument (``path`` or ``path::test``) lies under tests/gpu.

    Options (``-x``, ``-k expr``'s expression is not a path) and no paths at all (the whole
    ``testpaths``) count as "not only GPU tests".
    """
    paths = [arg.split("::")[0] for arg in args if not arg.startswith("-")]
    paths = [path for path in paths if (invocation_dir / path).exists()]
    if not paths:
        return False
    return all(GPU_TESTS == (invocation_dir / path).resolve() or GPU_TESTS in (invocation_dir / path).resolve().parents
               for path in paths)


def hide_cuda_unless_only_gpu_tests(args: Sequence[str], invocation_dir: Path) -> bool:
    """Hide CUDA from this process and its children unless only tests/gpu was asked for.

    Must run before anything initialises CUDA (pytest_configure, before collection). Returns
    whether CUDA was hidden.
    """
    if only_gpu_tests_asked(args, invocation_dir):
        return False
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
    os.environ[CUDA_HIDDEN_VARIABLE] = "1"
    return True
