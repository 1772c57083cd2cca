"""The paper recipes in examples/papers/: the papers' settings, and a tiny CPU run of each.

1. ``PRINT_FLAGS=1`` prints the pretrain flags a recipe would launch with: checked against the
   settings of the papers' reference scripts (docs/papers.md), for every size, and the entry
   point's parser accepts them.
2. Each recipe trains a few steps on CPU at a tiny size (shape flags appended, which win over the
   preset; environment overrides for the schedule) on a small preprocessed corpus, so the scripts
   cannot rot.

Run: OMP_NUM_THREADS=1 python -m pytest tests/e2e/test_paper_recipes.py
"""

from __future__ import annotations

import math
import re
import subprocess

import pytest
from support.indexed_documents import write_random_documents
from support.torchrun import REPO, child_env, free_port

from megatron_ponder.training.arguments import parse_args

PAPERS = REPO / "examples" / "papers"
PONDERLM_SIZES = {  # size: (LR, weight decay, hidden)
    "70m": (1e-3, 0.01, 512), "160m": (6e-4, 0.01, 768), "410m": (3e-4, 0.1, 1024),
    "1b": (2.5e-4, 0.01, 2048), "1.4b": (2e-4, 0.01, 2048),
}


def recipe(script, *args, **env):
    return subprocess.run(["bash", str(PAPERS / script), *args], env=child_env(**env), capture_output=True,
                          text=True, timeout=900, cwd=REPO)


def printed_args(script, *args):
    done = recipe(script, *args, PRINT_FLAGS="1", DATA_PATH="corpus_text_document", TOKENIZER="tokenizer")
    assert done.returncode == 0, done.stderr
    return parse_args(done.stdout.splitlines())


def check_schedule(args, lr, warmup_fraction, iters, global_batch):
    assert args.lr == lr and args.min_lr == pytest.approx(lr / 10) and args.lr_decay_style == "cosine"
    assert args.train_iters == iters and args.lr_warmup_iters == round(iters * warmup_fraction)
    assert (args.adam_beta1, args.adam_beta2) == (0.9, 0.95)
    assert args.global_batch_size == global_batch and args.seq_length == 2048
    assert args.bf16 and args.init_style == "ponderlm" and args.tie_embeddings is False
    assert args.data_path == ["corpus_text_document"] and args.tokenizer_model == "tokenizer"


@pytest.mark.parametrize("size", sorted(PONDERLM_SIZES))
def test_ponderlm_recipe_has_the_papers_settings(size):
    lr, weight_decay, hidden = PONDERLM_SIZES[size]
    args = printed_args("ponderlm_pythia.sh", size)
    check_schedule(args, lr, 0.01, 143000, 1024)
    assert args.preset == f"pythia-{size}" and args.architecture == "neox" and args.hidden_size == hidden
    assert args.weight_decay == weight_decay
    assert args.ponder_mode == "ponder" and args.ponder_steps == 3 and args.ponder_accumulate
    assert args.input_embedding_scale == pytest.approx(math.sqrt(hidden))


def test_ponderlm2_recipes_have_the_papers_settings():
    llama = printed_args("ponderlm2_llama_1.4b.sh")
    check_schedule(llama, 2e-4, 0.02, 50000, 256)
    assert (llama.architecture, llama.num_layers, llama.hidden_size, llama.num_attention_heads,
            llama.num_query_groups, llama.ffn_hidden_size) == ("llama", 24, 2048, 32, 32, 5504)
    pythia = printed_args("ponderlm2_pythia_1.4b.sh")
    check_schedule(pythia, 2e-4, 0.01, 143000, 1024)
    assert pythia.preset == "pythia-1.4b"
    assert (llama.weight_decay, pythia.weight_decay) == (0.1, 0.01)
    for args in (llama, pythia):
        assert args.ponder_mode == "latent" and args.num_latent_thoughts == 1
        assert tuple(args.jacobi_train_rounds) == (2, 3) and args.jacobi_eval_rounds == 3
        assert args.input_embedding_scale is None  # follows the paper init: sqrt(2.5 h)


def test_recipes_refuse_to_run_without_data_or_a_size():
    done = recipe("ponderlm2_llama_1.4b.sh")
    assert done.returncode == 2 and "set DATA_PATH to your preprocessed corpus" in done.stderr
    done = recipe("ponderlm_pythia.sh", "3b", DATA_PATH="x")
    assert done.returncode == 2 and "one of 70m 160m 410m 1b 1.4b (got '3b')" in done.stderr


TINY_SHAPE = ["--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4", "--num-query-groups", "4",
              "--ffn-hidden-size", "128", "--tokenizer-type", "NullTokenizer", "--vocab-size", "128",
              "--split", "9,1,0", "--eval-iters", "1", "--eval-interval", "3", "--log-interval", "1"]


@pytest.mark.slow
@pytest.mark.parametrize("script,args", [("ponderlm_pythia.sh", ["70m"]), ("ponderlm2_llama_1.4b.sh", []),
                                         ("ponderlm2_pythia_1.4b.sh", [])])
def test_recipe_trains_at_a_tiny_size_on_cpu(tmp_path, script, args):
    prefix = write_random_documents(str(tmp_path / "corpus"), documents=200, vocab=128)
    run_dir = tmp_path / "run"
    done = recipe(script, *args, *TINY_SHAPE, DATA_PATH=prefix, RUN_DIR=str(run_dir), NPROC="1", BF16="0",
                  TRAIN_ITERS="3", GLOBAL_BATCH_SIZE="4", MICRO_BATCH_SIZE="2", SEQ_LENGTH="32",
                  MASTER_PORT=str(free_port()))
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(r"iteration +3/3", done.stdout), done.stdout[-2000:]
    assert (run_dir / "checkpoints" / "latest_checkpointed_iteration.txt").read_text() == "3"
