"""A tampered checkpoint is never executed by the damaged-file diagnosis (issue 26, finding 2):
every torch.load of a user's file there is weights_only=True, and a pickled object it refuses is
reported, not run."""

import io

import torch
import torch.distributed.checkpoint as dcp

from megatron_ponder.training.checkpointing.errors import damaged_file, read_failure

MARKER = []


def record(event):
    MARKER.append(event)


class Payload:
    """Unpickling this calls record(): what an attacker's code would do."""

    def __reduce__(self):
        return (record, ("executed",))


def _checkpoint(folder):
    """A real torch_dist folder (.metadata and a shard) with a common.pt beside it."""
    dcp.save({"weight": torch.arange(6.0)}, checkpoint_id=str(folder), no_dist=True)
    torch.save({"args": {"seq_length": 8}}, folder / "common.pt")
    return folder


def test_a_sound_checkpoint_has_no_damaged_file(tmp_path):
    assert damaged_file(str(_checkpoint(tmp_path / "ckpt"))) is None


def test_a_tampered_common_pt_is_reported_and_never_executed(tmp_path):
    folder = _checkpoint(tmp_path / "ckpt")
    buffer = io.BytesIO()
    torch.save({"args": Payload()}, buffer)
    (folder / "common.pt").write_bytes(buffer.getvalue())
    MARKER.clear()
    message = read_failure(str(folder), RuntimeError("load failed"))
    assert MARKER == []
    assert "common.pt: holds objects other than tensors and plain data" in message and "\n" not in message
    # The control: the same file does run its payload when unpickled without the safe loader.
    torch.load(folder / "common.pt", weights_only=False)
    assert MARKER == ["executed"]


def test_a_corrupt_common_pt_is_still_named(tmp_path):
    folder = _checkpoint(tmp_path / "ckpt")
    (folder / "common.pt").write_bytes(b"not a torch file")
    assert damaged_file(str(folder)).startswith(f"{folder / 'common.pt'}: unreadable")
