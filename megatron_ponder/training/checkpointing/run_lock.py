"""One run per ``--save`` folder: a lock file held for the run's lifetime.

Global rank 0 holds an exclusive POSIX record lock (``fcntl.lockf``) on
``SAVE/.megatron_ponder.lock`` from set-up to exit; the kernel drops it when the process ends,
however it ends (SIGKILL, node reboot on a local disk), so a stale lock never blocks. A record
lock belongs to the process, not to the open file: the processes the trainer forks (Megatron's
shard writers) inherit the descriptor but not the lock, so a writer that outlives a killed
trainer cannot keep the run locked (a ``flock`` is shared with forked children and did).
The file records ``pid host`` of the holder, for the refusal's message and to tell, when a new
run takes the lock, that the previous one died holding it (a clean exit empties the file). Where
the filesystem has no locks (some NFS/Lustre mounts), the recorded pid decides: alive on this
host = in use, dead = stale.

The decision is rank 0's and shared with every rank (:func:`agree_on_error`), so all ranks
stop with the same one-line error.
"""

from __future__ import annotations

import atexit
import errno
import fcntl
import os
import socket
from typing import Optional

import torch.distributed as dist

from megatron_ponder.training.rank_agreement import agree_on_error

LOCK_NAME = ".megatron_ponder.lock"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """The held lock (rank 0) or a placeholder (other ranks); released at interpreter exit."""

    def __init__(self, handle=None, path: Optional[str] = None, note: Optional[str] = None):
        self.handle, self.path, self.note = handle, path, note

    def release(self) -> None:
        if self.handle is not None:
            self.handle.seek(0)
            self.handle.truncate()  # empty = ended cleanly
            self.handle.close()
            self.handle = None


def _previous_holder(handle) -> Optional[tuple]:
    handle.seek(0)
    words = handle.read().split()
    if len(words) >= 2 and words[0].isdigit():
        return int(words[0]), words[1]
    return None


def _holder(previous: Optional[tuple], here: str) -> str:
    """Who holds the lock, as far as can be told truthfully."""
    if previous is None:
        return "another process"
    pid, host = previous
    if host == here and not _pid_alive(pid):  # the recorded trainer is gone, yet the lock is held
        return f"a process other than the recorded pid {pid}, which has ended"
    return f"pid {pid} on {host}"


def _take(folder: str):
    """(handle, None, note) on success, or (None, refusal message, None)."""
    path = os.path.join(folder, LOCK_NAME)
    os.makedirs(folder, exist_ok=True)
    handle = open(path, "a+")
    previous = _previous_holder(handle)
    here = socket.gethostname()
    try:
        fcntl.lockf(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        if error.errno in (errno.EAGAIN, errno.EACCES):  # held by another process
            handle.close()
            return None, (f"--save {folder} is in use by another run ({_holder(previous, here)}, lock file "
                          f"{path}): wait for it to finish, or choose another --save folder"), None
        if error.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
            raise
        # No locks on this filesystem: the recorded pid decides (only checkable on its own host).
        if previous and previous[1] == here and _pid_alive(previous[0]) and previous[0] != os.getpid():
            handle.close()
            return None, (f"--save {folder} is in use by another run (pid {previous[0]} on {here}, lock file "
                          f"{path}): wait for it to finish, or choose another --save folder"), None
    note = None
    if previous and previous != (os.getpid(), here):
        note = f"note: {path} was left by pid {previous[0]} on {previous[1]}, which ended without releasing it"
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()} {here}\n")
    handle.flush()
    return handle, None, note


def acquire_run_lock(folder: Optional[str]) -> RunLock:
    """Lock ``folder`` for this run (all ranks call it); CheckpointError if another run holds it."""
    from megatron_ponder.training.checkpointing.save_load import CheckpointError

    if not folder:
        return RunLock()
    handle = note = message = None
    if not dist.is_initialized() or dist.get_rank() == 0:
        handle, message, note = _take(folder)
    message = agree_on_error(message)
    if message:
        raise CheckpointError(message)
    if note:
        print(note, flush=True)
    lock = RunLock(handle, os.path.join(folder, LOCK_NAME), note)
    _HELD.append(lock)
    return lock


_HELD = []


def release_run_locks() -> None:
    """Release the locks this process holds (end of the run; also at interpreter exit)."""
    while _HELD:
        _HELD.pop().release()


atexit.register(release_run_locks)  # any exit but a kill marks the lock released
