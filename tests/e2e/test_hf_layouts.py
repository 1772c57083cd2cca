"""Conversion across parallel layouts: a stock HF LLaMA (GQA, SwiGLU, untied) imported to Megatron,
loaded by the training entry point at TP=2 x PP=2 (4 processes, gloo), saved there after one step
with learning rate 0, and exported back: the HF weights are bit-identical to the original and the
exported model gives the original's logits (and the Megatron model's, loaded in one process).
"""

from __future__ import annotations

import pytest
import torch
import transformers
from support.tiny_models import relative_error
from support.torchrun import run_torchrun

from megatron_ponder.hf.export import export_checkpoint, load_single_process_model
from megatron_ponder.hf.import_hf import import_hf_model

VOCAB = 128  # the entry point's mock data uses the whole (unpadded) table as its vocabulary


@pytest.mark.slow
def test_tp2_pp2_checkpoint_exports_the_original_model(megatron_world_of_one, tmp_path):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=32, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    )
    original = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    with torch.no_grad():
        for name, param in original.named_parameters():
            if "norm" in name:
                param.add_(0.3 * torch.randn_like(param))
    flags = import_hf_model(original, str(tmp_path / "imported"), tensor_model_parallel_size=2,
                            pipeline_model_parallel_size=2, make_vocab_size_divisible_by=64)

    result = run_torchrun("-m megatron_ponder.pretrain", 4, [
        "--load", tmp_path / "imported", "--no-load-optim", *flags, "--ponder-mode", "none",
        "--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "2",
        "--mock-data", "--seq-length", "16", "--micro-batch-size", "1", "--global-batch-size", "2",
        "--train-iters", "1", "--lr", "0", "--min-lr", "0", "--eval-iters", "0", "--save", tmp_path / "tp2pp2",
    ])
    assert "resumed from" in result.stdout

    out = export_checkpoint(str(tmp_path / "tp2pp2"), str(tmp_path / "hf"))
    exported = transformers.AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    for name, tensor in original.state_dict().items():
        assert torch.equal(tensor, exported.state_dict()[name]), name

    tokens = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(1))
    megatron_model, _ = load_single_process_model(str(tmp_path / "tp2pp2"))
    with torch.no_grad():
        expected = original(tokens).logits
        assert relative_error(exported(tokens).logits, expected) < 1e-4
        assert relative_error(megatron_model(tokens, torch.arange(12).expand(2, -1), None), expected) < 1e-4
