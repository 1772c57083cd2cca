"""Hugging Face conversion in one process (stock classes, no remote code).

1. Export: a Megatron checkpoint of mode ``none`` -> HF folder; the stock HF model
   (``AutoModelForCausalLM``, no trust_remote_code) gives the Megatron model's logits (fp32,
   rel. 1e-4), LLaMA (GQA, untied), GPT-2 (tied, learned positions) and GPT-NeoX (parallel
   residual, partial RoPE). The vocabulary is padded on the Megatron side (100 -> 128 rows):
   HF logits equal Megatron's first 100.
2. Export of ponder and latent models: the folder (remote code, ``trust_remote_code=True``)
   gives the Megatron PonderGPTModel's logits (eval mode: latent with its eval Jacobi rounds),
   in all three architectures.
3. Import -> export round trip of tiny random stock HF models: every weight bit-identical, and
   the imported Megatron model gives the HF logits.

Run: OMP_NUM_THREADS=1 python -m pytest tests/unit/test_hf_conversion.py
"""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from support.tiny_models import relative_error

from megatron_ponder.hf.configs import ConversionError, megatron_flags_from_hf_config
from megatron_ponder.hf.export import export_checkpoint, load_single_process_model
from megatron_ponder.hf.import_hf import import_hf_model
from megatron_ponder.training.arguments import parse_args
from megatron_ponder.training.build import build_model
from megatron_ponder.training.checkpointing.save_load import save_weights_checkpoint
from megatron_ponder.training.model_config import model_config

VOCAB, BATCH, LENGTH = 100, 2, 12
SHAPES = {
    "llama": ["--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4", "--num-query-groups", "2",
              "--ffn-hidden-size", "96", "--rotary-base", "5000", "--norm-epsilon", "1e-6"],
    "gpt2": ["--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4", "--num-query-groups", "4",
             "--ffn-hidden-size", "128"],
    "neox": ["--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4", "--num-query-groups", "4",
             "--ffn-hidden-size", "128"],
}
HF_CONFIGS = {
    "llama": lambda: transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=32, rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 5000.0}),
    "gpt2": lambda: transformers.GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=32),
    "neox": lambda: transformers.GPTNeoXConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2,
                                               num_attention_heads=4, intermediate_size=128,
                                               max_position_embeddings=32),
}


def _randomise_norms_and_biases(named_parameters, seed: int) -> None:
    """Norms init to 1/0 and biases to 0: randomise them so no mapping error can hide."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in named_parameters:
            if "norm" in name or ".ln" in name or "ln_f" in name or name.endswith("bias"):
                param.add_(0.2 * torch.randn(param.shape, generator=generator))


def _tokens(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, VOCAB, (BATCH, LENGTH), generator=generator)
    return tokens, torch.arange(LENGTH).expand(BATCH, -1)


def tiny_megatron_checkpoint(style: str, root, real_vocab: int = VOCAB, padded_vocab: int = 128, **extra_flags):
    """A tiny model built from the entry point's flags, saved as a checkpoint; returns the model."""
    argv = ["--architecture", style, *SHAPES[style], "--max-position-embeddings", "32", "--init-method-std", "0.1",
            "--mock-data", "--vocab-size", str(padded_vocab), "--ponder-mode", "none"]
    for flag, value in extra_flags.items():
        argv += [f"--{flag.replace('_', '-')}", str(value)]
    args = parse_args(argv)
    args.tokenizer_vocab_size = real_vocab  # default: 100 real tokens in 128 rows, 28 padding rows
    torch.manual_seed(0)
    model = build_model(args, model_config(args))
    _randomise_norms_and_biases(model.named_parameters(), seed=1)
    run_args = {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool, type(None), list, tuple))}
    save_weights_checkpoint(str(root), model, run_args)
    return model.eval()


