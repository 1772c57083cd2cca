"""Whether Transformer Engine can be used here, asked without importing it on CPU machines.

Transformer Engine is a GPU library: on a machine without the CUDA libraries
``import transformer_engine.pytorch`` raises RuntimeError or OSError (not ImportError), and when
the versions of its packages disagree (a common state after a pip install into a container) it
raises AssertionError. Any of these breaks code that guards the import with ``except
ImportError`` (Megatron-Core's own guards included). So CUDA is checked first, TE is imported
only when a GPU is present, and every error of that import means "not usable" and is kept for
the message.

The import happens after this rank has selected its GPU (``LOCAL_RANK``): importing TE
initialises CUDA, and on the default device every rank of a node would create a context on
GPU 0.

Also here, because they are decided from TE's public API and versions (as Megatron-Core does),
never from private modules: the arguments ``general_gemm`` takes in the installed TE
(:func:`general_gemm_version_arguments`), and which FP8 recipes the GPU supports
(:func:`fp8_recipe_unsupported_reason`).
"""

from __future__ import annotations

import functools
import importlib
import inspect
import os
from typing import Callable, Dict, Optional, Tuple

import torch

GPU_EXTRA_HINT = 'pip install -e ".[gpu]" --no-build-isolation (or use an NGC PyTorch container); see docs/gpu.md'


def select_local_device() -> None:
    """``torch.cuda.set_device(LOCAL_RANK)``: before anything initialises CUDA on this rank."""
    torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))


@functools.lru_cache(maxsize=1)
def transformer_engine_unusable_reason() -> Optional[str]:
    """None when TE's PyTorch API imports on a CUDA machine, else why not (one line)."""
    if not torch.cuda.is_available():
        return "no CUDA device (Transformer Engine needs a GPU)"
    select_local_device()
    try:
        importlib.import_module("transformer_engine.pytorch")
    except Exception as error:  # noqa: BLE001 - ImportError, RuntimeError, OSError, AssertionError (version skew)
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        return f"transformer_engine.pytorch does not import ({type(error).__name__}: {first_line}): {GPU_EXTRA_HINT}"
    return None


def general_gemm_version_arguments(general_gemm: Callable, load_workspace: Optional[Callable] = None) -> Dict:
    """The keyword arguments the installed TE's ``general_gemm`` needs beyond the GEMM's own.

    TE 2.9's ``general_gemm`` takes the cuBLAS workspace (``workspace=get_workspace()``, from
    ``transformer_engine.pytorch.module.base``); from 2.10 on TE allocates it itself, and both the
    parameter and ``get_workspace`` are gone. Decided from the function's signature, so a TE
    that backports either change is handled too. ``load_workspace`` (tests): returns the workspace.
    """
    if "workspace" not in inspect.signature(general_gemm).parameters:
        return {}
    if load_workspace is None:
        from transformer_engine.pytorch.module.base import get_workspace as load_workspace
    return {"workspace": load_workspace()}


# Which FP8 recipes a GPU runs: TE's own support checks (transformer_engine.pytorch.quantization,
# 2.9 - 2.20) give the same thresholds. recipe -> (minimum compute capability, minimum CUDA).
FP8_RECIPE_NEEDS: Dict[str, Tuple[Tuple[int, int], Tuple[int, int]]] = {
    "delayed": ((8, 9), (12, 1)),  # Ada, Hopper and newer
    "tensorwise": ((8, 9), (12, 1)),
    "blockwise": ((9, 0), (12, 9)),  # Hopper (sm90) and newer, FP8 block-scaled GEMMs from CUDA 12.9
    "mxfp8": ((10, 0), (12, 8)),  # Blackwell (sm100)
}


def _version_tuple(text: Optional[str]) -> Tuple[int, int]:
    parts = (text or "0.0").split(".")
    return int(parts[0]), int(parts[1]) if len(parts) > 1 else 0


def fp8_recipe_unsupported_reason(
    recipe: str, device_name: str, capability: Tuple[int, int], cuda_version: Optional[str]
) -> Optional[str]:
    """None when ``recipe`` runs on this GPU, else one line naming the device and what it supports.

    Args:
        recipe: ``--fp8-recipe`` (``delayed``, ``tensorwise``, ``blockwise``, ``mxfp8``).
        device_name: ``torch.cuda.get_device_name()``.
        capability: ``torch.cuda.get_device_capability()``.
        cuda_version: ``torch.version.cuda`` (e.g. ``"12.8"``).
    """
    if recipe not in FP8_RECIPE_NEEDS:
        raise ValueError(f"unknown FP8 recipe {recipe!r}; choose one of {', '.join(FP8_RECIPE_NEEDS)}")
    cuda = _version_tuple(cuda_version)

    def runs(name: str) -> bool:
        min_capability, min_cuda = FP8_RECIPE_NEEDS[name]
        return capability >= min_capability and cuda >= min_cuda

    if runs(recipe):
        return None
    (major, minor), (cuda_major, cuda_minor) = FP8_RECIPE_NEEDS[recipe]
    supported = [name for name in FP8_RECIPE_NEEDS if runs(name)]
    return (f"--fp8-recipe {recipe} needs compute capability {major}.{minor}+ and CUDA {cuda_major}.{cuda_minor}+; "
            f"this GPU ({device_name}, {capability[0]}.{capability[1]}, CUDA {cuda_version}) supports "
            + (f"--fp8-recipe {', '.join(supported)}" if supported else "no FP8 recipe: drop --fp8-format"))
