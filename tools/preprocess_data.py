#!/usr/bin/env python
"""Tokenize jsonl or text documents into a Megatron indexed dataset (PREFIX.bin / PREFIX.idx).

Examples:
    python tools/preprocess_data.py --input corpus.jsonl --output-prefix data/corpus \\
        --tokenizer-type HuggingFaceTokenizer --tokenizer-model tok/ --append-eod --workers 2
    python tools/preprocess_data.py --input-format text --input docs/ --output-prefix data/docs \\
        --tokenizer-model tok/tokenizer.json --append-eod

Unlike Megatron-LM's tool, the output is exactly PREFIX.bin/.idx (no ``_text_document``
suffix) and one --json-keys key is read. Bad input exits with status 2 and one line
``error: <message>``.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from typing import List, Optional

# This repository's package, not another installed copy of it.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# megatron.core warns about missing GPU libraries on import; irrelevant for preprocessing.
warnings.filterwarnings("ignore", message=".*(Transformer Engine|Apex).*not installed")

from megatron_ponder.data.errors import DataError  # noqa: E402
from megatron_ponder.data.preprocess import INPUT_FORMATS, preprocess_to_indexed_dataset  # noqa: E402
from megatron_ponder.data.tokenizer import TOKENIZER_TYPES, build_tokenizer  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Tokenize documents into a Megatron indexed dataset (.bin/.idx)."
    )
    parser.add_argument("--input", nargs="+", required=True,
                        help="jsonl file(s), or text files/directories with --input-format text")
    parser.add_argument("--input-format", choices=INPUT_FORMATS, default="jsonl",
                        help="jsonl: one document per line; text: one document per file")
    parser.add_argument("--json-keys", default="text", help="jsonl field holding the text")
    parser.add_argument("--output-prefix", required=True,
                        help="writes OUTPUT_PREFIX.bin and OUTPUT_PREFIX.idx")
    parser.add_argument("--tokenizer-type", choices=TOKENIZER_TYPES,
                        default="HuggingFaceTokenizer")
    parser.add_argument("--tokenizer-model",
                        help="tokenizer.json, or a directory containing one")
    parser.add_argument("--vocab-size", type=int, help="vocabulary size for NullTokenizer")
    parser.add_argument("--append-eod", action="store_true",
                        help="append <|endoftext|> after every document")
    parser.add_argument("--workers", type=int, default=1, help="tokenizer processes")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        tokenizer = build_tokenizer(args.tokenizer_type, args.tokenizer_model, args.vocab_size)
        stats = preprocess_to_indexed_dataset(
            args.input,
            args.output_prefix,
            tokenizer,
            input_format=args.input_format,
            json_key=args.json_keys,
            append_eod=args.append_eod,
            workers=args.workers,
            progress=not args.quiet,
        )
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(stats.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
