"""Checkpoints with Megatron's ``dist_checkpointing`` (torch_dist): save, find, resume, reshard.

Layout under ``--save DIR``::

    DIR/iter_0000100/            one dist_checkpointing checkpoint (model, optimizer, scheduler,
                                 generators, iteration, consumed samples, run arguments)
    DIR/latest_checkpointed_iteration.txt
    DIR/.megatron_ponder.lock    held by the run writing here (training/checkpointing/run_lock.py)

A weights-only checkpoint (:func:`save_weights_checkpoint`, written by
``tools/convert_checkpoint.py import``) has the same layout without optimizer and scheduler;
the training entry point continues from it with ``--no-load-optim``.

The pointer file is replaced atomically (write a temporary file, then ``os.replace``) only after
every rank has finished writing, so a crash or SIGKILL in the middle of a save leaves the
pointer on the previous, complete checkpoint. Tensors are saved as global shards, so a run can
resume with different tensor/pipeline/data-parallel sizes.

``--async-save`` (:class:`AsyncSaves`) writes the shards in a background process while training
goes on; the pointer, the retention of ``--keep-last-checkpoints`` and Megatron's own
completion files (``.metadata``, ``metadata.json``) are written by the finalization, which runs
only after every rank's writer has finished.

``--ckpt-fully-parallel-save`` (default) shares the writing out over the data-parallel ranks,
``--ckpt-fully-parallel-load`` the reading (training/checkpointing/strategies.py).
"""

from __future__ import annotations

import builtins
import errno
import os
import shutil
import signal
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Dict, List, Optional

import torch
import torch.distributed as dist

from megatron.core import dist_checkpointing
from megatron.core.dist_checkpointing.mapping import ShardedObject
from megatron.core.dist_checkpointing.serialization import load_sharded_metadata

from megatron_ponder.training.checkpointing.errors import (
    CHECKPOINT_FAILURES,
    damaged_load_message,
    read_failure,
    write_failure,
)

