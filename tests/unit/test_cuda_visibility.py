"""On a GPU machine, `python -m pytest` runs the CPU suite on the CPU: CUDA is hidden unless only
tests/gpu was asked for (tests/support/cuda_visibility.py)."""

import os
from pathlib import Path

from support.cuda_visibility import CUDA_HIDDEN_VARIABLE, hide_cuda_unless_only_gpu_tests, only_gpu_tests_asked

REPO = Path(__file__).resolve().parents[2]


def test_only_paths_under_tests_gpu_keep_cuda():
    assert only_gpu_tests_asked(["tests/gpu"], REPO)
    assert only_gpu_tests_asked(["-x", "tests/gpu/test_fp8.py::test_fp8_mixing_gemm_matches_the_cpu_emulation"], REPO)
    assert only_gpu_tests_asked(["gpu/test_fp8.py"], REPO / "tests")  # run from tests/
    assert not only_gpu_tests_asked([], REPO)  # the whole testpaths
    assert not only_gpu_tests_asked(["tests"], REPO)
    assert not only_gpu_tests_asked(["tests/gpu", "tests/unit"], REPO)
    assert not only_gpu_tests_asked(["tests/unit/test_flags.py"], REPO)


def test_this_session_hid_cuda_and_so_does_a_child_process(monkeypatch):
    # The suite was started on tests/ (not tests/gpu alone): conftest hid CUDA for it.
    assert os.environ.get("CUDA_VISIBLE_DEVICES") == ""
    assert os.environ.get(CUDA_HIDDEN_VARIABLE) == "1"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    monkeypatch.delenv(CUDA_HIDDEN_VARIABLE)
    assert not hide_cuda_unless_only_gpu_tests(["tests/gpu"], REPO)
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "0"
    assert hide_cuda_unless_only_gpu_tests(["tests/unit"], REPO)
    assert os.environ["CUDA_VISIBLE_DEVICES"] == ""
