"""megatron_ponder: GPT models that think in continuous space, on Megatron-Core.

Public entry points:
    PonderConfig      megatron_ponder.config
    PonderGPTModel    megatron_ponder.model.ponder_gpt
    initialize_parallel  megatron_ponder.runtime.parallel_init
"""

__version__ = "0.1.0"

# One-line ImportError for a megatron-core outside the supported range (metadata only: fast).
from megatron_ponder.runtime.megatron_compat import check_megatron_core_version

check_megatron_core_version()
