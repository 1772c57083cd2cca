"""The papers' initialisation (``init_style="ponderlm"``), through TransformerConfig's init hooks.

PonderLM and PonderLM-2 train from scratch with their own init (their released modeling code):

* every linear layer and embedding (word, learned position, output layer): truncated normal,
  std ``sigma = sqrt(2 / (5 h))``, truncated at 3 sigma;
* the attention-output and MLP-output projections (Megatron's ``linear_proj`` and ``linear_fc2``,
  built with ``output_layer_init_method``) further divided by

  ========================  =========================  ==================================
  mode / architecture       divisor                    where it comes from
  ========================  =========================  ==================================
  ``ponder`` (any)          sqrt(2 layers (S + 1))     PonderLM (S ponder steps)
  ``latent``, ``neox``      sqrt(2 layers (N + 1))     PonderLM-2's GPT-NeoX (Pythia) file
  ``latent``, other styles  sqrt(2 layers)             PonderLM-2's LLaMA file
  ``none`` (baselines)      sqrt(2 layers)             the same code without the method
  ========================  =========================  ==================================

  truncated at 3 of their own (divided) sigmas. Biases stay zero, norms one (as there).

``init_method_std`` is set to sigma, so the latent default input scale ``1 / init_method_std``
(:class:`megatron_ponder.config.PonderConfig`) is the papers' ``sqrt(2.5 h)``.
The default style, ``megatron``, leaves Megatron's normal init untouched.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Dict

import torch

from megatron_ponder.config import PonderConfigError

INIT_STYLES = ("megatron", "ponderlm")
_SET_HERE = ("init_method_std", "init_method", "output_layer_init_method", "embedding_init_method",
             "embedding_init_method_std")


def paper_std(hidden_size: int) -> float:
    """sigma = sqrt(2 / (5 h)) of every linear layer and embedding."""
    return math.sqrt(2.0 / (5.0 * hidden_size))


def output_projection_divisor(style: str, ponder_mode: str, num_layers: int, ponder_steps: int,
                              num_latent_thoughts: int) -> float:
    """The extra divisor of the attention-output and MLP-output projections (table above)."""
    if ponder_mode == "ponder":
        return math.sqrt(2.0 * num_layers * (ponder_steps + 1))
    if ponder_mode == "latent" and style == "neox":
        return math.sqrt(2.0 * num_layers * (num_latent_thoughts + 1))
    return math.sqrt(2.0 * num_layers)


def truncated_normal(std: float):
    """An init method (tensor -> tensor, in place): N(0, std) truncated at +-3 std."""
    return functools.partial(torch.nn.init.trunc_normal_, mean=0.0, std=std, a=-3.0 * std, b=3.0 * std)


def paper_init_fields(style: str, fields: Dict[str, Any], defaults: Dict[str, Any]) -> Dict[str, Any]:
    """The TransformerConfig init fields of the papers' init for a config built from ``fields``.

    Args:
        style: the architecture style (``llama``, ``gpt2``, ``neox``).
        fields: the PonderConfig fields given (needs ``hidden_size`` and ``num_layers``).
        defaults: PonderConfig's defaults, for the method fields not given.
    """
    given = [name for name in _SET_HERE if fields.get(name) is not None]
    if given:
        raise PonderConfigError(f"init_style='ponderlm' sets {', '.join(given)} itself (sigma = sqrt(2/(5h))); "
                                "leave them out, or use init_style='megatron'")

    def field(name):
        return fields.get(name, defaults[name])

    sigma = paper_std(fields["hidden_size"])
    divisor = output_projection_divisor(style, field("ponder_mode"), fields["num_layers"],
                                        field("ponder_steps"), field("num_latent_thoughts"))
    return dict(
        init_method_std=sigma,
        init_method=truncated_normal(sigma),
        embedding_init_method=truncated_normal(sigma),
        output_layer_init_method=truncated_normal(sigma / divisor),
    )
