"""Tokenize text or jsonl documents into a Megatron indexed dataset (``prefix.bin``/``.idx``).

The library behind ``tools/preprocess_data.py`` and :mod:`megatron_ponder.data.default_corpus`.
Documents flow in order: the parent reads raw bytes, workers decode, parse and tokenize chunks
of documents, and the parent appends the results to Megatron's ``IndexedDatasetBuilder`` in
input order, so ``workers=1`` and ``workers=N`` write byte-identical files.

One document = one jsonl record (``json_key`` field) or one whole text file.
The output is written under this run's own temporary names and renamed at the end, while the run
holds the output prefix's lock (:mod:`megatron_ponder.data.output_lock`): an interrupted run never
leaves a ``.bin``/``.idx`` pair that looks complete, and two runs into one prefix never mix.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, List, Optional, Sequence, TextIO, Tuple, Union

import numpy as np

from megatron_ponder.data.errors import DataError
from megatron_ponder.data.long_documents import LONG_DOCUMENT_CHARS, tokenize_long
from megatron_ponder.data.output_lock import exclusive_output, publish, temporary_paths

INPUT_FORMATS = ("jsonl", "text")

# A record is (source file, 1-based line number or 0 for a whole file, raw bytes).
Record = Tuple[str, int, bytes]

_CHUNK_DOCUMENTS = 256  # documents per worker task: amortises inter-process overhead
_CHUNK_BYTES = 1 << 20  # ...but cap a task at ~1 MB so progress stays smooth
_IN_FLIGHT_PER_WORKER = 4  # bounded read-ahead: memory stays flat on any input size


@dataclass
class PreprocessStats:
    """What one preprocessing run wrote."""

    output_prefix: str
    documents: int  # written documents
    skipped: int  # documents with no tokens (empty text), not written
    tokens: int  # written tokens, EOD included
    input_bytes: int
    seconds: float

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / max(self.seconds, 1e-9)

    def summary(self) -> str:
        """One line for the end of a run."""
        skipped = f" ({self.skipped} empty skipped)" if self.skipped else ""
        return (
            f"wrote {self.output_prefix}.bin/.idx: {self.documents} documents{skipped}, "
            f"{self.tokens} tokens, {self.input_bytes / 1e6:.1f} MB in {self.seconds:.2f} s "
            f"({self.tokens_per_second:,.0f} tokens/s)"
        )


def find_input_files(inputs: Sequence[Union[str, Path]], input_format: str) -> List[Path]:
    """Check the inputs exist; for ``text``, a directory stands for its files (sorted, recursive)."""
    if input_format not in INPUT_FORMATS:
        raise DataError(
            f"unknown input format {input_format!r}: choose one of {', '.join(INPUT_FORMATS)}"
        )
    if not inputs:
        raise DataError("no input given: pass --input FILE")
    files: List[Path] = []
    for item in map(Path, inputs):
        if item.is_dir() and input_format == "text":
            files.extend(sorted(p for p in item.rglob("*") if p.is_file()))
        elif item.is_file():
            files.append(item)
        elif item.is_dir():
            raise DataError(f"input {item} is a directory: pass jsonl files to --input")
        else:
            raise DataError(f"input file {item} not found: check --input")
    if not files:
        raise DataError(f"no input files under {', '.join(map(str, inputs))}: check --input")
    return files


def iter_records(files: Sequence[Path], input_format: str) -> Iterator[Record]:
    """Raw documents in input order: jsonl lines (blank lines skipped) or whole text files."""
    for file in files:
        try:
            if input_format == "text":
                yield str(file), 0, file.read_bytes()
                continue
            with open(file, "rb") as stream:
                for number, line in enumerate(stream, start=1):
                    if line.strip():
                        yield str(file), number, line
        except OSError as err:
            raise DataError(f"cannot read input {file} ({err.strerror}): check --input") from None


class ChunkTokenizer:
    """Raw records -> token arrays (EOD appended if asked); runs in worker processes.

    Decoding and JSON parsing happen here, not in the parent, so they are parallel too, and an
    error still names the exact file and line.
    """

    def __init__(self, tokenizer, input_format: str, json_key: str, append_eod: bool) -> None:
        self.tokenizer = tokenizer
        self.input_format = input_format
        self.json_key = json_key
        self.append_eod = append_eod

    def text_of(self, record: Record) -> str:
        source, line, raw = record
        where = f"{source}:{line}" if line else source
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise DataError(
                f"{where}: not UTF-8 (byte {err.start}): convert the input to UTF-8"
            ) from None
        if self.input_format == "text":
            return text
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(
                f"{where}: malformed JSON ({err.msg} at column {err.colno}): "
                "fix or remove the line"
            ) from None
        if not isinstance(obj, dict) or self.json_key not in obj:
            keys = ", ".join(map(repr, obj)) if isinstance(obj, dict) else type(obj).__name__
            raise DataError(
                f"{where}: no key {self.json_key!r} in the record (has {keys}): "
                "pass --json-keys with the text field"
            )
        value = obj[self.json_key]
        if not isinstance(value, str):
            raise DataError(
                f"{where}: key {self.json_key!r} holds {type(value).__name__}, not text: "
                "pass --json-keys with the text field"
            )
        return value

    def __call__(self, chunk: List[Record]) -> List[Tuple[np.ndarray, int]]:
        """[(token ids [n_i] int64, int32 for long documents, input bytes)] per record; empty text
        gives n_i = 0."""
        texts = [self.text_of(record) for record in chunk]
        short = [text for text in texts if len(text) <= LONG_DOCUMENT_CHARS]
        encoded = iter(self.tokenizer.tokenize_batch(short))
        out = []
        for text, record in zip(texts, chunk, strict=True):
            # Long documents piece by piece, in bounded memory (data/long_documents.py).
            ids = np.asarray(next(encoded), dtype=np.int64) if len(text) <= LONG_DOCUMENT_CHARS \
                else tokenize_long(self.tokenizer, text)
            if ids.size and self.append_eod:
                ids = np.append(ids, np.asarray(self.tokenizer.eod, dtype=ids.dtype))
            out.append((ids, len(record[2])))
        return out


def preprocess_to_indexed_dataset(
    inputs: Sequence[Union[str, Path]],
    output_prefix: Union[str, Path],
    tokenizer,
    *,
    input_format: str = "jsonl",
    json_key: str = "text",
    append_eod: bool = False,
    workers: int = 1,
    progress: bool = True,
    progress_stream: Optional[TextIO] = None,
) -> PreprocessStats:
    """Tokenize ``inputs`` into ``output_prefix.bin``/``.idx``; one document per record/file.

    The token dtype is the smallest Megatron picks for ``tokenizer.vocab_size``
    (``DType.optimal_dtype``: uint16 below 65500 ids, else int32). Documents that tokenize to
    nothing are skipped. Raises DataError on bad input, an unwritable output or no documents.
    """
    files = find_input_files(inputs, input_format)
    if workers < 1:
        raise DataError(f"--workers must be at least 1, got {workers}")
    output_prefix = str(output_prefix)
    if os.path.isdir(output_prefix) or output_prefix.endswith(os.sep):
        raise DataError(f"output prefix {output_prefix!r} names a directory: pass --output-prefix like data/corpus")
    with exclusive_output(output_prefix):
        return _write_dataset(files, inputs, output_prefix, tokenizer, input_format, json_key, append_eod, workers,
                              progress, progress_stream)


def _write_dataset(files, inputs, output_prefix: str, tokenizer, input_format, json_key, append_eod, workers,
                   progress, progress_stream) -> PreprocessStats:
    """The run itself, under the output's lock: tokenize into temporary files, then publish."""
    tmp_bin, tmp_idx = temporary_paths(output_prefix)

    # Imported here, not at module level: megatron.core takes seconds to import, and input
    # errors (the common failure) should be reported instantly.
    from megatron.core.datasets.indexed_dataset import DType

    builder = _open_builder(tmp_bin, DType.optimal_dtype(tokenizer.vocab_size))
    reporter = _Progress(progress, progress_stream or sys.stderr)
    documents = skipped = tokens = nbytes = 0
    start = time.perf_counter()
    finished = False
    try:
        work = ChunkTokenizer(tokenizer, input_format, json_key, append_eod)
        chunks = _chunked(iter_records(files, input_format))
        for results in _run_in_order(work, chunks, workers):
            chunk_tokens = 0
            for ids, size in results:
                nbytes += size
                if ids.size == 0:
                    skipped += 1
                    continue
                builder.add_document(ids, [int(ids.size)])
                documents += 1
                chunk_tokens += int(ids.size)
            tokens += chunk_tokens
            reporter.update(len(results), sum(size for _, size in results), chunk_tokens)
        if documents == 0:
            raise DataError(
                f"no documents with text in {', '.join(map(str, inputs))}: check --input "
                f"(and --json-keys / --input-format)"
            )
        builder.finalize(tmp_idx)
        publish(tmp_bin, tmp_idx, output_prefix)
        finished = True
    finally:
        reporter.close()
        if not finished:
            builder.data_file.close()
            for path in (tmp_bin, tmp_idx):
                if os.path.exists(path):
                    os.remove(path)
    return PreprocessStats(
        output_prefix, documents, skipped, tokens, nbytes, time.perf_counter() - start
    )


