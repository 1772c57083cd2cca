"""PonderConfig: Megatron's TransformerConfig plus the fields of pondering and latent thoughts.

Modes (``ponder_mode``):
  * ``none``   vanilla Megatron GPT (baselines share all plumbing with the other modes);
  * ``ponder`` PonderLM: ``ponder_steps`` extra passes, each feeding back the
    probability-weighted sum of all token embeddings;
  * ``latent`` PonderLM-2: ``num_latent_thoughts`` thoughts per token, trained with Jacobi rounds
    over the interleaved token/thought sequence.

The equations are in docs/methods.md; every field below names the symbol it sets.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Optional, Tuple

from megatron.core.transformer.transformer_config import TransformerConfig

from megatron_ponder.runtime.megatron_compat import drop_deprecated_full_cuda_graph_scope

PONDER_MODES = ("none", "ponder", "latent")
LOCAL_ATTENTIONS = ("sdpa", "unfused")  # PonderConfig.local_attention


class PonderConfigError(ValueError):
    """A PonderConfig field has a value the method cannot run with."""


@dataclass
class PonderConfig(TransformerConfig):
    """TransformerConfig with the method's fields (validated in ``__post_init__``)."""

    ponder_mode: str = "none"
    """``none`` | ``ponder`` | ``latent``."""

    ponder_steps: int = 3
    """Ponder mode: S, the number of feedback passes before the final (loss) pass."""

    ponder_accumulate: bool = True
    """Ponder mode: ``cur = cur + p @ E`` (True, the reference code) or ``cur = e_0 + p @ E``."""

    ponder_grad_steps: Optional[int] = None
    """Ponder mode: K, backpropagate through the last K feedback passes only; the first S-K run
    without autograd and their running sum enters pass S-K+1 detached (truncated backprop).
    None: through all S (the papers)."""

    ponder_vocab_size: Optional[int] = None
    """Ponder mode: rows of the embedding that are real tokens; rows past it (vocabulary padding)
    get probability 0 in the mixture. None: every row is a token."""

    ponder_topk: Optional[int] = None
    """Ponder mode: mix only the K most probable tokens (softmax over their K logits, the paper's
    sparse variant, K=100 there) instead of the whole vocabulary. None: dense mixing."""

    ponder_fp8_mixing: bool = True
    """Ponder mode with ``fp8`` set: run the dense mixing GEMM p @ E through Transformer Engine
    FP8 GEMMs (E4M3 operands, per-tensor current scaling). False keeps it in the model dtype."""

    num_latent_thoughts: int = 1
    """Latent mode: N, the thoughts emitted before each real token."""

    jacobi_train_rounds: Tuple[int, int] = (2, 3)
    """Latent mode: inclusive range [lo, hi] from which the Jacobi round count J of a training
    step is drawn uniformly (the same J on every rank, see :meth:`jacobi_rounds_for_iteration`)."""

    jacobi_grad_rounds: Optional[int] = None
    """Latent mode: K, backpropagate through the last K Jacobi rounds of a training step only;
    the initial-thought passes and the first J-K rounds run without autograd and their thoughts
    enter round J-K+1 detached (truncated backprop; K >= J keeps all). None: all (the papers)."""

    jacobi_eval_rounds: int = 3
    """Latent mode: J used when the model is in eval mode."""

    jacobi_eval_tol: float = 0.0
    """Latent mode, evaluation: stop the Jacobi rounds of a microbatch once a round's residual
    ||z^j - z^(j-1)||^2 / numel is below it, at most ``jacobi_eval_rounds`` rounds
    (:mod:`megatron_ponder.model.adaptive_jacobi`). 0: always ``jacobi_eval_rounds``."""

    jacobi_seed: int = 0
    """Latent mode: seed of the per-iteration draw of J (independent of every other RNG)."""

    input_embedding_scale: Optional[float] = None
    """Multiplier of the input embedding E(x) (and, in ponder mode, of the mixed embedding).
    None picks the default: in latent mode ``1 / init_method_std``, so token slots (RMS about
    init_method_std * scale = 1) and thought slots (final-norm outputs, RMS about 1) enter the
    transformer at comparable scale; 1.0 in modes ``none`` and ``ponder`` (whose feedback is
    made of the same embedding rows as e_0, so the relative scale is already right)."""

    local_attention: str = "sdpa"
    """Core attention of the local (non-Transformer-Engine) layer spec: ``sdpa``
    (torch ``scaled_dot_product_attention``, :mod:`megatron_ponder.model.sdpa_attention`) or
    ``unfused`` (Megatron's ``DotProductAttention``, which keeps the [b, heads, s, s]
    probabilities for backward). The Transformer Engine spec ignores it (TE's fused attention)."""

    reset_attention_mask: bool = False
    """The batches carry document masks (``--reset-attention-mask``): the Transformer Engine spec
    then builds its core attention with a mask type that applies an explicit mask
    (:func:`megatron_ponder.model.specs.get_transformer_engine_block_spec`); the local spec
    applies any mask it is given."""

    def __post_init__(self):
        drop_deprecated_full_cuda_graph_scope(self)  # Megatron's default warns at every build
        super().__post_init__()
        self._validate_ponder_fields()
        if self.input_embedding_scale is None:
            self.input_embedding_scale = (
                1.0 / self.init_method_std if self.ponder_mode == "latent" else 1.0
            )

    def _validate_ponder_fields(self) -> None:
        def fail(field: str, message: str):
            raise PonderConfigError(f"PonderConfig.{field} {message}")

        if self.ponder_mode not in PONDER_MODES:
            fail("ponder_mode", f"must be one of {', '.join(PONDER_MODES)}; got {self.ponder_mode!r}")
        if not isinstance(self.ponder_steps, int) or self.ponder_steps < 1:
            fail("ponder_steps", f"must be an integer >= 1; got {self.ponder_steps!r}")
        for field in ("ponder_grad_steps", "jacobi_grad_rounds"):
            value = getattr(self, field)
            if value is not None and (not isinstance(value, int) or value < 1):
                fail(field, f"must be an integer >= 1 or None (all); got {value!r}")
        if self.ponder_vocab_size is not None and self.ponder_vocab_size < 1:
            fail("ponder_vocab_size", f"must be >= 1 or None; got {self.ponder_vocab_size!r}")
        if self.ponder_topk is not None:
            if not isinstance(self.ponder_topk, int) or self.ponder_topk < 1:
                fail("ponder_topk", f"must be an integer >= 1 or None; got {self.ponder_topk!r}")
            if self.ponder_vocab_size is not None and self.ponder_topk > self.ponder_vocab_size:
                fail("ponder_topk", f"{self.ponder_topk} exceeds the vocabulary ({self.ponder_vocab_size} tokens): "
                     "lower it (or leave it unset for dense mixing)")
        if not isinstance(self.num_latent_thoughts, int) or self.num_latent_thoughts < 1:
            fail("num_latent_thoughts", f"must be an integer >= 1; got {self.num_latent_thoughts!r}")
        rounds = self.jacobi_train_rounds
        if (
            not isinstance(rounds, (tuple, list))
            or len(rounds) != 2
            or not all(isinstance(r, int) for r in rounds)
        ):
            fail("jacobi_train_rounds", f"must be a pair (lo, hi) of integers; got {rounds!r}")
        if rounds[0] < 0 or rounds[0] > rounds[1]:
            fail("jacobi_train_rounds", f"must satisfy 0 <= lo <= hi (a non-empty range); got {rounds!r}")
        self.jacobi_train_rounds = tuple(rounds)
        if not isinstance(self.jacobi_eval_rounds, int) or self.jacobi_eval_rounds < 0:
            fail("jacobi_eval_rounds", f"must be an integer >= 0; got {self.jacobi_eval_rounds!r}")
        if not isinstance(self.jacobi_eval_tol, (int, float)) or not 0 <= self.jacobi_eval_tol < float("inf"):
            fail("jacobi_eval_tol", f"must be a finite number >= 0 (0: fixed rounds); got {self.jacobi_eval_tol!r}")
        if self.local_attention not in LOCAL_ATTENTIONS:
            fail("local_attention", f"must be one of {', '.join(LOCAL_ATTENTIONS)}; got {self.local_attention!r}")
        if self.input_embedding_scale is not None and not self.input_embedding_scale > 0:
            fail("input_embedding_scale", f"must be > 0 or None; got {self.input_embedding_scale!r}")

    @property
    def slots_per_token(self) -> int:
        """Sequence slots each real token occupies: N+1 in latent mode, 1 otherwise."""
        return self.num_latent_thoughts + 1 if self.ponder_mode == "latent" else 1

    def jacobi_rounds_for_iteration(self, iteration: int) -> int:
        """J for training iteration ``iteration``: uniform over ``jacobi_train_rounds``.

        A pure function of (jacobi_seed, iteration), so every rank, every microbatch of a step and
        a resumed run draw the same J without communicating.
        """
        lo, hi = self.jacobi_train_rounds
        return random.Random(self.jacobi_seed * 1_000_003 + iteration).randint(lo, hi)
