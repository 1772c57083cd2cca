"""Entry-point flags: config fields by flag name, old spellings still parse, sizes derived without
writing into the arguments, and the package never imports its own entry point."""

import argparse
import ast
import dataclasses
from pathlib import Path

import pytest

from megatron_ponder.config import PonderConfig
from megatron_ponder.training.arguments import (
    OLD_SPELLINGS,
    ArgumentError,
    build_parser,
    derive_run_sizes,
    finalize_args,
    parse_args,
    upgrade_saved_args,
    validate_args,
)
from megatron_ponder.training.model_config import model_config

PACKAGE = Path(__file__).resolve().parents[2] / "megatron_ponder"

# Each old spelling with a value, and the same setting in today's spelling.
SPELLINGS = [
    (["--jacobi-iters", "1,4"], ["--jacobi-train-rounds", "1,4"]),
    (["--jacobi-iters", "2"], ["--jacobi-train-rounds", "2,2"]),
    (["--jacobi-eval-iters", "5"], ["--jacobi-eval-rounds", "5"]),
    (["--ponder-replace"], ["--no-ponder-accumulate"]),
    (["--no-fp8-mixing"], ["--no-ponder-fp8-mixing"]),
]


def _config(argv):
    args = parse_args(["--mock-data", *argv])
    args.tokenizer_vocab_size = 100
    return model_config(args)


@pytest.mark.parametrize("old, new", SPELLINGS, ids=[old[0] + " " + " ".join(old[1:]) for old, _ in SPELLINGS])
def test_old_spelling_parses_to_the_same_arguments(old, new):
    assert {o[0] for o, _ in SPELLINGS} == set(OLD_SPELLINGS)
    default = vars(parse_args(["--mock-data"]))
    old_args, new_args = vars(parse_args(["--mock-data", *old])), vars(parse_args(["--mock-data", *new]))
    assert old_args == new_args
    assert old_args != default  # the flag did set something


def test_help_lists_the_new_names_only():
    text = build_parser().format_help()
    for old, new in OLD_SPELLINGS.items():
        assert new in text, new
        assert old not in text.replace(new, ""), old


# Every method field of PonderConfig, set through the flag of its own name.
FIELD_FLAGS = {
    "ponder_mode": (["--ponder-mode", "ponder"], "ponder"),
    "ponder_steps": (["--ponder-steps", "5"], 5),
    "ponder_accumulate": (["--no-ponder-accumulate"], False),
    "ponder_topk": (["--ponder-topk", "7"], 7),
    "ponder_grad_steps": (["--ponder-grad-steps", "2"], 2),
    "ponder_fp8_mixing": (["--no-ponder-fp8-mixing"], False),
    "num_latent_thoughts": (["--num-latent-thoughts", "3"], 3),
    "jacobi_train_rounds": (["--jacobi-train-rounds", "1,5"], (1, 5)),
    "jacobi_eval_rounds": (["--jacobi-eval-rounds", "6"], 6),
    "jacobi_grad_rounds": (["--jacobi-grad-rounds", "1"], 1),
    "jacobi_eval_tol": (["--jacobi-eval-tol", "1e-3"], 1e-3),
    "jacobi_seed": (["--jacobi-seed", "9"], 9),
    "input_embedding_scale": (["--input-embedding-scale", "2.5"], 2.5),
    "local_attention": (["--local-attention", "unfused"], "unfused"),
    "reset_attention_mask": (["--reset-attention-mask"], True),
}


def test_every_method_field_has_a_flag_of_its_name():
    own = {f.name for f in dataclasses.fields(PonderConfig)} - {f.name for f in dataclasses.fields(PonderConfig.__mro__[1])}
    # ponder_vocab_size is the tokenizer's vocabulary, derived by the data set-up.
    assert own - {"ponder_vocab_size"} == set(FIELD_FLAGS)
    for field, (argv, value) in FIELD_FLAGS.items():
        assert getattr(_config(argv), field) == value, field
        assert getattr(_config([]), field) != value, field  # not the default by chance


def test_megatron_fields_come_from_flags_by_name():
    config = _config(["--num-layers", "6", "--hidden-size", "96", "--num-attention-heads", "6",
                      "--num-query-groups", "3", "--ffn-hidden-size", "200", "--init-method-std", "0.05",
                      "--recompute-granularity", "full", "--recompute-method", "block", "--recompute-num-layers", "2"])
    assert (config.num_layers, config.hidden_size, config.num_attention_heads, config.num_query_groups,
            config.ffn_hidden_size, config.init_method_std) == (6, 96, 6, 3, 200, 0.05)
    assert (config.recompute_granularity, config.recompute_method, config.recompute_num_layers) == ("full", "block", 2)
    selective = _config(["--recompute-granularity", "selective"])
    assert (selective.recompute_method, selective.recompute_num_layers) == (None, None)
    assert _config(["--norm-epsilon", "1e-6"]).layernorm_epsilon == 1e-6
    assert _config([]).ponder_vocab_size == 100


