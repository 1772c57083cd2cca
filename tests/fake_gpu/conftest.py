"""The fake-GPU tests (``pytest -m fake_gpu``): the real training path "as if on CUDA" on a CPU-only
torch (tools/fake_gpu.py)."""

import pytest


@pytest.fixture(autouse=True)
def fake_gpu_supported():
    """Fail, naming the reason, on a torch without the pieces the harness needs: these tests run on
    every CPU machine, and a torch upgrade that removes one must be seen, not skipped."""
    from tools.fake_gpu import FakeGpuUnavailable, register_fake_gpu_device

    try:
        register_fake_gpu_device()
    except FakeGpuUnavailable as reason:
        pytest.fail(f"the fake-GPU harness cannot run on this torch: {reason}")
