"""Hugging Face interop: weight maps, export (Megatron -> HF folder), import (HF/GGUF -> Megatron),
and the modeling code of exported ponder/latent models (``remote_code``).

transformers, safetensors and gguf are optional: install them with ``pip install -e ".[hf]"``.
"""

import importlib


def require(module: str):
    """Import an optional dependency of the ``hf`` extra, or fail with a one-line fix."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(
            f"{module} is needed for Hugging Face conversion: pip install -e \".[hf]\""
        ) from None