@pytest.mark.parametrize("style", ["llama", "gpt2", "neox"])
def test_export_mode_none_gives_megatron_logits(megatron_world_of_one, tmp_path, style):
    model = tiny_megatron_checkpoint(style, tmp_path / "megatron")
    out = export_checkpoint(str(tmp_path / "megatron"), str(tmp_path / "hf"))
    config = json.loads((out / "config.json").read_text())
    assert "auto_map" not in config and config["vocab_size"] == VOCAB
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    assert type(hf_model).__name__ == {"llama": "LlamaForCausalLM", "gpt2": "GPT2LMHeadModel",
                                       "neox": "GPTNeoXForCausalLM"}[style]
    tokens, positions = _tokens()
    with torch.no_grad():
        megatron_logits = model(tokens, positions, None)  # [b, L, 128]
        hf_logits = hf_model(tokens).logits  # [b, L, 100]
    assert megatron_logits.shape[-1] == 128 and hf_logits.shape[-1] == VOCAB
    assert relative_error(hf_logits, megatron_logits[..., :VOCAB]) < 1e-4


EXPORT_MODES = {
    "ponder": dict(ponder_mode="ponder", ponder_steps=2),
    # K=8 of 100 tokens: a dense mixture in the exported model would give other logits.
    "ponder-topk": dict(ponder_mode="ponder", ponder_steps=2, ponder_topk=8),
    "latent": dict(ponder_mode="latent", num_latent_thoughts=2, jacobi_eval_rounds=2),
}


@pytest.mark.parametrize("style", ["llama", "gpt2", "neox"])
@pytest.mark.parametrize("mode", ["ponder", "latent"])
def test_export_ponder_and_latent_give_megatron_logits(megatron_world_of_one, tmp_path, style, mode):
    _check_export_gives_megatron_logits(tmp_path, style, mode)


def test_export_of_topk_mixing_gives_megatron_logits(megatron_world_of_one, tmp_path):
    _check_export_gives_megatron_logits(tmp_path, "llama", "ponder-topk")


def _check_export_gives_megatron_logits(tmp_path, style, mode):
    flags = EXPORT_MODES[mode]
    model = tiny_megatron_checkpoint(style, tmp_path / "megatron", **flags)
    out = export_checkpoint(str(tmp_path / "megatron"), str(tmp_path / "hf"))
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "ponder_lm" and config["ponder_mode"] == flags["ponder_mode"]
    assert config["ponder_topk"] == flags.get("ponder_topk")
    assert config["backbone_config"]["model_type"] == {"llama": "llama", "gpt2": "gpt2", "neox": "gpt_neox"}[style]
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(
        str(out), trust_remote_code=True, dtype=torch.float32).eval()
    assert type(hf_model).__name__ == "PonderLMForCausalLM"
    tokens, positions = _tokens()
    with torch.no_grad():
        megatron_logits = model(tokens, positions, None)[..., :VOCAB]
        hf_logits = hf_model(tokens).logits
        vanilla_logits = hf_model.backbone(tokens).logits
    assert relative_error(hf_logits, megatron_logits) < 1e-4
    # The extra passes must matter, or a wrong mixture / thought layout could pass unnoticed.
    assert relative_error(vanilla_logits, megatron_logits) > 1e-2


@pytest.mark.parametrize("style", ["llama", "gpt2", "neox"])
def test_import_then_export_is_bit_exact(megatron_world_of_one, tmp_path, style):
    torch.manual_seed(0)
    hf_model = transformers.AutoModelForCausalLM.from_config(HF_CONFIGS[style](), dtype=torch.float32).eval()
    _randomise_norms_and_biases(hf_model.named_parameters(), seed=2)
    flags = import_hf_model(hf_model, str(tmp_path / "megatron"))
    assert flags[:2] == ["--architecture", style] and flags[flags.index("--vocab-size") + 1] == "128"

    megatron_model, _ = load_single_process_model(str(tmp_path / "megatron"))
    tokens, positions = _tokens(1)
    with torch.no_grad():
        expected = hf_model(tokens).logits
        assert relative_error(megatron_model(tokens, positions, None)[..., :VOCAB], expected) < 1e-4

    out = export_checkpoint(str(tmp_path / "megatron"), str(tmp_path / "hf"))
    exported = transformers.AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    with torch.no_grad():  # the exported folder runs as the original model
        assert relative_error(exported(tokens).logits, expected) < 1e-4
    original, round_trip = hf_model.state_dict(), exported.state_dict()
    assert sorted(original) == sorted(round_trip)
    for name, tensor in original.items():
        assert torch.equal(tensor, round_trip[name]), name


