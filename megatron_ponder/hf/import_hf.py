"""Stock Hugging Face checkpoint (folder, or a GGUF file via transformers) -> Megatron checkpoint.

``LlamaForCausalLM``, ``GPT2LMHeadModel`` and ``GPTNeoXForCausalLM`` weights are mapped
(:mod:`megatron_ponder.hf.weight_mapping`) into a PonderGPTModel built from the entry point's own
flags (:func:`megatron_ponder.hf.configs.megatron_flags_from_hf_config`) and saved as a
weights-only torch_dist checkpoint (``iter_0000000``, latest pointer, run arguments) in one
process. torch_dist stores every tensor as global shards, so the checkpoint loads at any TP/PP;
the target TP only sets the vocabulary padding (a multiple of 128 x TP, as the entry point pads).
Continue training with::

    torchrun ... -m megatron_ponder.pretrain --load DIR --no-load-optim <printed model flags> \\
        --ponder-mode latent --tokenizer-model DIR/tokenizer ...

The tokenizer is saved to ``DIR/tokenizer`` (HF files, ``tokenizer.json`` included).
"""

from __future__ import annotations

import os
from typing import List, Optional

import torch

from megatron_ponder.hf import build_conversion_model, require
from megatron_ponder.hf.configs import (
    ConversionError,
    flags_to_argv,
    megatron_flags_from_hf_config,
    model_shape,
)
from megatron_ponder.hf.weight_mapping import hf_to_megatron

TOKENIZER_SUBDIR = "tokenizer"


def load_hf_model(source: str, gguf_file: Optional[str] = None):
    """The stock HF model in fp32 (GGUF weights are dequantised by transformers)."""
    transformers = require("transformers")
    if gguf_file is not None:
        require("gguf")

    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    # transformers' own load report (and its RuntimeError for shapes that differ) would be a page of
    # text and a traceback; the checks below give one line instead.
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        model, info = transformers.AutoModelForCausalLM.from_pretrained(
            source, dtype=torch.float32, ignore_mismatched_sizes=True, output_loading_info=True, **kwargs)
    except (OSError, ValueError) as error:  # no/unknown config.json, missing weights or GGUF file
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConversionError(f"cannot load a Hugging Face model from {source}: {first_line}") from None
    finally:
        transformers.logging.set_verbosity(verbosity)
    mismatched = sorted(info.get("mismatched_keys") or [], key=str)
    if mismatched:
        key, stored, expected = mismatched[0][:3]
        raise ConversionError(
            f"cannot load a Hugging Face model from {source}: its config.json does not fit its weights ({len(mismatched)} "
            f"tensors differ, e.g. {key}: {tuple(stored)} in the weights, {tuple(expected)} by the config): use the "
            "config.json saved with these weights")
    # Weights the folder lacks would be random: never import them (a tied output layer is not missing).
    missing = sorted(set(info.get("missing_keys") or []) - _tied_keys(model))
    if missing:
        raise ConversionError(f"cannot load a Hugging Face model from {source}: its weights lack {len(missing)} tensors "
                              f"the config asks for (e.g. {missing[0]}): use the config.json saved with these weights")
    return model.eval()


def _tied_keys(model) -> set:
    """Parameter names that share storage with another (a tied output layer)."""
    seen, tied = {}, set()
    for name, param in model.named_parameters(remove_duplicate=False):
        if param.data_ptr() in seen:
            tied.add(name)
        seen.setdefault(param.data_ptr(), name)
    return tied


