"""The built-in stdlib corpus: disjoint train/valid documents, EOD-terminated, cached."""

import json
import time

from megatron_ponder.data.default_corpus import prepare_default_corpus, stdlib_sources
from megatron_ponder.data.tokenizer import build_tokenizer


def test_stdlib_sources_are_sorted_and_skip_tests():
    names = [rel for rel, _ in stdlib_sources()]
    assert names == sorted(names) and "argparse.py" in names
    excluded = {"test", "tests", "idlelib", "site-packages"}
    assert not any(excluded & set(rel.split("/")[:-1]) for rel in names)


def test_prepare_default_corpus_builds_disjoint_splits_and_reuses_them(tmp_path):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    start = time.perf_counter()
    corpus = prepare_default_corpus(tmp_path, vocab_size=512, max_bytes=300_000, progress=False)
    first_seconds = time.perf_counter() - start
    assert not corpus.reused

    def paths(name):
        lines = (tmp_path / "documents" / f"{name}.jsonl").read_text().splitlines()
        return [json.loads(line)["path"] for line in lines]

    train, valid = paths("train"), paths("valid")
    assert train and valid and not set(train) & set(valid)
    assert (len(train), len(valid)) == (corpus.num_train_documents, corpus.num_valid_documents)

    tokenizer = build_tokenizer("HuggingFaceTokenizer", str(corpus.tokenizer_dir))
    assert tokenizer.vocab_size == corpus.vocab_size == 512
    for prefix, count, tokens in [
        (corpus.train_prefix, corpus.num_train_documents, corpus.num_train_tokens),
        (corpus.valid_prefix, corpus.num_valid_documents, corpus.num_valid_tokens),
    ]:
        dataset = IndexedDataset(prefix)
        assert len(dataset) == count and int(dataset.sequence_lengths.sum()) == tokens
        assert all(dataset[i][-1] == tokenizer.eod for i in range(count))
        assert tokenizer.eod not in dataset[0][:-1]

    outputs = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    mtimes = [p.stat().st_mtime_ns for p in outputs]
    start = time.perf_counter()
    again = prepare_default_corpus(tmp_path, vocab_size=512, max_bytes=300_000, progress=False)
    assert again.reused and time.perf_counter() - start < first_seconds / 3
    assert again == corpus.__class__(**{**corpus.__dict__, "reused": True})
    assert sorted(p for p in tmp_path.rglob("*") if p.is_file()) == outputs
    assert [p.stat().st_mtime_ns for p in outputs] == mtimes

    # Different parameters: rebuilt, not reused.
    other = prepare_default_corpus(tmp_path, vocab_size=400, max_bytes=300_000, progress=False)
    assert not other.reused and other.vocab_size == 400


def test_prepare_file_corpus_builds_any_text_files_and_rebuilds_when_they_change(tmp_path):
    """The same build for other text (the training-dynamics study's prose corpus uses it)."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    from megatron_ponder.data.default_corpus import prepare_file_corpus

    texts = tmp_path / "texts"
    texts.mkdir()
    for i in range(12):
        (texts / f"doc{i:02d}.txt").write_text(f"Document {i} says hello to reader {i * 7}.\n" * 40)
    sources = sorted((p.name, p) for p in texts.iterdir())
    corpus = prepare_file_corpus(tmp_path / "built", sources, dict(source="texts"), vocab_size=300,
                                 valid_fraction=0.25, progress=False)
    assert (corpus.num_train_documents, corpus.num_valid_documents) == (9, 3) and not corpus.reused
    assert len(IndexedDataset(corpus.valid_prefix)) == 3
    again = prepare_file_corpus(tmp_path / "built", sources, dict(source="texts"), vocab_size=300,
                                valid_fraction=0.25, progress=False)
    assert again.reused and again.num_train_tokens == corpus.num_train_tokens
    (texts / "doc00.txt").write_text("A changed document.\n" * 50)
    sources = sorted((p.name, p) for p in texts.iterdir())
    assert not prepare_file_corpus(tmp_path / "built", sources, dict(source="texts"), vocab_size=300,
                                   valid_fraction=0.25, progress=False).reused