def test_a_folder_without_a_model_is_refused(tmp_path):
    from megatron_ponder.hf.import_hf import load_hf_model

    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ConversionError, match=f"cannot load a Hugging Face model from {tmp_path}"):
        load_hf_model(str(tmp_path))


def test_unsupported_hf_models_are_refused():
    with pytest.raises(ConversionError, match="attention_bias"):
        megatron_flags_from_hf_config(transformers.LlamaConfig(attention_bias=True))
    with pytest.raises(ConversionError, match="use_parallel_residual"):
        megatron_flags_from_hf_config(transformers.GPTNeoXConfig(use_parallel_residual=False))
    with pytest.raises(ConversionError, match="RoPE scaling"):
        megatron_flags_from_hf_config(transformers.LlamaConfig(
            rope_parameters={"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0}))
    with pytest.raises(ConversionError, match="model_type 'bert'"):
        megatron_flags_from_hf_config(transformers.BertConfig())


def test_exports_without_an_hf_equivalent_are_refused(megatron_world_of_one, tmp_path):
    # HF Llama rotates whole heads: a partial-RoPE llama run would export as a different model.
    tiny_megatron_checkpoint("llama", tmp_path / "partial_rope", rotary_percent=0.5)
    with pytest.raises(ConversionError, match="rotary-percent"):
        export_checkpoint(str(tmp_path / "partial_rope"), str(tmp_path / "hf"))
    assert not (tmp_path / "hf" / "model.safetensors").exists()


def test_export_writes_the_runs_tokenizer(megatron_world_of_one, tmp_path):
    from megatron_ponder.data.tokenizer import train_bpe_tokenizer

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("def main():\n    return sum(range(10))\n" * 50)
    tokenizer = train_bpe_tokenizer([corpus], 300, tmp_path / "tokenizer")
    model_dir = tmp_path / "megatron"
    tiny_megatron_checkpoint("gpt2", model_dir, real_vocab=tokenizer.vocab_size, padded_vocab=384,
                             tokenizer_type="HuggingFaceTokenizer", tokenizer_model=tmp_path / "tokenizer")
    out = export_checkpoint(str(model_dir), str(tmp_path / "hf"))
    exported = transformers.AutoTokenizer.from_pretrained(str(out))
    text = "def main(): return 42"
    assert exported(text)["input_ids"] == tokenizer.tokenize(text)
    assert exported.eos_token_id == tokenizer.eod
    config = json.loads((out / "config.json").read_text())
    assert config["vocab_size"] == tokenizer.vocab_size and config["eos_token_id"] == tokenizer.eod


def test_weights_only_checkpoint_needs_no_load_optim(megatron_world_of_one, tmp_path):
    from megatron_ponder.training.checkpointing.save_load import CheckpointError, load_checkpoint

    model = tiny_megatron_checkpoint("llama", tmp_path / "megatron")
    with pytest.raises(CheckpointError, match="--no-load-optim"):
        load_checkpoint(str(tmp_path / "megatron"), model, None, None, load_optimizer=True,
                        distributed_optimizer=False)
    resumed = load_checkpoint(str(tmp_path / "megatron"), model, None, None, load_optimizer=False,
                              distributed_optimizer=False)
    assert (resumed.iteration, resumed.consumed_samples) == (0, 0)