def _open_builder(tmp_bin: str, dtype):
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    try:
        os.makedirs(os.path.dirname(os.path.abspath(tmp_bin)), exist_ok=True)
        return IndexedDatasetBuilder(tmp_bin, dtype=dtype)
    except OSError as err:
        raise DataError(
            f"cannot write {tmp_bin} ({err.strerror}): choose a writable --output-prefix"
        ) from None


def _chunked(records: Iterable[Record]) -> Iterator[List[Record]]:
    chunk: List[Record] = []
    size = 0
    for record in records:
        chunk.append(record)
        size += len(record[2])
        if len(chunk) >= _CHUNK_DOCUMENTS or size >= _CHUNK_BYTES:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


# Worker-process state, set once per worker by the pool initializer.
_WORKER: Optional[ChunkTokenizer] = None


def _init_worker(work: ChunkTokenizer) -> None:
    global _WORKER
    _WORKER = work


def _work_in_worker(chunk: List[Record]):
    return _WORKER(chunk)


def _run_in_order(work: ChunkTokenizer, chunks: Iterator[List[Record]], workers: int):
    """Yield ``work(chunk)`` for every chunk, in order, using ``workers`` processes."""
    if workers == 1:
        for chunk in chunks:
            yield work(chunk)
        return
    with _pool(work, workers) as pool:
        pending = deque()
        for chunk in chunks:
            pending.append(pool.apply_async(_work_in_worker, (chunk,)))
            if len(pending) >= _IN_FLIGHT_PER_WORKER * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


