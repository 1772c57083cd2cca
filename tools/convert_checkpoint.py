#!/usr/bin/env python
"""Convert between megatron_ponder (Megatron torch_dist) checkpoints and Hugging Face folders.

Examples:
    # Megatron checkpoint (saved at any TP/PP) -> HF folder; mode none gives a stock model,
    # ponder/latent a PonderLMForCausalLM loaded with trust_remote_code=True.
    python tools/convert_checkpoint.py export --load runs/default --out hf/default

    # Stock HF LLaMA / GPT-2 / GPT-NeoX folder, or a GGUF file, -> Megatron checkpoint
    python tools/convert_checkpoint.py import --hf pythia-70m/ --save ckpt/pythia70m
    python tools/convert_checkpoint.py import --hf models/ --gguf-file SmolLM2-135M.gguf \\
        --save ckpt/smollm2 --tensor-model-parallel-size 1

Both run in one process on CPU. ``import`` prints the flags that continue training from the
checkpoint (``python -m megatron_ponder.pretrain --load DIR --no-load-optim ...``). Bad input
exits with status 2 and one line ``error: <message>``. See docs/hf_conversion.md.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import warnings
from typing import List, Optional

# This repository's package, not another installed copy of it.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
warnings.filterwarnings("ignore", message=".*(Transformer Engine|Apex).*not installed")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="convert_checkpoint.py", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    export = commands.add_parser("export", help="Megatron checkpoint -> Hugging Face folder")
    export.add_argument("--load", required=True, help="a --save folder (latest iteration) or one iter_* folder")
    export.add_argument("--iteration", type=int, default=None, help="iteration to export (default: latest)")
    export.add_argument("--out", required=True, help="Hugging Face folder to write (new or empty)")
    export.add_argument("--overwrite", action="store_true", help="replace the contents of a non-empty --out")
    imp = commands.add_parser("import", help="Hugging Face folder or GGUF -> Megatron checkpoint")
    imp.add_argument("--hf", required=True, help="Hugging Face model folder (or the folder of --gguf-file)")
    imp.add_argument("--gguf-file", default=None, help="GGUF file name inside --hf (dequantised by transformers)")
    imp.add_argument("--save", required=True, help="Megatron checkpoint folder to write")
    imp.add_argument("--tensor-model-parallel-size", type=int, default=1,
                     help="TP the checkpoint will be trained at (sets vocabulary padding; any TP/PP loads it)")
    imp.add_argument("--pipeline-model-parallel-size", type=int, default=1,
                     help="PP the checkpoint will be trained at (checked against the layer count)")
    imp.add_argument("--make-vocab-size-divisible-by", type=int, default=128)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    # Local folders only: a missing path must fail at once, not after the Hub client's retries.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from megatron_ponder.hf.configs import ConversionError
    from megatron_ponder.hf.export import ExportError
    from megatron_ponder.hf.weight_mapping import WeightMappingError
    from megatron_ponder.runtime.parallel_init import (
        initialize_parallel,
        shutdown_parallel,
    )
    from megatron_ponder.training.arguments import ArgumentError
    from megatron_ponder.training.checkpointing.save_load import CheckpointError

    user_errors = (ConversionError, ExportError, WeightMappingError, ArgumentError, CheckpointError, ImportError)
    initialize_parallel()
    try:
        if args.command == "export":
            from megatron_ponder.hf.export import export_checkpoint

            out = export_checkpoint(args.load, args.out, args.iteration, args.overwrite)
            print(f"wrote {out}")
        else:
            from megatron_ponder.hf.import_hf import import_checkpoint

            flags = import_checkpoint(args.hf, args.save, args.gguf_file, args.tensor_model_parallel_size,
                                      args.pipeline_model_parallel_size, args.make_vocab_size_divisible_by)
            print(f"wrote {args.save}; continue training with:")
            print("  python -m megatron_ponder.pretrain --load " + shlex.quote(args.save) + " --no-load-optim "
                  + " ".join(shlex.quote(f) for f in flags) + " --ponder-mode latent ...")
    except user_errors as error:
        print(f"error: {str(error).splitlines()[0]}", file=sys.stderr, flush=True)
        return 2
    finally:
        shutdown_parallel()
    return 0


if __name__ == "__main__":
    sys.exit(main())
