"""Whether Megatron's ``torch.compile``-fused kernels can compile here.

Megatron-Core fuses small element-wise kernels (SwiGLU, bias-dropout-add, GeLU) with
``megatron.core.jit.jit_fuser`` = ``torch.compile``. Inductor's backend is Triton on CUDA and
generated C++ on the CPU, which needs a C++ compiler: on a CPU machine without one, the first
forward through such a fusion stopped with a long compiler traceback. A fusion is asked for only
where :func:`torch_compile_available` says it compiles.
"""

from __future__ import annotations

import importlib.util
import os
import shutil

import torch


def cpp_compiler() -> str | None:
    """The C++ compiler Inductor would call (``$CXX``, else ``g++`` / ``clang++`` on PATH), or None."""
    for name in (os.environ.get("CXX"), "g++", "clang++"):
        if name and shutil.which(name):
            return name
    return None


def torch_compile_available() -> bool:
    """True when ``torch.compile`` has a backend for the device models run on here."""
    if torch.cuda.is_available():
        return importlib.util.find_spec("triton") is not None
    return cpp_compiler() is not None
