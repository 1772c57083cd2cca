"""tests/gpu skip with a clear reason when the CPU suite hid CUDA in this pytest process."""

import os
from pathlib import Path

import pytest

from support.cuda_visibility import CUDA_HIDDEN_REASON, CUDA_HIDDEN_VARIABLE

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    if not os.environ.get(CUDA_HIDDEN_VARIABLE):
        return
    for item in items:
        if HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.skip(reason=CUDA_HIDDEN_REASON))
