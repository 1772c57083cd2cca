"""Processes a trainer starts end when it ends, however it ends (SIGKILL included).

Megatron's checkpointing starts helpers: shard writers forked from the trainer (and from its
async writer), and a ``Manager()`` server started with the spawn method for their results queue.
When the trainer is SIGKILLed they used to live on, reparented and asleep (650 MB and 276 MB),
and a forked writer kept a copy of every file descriptor the trainer had open.

Linux ends a process when its parent dies if the process asked for it
(``prctl(PR_SET_PDEATHSIG, SIGKILL)``); each helper asks right after it starts:

* forked children: an ``os.register_at_fork`` hook of the trainer (inherited by its forked
  children in turn, so a writer forked by the async writer follows it);
* spawned children: they import the trainer's main module as ``__mp_main__``
  (``megatron_ponder.pretrain`` calls :func:`die_with_parent` then).

A child whose parent is already gone when it asks exits at once. Not Linux: nothing to do.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
from typing import Optional

_PR_SET_PDEATHSIG = 1
_parent_pid: Optional[int] = None
_installed = False
_prctl = None  # libc's prctl, looked up before any fork: a forked child must not dlopen


def _libc_prctl():
    global _prctl
    if _prctl is None:
        _prctl = ctypes.CDLL(None, use_errno=True).prctl
    return _prctl


def die_with_parent(parent_pid: Optional[int] = None) -> bool:
    """Ask Linux to SIGKILL this process when its parent ends; True when that is in force.

    ``parent_pid``: the pid the parent had (default: multiprocessing's parent process, for a
    spawned child). If the process was already reparented, it exits now.
    """
    if not sys.platform.startswith("linux"):
        return False
    if parent_pid is None:
        parent = multiprocessing.parent_process()
        parent_pid = parent.pid if parent is not None else os.getppid()
    if _libc_prctl()(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        return False
    if os.getppid() != parent_pid:  # the parent died before the request took effect
        os._exit(1)
    return True


def _remember_parent() -> None:
    global _parent_pid
    _parent_pid = os.getpid()


def _child_after_fork() -> None:
    die_with_parent(_parent_pid)


def end_children_with_this_process() -> None:
    """From now on every child this process forks dies with it (idempotent)."""
    global _installed
    if _installed or not hasattr(os, "register_at_fork") or not sys.platform.startswith("linux"):
        return
    _libc_prctl()
    os.register_at_fork(before=_remember_parent, after_in_child=_child_after_fork)
    _installed = True
