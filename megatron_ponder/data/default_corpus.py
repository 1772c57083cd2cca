"""The built-in demo corpus: the running interpreter's Python standard library sources.

Present on every machine with Python, so the demo run needs no download. One ``.py`` file is
one document. :func:`prepare_default_corpus` writes the documents as jsonl, trains a byte-level
BPE on the training files and tokenizes both splits into Megatron indexed datasets with the
same function ``tools/preprocess_data.py`` uses. A manifest records the inputs and parameters;
when it matches, the existing outputs are reused and a second call returns at once.

Layout under ``work_dir``::

    documents/train.jsonl, documents/valid.jsonl   {"text": ..., "path": <stdlib-relative>}
    tokenizer/tokenizer.json
    train.bin/.idx, valid.bin/.idx                 EOD after every document
    manifest.json                                  written last: its presence means complete
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
import sysconfig
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import List, Optional, Tuple

from megatron_ponder.data.errors import DataError
from megatron_ponder.data.preprocess import preprocess_to_indexed_dataset
from megatron_ponder.data.tokenizer import TOKENIZER_FILE, train_bpe_tokenizer

# Tests and tooling, not library code; site-packages is whatever happens to be installed.
EXCLUDED_DIRS = frozenset({"test", "tests", "idlelib", "site-packages", "__pycache__"})
_MANIFEST = "manifest.json"
_FORMAT = 1  # bump when the layout or the selection rule changes: old caches then rebuild


@dataclass(frozen=True)
class DefaultCorpus:
    """Where the prepared corpus lives and how big it is."""

    tokenizer_dir: Path  # holds tokenizer.json (--tokenizer-model)
    train_prefix: str  # Megatron dataset prefix: train.bin/.idx
    valid_prefix: str
    num_train_documents: int
    num_valid_documents: int
    num_train_tokens: int
    num_valid_tokens: int
    vocab_size: int  # of the trained tokenizer
    reused: bool  # True when the outputs of an earlier call were reused


def stdlib_sources(stdlib: Optional[Path] = None) -> List[Tuple[str, Path]]:
    """(relative posix path, path) of the stdlib ``*.py`` files, sorted, excluded dirs pruned."""
    root = Path(stdlib or sysconfig.get_paths()["stdlib"])
    found = []
    for directory, dirnames, filenames in os.walk(root):
        # Prune in place: walking into site-packages alone takes seconds.
        dirnames[:] = sorted(d for d in dirnames if d not in EXCLUDED_DIRS)
        for name in filenames:
            if name.endswith(".py"):
                path = Path(directory) / name
                found.append((path.relative_to(root).as_posix(), path))
    return sorted(found)


def prepare_default_corpus(
    work_dir: Path,
    vocab_size: int = 4096,
    max_bytes: Optional[int] = 8_000_000,
    valid_fraction: float = 0.05,
    workers: int = 1,
    progress: bool = True,
) -> DefaultCorpus:
    """Build (or reuse) the stdlib corpus under ``work_dir``; deterministic.

    ``max_bytes``: stop adding files once this much text is selected (None: all ~11 MB).
    Files are taken in a fixed pseudo-random order (a hash of their path) so a small budget
    still samples the whole library. Every ``round(1/valid_fraction)``-th selected file,
    starting with the first, is a validation document and never a training one.

    Collective under torch.distributed: rank 0 builds while the others wait, then they reuse.
    """
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    identity = dict(python=platform.python_version(), stdlib=str(stdlib))
    return prepare_file_corpus(work_dir, stdlib_sources(stdlib), identity, vocab_size, max_bytes, valid_fraction,
                               workers, progress)


def prepare_file_corpus(
    work_dir: Path,
    sources: List[Tuple[str, Path]],
    identity: dict,
    vocab_size: int = 4096,
    max_bytes: Optional[int] = 8_000_000,
    valid_fraction: float = 0.05,
    workers: int = 1,
    progress: bool = True,
) -> DefaultCorpus:
    """The same build for any text files, one document each (the stdlib corpus is one use).

    ``sources``: (relative name, path) pairs; the relative name orders and splits them.
    ``identity``: what names the source (recorded in the manifest; a change rebuilds).
    The other arguments are :func:`prepare_default_corpus`'s.
    """
    work_dir = Path(work_dir)
    if not 0.0 < valid_fraction <= 0.5:
        raise DataError(f"valid_fraction {valid_fraction} must be in (0, 0.5]")
    if max_bytes is not None and max_bytes <= 0:
        raise DataError(f"max_bytes {max_bytes} must be positive (or None for everything)")
    params = {
        "format": _FORMAT,
        **identity,
        "listing": _listing_digest(sources),
        "vocab_size": vocab_size,
        "max_bytes": max_bytes,
        "valid_fraction": valid_fraction,
    }

    def prepare() -> DefaultCorpus:
        cached = _load_if_current(work_dir, params)
        if cached is not None:
            return cached
        return _build(work_dir, params, sources, workers, progress)

    return _rank_zero_first(prepare)


def _build(work_dir: Path, params: dict, sources, workers: int, progress: bool) -> DefaultCorpus:
    manifest = work_dir / _MANIFEST
    if manifest.exists():
        manifest.unlink()  # from here on the outputs are incomplete until rewritten
    documents = _select(sources, params["max_bytes"])
    stride = max(2, round(1.0 / params["valid_fraction"]))
    valid = [doc for i, doc in enumerate(documents) if i % stride == 0]
    train = [doc for i, doc in enumerate(documents) if i % stride != 0]
    if not train or not valid:
        raise DataError(
            f"max_bytes {params['max_bytes']} selects {len(documents)} files, too few "
            "for a train and a validation split: raise max_bytes"
        )
    doc_dir = work_dir / "documents"
    _write_jsonl(doc_dir / "train.jsonl", train)
    _write_jsonl(doc_dir / "valid.jsonl", valid)
    tokenizer_dir = work_dir / "tokenizer"
    tokenizer = train_bpe_tokenizer([path for _, path, _ in train], params["vocab_size"],
                                    tokenizer_dir)
    stats = {}
    for name in ("train", "valid"):
        stats[name] = preprocess_to_indexed_dataset(
            [doc_dir / f"{name}.jsonl"], work_dir / name, tokenizer,
            append_eod=True, workers=workers, progress=progress,
        )
    corpus = DefaultCorpus(
        tokenizer_dir=tokenizer_dir,
        train_prefix=str(work_dir / "train"),
        valid_prefix=str(work_dir / "valid"),
        num_train_documents=stats["train"].documents,
        num_valid_documents=stats["valid"].documents,
        num_train_tokens=stats["train"].tokens,
        num_valid_tokens=stats["valid"].tokens,
        vocab_size=tokenizer.vocab_size,
        reused=False,
    )
    result = {k: v for k, v in asdict(corpus).items() if k.startswith("num_") or k == "vocab_size"}
    _atomic_write(manifest, json.dumps({"params": params, "result": result}, indent=1))
    if progress:
        print(
            f"default corpus: {corpus.num_train_documents} train / {corpus.num_valid_documents} "
            f"valid documents, {corpus.num_train_tokens} / {corpus.num_valid_tokens} tokens, "
            f"vocab {corpus.vocab_size}, in {work_dir}",
            file=sys.stderr,
        )
    return corpus


def _select(sources, max_bytes: Optional[int]) -> List[Tuple[str, Path, str]]:
    """(relative path, path, text) of the chosen files: readable UTF-8 with some text."""
    order = sorted(sources, key=lambda item: hashlib.sha1(item[0].encode()).hexdigest())
    chosen, total = [], 0
    for rel, path in order:
        if max_bytes is not None and total >= max_bytes:
            break
        try:
            text = path.read_bytes().decode("utf-8")
        except (OSError, UnicodeDecodeError):
            continue  # unreadable or not UTF-8: the tokenizer trainer could not read it either
        if not text.strip():
            continue  # empty __init__.py files: nothing to learn, no document to write
        chosen.append((rel, path, text))
        total += len(text.encode("utf-8"))
    return chosen


def _load_if_current(work_dir: Path, params: dict) -> Optional[DefaultCorpus]:
    try:
        manifest = json.loads((work_dir / _MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    outputs = [work_dir / "tokenizer" / TOKENIZER_FILE] + [
        work_dir / f"{name}{ext}" for name in ("train", "valid") for ext in (".bin", ".idx")
    ]
    if manifest.get("params") != params or not all(p.is_file() for p in outputs):
        return None
    try:
        return DefaultCorpus(
            tokenizer_dir=work_dir / "tokenizer",
            train_prefix=str(work_dir / "train"),
            valid_prefix=str(work_dir / "valid"),
            reused=True,
            **manifest["result"],
        )
    except (KeyError, TypeError):
        return None  # a manifest from an incompatible version: rebuild


def _listing_digest(sources) -> str:
    """Hash of names, sizes and mtimes: any change to the stdlib files triggers a rebuild."""
    digest = hashlib.sha256()
    for rel, path in sources:
        stat = path.stat()
        digest.update(f"{rel}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _write_jsonl(path: Path, documents) -> None:
    lines = (json.dumps({"text": text, "path": rel}, ensure_ascii=False) for rel, _, text in documents)
    _atomic_write(path, "\n".join(lines) + "\n")


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _rank_zero_first(prepare):
    """Run ``prepare`` on rank 0, then on the others (which then reuse rank 0's outputs).

    Rank 0's failure is broadcast so the other ranks fail with it instead of waiting forever.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return prepare()
    if dist.get_rank() == 0:
        try:
            result = prepare()
        except Exception as err:
            dist.broadcast_object_list([f"{type(err).__name__}: {err}"], src=0)
            raise
        dist.broadcast_object_list([None], src=0)
        return result
    failure = [None]
    dist.broadcast_object_list(failure, src=0)
    if failure[0] is not None:
        raise DataError(f"rank 0 could not prepare the default corpus: {failure[0]}")
    return prepare()
