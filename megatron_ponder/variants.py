"""Named method and recompute variants as PonderConfig fields: the one table that the tests, their
torchrun workers and the benchmarks sweep.

* :data:`MODES` ``none`` / ``ponder`` (S=2) / ``latent1`` / ``latent2`` (N thoughts); a sweep
  changes them through :func:`variant` (another S, a top-K, a fixed J), never by a copy.
* :data:`RECOMPUTE` ``none`` / ``selective`` / ``full`` (the planner's names,
  :class:`megatron_ponder.planning.shapes.Layout`) and ``full-block``.
* :func:`label` names a variant by its fields (``ponder S=3``, ``latent N=1 J=2``) for tables.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

MODES: Dict[str, Dict[str, Any]] = {
    "none": dict(ponder_mode="none"),
    "ponder": dict(ponder_mode="ponder", ponder_steps=2),
    "latent1": dict(ponder_mode="latent", num_latent_thoughts=1),
    "latent2": dict(ponder_mode="latent", num_latent_thoughts=2),
}

RECOMPUTE: Dict[str, Dict[str, Any]] = {
    "none": {},
    "selective": dict(recompute_granularity="selective"),
    "full": dict(recompute_granularity="full", recompute_method="uniform", recompute_num_layers=1),
    "full-block": dict(recompute_granularity="full", recompute_method="block", recompute_num_layers=2),
}


def variant(mode: str, rounds: Optional[Tuple[int, int]] = None, **fields) -> Dict[str, Any]:
    """The fields of :data:`MODES` ``[mode]`` with ``fields`` overriding them; ``rounds`` sets the
    Jacobi range of latent modes only (the other modes have no J)."""
    chosen = {**MODES[mode], **fields}
    if rounds is not None and chosen["ponder_mode"] == "latent":
        chosen["jacobi_train_rounds"] = tuple(rounds)
    return chosen


def label(fields: Dict[str, Any]) -> str:
    """``none``, ``ponder S=3`` (``K=8`` with top-K), ``latent N=1`` (``J=2`` or ``J=1-3`` when
    the fields fix the range)."""
    mode = fields["ponder_mode"]
    if mode == "ponder":
        topk = fields.get("ponder_topk")
        return f"ponder S={fields['ponder_steps']}" + (f" K={topk}" if topk else "")
    if mode == "latent":
        text = f"latent N={fields['num_latent_thoughts']}"
        if "jacobi_train_rounds" in fields:
            lo, hi = fields["jacobi_train_rounds"]
            text += f" J={lo}" if lo == hi else f" J={lo}-{hi}"
        return text
    return mode
