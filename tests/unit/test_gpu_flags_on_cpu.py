"""GPU-only choices on a machine without CUDA: the local spec is chosen, FP8/TE flags are refused
with one line naming the flag, and top-K flags are checked."""

import pytest
import torch

from megatron_ponder.config import PonderConfigError
from megatron_ponder.model.specs import get_block_spec, resolve_transformer_impl
from megatron_ponder.training.arguments import ArgumentError, parse_args, validate_args
from support.tiny_models import tiny_config

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without CUDA")


def _validate(*flags):
    args = parse_args(["--mock-data", *flags])
    validate_args(args, world_size=1)
    return args


def test_auto_picks_the_local_spec_without_cuda():
    assert resolve_transformer_impl("auto") == "local"
    with pytest.raises(RuntimeError, match="no CUDA device"):
        get_block_spec(tiny_config("llama"), transformer_impl="transformer_engine")


def test_fp8_config_without_transformer_engine_is_refused():
    with pytest.raises(ValueError, match="fp8='hybrid' needs the Transformer Engine layer spec"):
        get_block_spec(tiny_config("llama", fp8="hybrid", bf16=True, params_dtype=torch.bfloat16))


@pytest.mark.parametrize(
    "flags, fragment",
    [
        (["--bf16", "--fp8-format", "hybrid"], "--fp8-format needs Transformer Engine on a GPU"),
        (["--transformer-impl", "transformer_engine"], "--transformer-impl transformer_engine needs"),
        (["--ponder-mode", "latent", "--ponder-topk", "8"], "--ponder-topk only applies to --ponder-mode ponder"),
        (["--ponder-mode", "ponder", "--ponder-topk", "0"], "--ponder-topk must be >= 1"),
    ],
)
def test_bad_gpu_and_topk_flags_give_one_line_errors(flags, fragment):
    with pytest.raises(ArgumentError, match=fragment) as error:
        _validate(*flags)
    assert "\n" not in str(error.value)


def test_topk_flag_reaches_the_config_and_k_beyond_the_vocabulary_is_refused():
    args = _validate("--ponder-mode", "ponder", "--ponder-topk", "8")
    assert args.ponder_topk == 8
    with pytest.raises(PonderConfigError, match="ponder_topk 100 exceeds the vocabulary"):
        tiny_config("llama", ponder_mode="ponder", ponder_topk=100, ponder_vocab_size=64)
