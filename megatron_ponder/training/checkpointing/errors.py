"""One line naming the file and the cause when a checkpoint cannot be read or written.

``dist_checkpointing`` reports a damaged checkpoint as whatever its readers raise
(``UnicodeDecodeError``, a bare ``EOFError``, ``UnpicklingError``, "unexpected pos ...") and a
full disk as a zip-writer position error; none names the file. After such a failure
:func:`damaged_file` re-reads the folder piece by piece (``.metadata``, ``common.pt``, then
every item of every ``*.distcp`` shard at the offsets the metadata gives) to find the first
file that is missing, short or unreadable. It runs only after a failure, so it costs nothing
on the normal path.

It never executes what it reads: every ``torch.load`` here is ``weights_only=True`` (tensors and
plain data only), so a tampered ``common.pt`` is reported, not run. (torch_dist's ``.metadata``
is a plain pickle that the normal load path unpickles anyway: loading a checkpoint executes
code, so only trusted checkpoints may be loaded; docs/training.md, "What is guaranteed".)
"""

from __future__ import annotations

import errno
import io
import os
import pickle
import resource
import shutil
from typing import Optional

import torch
from torch.distributed.checkpoint.api import CheckpointException

# What dist_checkpointing raises for a damaged or unwritable checkpoint; torch's
# CheckpointException (the per-rank failures of a collective load/save) is a BaseException.
CHECKPOINT_FAILURES = (Exception, CheckpointException)


def _first_line(error: BaseException) -> str:
    error = _rank_failure(error)
    text = str(error).strip()
    if not text:
        return type(error).__name__
    first = text.splitlines()[0]
    if isinstance(error, RuntimeError) and first.startswith(_WRITER_FAILURE):
        return first[len(_WRITER_FAILURE):][:200]  # the writer's own error (its type is lost in transit)
    return f"{type(error).__name__}: {first[:200]}"


# Megatron's shard writer reports the error of its writing process as RuntimeError("Worker failure: <error>").
_WRITER_FAILURE = "Worker failure: "


def _rank_failure(error: BaseException) -> BaseException:
    """The first failed rank's own exception inside torch's CheckpointException (whose first line
    only lists the failed ranks), and the writer's error inside Megatron's wrapper when it is there."""
    if isinstance(error, CheckpointException) and error.failures:
        failure = next(iter(error.failures.values()))
        error = failure[0] if isinstance(failure, tuple) else failure
    if isinstance(error, RuntimeError) and str(error).startswith(_WRITER_FAILURE) and error.__cause__:
        error = error.__cause__
    return error


def damaged_file(folder: str) -> Optional[str]:
    """``"PATH: cause"`` for the first damaged file of a torch_dist checkpoint, or None."""
    from torch.distributed.checkpoint import FileSystemReader

    metadata_path = os.path.join(folder, ".metadata")
    if not os.path.isfile(metadata_path):
        return f"{metadata_path}: missing"
    try:
        metadata = FileSystemReader(folder).read_metadata()
    except Exception as error:  # any unpickling failure
        return f"{metadata_path}: unreadable ({_first_line(error)})"
    common = os.path.join(folder, "common.pt")
    if os.path.isfile(common):
        try:
            torch.load(common, map_location="cpu", weights_only=True)
        except Exception as error:
            if _refused_as_unsafe(error):
                return (f"{common}: holds objects other than tensors and plain data, which are never unpickled "
                        "(a tampered or foreign checkpoint)")
            return f"{common}: unreadable ({_first_line(error)})"
    by_file = {}
    for index, info in metadata.storage_data.items():
        by_file.setdefault(info.relative_path, []).append((index.fqn, info.offset, info.length))
    for name in sorted(by_file):
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            return f"{path}: missing"
        needed = max(offset + length for _, offset, length in by_file[name])
        size = os.path.getsize(path)
        if size < needed:
            return f"{path}: truncated ({size} of {needed} bytes)"
        with open(path, "rb") as handle:
            for fqn, offset, length in sorted(by_file[name], key=lambda item: item[1]):
                handle.seek(offset)
                try:
                    torch.load(io.BytesIO(handle.read(length)), map_location="cpu", weights_only=True)
                except (Exception, pickle.UnpicklingError) as error:
                    if _refused_as_unsafe(error):
                        continue  # a pickled object (e.g. optimizer state): not checked, never executed
                    return f"{path}: corrupt at {fqn} ({_first_line(error)})"
    return None


