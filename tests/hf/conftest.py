"""The HF tests run tiny models: one intra-op thread is fastest (thread sync dominates otherwise)."""

import pytest
import torch


@pytest.fixture(autouse=True)
def single_intra_op_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
