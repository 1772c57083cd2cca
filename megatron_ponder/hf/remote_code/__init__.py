"""The modeling code shipped inside exported Hugging Face folders (``trust_remote_code=True``).

``configuration_ponder_lm.py`` and ``modeling_ponder_lm.py`` import only torch and transformers,
so a folder holding them, ``config.json`` (with ``auto_map``) and the weights loads on machines
without megatron_ponder. :func:`save_ponder_lm` writes such a folder.
"""

from __future__ import annotations

import shutil
from pathlib import Path

REMOTE_CODE_FILES = ("configuration_ponder_lm.py", "modeling_ponder_lm.py")
AUTO_MAP = {
    "AutoConfig": "configuration_ponder_lm.PonderLMConfig",
    "AutoModelForCausalLM": "modeling_ponder_lm.PonderLMForCausalLM",
}


def copy_remote_code(directory: str | Path) -> None:
    """Copy the modeling files next to an exported ``config.json``."""
    for name in REMOTE_CODE_FILES:
        shutil.copyfile(Path(__file__).with_name(name), Path(directory) / name)


def save_ponder_lm(model, directory: str | Path) -> None:
    """``model.save_pretrained(directory)`` plus ``auto_map`` and the modeling files.

    Args:
        model: a ``PonderLMForCausalLM``.
    """
    model.config.auto_map = dict(AUTO_MAP)
    model.config.architectures = ["PonderLMForCausalLM"]
    model.save_pretrained(directory)
    copy_remote_code(directory)


def load_classes():
    """(PonderLMConfig, PonderLMForCausalLM), imported lazily (transformers is the ``hf`` extra)."""
    try:
        from megatron_ponder.hf.remote_code.configuration_ponder_lm import (
            PonderLMConfig,
        )
        from megatron_ponder.hf.remote_code.modeling_ponder_lm import (
            PonderLMForCausalLM,
        )
    except ModuleNotFoundError as error:
        if error.name in ("transformers", "safetensors"):
            raise ModuleNotFoundError(
                f"{error.name} is needed for Hugging Face models: pip install -e \".[hf]\""
            ) from error
        raise
    return PonderLMConfig, PonderLMForCausalLM
