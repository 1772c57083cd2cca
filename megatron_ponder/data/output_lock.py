"""One preprocessing run per output prefix, and a publish that never mixes two runs' files.

Two runs into one ``--output-prefix`` used to share fixed temporary names and rename them one
after the other: the second run's ``.bin`` could end up beside the first run's ``.idx`` (sizes
match for the same input) and train without a word. Now:

* each run writes under its own temporary names (``PREFIX.partial-<pid>-<random>.bin/.idx``);
* each run holds an exclusive ``flock`` on ``PREFIX.lock`` from start to publish; a second run
  stops at once with one line naming the holder (:class:`OutputBusyError`);
* the publish removes the old ``.idx`` first, so a reader in between sees no dataset rather than
  a new ``.bin`` with an old ``.idx``, then renames ``.bin`` and ``.idx``.

The lock file is removed when the run ends. A run that locked a file which was removed meanwhile
(the inode at the path is no longer the one it holds) tries again, so two runs never hold
different lock files for one prefix.
"""

from __future__ import annotations

import fcntl
import os
import secrets
from contextlib import contextmanager
from typing import Iterator, Tuple

from megatron_ponder.data.errors import DataError


class OutputBusyError(DataError):
    """Another preprocessing run is writing the same output prefix."""


def temporary_paths(output_prefix: str) -> Tuple[str, str]:
    """This run's own temporary ``.bin`` / ``.idx`` names next to the output."""
    tag = f"partial-{os.getpid()}-{secrets.token_hex(4)}"
    return f"{output_prefix}.{tag}.bin", f"{output_prefix}.{tag}.idx"


@contextmanager
def exclusive_output(output_prefix: str) -> Iterator[None]:
    """Hold ``PREFIX.lock`` for the block; :class:`OutputBusyError` if another run holds it."""
    path = output_prefix + ".lock"
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        fd = _lock(path, output_prefix)
    except OSError as error:
        raise DataError(f"cannot write {path} ({error.strerror}): choose a writable --output-prefix") from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.remove(path)  # while still holding it: a run that opened it meanwhile retries (_lock)
        os.close(fd)  # releases the flock


def _lock(path: str, output_prefix: str) -> int:
    """An fd of ``path`` holding its exclusive flock, the file still at ``path``."""
    while True:
        # A flock (not a per-process record lock): a second run in this same process is refused too.
        # Forked tokenizing workers share it, and exit when the run's task pipe closes.
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise OutputBusyError(
                f"another preprocessing run (pid {holder}) is writing {output_prefix}.bin/.idx: wait for it "
                "to finish, or choose another --output-prefix"
            ) from None
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)  # the holder before us removed this file as we opened it: take the new one


def publish(tmp_bin: str, tmp_idx: str, output_prefix: str) -> None:
    """Rename this run's files to ``PREFIX.bin/.idx`` (under :func:`exclusive_output`)."""
    idx_path = output_prefix + ".idx"
    if os.path.exists(idx_path):
        os.remove(idx_path)  # never a moment with a new .bin beside the old .idx
    os.replace(tmp_bin, output_prefix + ".bin")
    os.replace(tmp_idx, idx_path)