LATEST_FILE = "latest_checkpointed_iteration.txt"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be loaded (message names the folder and the fix)."""


@dataclass
class ResumeState:
    iteration: int
    consumed_samples: int
    rng_restored: bool = False
    schedule_restored: bool = False  # the LR/WD schedule continues (else it starts again at warm-up)


def _fault_armed(name: str, iteration: int) -> bool:
    return os.environ.get("PONDER_FAULT_INJECT") == f"{name}:{iteration}"


def _fault_injection_point(name: str, iteration: int) -> None:
    """Tests of crash safety set PONDER_FAULT_INJECT=<name>:<iteration> to SIGKILL the run here.

    Points: ``after-shards-before-pointer`` (every rank has written, the pointer not yet moved;
    sync and async saves), ``async-save-in-flight`` (an async save just handed to its writer).
    ``async-write-fails`` makes the async writer's file writes fail (see :func:`_background_write`),
    ``pointer-write-fails`` rank 0's pointer write (see :func:`_point_latest_at`).
    """
    if _fault_armed(name, iteration):
        os.kill(os.getpid(), signal.SIGKILL)


def checkpoint_dir(root: str, iteration: int) -> str:
    return os.path.join(root, f"iter_{iteration:07d}")


def is_checkpoint_folder_name(name: str) -> bool:
    """Whether ``name`` is what :func:`checkpoint_dir` calls a checkpoint folder (``iter_`` and at least
    7 digits: more past iteration 9,999,999)."""
    return name.startswith("iter_") and len(name) >= 12 and name[5:].isdigit()


def latest_iteration(root: str) -> Optional[int]:
    """Iteration named by the pointer file, or None when ``root`` holds no checkpoint yet."""
    pointer = os.path.join(root, LATEST_FILE)
    if not os.path.isfile(pointer):
        return None
    text = open(pointer).read().strip()
    if not text.isdigit():
        raise CheckpointError(f"{pointer} does not hold an iteration number ({text[:40]!r}): fix or delete it")
    return int(text)


@contextmanager
def _keep_adam_step_when_loading(optimizer):
    """Work around megatron-core 0.16.1's distributed optimizer with the torch AdamW fallback.

    Loading a ``fully_reshardable`` state, Megatron copies every per-parameter optimizer state
    from the checkpoint, but the checkpoint's per-parameter tensors exclude torch Adam's ``step``
    (Megatron restores it from the param groups first), so the copy fails with KeyError 'step'.
    For the duration of the load, let the copy take each parameter's already-restored step.
    Megatron also gives every parameter the *same* step tensor, which torch Adam then increments
    once per parameter per step (a corrupted bias correction after resume): un-share it.
    """
    patched = []
    for inner in getattr(optimizer, "chained_optimizers", [optimizer]):
        original = getattr(inner, "_set_main_param_and_optimizer_states", None)
        if original is None:
            continue

        def with_step(model_param, tensors, _inner=inner, _original=original):
            group_index, group_order = _inner.model_param_group_index_map[model_param]
            main_param = _inner.optimizer.param_groups[group_index]["params"][group_order]
            state = _inner.optimizer.state[main_param]
            if "step" in state and "step" not in tensors:
                tensors = {**tensors, "step": state["step"].clone()}
            return _original(model_param, tensors)

        inner._set_main_param_and_optimizer_states = with_step
        patched.append(inner)
    try:
        yield
    finally:
        for inner in patched:
            del inner._set_main_param_and_optimizer_states  # back to the class method
            for state in inner.optimizer.state.values():
                if "step" in state:
                    state["step"] = state["step"].clone()


def _optimizer_sharded_state_dict(optimizer, model_state, is_loading: bool, distributed: bool):
    metadata = {"distrib_optim_sharding_type": "fully_reshardable"} if distributed else None
    if is_loading and distributed:
        # The torch AdamW fallback creates its state lazily; the sharded view needs it to exist.
        for inner in getattr(optimizer, "chained_optimizers", [optimizer]):
            inner._init_optimizer_states_with_dummy_values()
    kwargs = {"metadata": metadata} if metadata else {}
    return optimizer.sharded_state_dict(model_state, is_loading=is_loading, **kwargs)


def save_checkpoint(
    root: str,
    iteration: int,
    model,
    optimizer,
    scheduler,
    consumed_samples: int,
    run_args: Dict[str, Any],
    distributed_optimizer: bool,
    save_optimizer: bool = True,
    keep_last: Optional[int] = None,
    async_saves: Optional["AsyncSaves"] = None,
    fully_parallel: bool = True,
) -> Optional[str]:
    """Write ``root/iter_N`` on all ranks, then move the pointer. Returns the folder.

    ``save_optimizer=False`` (``--no-save-optim``) writes weights, iteration, data position,
    generators and the LR/WD schedule's state (a few numbers: a resume with ``--no-load-optim``
    continues the schedule instead of warming up again) but no optimizer state. ``keep_last``:
    afterwards delete all but the newest ``keep_last`` folders.
    With ``async_saves`` (``--async-save``) the shards are written in the background and None is
    returned: the pointer and the retention follow in ``async_saves.maybe_finalize_async_calls``,
    which returns the folder once it is complete on every rank.
    ``fully_parallel`` (``--ckpt-fully-parallel-save``): every data-parallel rank writes a share.
    """
    from megatron_ponder.training.checkpointing.strategies import async_save_strategy, save_strategy
    from megatron_ponder.training.checkpointing.rng_state import rng_sharded_object

    if async_saves is not None:
        async_saves.maybe_finalize_async_calls(blocking=True)  # one save in flight at a time
    folder = _fresh_folder(root, iteration)
    model_state = model.sharded_state_dict()
    state = {
        "model": model_state,
        "rng_state": rng_sharded_object(),
        "iteration": iteration,
        "consumed_samples": consumed_samples,
        "args": run_args,
    }
    if scheduler is not None:
        state["scheduler"] = scheduler.state_dict()
    if save_optimizer:
        state["optimizer"] = _optimizer_sharded_state_dict(optimizer, model_state, False, distributed_optimizer)
    else:
        state["weights_only"] = True
    completion = [partial(_write_checksums, folder),
                  partial(_fault_injection_point, "after-shards-before-pointer", iteration),
                  partial(_point_latest_at, root, iteration)]
    if keep_last:
        completion.append(partial(delete_old_checkpoints, root, keep_last))
    if async_saves is not None:
        async_saves.schedule(state, folder, iteration, completion, async_save_strategy(fully_parallel))
        return None
    _save_or_explain(state, folder, save_strategy(fully_parallel))
    for step in completion:
        step()
    return folder


def _background_write(write: Callable, fail: bool, *args, **kwargs) -> None:
    """The shard writer of ``--async-save``, in the process Megatron forks for it.

    Ctrl-C reaches the whole foreground process group; the writer ignores it and the training
    process decides (its signal handler lets the write finish; an interrupt stops the writer).
    ``fail`` (PONDER_FAULT_INJECT=async-write-fails:N): opening a shard file raises an I/O error
    inside Megatron's writer (this forked process only), as a failing disk would.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if fail:
        real_open = builtins.open

        def failing_open(file, *open_args, **open_kwargs):
            if str(file).endswith(".distcp"):
                raise OSError(errno.EIO, os.strerror(errno.EIO), str(file))
            return real_open(file, *open_args, **open_kwargs)

        builtins.open = failing_open
    write(*args, **kwargs)