def test_checkpoint_arguments_saved_under_old_names_are_upgraded():
    saved = dict(jacobi_iters=(1, 2), jacobi_eval_iters=4, ponder_replace=True, no_fp8_mixing=True,
                 fp8_format=None, hidden_size=64)
    assert upgrade_saved_args(saved) == dict(jacobi_train_rounds=(1, 2), jacobi_eval_rounds=4, ponder_accumulate=False,
                                             ponder_fp8_mixing=False, fp8=None, hidden_size=64)
    current = dict(jacobi_train_rounds=(3, 3), hidden_size=64)
    assert upgrade_saved_args(current) == current


def test_validate_args_reads_only_and_finalize_args_writes_the_sizes():
    args = parse_args(["--mock-data", "--micro-batch-size", "2", "--tensor-model-parallel-size", "2"])
    before = dict(vars(args))
    sizes = validate_args(args, world_size=8)
    assert vars(args) == before and args.global_batch_size is None
    assert sizes == derive_run_sizes(args, 8)
    assert (sizes.data_parallel_size, sizes.global_batch_size, sizes.num_microbatches) == (4, 8, 1)
    finalize_args(args, world_size=8)
    assert (args.data_parallel_size, args.global_batch_size, args.num_microbatches) == (4, 8, 1)
    with pytest.raises(ArgumentError, match="world size 6 is not divisible"):
        derive_run_sizes(argparse.Namespace(tensor_model_parallel_size=4, pipeline_model_parallel_size=1,
                                            context_parallel_size=1), 6)


def test_nothing_in_the_package_imports_the_entry_point():
    importers = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            if "megatron_ponder.pretrain" in names:
                importers.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}")
    assert importers == []


def test_warmup_fraction_is_of_the_decay_steps_and_an_explicit_count_wins():
    args = parse_args(["--mock-data", "--train-iters", "300", "--lr-warmup-fraction", "0.2"])
    finalize_args(args, world_size=1)
    assert args.lr_warmup_iters == 60
    args = parse_args(["--mock-data", "--train-iters", "300", "--lr-warmup-fraction", "0.2", "--lr-warmup-iters", "5"])
    finalize_args(args, world_size=1)
    assert args.lr_warmup_iters == 5
    args = parse_args(["--mock-data", "--train-iters", "2", "--lr-warmup-fraction", "0.2"])
    finalize_args(args, world_size=1)
    assert args.lr_warmup_iters == 0  # short runs (tests, smoke) warm up for no step rather than fail
    with pytest.raises(ArgumentError, match=r"--lr-warmup-fraction must be in \[0, 1\)"):
        validate_args(parse_args(["--mock-data", "--lr-warmup-fraction", "1.5"]), world_size=1)


def test_input_embedding_scale_takes_a_number_or_sqrt_hidden():
    assert parse_args(["--mock-data", "--input-embedding-scale", "2.5"]).input_embedding_scale == 2.5
    args = parse_args(["--mock-data", "--preset", "cpu-small", "--input-embedding-scale", "sqrt-hidden"])
    assert args.input_embedding_scale == 16.0  # hidden 256
    args = parse_args(["--mock-data", "--hidden-size", "64", "--num-attention-heads", "4",
                       "--input-embedding-scale", "sqrt-hidden"])
    assert args.input_embedding_scale == 8.0
    with pytest.raises(SystemExit):
        parse_args(["--mock-data", "--input-embedding-scale", "sqrt"])


@pytest.mark.parametrize("architecture", ["gpt2", "neox"])
def test_a_llama_presets_grouped_query_attention_is_not_kept_for_gpt2_or_neox(architecture):
    """The default preset (cpu-tiny) is a LLaMA shape with 2 K/V groups; GPT-2 and GPT-NeoX have
    none, so their runs get one K/V per head (exportable), and asking for groups is refused."""
    args = parse_args(["--mock-data", "--architecture", architecture])
    assert args.num_query_groups is None
    validate_args(args, world_size=1)
    assert parse_args(["--mock-data"]).num_query_groups == 2  # llama keeps the preset's GQA
    with pytest.raises(ArgumentError, match="has no grouped-query attention"):
        validate_args(parse_args(["--mock-data", "--architecture", architecture, "--num-query-groups", "2"]), 1)
