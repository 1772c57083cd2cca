"""Reaching the model inside Megatron's wrappers (DDP, Float16Module)."""

import torch


def unwrap_model(module: torch.nn.Module) -> torch.nn.Module:
    """Strip DDP / Float16Module wrappers (each keeps the wrapped model in ``.module``)."""
    while hasattr(module, "module"):
        module = module.module
    return module
