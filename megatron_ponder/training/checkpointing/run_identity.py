"""Which run a checkpoint folder belongs to, and whether this command line may continue it.

Every checkpoint stores the run's arguments (``args`` in its common state). Two rules keep a
run's work from being lost or silently changed:

* **Folder rules** (:func:`check_run_folders`): a ``--save`` folder that already holds
  checkpoints is continued only by ``--load`` of that same folder; a ``--load`` that does not
  exist is a typo, not "start from scratch" (unless it is the ``--save`` folder of a new run);
  ``--finetune`` never writes over checkpoints.
* **Identity rules** (:func:`check_resume_identity`): a resume compares the model-shape and
  method flags with the stored ones. A difference is one line naming every differing flag;
  ``--use-checkpoint-args`` adopts the stored values (Megatron's flag), ``--finetune`` accepts
  other method flags (new run from the weights; shapes must still match, the weights must fit).
  The tokenizer is part of the identity (:func:`tokenizer_identity`: type, vocabulary size,
  end-of-document id and the content hash of its files): another tokenizer of the same padded
  vocabulary size would load and train while every id meant another string, so a change goes
  through ``--finetune`` too.
"""

from __future__ import annotations

import argparse
import os
from typing import Any, Dict, List, Optional

# Flags that decide the weights' shapes: they must match, or the checkpoint cannot load.
SHAPE_FLAGS = ("architecture", "num_layers", "hidden_size", "num_attention_heads", "num_query_groups",
               "ffn_hidden_size", "vocab_size", "tie_embeddings")
# Shape flags that matter for one architecture only (learned position embeddings).
GPT2_SHAPE_FLAGS = ("max_position_embeddings",)
# Flags that decide what the weights compute: a change is a new experiment, not a resume.
METHOD_FLAGS = ("ponder_mode", "ponder_steps", "ponder_accumulate", "ponder_topk", "num_latent_thoughts",
                "jacobi_train_rounds", "jacobi_eval_rounds", "input_embedding_scale", "init_method_std", "init_style",
                "rotary_percent", "rotary_base", "norm_epsilon", "openai_gelu")


# Flags that decide the optimizer state's layout: a resume that loads that state needs the same.
OPTIMIZER_STATE_FLAGS = ("use_distributed_optimizer", "bf16")

# Stored in the run's arguments by ``training.build.prepare_data``.
TOKENIZER_IDENTITY = "tokenizer_identity"


def tokenizer_identity(tokenizer) -> str:
    """``class X, vocab_size N, eod E, sha256 H`` from the tokenizer's ``unique_identifiers``
    (what Megatron's dataset cache hashes): equal exactly when every id means the same string."""
    return ", ".join(f"{key} {value}" for key, value in tokenizer.unique_identifiers.items())


def _short_identity(identity: str) -> str:
    return identity.replace("megatron_ponder.", "").split(", sha256 ")[0] + (
        f", files {identity.split(', sha256 ')[1][:12]}" if ", sha256 " in identity else "")


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return list(a) == list(b)
    return a == b


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return "unset" if value is None else str(value)


def _flag(dest: str) -> str:
    return {"tie_embeddings": "--tie-embeddings-and-output-weights"}.get(dest, "--" + dest.replace("_", "-"))


def identity_flags(args) -> List[str]:
    flags = list(SHAPE_FLAGS) + list(METHOD_FLAGS)
    if args.architecture == "gpt2":
        flags += list(GPT2_SHAPE_FLAGS)
    return flags


def differing_flags(args, stored: Dict[str, Any], flags) -> List[str]:
    return [dest for dest in flags if dest in stored and not _same(getattr(args, dest, None), stored[dest])]


def stored_run_args(load_dir: str) -> Optional[Dict[str, Any]]:
    """The arguments stored in ``load_dir``'s latest checkpoint, or None when it has none."""
    from megatron_ponder.training.arguments import upgrade_saved_args
    from megatron_ponder.training.checkpointing.save_load import checkpoint_dir, latest_iteration, read_common_state

    iteration = latest_iteration(load_dir)
    if iteration is None:
        return None
    # Under today's flag names (checkpoints written before a rename store the old ones).
    return upgrade_saved_args(read_common_state(checkpoint_dir(load_dir, iteration)).get("args", {}))


def adopt_checkpoint_args(args: argparse.Namespace) -> List[str]:
    """``--use-checkpoint-args``: set the shape and method flags from ``--load``; returns the
    names of the flags that changed (before the data is prepared: the vocabulary is one of them)."""
    from megatron_ponder.training.checkpointing.save_load import CheckpointError

    if not args.load:
        raise CheckpointError("--use-checkpoint-args needs --load DIR (the checkpoint to take them from)")
    stored = stored_run_args(args.load)
    if stored is None:
        raise CheckpointError(f"--use-checkpoint-args: --load {args.load} holds no checkpoint to take them from")
    changed = []
    for dest in identity_flags(args) + list(GPT2_SHAPE_FLAGS):
        if dest in stored and not _same(getattr(args, dest, None), stored[dest]):
            changed.append(f"{_flag(dest)} {_shown(stored[dest])}")
            value = stored[dest]
            setattr(args, dest, tuple(value) if isinstance(value, list) else value)
    return changed