class AsyncSaves:
    """``--async-save``: Megatron-Core's ``AsyncCallsQueue`` with one-line errors (all ranks).

    :func:`save_checkpoint` plans the save on all ranks (``dist_checkpointing.save`` with
    ``async_sharded_save=True``) and schedules the returned AsyncRequest; Megatron's default
    caller forks a process that writes the shards while training goes on. It writes a snapshot:
    GPU tensors are copied to host memory before the fork, CPU tensors are the fork's
    copy-on-write pages. :meth:`maybe_finalize_async_calls` is a collective while a save is in
    flight (none otherwise): once every rank's writer has finished it runs the request's
    finalization on all ranks, Megatron's (the global ``.metadata``, ``metadata.json``) and then
    ours (the pointer, retention). A kill before that leaves the pointer on the previous
    checkpoint; a failed write is the same one-line :class:`CheckpointError` as a synchronous one.
    """

    def __init__(self) -> None:
        from megatron.core.dist_checkpointing.strategies.async_utils import AsyncCallsQueue

        self._queue = AsyncCallsQueue(persistent=False)
        self.pending: Optional[str] = None  # the folder being written

    def schedule(self, state: Dict[str, Any], folder: str, iteration: int, completion: List[Callable],
                 sharded_strategy=None) -> None:
        from megatron_ponder.runtime.megatron_compat import async_checkpoint_request
        from megatron_ponder.training.rank_agreement import agree_any_error

        request, message = None, None
        try:
            request = async_checkpoint_request(state, folder, sharded_strategy)
        except CHECKPOINT_FAILURES as error:
            message = write_failure(folder, error)
        message = agree_any_error(message)
        if message:
            raise CheckpointError(message)
        for step in completion:
            request.add_finalize_fn(step)
        if request.async_fn is not None:  # None: nothing to write on this rank
            fail = _fault_armed("async-write-fails", iteration)
            request = request._replace(async_fn=partial(_background_write, request.async_fn, fail))
        self._queue.schedule_async_request(request)
        self.pending = folder
        _fault_injection_point("async-save-in-flight", iteration)

    def maybe_finalize_async_calls(self, blocking: bool = False) -> List[str]:
        """Finalize the save in flight if every rank has written it (``blocking``: wait for that).

        Returns the folders finalized now; all ranks return the same. A collective while a save
        is in flight.
        """
        from megatron_ponder.training.rank_agreement import agree_any_error

        if self.pending is None:
            return []
        try:
            finalized = self._queue.maybe_finalize_async_calls(blocking=blocking)
        except CheckpointError:  # a completion step (the pointer) failed: already one line, on every rank
            self.pending = None
            raise
        except CHECKPOINT_FAILURES as error:  # raised on every rank; rank 0's names the cause
            folder, self.pending = self.pending, None
            raise CheckpointError(agree_any_error(write_failure(folder, error))) from None
        if not finalized:
            return []
        folder, self.pending = self.pending, None
        return [folder]

    def abort(self) -> None:
        """Stop the writer without finalizing (a failure on some ranks only: no collectives)."""
        for call in self._queue.async_calls:
            process = getattr(call.async_caller, "process", None)
            if process is not None and process.is_alive():
                process.kill()
                process.join()
        self._queue.async_calls.clear()
        self.pending = None


def _on_rank0_for_all(path: str, write: Callable[[], None]) -> None:
    """Rank 0 runs ``write``; every rank then raises the same CheckpointError if it failed there.

    Why: a rank-0-only write that fails (full disk, permissions) must not leave the other ranks
    waiting at the next collective until the timeout. Rank 0's outcome is broadcast instead of a
    barrier, so all ranks stop together with the line that names ``path`` and the cause.
    """
    from megatron_ponder.training.rank_agreement import agree_on_error

    message = None
    if dist.get_rank() == 0:
        try:
            write()
        except OSError as error:
            message = write_failure(path, error)
    message = agree_on_error(message)
    if message:
        raise CheckpointError(message)


def _write_checksums(folder: str) -> None:
    """Every rank hashes its share of the finished folder; rank 0 writes ``checksums.json``."""
    from megatron_ponder.training.checkpointing.checksums import CHECKSUM_FILE, compute_checksums, write_checksum_file

    checksums = compute_checksums(folder)
    _on_rank0_for_all(os.path.join(folder, CHECKSUM_FILE), partial(write_checksum_file, folder, checksums))


