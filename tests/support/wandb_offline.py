"""Read back what a wandb run logged in offline mode (``WANDB_MODE=offline``).

An offline run keeps everything in ``<dir>/wandb/offline-run-*/run-*.wandb``: wandb's
transaction log, a LevelDB-style log of its own protobuf ``Record`` messages (what ``wandb sync``
uploads). The framing is read here (7-byte file header; 32 KiB blocks of chunks, each with a
CRC-32C, a 2-byte length and a type: full, first, middle, last); the records are parsed with
wandb's own ``wandb_internal_pb2.Record``.
"""

from __future__ import annotations

import glob
import json
import os
import struct
from typing import Dict, Iterator, List

BLOCK = 32768
HEADER = 7  # ":W&B", magic 0xBEE1, version
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def _chunks(data: bytes) -> Iterator[bytes]:
    position = HEADER
    pending = b""
    while position + 7 <= len(data):
        left_in_block = BLOCK - position % BLOCK
        if left_in_block < 7:  # padding at the end of a block
            position += left_in_block
            continue
        _, length, kind = struct.unpack_from("<IHB", data, position)
        payload = data[position + 7:position + 7 + length]
        position += 7 + length
        if kind == FULL:
            yield payload
        elif kind == FIRST:
            pending = payload
        elif kind == MIDDLE:
            pending += payload
        elif kind == LAST:
            yield pending + payload
            pending = b""
        elif kind == 0 and length == 0:  # zero padding
            position += BLOCK - position % BLOCK
        else:
            raise ValueError(f"unexpected chunk type {kind} at byte {position - 7 - length}")


def offline_run_file(wandb_dir: str) -> str:
    """The one offline run's ``.wandb`` file under ``wandb_dir``."""
    files = glob.glob(os.path.join(wandb_dir, "wandb", "offline-run-*", "run-*.wandb"))
    assert len(files) == 1, files
    return files[0]


def logged_history(run_file: str) -> List[Dict[str, object]]:
    """The ``wandb.log`` rows of the run, in order: ``{"_step": ..., key: value, ...}``."""
    from wandb.proto import wandb_internal_pb2

    rows = []
    with open(run_file, "rb") as handle:
        data = handle.read()
    assert data[:4] == b":W&B", data[:8]
    for chunk in _chunks(data):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(chunk)
        if record.WhichOneof("record_type") != "history":
            continue
        row = {}
        for item in record.history.item:
            key = item.key or "/".join(item.nested_key)
            row[key] = json.loads(item.value_json)
        if record.history.HasField("step"):
            row.setdefault("_step", record.history.step.num)
        rows.append(row)
    return rows