def import_hf_model(
    hf_model,
    save_dir: str,
    tensor_model_parallel_size: int = 1,
    pipeline_model_parallel_size: int = 1,
    make_vocab_size_divisible_by: int = 128,
    tokenizer=None,
) -> List[str]:
    """Save ``hf_model`` as a Megatron checkpoint in ``save_dir``; returns the model (and
    tokenizer) flags that ``python -m megatron_ponder.pretrain`` needs to build it
    (``--load save_dir --no-load-optim``).

    Needs torch.distributed and Megatron's parallel state as a world of one (initialised here
    when absent).
    """
    import torch.distributed as dist

    from megatron_ponder.runtime.parallel_init import initialize_parallel
    from megatron_ponder.training.arguments import parse_args, validate_args
    from megatron_ponder.training.checkpointing.save_load import save_weights_checkpoint
    from megatron_ponder.training.checkpointing.run_identity import check_import_target

    check_import_target(save_dir)
    if not dist.is_initialized():
        initialize_parallel()
    flags = megatron_flags_from_hf_config(hf_model.config, tensor_model_parallel_size, make_vocab_size_divisible_by)
    model_argv = flags_to_argv(flags)
    layout = ["--tensor-model-parallel-size", str(tensor_model_parallel_size),
              "--pipeline-model-parallel-size", str(pipeline_model_parallel_size)]
    # The target layout's divisibility rules (heads by TP, layers by PP) are the entry point's.
    target = parse_args(model_argv + layout + ["--mock-data", "--ponder-mode", "none", "--seq-length", "8",
                                               "--micro-batch-size", "1",
                                               "--global-batch-size", str(pipeline_model_parallel_size)])
    validate_args(target, tensor_model_parallel_size * pipeline_model_parallel_size)

    args = parse_args(model_argv + ["--mock-data", "--ponder-mode", "none"])
    args.tokenizer_vocab_size = flags["tokenizer_vocab_size"]
    if tokenizer is not None:
        tokenizer_dir = os.path.join(os.path.abspath(save_dir), TOKENIZER_SUBDIR)
        tokenizer.save_pretrained(tokenizer_dir)
        args.tokenizer_type, args.tokenizer_model = "HuggingFaceTokenizer", tokenizer_dir
        args.mock_data = False
    model = build_conversion_model(args)

    weights = hf_to_megatron(hf_model.state_dict(), model_shape(args))
    expected = {k for k in model.state_dict() if not k.endswith("_extra_state")}
    if model.share_embeddings_and_output_weights:
        expected.discard("output_layer.weight")
    if set(weights) != expected:
        raise ConversionError(f"mapped weights do not match the Megatron model: "
                              f"missing {sorted(expected - set(weights))[:3]}, "
                         f"extra {sorted(set(weights) - expected)[:3]}")
    with torch.no_grad():
        for name, param in model.state_dict(keep_vars=True).items():
            if name in weights:
                param.copy_(weights[name])
    run_args = {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool, type(None), list, tuple))}
    save_weights_checkpoint(save_dir, model, run_args)
    if tokenizer is not None:
        model_argv += ["--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", args.tokenizer_model]
    return model_argv


def import_checkpoint(
    source: str,
    save_dir: str,
    gguf_file: Optional[str] = None,
    tensor_model_parallel_size: int = 1,
    pipeline_model_parallel_size: int = 1,
    make_vocab_size_divisible_by: int = 128,
) -> List[str]:
    """HF folder (or ``source/gguf_file``) -> Megatron checkpoint in ``save_dir``, tokenizer in
    ``save_dir/tokenizer`` when the source has one. Returns the model flags (see above)."""
    from megatron_ponder.training.checkpointing.run_identity import check_import_target

    transformers = require("transformers")
    if not os.path.isdir(source):
        raise ConversionError(f"--hf {source} is not a folder: pass a local Hugging Face model folder (download one "
                              "with huggingface-cli download ORG/NAME --local-dir DIR)")
    check_import_target(save_dir)  # never moves an existing run back to iteration 0
    hf_model = load_hf_model(source, gguf_file)
    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(source, **kwargs)
    except (OSError, ValueError):  # a weights-only folder: the user brings the tokenizer
        tokenizer = None
    return import_hf_model(hf_model, save_dir, tensor_model_parallel_size, pipeline_model_parallel_size,
                           make_vocab_size_divisible_by, tokenizer)