def verify_checkpoint_files(folder: str) -> None:
    """CheckpointError naming the first file that differs from the folder's checksums (all ranks)."""
    from megatron_ponder.training.checkpointing.checksums import damaged_by_checksum

    damaged = damaged_by_checksum(folder)
    if damaged:
        raise CheckpointError(damaged_load_message(folder, damaged))


def _fresh_folder(root: str, iteration: int) -> str:
    folder = checkpoint_dir(root, iteration)

    def make() -> None:
        if os.path.exists(folder):  # a partial save from a crashed run: start clean
            shutil.rmtree(folder)
        os.makedirs(folder)

    _on_rank0_for_all(folder, make)
    return folder


def _save_or_explain(state: Dict[str, Any], folder: str, sharded_strategy=None) -> None:
    """dist_checkpointing.save on all ranks; a failure is one CheckpointError line on every rank.

    ``sharded_strategy``: None for Megatron-Core's default (training/checkpointing/strategies.py)."""
    from megatron_ponder.training.rank_agreement import agree_any_error

    message = None
    try:
        dist_checkpointing.save(state, folder, sharded_strategy=sharded_strategy)
    except CHECKPOINT_FAILURES as error:  # full disk, permissions: the pointer is not moved
        message = write_failure(folder, error)
    message = agree_any_error(message)
    if message:
        raise CheckpointError(message)
    dist.barrier()


def delete_old_checkpoints(root: str, keep_last: int) -> None:
    """Rank 0 removes all but the newest ``keep_last`` complete ``iter_*`` folders (never the latest)."""
    if dist.get_rank() == 0:
        latest = latest_iteration(root)
        iterations = sorted(int(name[5:]) for name in os.listdir(root) if is_checkpoint_folder_name(name))
        for iteration in iterations[:-keep_last]:
            if iteration != latest:
                shutil.rmtree(checkpoint_dir(root, iteration), ignore_errors=True)
    dist.barrier()


def read_common_state(folder: str) -> Dict[str, Any]:
    """The checkpoint's non-tensor state (iteration, args, ...); CheckpointError naming a damaged file."""
    try:
        return dist_checkpointing.load_common_state_dict(folder)
    except CHECKPOINT_FAILURES as error:
        raise CheckpointError(read_failure(folder, error)) from None


def _point_latest_at(root: str, iteration: int) -> None:
    """Atomically make ``root``'s pointer name ``iteration`` (rank 0 writes; all ranks wait).

    ``PONDER_FAULT_INJECT=pointer-write-fails:N``: rank 0's write raises "No space left on device".
    """
    pointer = os.path.join(root, LATEST_FILE)

    def write() -> None:
        temporary = pointer + ".tmp"
        try:
            with open(temporary, "w") as handle:
                if _fault_armed("pointer-write-fails", iteration):
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), temporary)
                handle.write(str(iteration))
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, pointer)
        except OSError:
            if os.path.exists(temporary):
                os.remove(temporary)
            raise

    _on_rank0_for_all(pointer, write)


def save_weights_checkpoint(root: str, model, run_args: Dict[str, Any], iteration: int = 0) -> str:
    """Write ``root/iter_N`` holding only the model (no optimizer/scheduler), then the pointer.

    Same layout as :func:`save_checkpoint`; ``weights_only`` tells :func:`load_checkpoint` that
    there is no optimizer state to resume.
    """
    folder = _fresh_folder(root, iteration)
    state = {
        "model": model.sharded_state_dict(),
        "iteration": iteration,
        "consumed_samples": 0,
        "args": run_args,
        "weights_only": True,
        "imported": True,  # a new method may start from it (run_identity compares shapes only)
    }
    _save_or_explain(state, folder)
    _write_checksums(folder)
    _point_latest_at(root, iteration)
    return folder


def without_absent_extra_state(model_state: Dict[str, Any], folder: str):
    """``(model_state without the _extra_state objects the checkpoint lacks, their keys)``.

    Transformer Engine modules keep their FP8 scaling state in ``_extra_state`` objects. A
    checkpoint written with the local layers (a CPU run, a Hugging Face import) has the linear
    layers' ones under the same keys, but not e.g. TE core attention's, while the weights are the
    same (Megatron's local spec saves its norms under TE's names). Objects the checkpoint lacks are
    not requested: those TE modules start with fresh FP8 state, as in a new run.
    """
    wanted = {k for k, v in model_state.items() if k.endswith("_extra_state") and isinstance(v, ShardedObject)}
    if not wanted:
        return model_state, set()
    stored = {obj.key for obj in load_sharded_metadata(folder).values() if isinstance(obj, ShardedObject)}
    absent = {k for k in wanted if model_state[k].key not in stored}
    return {k: v for k, v in model_state.items() if k not in absent}, absent