def _refused_as_unsafe(error: BaseException) -> bool:
    """torch's safe loader refused a well-formed pickle of objects beyond tensors and plain data."""
    # A damaged stream fails with another WeightsUnpickler error ("Unsupported operand ...").
    return isinstance(error, pickle.UnpicklingError) and "Unsupported global" in str(error)


# Storage limits a save can hit, and the cause the one-line message gives for each.
_STORAGE_LIMITS = {
    errno.ENOSPC: "No space left on device",
    errno.EDQUOT: "Disk quota exceeded",
    errno.EFBIG: "File too large for this filesystem (its file-size limit, or ulimit -f)",
}


def _storage_limit(error: BaseException, folder: str) -> int:
    """The errno of the storage limit behind a failed save (ENOSPC, EDQUOT, EFBIG), or 0."""
    for seen in (error, _rank_failure(error)):
        while seen is not None:
            if isinstance(seen, OSError) and seen.errno in _STORAGE_LIMITS:
                return seen.errno
            for number, text in _STORAGE_LIMITS.items():
                if os.strerror(number) in str(seen):  # the writer process's error, as text
                    return number
            seen = seen.__cause__ or seen.__context__
    # torch's zip writer reports a short write as "unexpected pos" without the errno: tell the
    # likely limit from the state of the machine (a nearly full disk, or a file-size rlimit).
    try:
        if shutil.disk_usage(folder).free < 64 * 2**20:
            return errno.ENOSPC
    except OSError:
        pass
    if resource.getrlimit(resource.RLIMIT_FSIZE)[0] != resource.RLIM_INFINITY:
        return errno.EFBIG
    return 0


def read_failure(folder: str, error: BaseException) -> str:
    """The one-line message for a checkpoint that failed to load."""
    damaged = damaged_file(folder)
    if damaged:
        return damaged_load_message(folder, damaged)
    return f"cannot load checkpoint {folder}: {_first_line(error)}"


def damaged_load_message(folder: str, damaged: str) -> str:
    """The one-line message for a checkpoint with a damaged file (``damaged``: "PATH: cause")."""
    return (f"cannot load checkpoint {folder}: {damaged}: restore the file, or point "
            "latest_checkpointed_iteration.txt at an earlier iter_* folder")


def write_failure(folder: str, error: BaseException) -> str:
    """The one-line message for a checkpoint that failed to save (the pointer stays put)."""
    limit = _storage_limit(error, folder)
    if limit == errno.ENOSPC:
        probe = folder if os.path.exists(folder) else os.path.dirname(folder)  # a file not yet written
        free = shutil.disk_usage(probe).free if os.path.exists(probe) else 0
        cause, fix = f"No space left on device ({free / 2**20:.0f} MiB free)", "free space or choose another --save"
    elif limit == errno.EDQUOT:
        cause, fix = _STORAGE_LIMITS[limit], "free space in your quota, raise it, or choose another --save"
    elif limit == errno.EFBIG:
        cause, fix = _STORAGE_LIMITS[limit], ("raise the limit (ulimit -f), or choose a --save on a filesystem "
                                              "that takes large files")
    else:
        cause, fix = _first_line(error), "free space or choose another --save"
    return (f"cannot write checkpoint {folder}: {cause}: the latest pointer still names the previous "
            f"checkpoint; {fix}, then resume")