def check_resume_identity(args: argparse.Namespace, load_dir: str, stored: Dict[str, Any],
                          weights_only: bool = False) -> None:
    """CheckpointError naming every shape/method flag that differs from ``stored`` (see module).

    A weights-only checkpoint (an import of a stock model) is the start of a new method's run:
    only its shapes are compared, as with ``--finetune``.
    """
    from megatron_ponder.training.checkpointing.save_load import CheckpointError

    shape = differing_flags(args, stored, [f for f in identity_flags(args) if f not in METHOD_FLAGS])
    method = [] if args.finetune or weights_only else differing_flags(args, stored, METHOD_FLAGS)
    current, saved = getattr(args, TOKENIZER_IDENTITY, None), stored.get(TOKENIZER_IDENTITY)
    if not args.finetune and current and saved and current != saved and not shape:
        raise CheckpointError(
            f"--load {load_dir} was trained with another tokenizer ({_short_identity(saved)}; now "
            f"{_short_identity(current)}): every token id would mean another string; pass the run's "
            "--tokenizer-type/--tokenizer-model, or --finetune to start a new run from its weights with a new --save")
    loads_optimizer = not (args.finetune or weights_only or getattr(args, "no_load_optim", False))
    optimizer = differing_flags(args, stored, OPTIMIZER_STATE_FLAGS) if loads_optimizer and not shape and not method else []
    if optimizer:
        listed = ", ".join(f"{_flag(d)} {_shown(getattr(args, d, None))} (checkpoint: {_shown(stored[d])})"
                           for d in optimizer)
        raise CheckpointError(
            f"--load {load_dir} holds optimizer state saved with other flags: {listed}: pass the checkpoint's "
            "values, or --no-load-optim to start the optimizer fresh (weights, iteration and LR schedule are kept)")
    if not shape and not method:
        return
    listed = ", ".join(f"{_flag(d)} {_shown(getattr(args, d, None))} (checkpoint: {_shown(stored[d])})"
                       for d in shape + method)
    fix = ("pass the checkpoint's values or --use-checkpoint-args" if shape else
           "pass the checkpoint's values, --use-checkpoint-args to take them, or --finetune to start a new "
           "run from its weights with a new --save")
    raise CheckpointError(f"--load {load_dir} was saved with other flags: {listed}: {fix}")


def _same_folder(a: Optional[str], b: Optional[str]) -> bool:
    return bool(a) and bool(b) and os.path.realpath(a) == os.path.realpath(b)


def check_run_folders(args: argparse.Namespace) -> None:
    """The folder rules of the module docstring (same answer on every rank: files only)."""
    from megatron_ponder.training.checkpointing.save_load import (
        LATEST_FILE,
        CheckpointError,
        is_checkpoint_folder_name,
        latest_iteration,
    )

    saved = latest_iteration(args.save) if args.save and os.path.isdir(args.save) else None
    continuing = _same_folder(args.load, args.save)
    if args.load and not continuing:
        if not os.path.isdir(args.load):
            raise CheckpointError(f"--load {args.load} does not exist: fix the path, or drop --load to start "
                                  "from scratch")
        if latest_iteration(args.load) is None:
            if is_checkpoint_folder_name(os.path.basename(os.path.normpath(args.load))):
                parent = os.path.dirname(os.path.normpath(args.load))
                raise CheckpointError(f"--load {args.load} is one checkpoint (an iter_* folder): --load takes the run "
                                      f"folder, --load {parent} (it resumes from the iteration {LATEST_FILE} names)")
            raise CheckpointError(f"--load {args.load} holds no checkpoint ({LATEST_FILE} is missing): fix the "
                                  "path, or drop --load to start from scratch")
    if saved is None:
        return
    if not continuing:
        raise CheckpointError(f"--save {args.save} already holds another run's checkpoints (latest iteration "
                              f"{saved}): continue that run with --load {args.save}, or choose a new --save folder")
    if args.finetune:
        raise CheckpointError(f"--finetune starts a new run at iteration 0, but --save {args.save} holds "
                              f"checkpoints up to iteration {saved}: choose a new --save folder (or drop "
                              "--finetune to continue)")


def check_import_target(save_dir: str) -> None:
    """``convert_checkpoint.py import`` writes iteration 0: never into a folder holding a run."""
    from megatron_ponder.training.checkpointing.save_load import CheckpointError, latest_iteration

    if os.path.isdir(save_dir) and latest_iteration(save_dir) is not None:
        raise CheckpointError(f"--save {save_dir} already holds checkpoints (latest iteration "
                              f"{latest_iteration(save_dir)}): importing would move that run back to iteration "
                              "0; choose a new --save folder")


def prepare_resume(args: argparse.Namespace) -> None:
    """Before the data and model: the folder rules, then ``--use-checkpoint-args``."""
    check_run_folders(args)
    if args.use_checkpoint_args:
        changed = adopt_checkpoint_args(args)
        if changed and int(os.environ.get("RANK", "0")) == 0:
            print("--use-checkpoint-args: " + ", ".join(changed), flush=True)


def verify_resume(args: argparse.Namespace) -> None:
    """After the data set-up (the vocabulary is known): the identity rules against ``--load``."""
    from megatron_ponder.training.checkpointing.save_load import checkpoint_dir, latest_iteration, read_common_state

    iteration = latest_iteration(args.load) if args.load and os.path.isdir(args.load) else None
    if iteration is None:
        return
    common = read_common_state(checkpoint_dir(args.load, iteration))
    check_resume_identity(args, args.load, common.get("args", {}), weights_only=common.get("imported", False))
