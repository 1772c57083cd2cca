"""Tiny random Hugging Face ponder/latent models for the HF tests (llama, gpt2, gpt_neox backbones).

Weights are drawn larger than the stock init (std 0.02 would give near-uniform logits, where
greedy decoding ties and ponder feedback barely moves anything), and norm weights/biases are
randomised so no mix-up of parameters can hide.
"""

from __future__ import annotations

import torch
import transformers

from megatron_ponder.hf.remote_code import load_classes, save_ponder_lm

VOCAB = 64
MAX_POSITIONS = 64
ARCHITECTURES = ("llama", "gpt2", "gpt_neox")


def tiny_backbone_config(arch: str, vocab_size: int = VOCAB, max_positions: int = MAX_POSITIONS):
    """A 2-layer, hidden-32 stock config (GQA for llama, exact GeLU for gpt2)."""
    if arch == "llama":
        return transformers.LlamaConfig(
            vocab_size=vocab_size, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_positions,
            rms_norm_eps=1e-5,
        )
    if arch == "gpt2":
        return transformers.GPT2Config(
            vocab_size=vocab_size, n_embd=32, n_layer=2, n_head=4, n_positions=max_positions,
            activation_function="gelu", layer_norm_epsilon=1e-5,
            bos_token_id=vocab_size - 1, eos_token_id=vocab_size - 1,
        )
    if arch == "gpt_neox":
        return transformers.GPTNeoXConfig(
            vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=max_positions, rotary_pct=0.5,
            tie_word_embeddings=False,
        )
    raise ValueError(f"unknown architecture {arch!r}")


def randomize_(model: torch.nn.Module, seed: int, std: float = 0.3) -> None:
    """Redraw every parameter: norm weights 1 + 0.3 n, everything else std * n."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            is_norm_weight = param.dim() == 1 and ("norm" in name or ".ln_" in name) and name.endswith("weight")
            param.copy_(1.0 + 0.3 * noise if is_norm_weight else std * noise)


def tiny_ponder_lm(arch: str, mode: str, seed: int = 0, vocab_size: int = VOCAB,
                   max_positions: int = MAX_POSITIONS, weight_std: float = 0.3, **fields):
    """A random PonderLMForCausalLM (eval mode) on a tiny ``arch`` backbone (weights ``weight_std * n``)."""
    config_class, model_class = load_classes()
    defaults = {"ponder_steps": 2, "num_latent_thoughts": 1, "jacobi_eval_rounds": 2, "input_embedding_scale": 2.0}
    config = config_class(
        backbone_config=tiny_backbone_config(arch, vocab_size, max_positions).to_dict(),
        ponder_mode=mode,
        **{**defaults, **fields},
    )
    model = model_class(config)
    randomize_(model, seed, weight_std)
    return model.eval()


__all__ = ["ARCHITECTURES", "VOCAB", "save_ponder_lm", "tiny_backbone_config", "tiny_ponder_lm"]
