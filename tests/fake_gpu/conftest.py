"""The fake-GPU tests (``pytest -m fake_gpu``): the real training path "as if on CUDA" on a CPU-only
torch (tools/fake_gpu.py). Registers the marker here until pyproject.toml lists it."""

import pytest


def pytest_configure(config):
    config.addinivalue_line("markers", "fake_gpu: the real step on a fake CUDA device in a fake world (tools/fake_gpu.py)")


@pytest.fixture(autouse=True)
def fake_gpu_supported():
    """Skip, naming the reason, on a torch without the Python PrivateUse1 registration the harness needs."""
    from tools.fake_gpu import FakeGpuUnavailable, register_fake_gpu_device

    try:
        register_fake_gpu_device()
    except FakeGpuUnavailable as reason:
        pytest.skip(str(reason))