def load_checkpoint(root: str, model, optimizer, scheduler, load_optimizer: bool, distributed_optimizer: bool,
                    load_rng: bool = True, load_scheduler: Optional[bool] = None,
                    fully_parallel: bool = False) -> Optional[ResumeState]:
    """Restore the latest checkpoint under ``root`` into model/optimizer/scheduler (all ranks).

    Returns None when there is none yet (a fresh run that will save there). The generators are
    restored too (``load_rng``) when the checkpoint has them for this layout, and the LR/WD
    schedule (``load_scheduler``, default ``load_optimizer``; a resume without the optimizer keeps
    it too) when the checkpoint has it: weights-only checkpoints of a training run do, imports do not.
    ``fully_parallel`` (``--ckpt-fully-parallel-load``): each data-parallel rank reads a share and
    the ranks exchange the rest.
    """
    from megatron_ponder.training.checkpointing.strategies import load_strategy
    from megatron_ponder.training.checkpointing.rng_state import restore_rng, rng_request

    iteration = latest_iteration(root)
    if iteration is None:
        return None
    folder = checkpoint_dir(root, iteration)
    if not dist_checkpointing.check_is_distributed_checkpoint(folder):
        raise CheckpointError(
            f"{folder} (named by {LATEST_FILE}) is not a complete checkpoint: point the file at an "
            "existing iter_* folder or delete it to start fresh"
        )
    verify_checkpoint_files(folder)
    common = read_common_state(folder)
    if load_optimizer and common.get("weights_only", False):
        raise CheckpointError(
            f"{folder} holds no optimizer state (an imported model, or saved with --no-save-optim): continue "
            "from it with --no-load-optim"
        )
    try:
        stored_keys = set(load_sharded_metadata(folder))
        model_state, absent_extra_state = without_absent_extra_state(model.sharded_state_dict(), folder)
    except CHECKPOINT_FAILURES as error:  # unreadable .metadata
        raise CheckpointError(read_failure(folder, error)) from None
    request = {"model": model_state}
    if load_optimizer:
        request["optimizer"] = _optimizer_sharded_state_dict(optimizer, model_state, True, distributed_optimizer)
    rng = rng_request(common.get("args", {}), stored_keys) if load_rng else None
    if rng is not None:
        request["rng_state"] = rng
    try:
        loaded = dist_checkpointing.load(request, folder, sharded_strategy=load_strategy(folder, fully_parallel))
    except CHECKPOINT_FAILURES as error:  # dist_checkpointing raises many types; say which file and why
        raise CheckpointError(read_failure(folder, error)) from None
    missing, unexpected = model.load_state_dict(loaded["model"], strict=False)
    if set(missing) - absent_extra_state or unexpected:
        raise CheckpointError(f"{folder} does not fit this model: missing {sorted(set(missing) - absent_extra_state)[:3]}, "
                              f"unexpected {sorted(unexpected)[:3]}")
    if load_optimizer:
        workaround = _keep_adam_step_when_loading(optimizer) if distributed_optimizer else nullcontext()
        with torch.no_grad(), workaround:
            optimizer.load_state_dict(loaded["optimizer"])
    schedule = common.get("scheduler") if (load_optimizer if load_scheduler is None else load_scheduler) else None
    if schedule is not None:
        _load_scheduler(scheduler, schedule, folder)
    if rng is not None:
        restore_rng(loaded["rng_state"])
    return ResumeState(iteration=loaded["iteration"], consumed_samples=loaded["consumed_samples"],
                       rng_restored=rng is not None, schedule_restored=schedule is not None)


def _load_scheduler(scheduler, state: Dict[str, Any], folder: str) -> None:
    """Megatron asserts when the flags' LR/WD schedule differs from the checkpoint's: say which way out."""
    try:
        scheduler.load_state_dict(state)
    except AssertionError as error:
        raise CheckpointError(
            f"{folder}: the LR/WD schedule of the flags differs from the checkpoint's ({str(error).strip()[:160]}): "
            "pass --override-opt_param-scheduler to use the flags' schedule, or "
            "--use-checkpoint-opt_param-scheduler to keep the checkpoint's") from None
