"""A checksum of every file of a checkpoint, written at save and verified before a load or export.

torch's zip reader skips the CRCs of a ``.distcp`` shard, so a flipped byte inside a tensor
payload used to load (and export) silently. Every complete ``iter_N`` folder now holds
``checksums.json``: the CRC-32 of each of its files, written after every rank has finished
writing and before the latest pointer moves. A load (every rank) and an export check the files
against it first and name the first damaged one. Folders written before this file existed have
none and are loaded as before.

CRC-32 because the threat is corruption (a bad disk, a truncated copy), not an adversary
(loading a checkpoint executes code anyway: docs/training.md). The work is shared: with W ranks,
rank r reads files r, r+W, ... (a rank's own shards are still in its page cache after the save).
"""

from __future__ import annotations

import json
import os
import zlib
from typing import Dict, List, Optional

import torch.distributed as dist

CHECKSUM_FILE = "checksums.json"
_CHUNK = 16 << 20


def file_crc32(path: str) -> str:
    """CRC-32 of the file's bytes, 8 hex digits."""
    crc = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            crc = zlib.crc32(chunk, crc)
    return f"{crc:08x}"


def _checkpoint_files(folder: str) -> List[str]:
    """The folder's file names as rank 0 sees them (rank 0 made the folder), the same on every rank."""
    rank, world = _world()
    names = None
    if rank == 0:
        names = sorted(name for name in os.listdir(folder)
                       if name != CHECKSUM_FILE and os.path.isfile(os.path.join(folder, name)))
    if world > 1:
        holder = [names]
        dist.broadcast_object_list(holder, src=0)
        names = holder[0]
    # None only where the broadcast is a stand-in (tools/fake_gpu.py posing as rank > 0): no files.
    return names or []


def _world() -> tuple:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _share(names: List[str]) -> List[str]:
    rank, world = _world()
    return names[rank::world]


def _gather(local: Dict[str, str]) -> Dict[str, str]:
    rank, world = _world()
    if world == 1:
        return dict(local)
    parts: List[Optional[Dict[str, str]]] = [None] * world
    dist.all_gather_object(parts, local)
    return {name: value for part in parts for name, value in (part or {}).items()}


def compute_checksums(folder: str) -> Dict[str, str]:
    """``{file name: crc32}`` of the folder's files, computed in shares by all ranks (a collective)."""
    return _gather({name: file_crc32(os.path.join(folder, name)) for name in _share(_checkpoint_files(folder))})


def write_checksum_file(folder: str, checksums: Dict[str, str]) -> None:
    """``folder/checksums.json``, replaced atomically (one process writes it)."""
    path = os.path.join(folder, CHECKSUM_FILE)
    temporary = path + f".tmp-{os.getpid()}"
    with open(temporary, "w") as handle:
        json.dump({"algorithm": "crc32", "files": checksums}, handle, indent=1, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def damaged_by_checksum(folder: str) -> Optional[str]:
    """``"PATH: cause"`` for the first file that is missing or differs from ``checksums.json``,
    None when all match or the folder has no checksums. All ranks get the same answer (a
    collective when torch.distributed is initialised)."""
    path = os.path.join(folder, CHECKSUM_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as handle:
            stored = json.load(handle)["files"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        return f"{path}: unreadable ({type(error).__name__})"
    problems = {}
    for name in _share(sorted(stored)):
        file = os.path.join(folder, name)
        if not os.path.isfile(file):
            problems[name] = f"{file}: missing"
            continue
        actual = file_crc32(file)
        if actual != stored[name]:
            problems[name] = f"{file}: checksum mismatch (stored crc32 {stored[name]}, now {actual}): the file is damaged"
    problems = _gather(problems)
    return problems[min(problems)] if problems else None
