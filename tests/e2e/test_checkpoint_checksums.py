"""Every checkpoint folder carries checksums.json; a flipped byte inside a tensor payload (which
torch's zip reader does not notice) stops a resume and an export with one line naming the file
(issue 26, finding 6)."""

import importlib.util
import json
import os
import shutil

import pytest

from megatron_ponder.pretrain import main
from megatron_ponder.training.checkpointing.checksums import CHECKSUM_FILE, file_crc32
from support.torchrun import REPO

TINY = ["--mock-data", "--seq-length", "32", "--micro-batch-size", "2", "--eval-iters", "0", "--log-interval", "1"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("checksums") / "run"
    assert main([*TINY, "--train-iters", "2", "--save", str(folder)]) == 0
    return folder


def _convert(argv):
    spec = importlib.util.spec_from_file_location("convert_checkpoint", REPO / "tools" / "convert_checkpoint.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool.main([str(a) for a in argv])


def _flip_a_byte_in_the_middle_of_a_shard(run):
    shard = max((run / "iter_0000002").glob("*.distcp"), key=os.path.getsize)
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    return shard


def test_every_file_of_the_checkpoint_has_its_checksum(run_dir):
    folder = run_dir / "iter_0000002"
    stored = json.loads((folder / CHECKSUM_FILE).read_text())
    assert stored["algorithm"] == "crc32"
    names = sorted(p.name for p in folder.iterdir() if p.is_file() and p.name != CHECKSUM_FILE)
    assert sorted(stored["files"]) == names and ".metadata" in names and any(n.endswith(".distcp") for n in names)
    assert all(stored["files"][name] == file_crc32(str(folder / name)) for name in names)


def test_a_flipped_byte_stops_resume_and_export_naming_the_file(run_dir, tmp_path, capfd):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    shard = _flip_a_byte_in_the_middle_of_a_shard(run)
    capfd.readouterr()
    assert main([*TINY, "--train-iters", "3", "--load", str(run), "--save", str(run),
                 "--override-opt_param-scheduler"]) == 2
    error = [line for line in capfd.readouterr().err.splitlines() if "error:" in line]
    assert len(error) == 1 and f"{shard}: checksum mismatch" in error[0], error
    assert _convert(["export", "--load", run, "--out", tmp_path / "hf"]) == 2
    error = [line for line in capfd.readouterr().err.splitlines() if "error:" in line]
    assert len(error) == 1 and f"{shard}: checksum mismatch" in error[0], error
    assert not (tmp_path / "hf").exists()
    # The control: without its checksums the damaged folder loads and trains without a word.
    (run / "iter_0000002" / CHECKSUM_FILE).unlink()
    assert main([*TINY, "--train-iters", "3", "--load", str(run), "--save", str(run),
                 "--override-opt_param-scheduler"]) == 0


def test_a_checkpoint_without_checksums_still_loads(run_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    (run / "iter_0000002" / CHECKSUM_FILE).unlink()  # written before checksums existed
    assert main([*TINY, "--train-iters", "3", "--load", str(run), "--save", str(run),
                 "--override-opt_param-scheduler"]) == 0
    assert (run / "iter_0000003" / CHECKSUM_FILE).is_file()
