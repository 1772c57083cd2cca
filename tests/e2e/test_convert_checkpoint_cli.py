"""tools/convert_checkpoint.py on bad input: exit status 2 and one line ``error: ...`` naming the problem."""

import json
import subprocess
import sys

from support.torchrun import REPO, child_env

TOOL = str(REPO / "tools" / "convert_checkpoint.py")


def run_tool(*args):
    return subprocess.run([sys.executable, TOOL, *map(str, args)], env=child_env(), capture_output=True, text=True,
                          timeout=300, check=False)


def test_bad_input_exits_2_with_one_line(tmp_path):
    missing = run_tool("export", "--load", tmp_path / "nothing", "--out", tmp_path / "hf")
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines()[-1] == (
        f"error: {tmp_path / 'nothing'} holds no checkpoint: pass a --save folder or an iter_* folder")


def test_a_gpt2_run_on_the_default_preset_exports(tmp_path):
    """The default preset is a LLaMA shape (grouped-query attention); --architecture gpt2 drops the
    groups, so the run converts (the default mode's PonderLM folder around a stock GPT-2 backbone)."""
    run = tmp_path / "run"
    train = subprocess.run(
        [sys.executable, "-m", "megatron_ponder.pretrain", "--mock-data", "--architecture", "gpt2", "--train-iters", "1",
         "--seq-length", "32", "--micro-batch-size", "2", "--eval-iters", "0", "--save", str(run)],
        env=child_env(), capture_output=True, text=True, timeout=300, check=False)
    assert train.returncode == 0, train.stderr[-2000:]
    export = run_tool("export", "--load", run, "--out", tmp_path / "hf")
    assert export.returncode == 0, export.stderr[-2000:]
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["backbone_config"]["model_type"] == "gpt2"


def test_import_of_a_config_that_does_not_fit_its_weights_is_one_line(tmp_path):
    import transformers

    from support.hf_tiny_models import tiny_backbone_config

    folder = tmp_path / "hf"
    transformers.AutoModelForCausalLM.from_config(tiny_backbone_config("llama")).save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config["intermediate_size"] *= 2  # another model's config beside these weights
    (folder / "config.json").write_text(json.dumps(config))
    result = run_tool("import", "--hf", folder, "--save", tmp_path / "megatron")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: cannot load a Hugging Face model from {folder}: "
                                                             "its config.json does not fit its weights")
    assert "mlp" in result.stderr and not (tmp_path / "megatron").exists()
