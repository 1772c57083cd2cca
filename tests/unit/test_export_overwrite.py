"""`convert_checkpoint.py export --overwrite` never deletes a checkpoint, a run, or a folder above
one (issue 26, finding 1): the run being exported, a parent folder of runs, a run training now."""

from pathlib import Path

import pytest

from megatron_ponder.hf.export import ExportError, export_checkpoint
from megatron_ponder.hf.output_folder import overwrite_refusal


def _run_folder(path: Path, *, locked: bool = False, checkpoint: bool = True) -> Path:
    """A run folder as training leaves it: pointer, iter_0000002 with torch_dist files, optimizer."""
    path.mkdir(parents=True)
    if checkpoint:
        (path / "latest_checkpointed_iteration.txt").write_text("2")
        iteration = path / "iter_0000002"
        iteration.mkdir()
        (iteration / "metadata.json").write_text("{}")
        (iteration / "__0_0.distcp").write_bytes(b"weights and optimizer")
    if locked:
        (path / ".megatron_ponder.lock").write_text("pid 12345")
    return path


def _files(folder: Path):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.mark.parametrize("case", ["the run itself", "a parent of runs", "a run training now", "an iter folder"])
def test_overwrite_refuses_and_deletes_nothing(tmp_path, case):
    run = _run_folder(tmp_path / "runs" / "a")
    other = _run_folder(tmp_path / "runs" / "b")
    live = _run_folder(tmp_path / "live", locked=True, checkpoint=False)
    out = {"the run itself": run, "a parent of runs": tmp_path / "runs", "a run training now": live,
           "an iter folder": other / "iter_0000002"}[case]
    before = _files(tmp_path)
    with pytest.raises(ExportError, match="--overwrite") as error:
        export_checkpoint(str(run), str(out), overwrite=True)
    assert "\n" not in str(error.value) and "choose another --out" in str(error.value)
    assert _files(tmp_path) == before


def test_overwrite_may_replace_an_earlier_export(tmp_path):
    run = _run_folder(tmp_path / "run")
    old_export = tmp_path / "hf"
    old_export.mkdir()
    (old_export / "config.json").write_text("{}")
    (old_export / "model.safetensors").write_bytes(b"old")
    assert overwrite_refusal(old_export, str(run)) is None
    assert overwrite_refusal(tmp_path, str(run)) is not None  # holds the run
