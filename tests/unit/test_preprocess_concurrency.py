"""Two preprocessing runs into one output prefix never produce a mixed dataset (issue 26,
finding 4): each run writes under its own temporary names, holds PREFIX.lock until it has
published, and a second run stops with one line."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_ponder.data.output_lock import OutputBusyError, exclusive_output, temporary_paths
from megatron_ponder.data.preprocess import preprocess_to_indexed_dataset
from megatron_ponder.data.tokenizer import train_bpe_tokenizer
from support.torchrun import child_env

TOOL = Path(__file__).resolve().parents[2] / "tools" / "preprocess_data.py"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("concurrent")
    words = "alpha beta gamma delta epsilon zeta eta theta".split()
    docs = [" ".join(words[(i + j) % 8] for j in range(200)) for i in range(3000)]
    (root / "train.txt").write_text("\n".join(docs[:50]))
    tokenizer = train_bpe_tokenizer([root / "train.txt"], 300, root / "tok")
    (root / "docs.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return root, tokenizer


def test_temporary_names_are_this_runs_own():
    assert temporary_paths("data/corpus") != temporary_paths("data/corpus")


def test_a_second_run_into_a_busy_prefix_stops_with_one_line(corpus):
    root, tokenizer = corpus
    prefix = str(root / "busy" / "corpus")
    with exclusive_output(prefix):
        with pytest.raises(OutputBusyError) as error:
            preprocess_to_indexed_dataset([root / "docs.jsonl"], prefix, tokenizer, progress=False)
    assert "another preprocessing run" in str(error.value) and "\n" not in str(error.value)
    assert not list((root / "busy").glob("corpus.*bin")) and not list((root / "busy").glob("corpus.*idx"))


def _tool(root, prefix):
    return subprocess.Popen(
        [sys.executable, str(TOOL), "--input", str(root / "docs.jsonl"), "--output-prefix", prefix,
         "--tokenizer-model", str(root / "tok"), "--append-eod", "--quiet"],
        env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_concurrent_runs_leave_exactly_one_runs_dataset(corpus):
    root, _ = corpus
    reference = str(root / "reference" / "corpus")
    single = _tool(root, reference)
    assert single.wait(timeout=300) == 0, single.stderr.read()
    prefix = str(root / "shared" / "corpus")
    runs = [_tool(root, prefix) for _ in range(3)]
    outcomes = [(run.wait(timeout=300), run.stderr.read()) for run in runs]
    assert any(code == 0 for code, _ in outcomes)
    for code, stderr in outcomes:
        assert code in (0, 2), stderr
        if code == 2:
            assert stderr.strip().splitlines()[-1].startswith("error: another preprocessing run"), stderr
            assert "Traceback" not in stderr
    for ext in (".bin", ".idx"):
        assert Path(prefix + ext).read_bytes() == Path(reference + ext).read_bytes()
    assert sorted(p.name for p in (root / "shared").iterdir()) == ["corpus.bin", "corpus.idx"]
