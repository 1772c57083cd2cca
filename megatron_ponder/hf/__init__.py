"""Hugging Face interop: weight maps, export (Megatron -> HF folder), import (HF/GGUF -> Megatron),
and the modeling code of exported ponder/latent models (``remote_code``).

transformers, safetensors and gguf are optional: install them with ``pip install -e ".[hf]"``.
"""

import importlib

# The oldest transformers of the `hf` extra (setup.py); the remote code checks the same minimum.
MIN_TRANSFORMERS = (5, 8)


def require(module: str):
    """Import an optional dependency of the ``hf`` extra, or fail with a one-line fix."""
    try:
        imported = importlib.import_module(module)
    except ImportError:
        raise ImportError(
            f"{module} is needed for Hugging Face conversion: pip install -e \".[hf]\""
        ) from None
    if module == "transformers":
        from packaging.version import Version

        if Version(imported.__version__).release < MIN_TRANSFORMERS:
            raise ImportError(
                f"Hugging Face conversion needs transformers >= 5.8 (installed: "
                f"{imported.__version__}): pip install -e \".[hf]\""
            )
    return imported
