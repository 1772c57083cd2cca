"""Megatron torch_dist checkpoint (saved at any TP/PP) -> Hugging Face folder.

The checkpoint is loaded into one TP = PP = 1 model in this process (``dist_checkpointing``
reshards on load: its tensors are stored as global shards), mapped to stock HF weights
(:mod:`megatron_ponder.hf.weight_mapping`) and written as:

* mode ``none``: the stock architecture (``LlamaForCausalLM`` / ``GPT2LMHeadModel`` /
  ``GPTNeoXForCausalLM``) via ``save_pretrained``: ``model.safetensors``, ``config.json``,
  ``generation_config.json``. No remote code.
* modes ``ponder`` / ``latent``: ``PonderLMForCausalLM`` (remote code copied from
  ``megatron_ponder/hf/remote_code/`` and named in ``auto_map``): the same stock weights under
  ``backbone.``, and ``config.json`` with ``backbone_config`` (the stock config) plus the method's
  fields, so ``AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)`` works without
  megatron_ponder installed.
* the run's tokenizer (``--tokenizer-model``), when it had one, as HF tokenizer files.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Optional, Tuple

import torch

from megatron_ponder.hf import build_conversion_model, require
from megatron_ponder.hf.configs import hf_config_from_args, model_shape
from megatron_ponder.hf.weight_mapping import hf_output_layer_key, megatron_to_hf


class ExportError(RuntimeError):
    """A checkpoint or output folder the export cannot use (message names it and the fix)."""


def checkpoint_args(folder: str) -> argparse.Namespace:
    """The entry point's arguments saved in ``folder`` (an ``iter_*`` directory), on top of the
    current defaults (so checkpoints from before a flag existed still describe their model)."""
    from megatron_ponder.training.arguments import parse_args, upgrade_saved_args
    from megatron_ponder.training.checkpointing.save_load import CheckpointError, read_common_state

    try:
        common = read_common_state(folder)
    except CheckpointError as error:
        raise ExportError(str(error)) from None
    if "args" not in common:
        raise ExportError(f"{folder} stores no run arguments: it was not written by megatron_ponder")
    args = parse_args(["--mock-data"])
    for key, value in upgrade_saved_args(common["args"]).items():
        setattr(args, key, value)
    return args


def resolve_checkpoint(load_dir: str, iteration: Optional[int] = None) -> str:
    """``load_dir`` (a ``--save`` folder, or one ``iter_*`` folder) -> the ``iter_*`` folder to read."""
    from megatron.core import dist_checkpointing

    from megatron_ponder.training.checkpointing.save_load import checkpoint_dir, latest_iteration

    if dist_checkpointing.check_is_distributed_checkpoint(load_dir):
        return load_dir
    if iteration is None:
        iteration = latest_iteration(load_dir)
    if iteration is None:
        raise ExportError(f"{load_dir} holds no checkpoint: pass a --save folder or an iter_* folder")
    folder = checkpoint_dir(load_dir, iteration)
    if not dist_checkpointing.check_is_distributed_checkpoint(folder):
        raise ExportError(f"{folder} is not a complete checkpoint: pick another --iteration")
    return folder


def load_single_process_model(load_dir: str, iteration: Optional[int] = None) -> Tuple[torch.nn.Module, argparse.Namespace]:
    """The checkpoint's PonderGPTModel as one TP = PP = 1, fp32 model, in eval mode.

    Needs torch.distributed and Megatron's parallel state initialised as a world of one
    (:func:`megatron_ponder.runtime.parallel_init.initialize_parallel`).
    """
    from megatron.core import dist_checkpointing

    from megatron_ponder.training.checkpointing.save_load import CheckpointError, verify_checkpoint_files

    folder = resolve_checkpoint(load_dir, iteration)
    try:
        verify_checkpoint_files(folder)  # a flipped byte is named here, not exported
    except CheckpointError as error:
        raise ExportError(str(error)) from None
    args = checkpoint_args(folder)
    # One process holds the whole model; layout-only flags of the training run do not apply.
    args.tensor_model_parallel_size = args.pipeline_model_parallel_size = args.context_parallel_size = 1
    args.sequence_parallel = False
    args.bf16 = False
    args.recompute_granularity = None
    from megatron_ponder.training.checkpointing.errors import CHECKPOINT_FAILURES, read_failure

    model = build_conversion_model(args)
    try:
        loaded = dist_checkpointing.load({"model": model.sharded_state_dict()}, folder)
    except CHECKPOINT_FAILURES as error:  # a damaged shard or metadata: name the file
        raise ExportError(read_failure(folder, error)) from None
    model.load_state_dict(loaded["model"])
    return model.eval(), args


def _stock_model(args: argparse.Namespace, megatron_state) -> torch.nn.Module:
    """The stock HF model (fp32) holding the mapped weights; every HF weight is set."""
    transformers = require("transformers")
    config = hf_config_from_args(args)
    hf_model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    shape = model_shape(args)
    weights = megatron_to_hf(megatron_state, shape)
    missing, unexpected = hf_model.load_state_dict(weights, strict=False)
    tied_output = {hf_output_layer_key(shape.style)} if config.tie_word_embeddings else set()
    if unexpected or set(missing) - tied_output:
        raise ExportError(f"HF {type(hf_model).__name__} does not match the mapped weights: "
                          f"missing {sorted(set(missing) - tied_output)[:3]}, unexpected {unexpected[:3]}")
    hf_model.tie_weights()
    return hf_model.eval()


def ponder_config_fields(megatron_config, stock_config) -> dict:
    """The method's fields of a ponder/latent export's config.json (the remote code's interface)."""
    return {
        "ponder_mode": megatron_config.ponder_mode,
        "ponder_steps": megatron_config.ponder_steps,
        "ponder_accumulate": bool(megatron_config.ponder_accumulate),
        "num_latent_thoughts": megatron_config.num_latent_thoughts,
        "jacobi_eval_rounds": megatron_config.jacobi_eval_rounds,
        "input_embedding_scale": float(megatron_config.input_embedding_scale),
        # The exported table holds only real tokens (padding rows are dropped), so all rows mix.
        "ponder_vocab_size": stock_config.vocab_size,
        "ponder_topk": megatron_config.ponder_topk,
    }


def _write_ponder_folder(out: Path, megatron_config, hf_model) -> None:
    """PonderLMForCausalLM around ``hf_model``'s weights, saved with its remote code."""
    from megatron_ponder.hf.remote_code import load_classes, save_ponder_lm

    config_class, model_class = load_classes()
    config = config_class(backbone_config=hf_model.config.to_dict(),
                          **ponder_config_fields(megatron_config, hf_model.config))
    ponder_model = model_class(config)
    ponder_model.backbone.load_state_dict(hf_model.state_dict())
    ponder_model.tie_weights()
    save_ponder_lm(ponder_model, str(out))


def run_tokenizer(args):
    """The run's tokenizer as an HF tokenizer, or None when it had none (mock data)."""
    path = getattr(args, "tokenizer_model", None)
    if getattr(args, "tokenizer_type", None) != "HuggingFaceTokenizer" or not path:
        return None
    if not os.path.exists(path):
        # Exporting without it would silently give a folder with no tokenizer and no eos/bos ids.
        raise ExportError(f"the run's tokenizer {path} is not there (moved, or relative to another working "
                          "directory): run the export from the training run's directory or put it back")
    transformers = require("transformers")
    from megatron_ponder.data.tokenizer import EOD_TOKEN, TOKENIZER_FILE

    folder = Path(path) if os.path.isdir(path) else Path(path).parent
    if (folder / "tokenizer_config.json").is_file():  # a full HF tokenizer folder (e.g. from import)
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder))
    else:  # a bare tokenizer.json trained by megatron_ponder: its one special token ends documents
        file = Path(path) if os.path.isfile(path) else folder / TOKENIZER_FILE
        tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_file=str(file), eos_token=EOD_TOKEN,
                                                         bos_token=EOD_TOKEN, unk_token=EOD_TOKEN)
    return tokenizer


