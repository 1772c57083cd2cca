"""Data layer: tokenizer, preprocessing tool, dataset checks, GPT datasets, microbatches."""

import importlib.util
import json
import random
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from megatron_ponder.data.datasets import (
    MicrobatchStream,
    build_gpt_datasets,
    check_indexed_dataset,
    check_vocab_fits,
    parse_data_path,
)
from megatron_ponder.data.errors import DataError
from megatron_ponder.data.tokenizer import (
    EOD_TOKEN,
    NullTokenizer,
    build_tokenizer,
    train_bpe_tokenizer,
)

REPO = Path(__file__).resolve().parents[2]
TOOL = REPO / "tools" / "preprocess_data.py"
WORDS = "alpha beta gamma delta def return import class self value None while for in".split()


def _documents(count: int, seed: int = 0):
    rng = random.Random(seed)
    return [
        " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 40))) + ("\n" if i % 3 else "")
        for i in range(count)
    ]


def _load_tool():
    spec = importlib.util.spec_from_file_location("preprocess_data_tool", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A trained tokenizer and a 40-document jsonl corpus."""
    root = tmp_path_factory.mktemp("corpus")
    docs = _documents(40)
    (root / "train.txt").write_text("\n".join(docs + ["héllo wörld ✓"]), encoding="utf-8")
    tokenizer = train_bpe_tokenizer([root / "train.txt"], 300, root / "tok")
    jsonl = root / "docs.jsonl"
    jsonl.write_text("".join(json.dumps({"text": d, "id": i}) + "\n" for i, d in enumerate(docs)))
    return root, tokenizer, docs, jsonl


@pytest.fixture(scope="module")
def tool():
    return _load_tool()


@pytest.fixture(scope="module")
def prefix(corpus, tool):
    """The corpus preprocessed with EOD appended."""
    root, _, _, jsonl = corpus
    out = root / "data" / "docs"
    args = ["--input", str(jsonl), "--output-prefix", str(out), "--tokenizer-model",
            str(root / "tok"), "--append-eod", "--quiet"]
    assert tool.main(args) == 0
    return str(out)


# --- tokenizer ---------------------------------------------------------------------------


def test_tokenizer_roundtrip_eod_and_determinism(corpus, tmp_path):
    root, tokenizer, docs, _ = corpus
    assert 257 <= tokenizer.vocab_size <= 300
    assert tokenizer.eod == 0 and tokenizer.detokenize([tokenizer.eod]) == EOD_TOKEN
    for text in [docs[0], "héllo wörld ✓ 世界\n\tx = 1", ""]:
        ids = tokenizer.tokenize(text)
        assert tokenizer.eod not in ids
        assert tokenizer.detokenize(ids) == text
    assert len(tokenizer.tokenize(docs[0])) < len(docs[0].encode()) / 2  # merges were learned
    # Directory or file, the same tokenizer; retraining gives the identical file.
    assert build_tokenizer("HuggingFaceTokenizer", str(root / "tok")).tokenize(docs[1]) == \
        build_tokenizer("HuggingFaceTokenizer", str(root / "tok" / "tokenizer.json")).tokenize(docs[1])
    train_bpe_tokenizer([root / "train.txt"], 300, tmp_path)
    assert (tmp_path / "tokenizer.json").read_bytes() == (root / "tok" / "tokenizer.json").read_bytes()


def test_build_tokenizer_errors_and_null_tokenizer(tmp_path):
    with pytest.raises(DataError, match="--tokenizer-model"):
        build_tokenizer("HuggingFaceTokenizer", str(tmp_path / "missing"))
    with pytest.raises(DataError, match="--tokenizer-model"):
        build_tokenizer("HuggingFaceTokenizer")
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(DataError, match="--tokenizer-model"):
        build_tokenizer("HuggingFaceTokenizer", str(tmp_path))
    with pytest.raises(DataError, match="HuggingFaceTokenizer, NullTokenizer"):
        build_tokenizer("GPT2BPETokenizer")
    with pytest.raises(DataError, match="--vocab-size"):
        build_tokenizer("NullTokenizer")
    null = build_tokenizer("NullTokenizer", vocab_size=100)
    assert (null.vocab_size, null.eod) == (100, 99)
    assert null.tokenize("1 2 3") == [1, 2, 3] and null.detokenize([4, 5]) == "4 5"
    with pytest.raises(DataError, match="--vocab-size"):
        null.tokenize("100")
    with pytest.raises(DataError):
        train_bpe_tokenizer([tmp_path / "tokenizer.json"], 100, tmp_path / "small")


# --- preprocessing -----------------------------------------------------------------------


def test_preprocess_writes_documents_with_eod_same_for_any_worker_count(corpus, prefix, tool,
                                                                          capsys):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    root, tokenizer, docs, jsonl = corpus
    dataset = IndexedDataset(prefix)
    assert len(dataset) == len(docs) and dataset[0].dtype == np.uint16
    for i, text in enumerate(docs):
        assert dataset[i].tolist() == tokenizer.tokenize(text) + [tokenizer.eod]
    capsys.readouterr()
    two = str(root / "data" / "docs_w2")
    assert tool.main(["--input", str(jsonl), "--output-prefix", two, "--tokenizer-model",
                      str(root / "tok"), "--append-eod", "--workers", "2"]) == 0
    summary = capsys.readouterr().out.strip().splitlines()
    assert len(summary) == 1 and "40 documents" in summary[0] and "tokens/s" in summary[0]
    for ext in (".bin", ".idx"):
        assert Path(prefix + ext).read_bytes() == Path(two + ext).read_bytes()
    assert not list((root / "data").glob("*.partial*"))


def test_preprocess_text_files_one_document_per_file(corpus, tool, tmp_path):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    root, tokenizer, docs, _ = corpus
    (tmp_path / "in" / "sub").mkdir(parents=True)
    for name, text in [("b.txt", docs[1]), ("a.txt", docs[0]), ("sub/c.txt", docs[2])]:
        (tmp_path / "in" / name).write_text(text)
    out = str(tmp_path / "text")
    assert tool.main(["--input-format", "text", "--input", str(tmp_path / "in"),
                      "--output-prefix", out, "--tokenizer-model", str(root / "tok"),
                      "--quiet"]) == 0
    dataset = IndexedDataset(out)
    assert [dataset[i].tolist() for i in range(3)] == [tokenizer.tokenize(d) for d in docs[:3]]


@pytest.mark.parametrize(
    "lines, expected",
    [
        (['{"text": "a"}', '{"text": "b"}', '{"text": broken'], r"bad\.jsonl:3: malformed JSON"),
        (['{"text": "a"}', '{"body": "b"}'], r"bad\.jsonl:2: no key 'text'.*--json-keys"),
        ([], "no documents"),
    ],
)
def test_preprocess_bad_input_exits_2_with_one_line(corpus, tool, tmp_path, capsys, lines,
                                                    expected):
    root = corpus[0]
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(line + "\n" for line in lines))
    code = tool.main(["--input", str(bad), "--output-prefix", str(tmp_path / "out"),
                      "--tokenizer-model", str(root / "tok"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ")
    assert re.search(expected, err[0]), err[0]
    assert list(tmp_path.iterdir()) == [bad]  # nothing half-written left behind


def test_preprocess_unwritable_output(corpus, tool, tmp_path, capsys):
    root, _, _, jsonl = corpus
    (tmp_path / "file").write_text("")
    code = tool.main(["--input", str(jsonl), "--output-prefix", str(tmp_path / "file" / "out"),
                      "--tokenizer-model", str(root / "tok"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "--output-prefix" in err and err.count("\n") == 1


def test_cli_missing_input_exits_2_without_traceback(corpus, tmp_path):
    result = subprocess.run(
        [sys.executable, str(TOOL), "--input", str(tmp_path / "nope.jsonl"), "--output-prefix",
         str(tmp_path / "out"), "--tokenizer-model", str(corpus[0] / "tok")],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: input file {tmp_path / 'nope.jsonl'} not found: check --input"
    ]


# --- dataset checks ----------------------------------------------------------------------


def test_check_indexed_dataset(prefix, tmp_path):
    import shutil

    assert check_indexed_dataset(prefix)[0] == 40
    with pytest.raises(DataError, match="without .bin"):
        check_indexed_dataset(prefix + ".bin")
    copy = str(tmp_path / "copy")
    shutil.copy(prefix + ".idx", copy + ".idx")
    with pytest.raises(DataError, match=r"copy\.bin not found.*tools/preprocess_data.py"):
        check_indexed_dataset(copy)
    data = Path(prefix + ".bin").read_bytes()
    Path(copy + ".bin").write_bytes(data[:-10])
    with pytest.raises(DataError, match="truncated"):
        check_indexed_dataset(copy)
    Path(copy + ".bin").write_bytes(data)
    assert check_indexed_dataset(copy) == check_indexed_dataset(prefix)
    Path(copy + ".idx").write_bytes(b"garbage")
    with pytest.raises(DataError, match="unreadable"):
        check_indexed_dataset(copy)


def test_parse_data_path_and_vocab_check():
    assert parse_data_path(["p"]) == (["p"], None)
    assert parse_data_path(["p1", "p2"]) == (["p1", "p2"], None)
    assert parse_data_path(["0.3", "p1", "0.7", "p2"]) == (["p1", "p2"], [0.3, 0.7])
    assert parse_data_path("0.3 p1 0.7 p2") == (["p1", "p2"], [0.3, 0.7])
    assert parse_data_path(None) is None
    for bad in (["0.3", "p1", "p2"], ["p1", "0.5"], [], ["-1", "p1"], ["0.5", "0.5"]):
        with pytest.raises(DataError, match="--data-path"):
            parse_data_path(bad)
    check_vocab_fits(300, 512)
    with pytest.raises(DataError, match="tokenizer vocabulary 600 larger than the model's 512"):
        check_vocab_fits(600, 512)


# --- GPT datasets ------------------------------------------------------------------------


def test_build_gpt_datasets_samples_are_shifted_windows(megatron_world_of_one, corpus, prefix,
                                                        tmp_path):
    tokenizer = corpus[1]
    cache = str(tmp_path / "cache")
    train, valid, test = build_gpt_datasets([prefix], "80,20,0", 16, 1234, tokenizer,
                                            (64, 8, 0), cache_dir=cache)
    assert test is None and len(train) >= 64 and len(valid) >= 8
    sample = train[0]
    assert set(sample) == {"tokens", "labels", "loss_mask", "position_ids"}
    assert sample["tokens"].shape == sample["labels"].shape == (16,)
    assert torch.equal(sample["labels"][:-1], sample["tokens"][1:])
    assert torch.equal(sample["position_ids"], torch.arange(16))
    assert bool((sample["loss_mask"] == 1).all())
    # Deterministic, and served from the cache the second time.
    again, _, _ = build_gpt_datasets([prefix], "80,20,0", 16, 1234, tokenizer, (64, 8, 0),
                                     cache_dir=cache)
    assert all(torch.equal(train[i]["tokens"], again[i]["tokens"]) for i in range(len(train)))
    # The stream over a real dataset: shapes and dtypes the training step expects.
    batch = MicrobatchStream(train, 4, 2, 0, 1).next_step()
    assert len(batch) == 2 and batch[0]["attention_mask"] is None
    assert batch[0]["tokens"].shape == (2, 16) and batch[0]["tokens"].dtype == torch.int64
    assert batch[0]["loss_mask"].dtype == torch.float32


def test_build_gpt_datasets_blends_and_separate_validation(megatron_world_of_one, corpus, prefix,
                                                            tmp_path):
    tokenizer = corpus[1]
    train, valid, test = build_gpt_datasets([prefix], "1,0,0", 16, 1, tokenizer, (32, 8, 0),
                                            valid_data_path=[prefix], cache_dir=str(tmp_path))
    assert len(train) >= 32 and len(valid) >= 8 and test is None
    blended, _, _ = build_gpt_datasets(["0.25", prefix, "0.75", prefix], "1,0,0", 16, 1,
                                       tokenizer, (32, 0, 0), cache_dir=str(tmp_path))
    assert len(blended) == 32 and blended[0]["tokens"].shape == (16,)
    with pytest.raises(DataError, match="--split 99,1,0 leaves the valid split"):
        build_gpt_datasets([prefix], "99,1,0", 16, 1, tokenizer, (32, 8, 0))
    with pytest.raises(DataError, match="--vocab-size"):
        build_gpt_datasets([prefix], "1,0,0", 16, 1, tokenizer, (32, 0, 0), model_vocab_size=64)
    with pytest.raises(DataError, match="tools/preprocess_data.py"):
        build_gpt_datasets([str(tmp_path / "missing")], "1,0,0", 16, 1, tokenizer, (32, 0, 0))


def test_split_parts_asked_for_no_samples_are_not_built(megatron_world_of_one, tmp_path):
    """40 documents at 969,30,1: the test part holds none. Asked for 0 samples, Megatron would
    count its epochs forever (a run of the entry point hung there); it is not built at all."""
    import signal

    from support.indexed_documents import write_random_documents

    prefix = write_random_documents(str(tmp_path / "small"), 40, 64)

    def too_long(*_):
        raise TimeoutError("building the datasets did not finish in 60 s")

    previous = signal.signal(signal.SIGALRM, too_long)
    signal.alarm(60)
    try:
        train, valid, test = build_gpt_datasets([prefix], "969,30,1", 16, 1, NullTokenizer(64), (32, 0, 0),
                                                cache_dir=str(tmp_path / "cache"))
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert len(train) >= 32 and valid is None and test is None


def test_build_mock_gpt_datasets(megatron_world_of_one):
    train, _, _ = build_gpt_datasets(None, "1,0,0", 8, 1, NullTokenizer(64), (16, 0, 0),
                                     mock=True)
    sample = train[0]
    assert sample["tokens"].shape == (8,) and int(sample["tokens"].max()) < 64
    assert torch.equal(sample["labels"][:-1], sample["tokens"][1:])


# --- microbatches ------------------------------------------------------------------------


class _NumberedDataset:
    """Sample i is tokens [i, i, i] (so a batch shows which samples it holds)."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __len__(self):
        return self.size

    def __getitem__(self, i):
        tokens = torch.full((3,), i, dtype=torch.long)
        return {"tokens": tokens, "labels": tokens + 1, "loss_mask": torch.ones(3),
                "position_ids": torch.arange(3)}


def _sample_ids(step):
    return [int(t) for batch in step for t in batch["tokens"][:, 0]]


def test_microbatch_stream_dp_ranks_partition_the_single_rank_stream():
    dataset = _NumberedDataset(50)
    single = MicrobatchStream(dataset, 8, 2, 0, 1)
    ranks = [MicrobatchStream(dataset, 8, 2, r, 2) for r in range(2)]
    for _ in range(8):  # 64 samples: wraps around the 50-sample dataset
        expected = _sample_ids(single.next_step())
        steps = [rank.next_step() for rank in ranks]
        assert all(len(step) == 2 for step in steps)
        assert _sample_ids(steps[0]) + _sample_ids(steps[1]) == expected
    assert expected == [(56 + i) % 50 for i in range(8)]
    assert single.consumed_samples == ranks[1].consumed_samples == 64
    batch = steps[0][0]
    assert batch["tokens"].shape == (2, 3) and batch["attention_mask"] is None
    assert batch["loss_mask"].dtype == torch.float32


def test_microbatch_stream_resumes_from_consumed_samples():
    dataset = _NumberedDataset(50)
    first = MicrobatchStream(dataset, 6, 3, 1, 2)
    steps = [_sample_ids(first.next_step()) for _ in range(4)]
    resumed = MicrobatchStream(dataset, 6, 3, 1, 2, consumed_samples=12)
    assert [_sample_ids(resumed.next_step()) for _ in range(2)] == steps[2:]


@pytest.mark.parametrize("gbs, mbs, rank, dp", [(6, 4, 0, 1), (8, 2, 0, 3), (0, 1, 0, 1)])
def test_microbatch_stream_rejects_bad_batch_sizes(gbs, mbs, rank, dp):
    with pytest.raises(DataError) as error:
        MicrobatchStream(_NumberedDataset(10), gbs, mbs, rank, dp)
    assert "\n" not in str(error.value)
    if gbs:
        assert "--global-batch-size" in str(error.value)


def test_long_documents_are_tokenized_in_pieces_to_the_same_ids(corpus, monkeypatch):
    """Pieces cut before a single space between words give exactly the whole document's ids
    (also across newlines, runs of spaces and a word longer than the search window)."""
    from megatron_ponder.data import long_documents, preprocess

    _, tokenizer, docs, _ = corpus
    text = "  ".join(docs) + "\n\n  x" + "y" * 300 + " end  \n" + " ".join(docs)
    monkeypatch.setattr(long_documents, "PIECE_CHARS", 97)
    cut = list(long_documents.pieces(text))
    assert len(cut) > 10 and "".join(cut) == text
    assert np.array_equal(long_documents.tokenize_long(tokenizer, text), tokenizer.tokenize_batch([text])[0])
    monkeypatch.setattr(preprocess, "LONG_DOCUMENT_CHARS", 100)  # the preprocess path takes it
    work = preprocess.ChunkTokenizer(tokenizer, "text", "text", append_eod=True)
    (ids, _), = work([("doc", 0, text.encode())])
    assert ids.tolist() == tokenizer.tokenize_batch([text])[0] + [tokenizer.eod]
