"""The fake-GPU tests (``pytest -m fake_gpu``): the real training path "as if on CUDA" on a CPU-only
torch (tools/fake_gpu.py). Registers the marker here until pyproject.toml lists it."""


def pytest_configure(config):
    config.addinivalue_line("markers", "fake_gpu: the real step on a fake CUDA device in a fake world (tools/fake_gpu.py)")
