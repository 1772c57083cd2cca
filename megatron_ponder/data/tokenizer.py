"""Tokenizers for preprocessing and for Megatron's GPT datasets.

Two kinds, with the same small interface (``vocab_size``, ``eod``, ``tokenize``,
``tokenize_batch``, ``detokenize``, ``unique_identifiers``):

* :class:`Tokenizer` wraps an HF ``tokenizers.Tokenizer`` (a ``tokenizer.json``), e.g. the
  byte-level BPE that :func:`train_bpe_tokenizer` trains offline in seconds.
* :class:`NullTokenizer` reads whitespace-separated integer ids; used with mock data.

Megatron's ``GPTDatasetConfig`` only reads ``vocab_size``, ``eod`` and ``unique_identifiers``
(the latter goes into the hash that names its cached sample indices), so these classes can be
passed to it directly. Neither defines ``pad``: Megatron then pads with -1, an id that can never
collide with a real token.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from pathlib import Path
from typing import List, Optional, Sequence, Union

from megatron_ponder.data.errors import DataError

EOD_TOKEN = "<|endoftext|>"
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_TYPES = ("HuggingFaceTokenizer", "NullTokenizer")

# 256 byte symbols + the end-of-document token: the smallest byte-level BPE vocabulary.
_MIN_BPE_VOCAB = 257


class Tokenizer:
    """An HF ``tokenizers.Tokenizer`` with an end-of-document token ``<|endoftext|>``.

    Special tokens are never added implicitly: ``tokenize`` returns exactly the text's ids and
    the caller appends ``eod`` where a document ends.
    """

    def __init__(self, hf_tokenizer, source: str = "<memory>") -> None:
        eod = hf_tokenizer.token_to_id(EOD_TOKEN)
        if eod is None:
            raise DataError(
                f"tokenizer {source} has no {EOD_TOKEN} token: add it as a special token "
                "or train one with train_bpe_tokenizer"
            )
        self._hf = hf_tokenizer
        self._eod = int(eod)
        self.source = source
        # Content hash, not path: a tokenizer retrained in place must not reuse cached indices.
        self._digest = hashlib.sha256(hf_tokenizer.to_str().encode("utf-8")).hexdigest()

    @classmethod
    def from_file(cls, path: Union[str, Path]) -> "Tokenizer":
        """Load a ``tokenizer.json`` file, or a directory that contains one."""
        from tokenizers import Tokenizer as HFTokenizer

        path = Path(path)
        file = path / TOKENIZER_FILE if path.is_dir() else path
        if not file.is_file():
            raise DataError(
                f"tokenizer file {file} not found: pass --tokenizer-model a tokenizer.json file "
                "or a directory containing one"
            )
        try:
            hf = HFTokenizer.from_file(str(file))
        except Exception as err:  # tokenizers raises a bare Exception on malformed json
            first_line = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise DataError(
                f"cannot load tokenizer {file} ({first_line}): pass --tokenizer-model a valid "
                "HF tokenizer.json"
            ) from None
        return cls(hf, source=str(file))

    @property
    def vocab_size(self) -> int:
        """Number of ids, special tokens included (ids are 0..vocab_size-1)."""
        return int(self._hf.get_vocab_size(with_added_tokens=True))

    @property
    def eod(self) -> int:
        """Id of ``<|endoftext|>``, appended after every document."""
        return self._eod

    @property
    def unique_identifiers(self) -> "OrderedDict[str, object]":
        """Identity for Megatron's dataset cache hash (JSON-serialisable)."""
        return OrderedDict(
            [("class", "megatron_ponder.Tokenizer"), ("vocab_size", self.vocab_size),
             ("eod", self.eod), ("sha256", self._digest)]
        )

    def tokenize(self, text: str) -> List[int]:
        """Text -> ids, no special tokens added."""
        return self._hf.encode(text, add_special_tokens=False).ids

    def tokenize_batch(self, texts: Sequence[str]) -> List[List[int]]:
        """Many texts -> ids; HF parallelises this over threads."""
        return [e.ids for e in self._hf.encode_batch(list(texts), add_special_tokens=False)]

    def detokenize(self, ids: Sequence[int]) -> str:
        """Ids -> text; ``<|endoftext|>`` is kept so document boundaries stay visible."""
        return self._hf.decode([int(i) for i in ids], skip_special_tokens=False)

    def save(self, directory: Union[str, Path]) -> Path:
        """Write ``directory/tokenizer.json`` (creating the directory); returns the file."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        file = directory / TOKENIZER_FILE
        self._hf.save(str(file))
        return file

    def __getstate__(self):
        # HF tokenizers pickle through their JSON; keep pickling explicit for worker processes.
        return {"json": self._hf.to_str(), "source": self.source}

    def __setstate__(self, state) -> None:
        from tokenizers import Tokenizer as HFTokenizer

        self.__init__(HFTokenizer.from_str(state["json"]), source=state["source"])


class NullTokenizer:
    """Ids written as text: ``"5 6 7"`` <-> ``[5, 6, 7]``; ids 0..vocab_size-1, eod = vocab_size-1.

    For mock data and synthetic benchmarks, where no real vocabulary exists.
    """

    def __init__(self, vocab_size: int) -> None:
        if vocab_size is None or int(vocab_size) < 2:
            raise DataError(
                f"NullTokenizer needs a vocabulary of at least 2 ids, got {vocab_size}: "
                "pass --vocab-size"
            )
        self._vocab_size = int(vocab_size)

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def eod(self) -> int:
        return self._vocab_size - 1

    @property
    def unique_identifiers(self) -> "OrderedDict[str, object]":
        return OrderedDict([("class", "megatron_ponder.NullTokenizer"),
                            ("vocab_size", self._vocab_size)])

    def tokenize(self, text: str) -> List[int]:
        try:
            ids = [int(word) for word in text.split()]
        except ValueError:
            raise DataError(
                "NullTokenizer reads whitespace-separated integer ids, got non-integer text: "
                "use --tokenizer-type HuggingFaceTokenizer for real text"
            ) from None
        bad = [i for i in ids if not 0 <= i < self._vocab_size]
        if bad:
            raise DataError(
                f"NullTokenizer id {bad[0]} outside 0..{self._vocab_size - 1}: raise --vocab-size"
            )
        return ids

    def tokenize_batch(self, texts: Sequence[str]) -> List[List[int]]:
        return [self.tokenize(text) for text in texts]

    def detokenize(self, ids: Sequence[int]) -> str:
        return " ".join(str(int(i)) for i in ids)


def train_bpe_tokenizer(
    files: Sequence[Path], vocab_size: int, output_dir: Path
) -> Tokenizer:
    """Train a byte-level BPE on plain UTF-8 text files and save ``output_dir/tokenizer.json``.

    ByteLevel pre-tokenizer and decoder (every byte string round-trips), one special token
    ``<|endoftext|>`` (id 0). Deterministic: the same files and vocab_size give the same file.
    """
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    if vocab_size < _MIN_BPE_VOCAB:
        raise DataError(
            f"byte-level BPE vocab_size {vocab_size} is too small: use at least "
            f"{_MIN_BPE_VOCAB} (256 bytes + {EOD_TOKEN})"
        )
    files = [Path(f) for f in files]
    if not files:
        raise DataError("no files to train the tokenizer on: pass at least one text file")
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise DataError(f"tokenizer training file {missing[0]} not found: check the path")

    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOD_TOKEN],
        # All 256 bytes up front: text outside the training files still tokenizes.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    hf.train([str(f) for f in files], trainer)
    tokenizer = Tokenizer(hf, source=str(Path(output_dir) / TOKENIZER_FILE))
    tokenizer.save(output_dir)
    return tokenizer


def build_tokenizer(
    tokenizer_type: str,
    tokenizer_model: Optional[str] = None,
    vocab_size: Optional[int] = None,
) -> Union[Tokenizer, NullTokenizer]:
    """Tokenizer from command-line style arguments.

    ``HuggingFaceTokenizer``: ``tokenizer_model`` is a tokenizer.json or a directory holding one.
    ``NullTokenizer``: needs ``vocab_size``.
    """
    if tokenizer_type == "HuggingFaceTokenizer":
        if not tokenizer_model:
            raise DataError(
                "HuggingFaceTokenizer needs --tokenizer-model (a tokenizer.json or its directory)"
            )
        return Tokenizer.from_file(tokenizer_model)
    if tokenizer_type == "NullTokenizer":
        if vocab_size is None:
            raise DataError("NullTokenizer needs a vocabulary size: pass --vocab-size")
        return NullTokenizer(vocab_size)
    raise DataError(
        f"unknown tokenizer type {tokenizer_type!r}: choose one of {', '.join(TOKENIZER_TYPES)}"
    )
