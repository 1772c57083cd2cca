"""The CPU emulation of FP8 mixing (what docs/benchmarks/vocab_mixing.md measures with): per-tensor
current scaling maps the amax to the E4M3 maximum, rounds to 3 mantissa bits, flushes the tail."""

import torch

from megatron_ponder.model.fp8_emulation import emulated_fp8_mixing, fp8_max, quantize_dequantize


def test_amax_is_exact_and_values_round_to_three_mantissa_bits():
    x = torch.tensor([0.8, 0.3, -0.0123, 1e-3])
    y = quantize_dequantize(x, "e4m3")
    assert fp8_max("e4m3") == 448.0 and fp8_max("e5m2") == 57344.0
    assert y[0] == x[0]  # amax * scale = 448 is representable
    assert torch.all((y - x).abs() <= 2.0 ** -4 * x.abs())  # half an ulp of a 3-bit mantissa
    z = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    e4m3_error = (quantize_dequantize(z, "e4m3") - z).norm()
    assert (quantize_dequantize(z, "e5m2") - z).norm() > 1.5 * e4m3_error  # 2 mantissa bits: coarser


def test_probabilities_below_the_smallest_subnormal_flush_to_zero():
    amax = 0.5
    tiny = 2.0 ** -9 * amax / 448  # smallest E4M3 subnormal after scaling by 448 / amax
    probs = torch.tensor([amax, 0.6 * tiny, 0.4 * tiny, 1.5 * tiny])
    kept = quantize_dequantize(probs, "e4m3")
    assert kept[2] == 0 and kept[1] > 0 and kept[3] > 0


def test_emulated_mixing_is_close_to_fp32_and_not_equal():
    generator = torch.Generator().manual_seed(0)
    probs = torch.softmax(2.0 * torch.randn(64, 512, generator=generator), -1)
    weight = torch.randn(512, 32, generator=generator)
    exact = probs @ weight
    for weight_fmt in (None, "e4m3"):
        error = float((emulated_fp8_mixing(probs, weight, weight_fmt) - exact).norm() / exact.norm())
        assert 1e-4 < error < 0.1