def export_checkpoint(load_dir: str, out_dir: str, iteration: Optional[int] = None, overwrite: bool = False) -> Path:
    """Write the HF folder of the checkpoint in ``load_dir`` to ``out_dir``; returns the folder.

    A non-empty ``out_dir`` is refused unless ``overwrite`` (then it is emptied first, so no
    file of an earlier export or another model stays next to the new config); a folder that is,
    holds or lies above a checkpoint or a run folder is never emptied
    (:func:`megatron_ponder.hf.output_folder.overwrite_refusal`).
    """
    import shutil

    import torch.distributed as dist

    from megatron_ponder.runtime.parallel_init import initialize_parallel

    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise ExportError(f"--out {out_dir} is not an empty folder: choose a new one, or pass --overwrite to "
                          "replace its contents")
    if out.exists() and overwrite:
        from megatron_ponder.hf.output_folder import overwrite_refusal

        refusal = overwrite_refusal(out, load_dir)
        if refusal is not None:
            raise ExportError(refusal)
    if not dist.is_initialized():
        initialize_parallel()
    model, args = load_single_process_model(load_dir, iteration)
    if out.exists() and overwrite:
        shutil.rmtree(out) if out.is_dir() else out.unlink()
    out.mkdir(parents=True, exist_ok=True)
    hf_model = _stock_model(args, model.state_dict())
    tokenizer = run_tokenizer(args)
    # The stock configs' default special ids (GPT-2's 50256, LLaMA's 1/2) mean nothing here.
    for holder in (hf_model.config, hf_model.generation_config):
        holder.bos_token_id = tokenizer.bos_token_id if tokenizer is not None else None
        holder.eos_token_id = tokenizer.eos_token_id if tokenizer is not None else None
    if model.config.ponder_mode == "none":
        hf_model.save_pretrained(str(out))
    else:
        _write_ponder_folder(out, model.config, hf_model)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out))
    return out