@contextmanager
def _pool(work: ChunkTokenizer, workers: int):
    # fork is fast and needs no re-import; spawn elsewhere (the tokenizer pickles via JSON).
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    # HF tokenizers warns (and disables its threads) in a child forked after it used threads;
    # the processes are the parallelism here, so say so explicitly for the children only.
    previous = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        pool = context.Pool(workers, initializer=_init_worker, initargs=(work,))
    finally:
        if previous is None:
            del os.environ["TOKENIZERS_PARALLELISM"]
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = previous
    try:
        yield pool
    finally:
        pool.terminate()
        pool.join()


class _Progress:
    """Progress on stderr: a tqdm bar on a terminal when tqdm is installed, else a line per ~1 s.

    Plain lines off a terminal because carriage-return bars turn log files into one huge line.
    """

    def __init__(self, enabled: bool, stream: TextIO, interval: float = 1.0) -> None:
        self.enabled, self.stream, self.interval = enabled, stream, interval
        self.documents = self.bytes = self.tokens = 0
        self.start = self.last = time.perf_counter()
        self.bar = None
        if enabled and getattr(stream, "isatty", lambda: False)():
            try:
                from tqdm import tqdm

                self.bar = tqdm(unit=" docs", file=stream, dynamic_ncols=True)
            except ImportError:
                pass

    def update(self, documents: int, nbytes: int, tokens: int) -> None:
        if not self.enabled:
            return
        self.documents += documents
        self.bytes += nbytes
        self.tokens += tokens
        now = time.perf_counter()
        rate = self.tokens / max(now - self.start, 1e-9)
        if self.bar is not None:
            self.bar.update(documents)
            self.bar.set_postfix_str(f"{self.bytes / 1e6:.1f} MB, {rate:,.0f} tokens/s")
        elif now - self.last >= self.interval:
            self.last = now
            print(
                f"processed {self.documents} documents ({self.bytes / 1e6:.1f} MB), "
                f"{rate:,.0f} tokens/s",
                file=self.stream,
                flush=True,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
