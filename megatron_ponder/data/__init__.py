"""Data layer of the training entry point: tokenizers, preprocessing and Megatron datasets.

Modules:
    errors          DataError, the one exception type for bad data inputs
    tokenizer       Tokenizer (HF byte-level BPE), NullTokenizer, train/build helpers
    preprocess      text/jsonl -> Megatron indexed dataset (.bin/.idx); used by
                    tools/preprocess_data.py
    default_corpus  the built-in demo corpus (Python stdlib sources), prepared once and reused
    datasets        data-path parsing, checks, GPTDataset building, MicrobatchStream
"""
