"""PonderLMConfig: a stock Hugging Face backbone config plus the fields of PonderLM / PonderLM-2.

Standalone (imports only transformers): this file is copied into exported model folders and loaded
with ``trust_remote_code=True`` on machines where megatron_ponder is not installed.

The method fields mirror ``megatron_ponder.config.PonderConfig`` (equations in megatron_ponder's
docs/methods.md); ``backbone_config`` is the ``to_dict()`` of a LlamaConfig, GPTNeoXConfig or
GPT2Config (it carries its own ``model_type``).
"""

from __future__ import annotations

from typing import Any

import transformers
from packaging.version import Version
from transformers import AutoConfig, PretrainedConfig

PONDER_LM_MODES = ("ponder", "latent")
# The oldest transformers the remote code is tested with (CI: 5.8.0 and the newest 5.x; setup.py's
# `hf` extra). 4.x names stock config fields differently (rope_theta / rope_scaling, not
# rope_parameters), so a 5.x export would load there with wrong settings instead of failing.
MIN_TRANSFORMERS = "5.8"
if Version(transformers.__version__).release < Version(MIN_TRANSFORMERS).release:
    raise ImportError(
        f"PonderLM models need transformers >= {MIN_TRANSFORMERS} (installed: "
        f"{transformers.__version__}): pip install 'transformers>={MIN_TRANSFORMERS}'"
    )


class PonderLMConfig(PretrainedConfig):
    """Config of :class:`PonderLMForCausalLM`.

    Args:
        backbone_config: the stock backbone config as a dict (with ``model_type``).
        ponder_mode: ``"ponder"`` (PonderLM, S feedback passes) or ``"latent"`` (PonderLM-2).
        ponder_steps: S, feedback passes before the final pass (ponder mode).
        ponder_accumulate: ``cur = cur + s p@E`` (True) or ``cur = e_0 + s p@E`` (ponder mode).
        num_latent_thoughts: N, thoughts per token (latent mode).
        jacobi_eval_rounds: J, Jacobi rounds of the scoring forward (latent mode).
        input_embedding_scale: s, multiplier of the input embedding (and of the ponder mixture).
        ponder_vocab_size: embedding rows mixed in ponder mode; rows past it are vocabulary
            padding and get probability 0. None: every row.
        ponder_topk: mix only the K most probable rows, softmax over their K logits (the
            training run's ``--ponder-topk``); None: dense mixing over the whole vocabulary.
    """

    model_type = "ponder_lm"

    def __init__(
        self,
        backbone_config: dict[str, Any] | None = None,
        ponder_mode: str = "latent",
        ponder_steps: int = 3,
        ponder_accumulate: bool = True,
        num_latent_thoughts: int = 1,
        jacobi_eval_rounds: int = 3,
        input_embedding_scale: float = 1.0,
        ponder_vocab_size: int | None = None,
        ponder_topk: int | None = None,
        **kwargs,
    ):
        if isinstance(backbone_config, PretrainedConfig):
            backbone_config = backbone_config.to_dict()
        self.backbone_config = dict(backbone_config) if backbone_config is not None else None
        self.ponder_mode = ponder_mode
        self.ponder_steps = ponder_steps
        self.ponder_accumulate = ponder_accumulate
        self.num_latent_thoughts = num_latent_thoughts
        self.jacobi_eval_rounds = jacobi_eval_rounds
        self.input_embedding_scale = float(input_embedding_scale)
        self.ponder_vocab_size = ponder_vocab_size
        self.ponder_topk = ponder_topk
        if self.backbone_config is not None:
            self._validate()
            backbone = self.backbone()
            # Read by generic tools (lm-eval's max length, resize checks): the token-level values.
            kwargs.setdefault("vocab_size", backbone.vocab_size)
            kwargs.setdefault(
                "max_position_embeddings",
                getattr(backbone, "max_position_embeddings", None) or getattr(backbone, "n_positions", None),
            )
            kwargs.setdefault("tie_word_embeddings", bool(getattr(backbone, "tie_word_embeddings", False)))
            for token in ("bos_token_id", "eos_token_id", "pad_token_id"):
                kwargs.setdefault(token, getattr(backbone, token, None))
        super().__init__(**kwargs)

    def backbone(self) -> PretrainedConfig:
        """The stock config object (LlamaConfig / GPTNeoXConfig / GPT2Config ...)."""
        if self.backbone_config is None:
            raise ValueError("PonderLMConfig.backbone_config is missing: pass the stock backbone config as a dict")
        fields = dict(self.backbone_config)
        model_type = fields.pop("model_type", None)
        if model_type is None:
            raise ValueError("PonderLMConfig.backbone_config needs a 'model_type' (e.g. 'llama')")
        return AutoConfig.for_model(model_type, **fields)

    def _validate(self) -> None:
        def fail(field: str, message: str):
            raise ValueError(f"PonderLMConfig.{field} {message}")

        if self.ponder_mode not in PONDER_LM_MODES:
            fail(
                "ponder_mode",
                f"must be one of {', '.join(PONDER_LM_MODES)} (mode 'none' exports the stock "
                f"architecture); got {self.ponder_mode!r}",
            )
        if not isinstance(self.ponder_steps, int) or self.ponder_steps < 1:
            fail("ponder_steps", f"must be an integer >= 1; got {self.ponder_steps!r}")
        if not isinstance(self.num_latent_thoughts, int) or self.num_latent_thoughts < 1:
            fail("num_latent_thoughts", f"must be an integer >= 1; got {self.num_latent_thoughts!r}")
        if not isinstance(self.jacobi_eval_rounds, int) or self.jacobi_eval_rounds < 0:
            fail("jacobi_eval_rounds", f"must be an integer >= 0; got {self.jacobi_eval_rounds!r}")
        if not self.input_embedding_scale > 0:
            fail("input_embedding_scale", f"must be > 0; got {self.input_embedding_scale!r}")
        if self.ponder_vocab_size is not None and self.ponder_vocab_size < 1:
            fail("ponder_vocab_size", f"must be >= 1 or None; got {self.ponder_vocab_size!r}")
        if self.ponder_topk is not None and (not isinstance(self.ponder_topk, int) or self.ponder_topk < 1):
            fail("ponder_topk", f"must be an integer >= 1 or None; got {self.ponder_topk!r}")
