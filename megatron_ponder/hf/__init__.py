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


def build_conversion_model(args):
    """The PonderGPTModel a conversion reads or writes: local layers, fp32, on the CPU, unfused.

    The same on any machine, GPU or not: the weight maps read the local spec's names (torch_dist
    checkpoints are interchangeable between it and the TE spec: Megatron's local spec maps its
    norm keys onto TE's fused-norm names), the HF side is CPU tensors, and a kernel fusion would
    only change rounding. Sets those choices on ``args`` (a run's flags, layout already one process).
    """
    from megatron_ponder.training.build import build_model
    from megatron_ponder.training.fusions import FUSION_FLAGS
    from megatron_ponder.training.model_config import model_config

    args.transformer_impl, args.fp8 = "local", None
    args.use_cpu_initialization = True
    for field in FUSION_FLAGS:
        setattr(args, field, False)
    return build_model(args, model_config(args))
