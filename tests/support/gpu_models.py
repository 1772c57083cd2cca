"""Helpers of the GPU tests: skip reasons and small Transformer Engine models on CUDA.

Nothing here imports Transformer Engine on a machine without CUDA: the reasons are computed by
``megatron_ponder.runtime.transformer_engine`` (CUDA checked first).
"""

from __future__ import annotations

from typing import Optional

import pytest
import torch

from megatron_ponder.model.architectures import build_ponder_gpt, make_ponder_config
from megatron_ponder.runtime.transformer_engine import transformer_engine_unusable_reason
from megatron_ponder.variants import variant

# Every GEMM dimension a multiple of 16 (FP8 GEMMs need it): tokens s*b, hidden, ffn, vocab.
SIZES = dict(num_layers=2, hidden_size=128, num_attention_heads=4, num_query_groups=2, ffn_hidden_size=256)
VOCAB, SEQ, BATCH = 1024, 64, 2

requires_transformer_engine = pytest.mark.skipif(
    transformer_engine_unusable_reason() is not None,
    reason=f"needs CUDA and Transformer Engine: {transformer_engine_unusable_reason()}",
)


def fp8_unsupported_reason() -> Optional[str]:
    if transformer_engine_unusable_reason() is not None:
        return transformer_engine_unusable_reason()
    if torch.cuda.get_device_capability() < (8, 9):
        return f"FP8 GEMMs need compute capability >= 8.9 (Ada/Hopper), this GPU has {torch.cuda.get_device_capability()}"
    return None


requires_fp8 = pytest.mark.skipif(fp8_unsupported_reason() is not None, reason=f"{fp8_unsupported_reason()}")

MODES = {
    "none": variant("none"),
    "ponder": variant("ponder"),
    "ponder_topk": variant("ponder", ponder_topk=32),
    "latent1": variant("latent1", rounds=(2, 2)),
}


def te_model(mode: str, transformer_impl: str = "auto", seed: int = 0, dtype=torch.bfloat16, **fields):
    """A small LLaMA-style PonderGPTModel on the current CUDA device (TE layers unless ``local``)."""
    torch.manual_seed(seed)
    config = make_ponder_config(
        "llama",
        **SIZES,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        init_method_std=0.05,
        bf16=dtype == torch.bfloat16,
        params_dtype=dtype,
        pipeline_dtype=dtype,
        calculate_per_token_loss=True,
        **{**MODES[mode], **fields},
    )
    model = build_ponder_gpt(config, "llama", VOCAB, SEQ, transformer_impl=transformer_impl)
    return model.cuda()


def batch(seed: int = 0):
    """tokens, labels, position_ids [BATCH, SEQ] on CUDA."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (BATCH, SEQ + 1), generator=generator)
    positions = torch.arange(SEQ).expand(BATCH, -1)
    return ids[:, :-1].cuda(), ids[:, 1:].cuda(), positions.cuda()


def loss_and_grads(model, seed: int = 0, first_microbatch: bool = True):
    """(mean token loss, {name: grad fp32}) of one forward/backward.

    ``first_microbatch``: flag it as Megatron's schedule does at the start of a step
    (``set_is_first_microbatch``: TE's FP8 layers re-quantise their weights then, and reuse that
    copy on later calls until the next flag).
    """
    tokens, labels, positions = batch(seed)
    if first_microbatch:
        model.set_is_first_microbatch()
    model.zero_grad(set_to_none=True)
    loss = model(tokens, positions, None, labels=labels).float().mean()
    loss.backward()
    grads = {name: p.grad.float().clone() for name, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads
