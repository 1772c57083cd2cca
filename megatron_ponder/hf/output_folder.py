"""What an export's ``--overwrite`` may remove: never a checkpoint, a run, or a folder above one.

``--overwrite`` empties ``--out`` before writing, so ``--out`` pointed (by a slip of the
keyboard) at the run being exported, at a folder of runs, or at the ``--save`` of a run that is
training would delete checkpoints. Such a folder is recognised by what Megatron and this project
write into a checkpoint folder or a run folder, found anywhere below ``--out``:

* ``latest_checkpointed_iteration.txt`` (the latest pointer of a run folder),
* an ``iter_NNNNNNN`` folder (one checkpoint),
* torch_dist's ``metadata.json`` / ``.metadata`` (a checkpoint's own files),
* ``.megatron_ponder.lock`` (a run folder; held while the run trains).

A folder that is, holds or lies above the checkpoint being exported is refused too, whatever it
contains.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from megatron_ponder.training.checkpointing.save_load import LATEST_FILE, is_checkpoint_folder_name
from megatron_ponder.training.checkpointing.run_lock import LOCK_NAME

CHECKPOINT_FILES = (LATEST_FILE, LOCK_NAME, "metadata.json", ".metadata")


def _first_checkpoint_mark(folder: Path) -> Optional[Path]:
    """The first file or folder below ``folder`` (itself included) that marks a checkpoint or a run."""
    for root, dirs, files in os.walk(folder):
        if is_checkpoint_folder_name(os.path.basename(root)):
            return Path(root)
        for name in files:
            if name in CHECKPOINT_FILES:
                return Path(root) / name
        for name in dirs:
            if is_checkpoint_folder_name(name):
                return Path(root) / name
    return None


def overwrite_refusal(out: Path, load_dir: str) -> Optional[str]:
    """None when ``--overwrite`` may empty ``out``; else one line saying why not and what to do."""
    target, source = out.resolve(), Path(load_dir).resolve()
    if target == source or target in source.parents:
        return (f"--out {out} is or holds the checkpoint being exported ({load_dir}): --overwrite would delete it; "
                "choose another --out")
    mark = _first_checkpoint_mark(target) if target.is_dir() else None
    if mark is not None:
        return (f"--out {out} holds a checkpoint or a run folder ({mark}): --overwrite never deletes those; "
                "choose another --out")
    return None
