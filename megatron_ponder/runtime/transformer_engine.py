"""Whether Transformer Engine can be used here, asked without importing it on CPU machines.

Transformer Engine is a GPU library: on a machine without the CUDA libraries
``import transformer_engine.pytorch`` raises RuntimeError or OSError (not ImportError), which
also breaks code that guards the import with ``except ImportError`` (Megatron-Core's own guards
included). So CUDA is checked first, and TE is only imported when a GPU is present; every error
of that import means "not usable" and is kept for the message.
"""

from __future__ import annotations

import functools
from typing import Optional

import torch

GPU_EXTRA_HINT = 'pip install -e ".[gpu]" --no-build-isolation (or use an NGC PyTorch container); see docs/gpu.md'


@functools.lru_cache(maxsize=1)
def transformer_engine_unusable_reason() -> Optional[str]:
    """None when TE's PyTorch API imports on a CUDA machine, else why not (one line)."""
    if not torch.cuda.is_available():
        return "no CUDA device (Transformer Engine needs a GPU)"
    try:
        import transformer_engine.pytorch  # noqa: F401
    except (ImportError, RuntimeError, OSError) as error:
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        return f"transformer_engine.pytorch does not import ({first_line}): {GPU_EXTRA_HINT}"
    return None
