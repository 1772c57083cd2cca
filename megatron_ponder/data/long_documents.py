"""Tokenize a long document in bounded memory: piece by piece, at boundaries that cannot change the ids.

Hugging Face's ``encode`` keeps per-token offsets, strings and word ids: about 200 bytes per
input byte, so one 48 MB document peaked near 9 GB. Here a document longer than
:data:`LONG_DOCUMENT_CHARS` is cut into pieces of about :data:`PIECE_CHARS` characters, each
encoded alone and kept as an int32 array, then joined.

Where to cut: just before a single space that sits between two non-space characters. A
pre-tokenizer that splits on whitespace (GPT-2's ByteLevel regex, which megatron_ponder's BPE
tokenizers and GPT-2/LLaMA-3/NeoX-style ``tokenizer.json`` files use) starts a new pre-token at
such a space (`` ?\\w+``: the space belongs to the next word), and BPE merges never cross
pre-tokens, so the ids equal those of the whole document. A text without such a space in a
window (one giant token) is cut at the window's end.
"""

from __future__ import annotations

from typing import Iterator, Optional

import numpy as np

LONG_DOCUMENT_CHARS = 1 << 20  # shorter documents are encoded whole (the usual case)
PIECE_CHARS = 1 << 17


def _is_cut(text: str, i: int) -> bool:
    return text[i] == " " and not text[i - 1].isspace() and i + 1 < len(text) and not text[i + 1].isspace()


def pieces(text: str, piece_chars: Optional[int] = None) -> Iterator[str]:
    """``text`` in consecutive pieces of about ``piece_chars`` (default PIECE_CHARS) characters."""
    piece_chars = piece_chars or PIECE_CHARS
    start = 0
    while len(text) - start > piece_chars:
        cut = start + piece_chars
        limit = min(len(text) - 1, cut + piece_chars // 4)  # look this far for a safe space
        while cut < limit and not _is_cut(text, cut):
            cut += 1
        yield text[start:cut]
        start = cut
    yield text[start:]


def tokenize_long(tokenizer, text: str) -> np.ndarray:
    """int32 ids of ``text`` (half of int64's memory; vocabularies stay far below 2**31), encoded
    piece by piece: the peak is the text, twice its ids, and one piece's encoding."""
    parts = [np.asarray(tokenizer.tokenize_batch([piece])[0], dtype=np.int32) for piece in pieces(text)]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)
