"""Dense peak TFLOP/s of known GPUs, the denominator of the training log's MFU.

MFU = achieved TFLOP/s per device (the FLOPs of every pass, :mod:`megatron_ponder.training.flops`)
/ the device's dense peak for the run's GEMM precision. ``--peak-tflops`` overrides the table; a
device the table does not know, an fp32 run (no tensor-core peak applies) and a CPU get no default,
and the log then omits MFU (it never shows 0).
"""

from __future__ import annotations

from typing import Optional, Tuple

# (substring of torch.cuda.get_device_name(), {precision: dense peak TFLOP/s}); the first match
# wins, so the PCIe and NVL boards come before the SXM board whose name they contain. The datasheets
# quote tensor-core figures "with sparsity": the dense peak is half of those.
KNOWN_PEAKS = (
    # NVIDIA H100 Tensor Core GPU datasheet: PCIe BF16/FP16 1,513, FP8 3,026 (with sparsity).
    ("H100 PCIe", {"bf16": 756.5, "fp8": 1513.0}),
    # Same datasheet, H100 NVL: BF16/FP16 1,671, FP8 3,341 (with sparsity).
    ("H100 NVL", {"bf16": 835.5, "fp8": 1670.5}),
    # NVIDIA H200 Tensor Core GPU datasheet, H200 NVL: BF16/FP16 1,671, FP8 3,341 (with sparsity).
    ("H200 NVL", {"bf16": 835.5, "fp8": 1670.5}),
    # H100 SXM ("NVIDIA H100 80GB HBM3"): BF16/FP16 1,979, FP8 3,958 (with sparsity); the H200 SXM
    # ("NVIDIA H200") and GH200 have the same tensor cores and clocks (H200 datasheet: the same figures).
    ("H100", {"bf16": 989.5, "fp8": 1979.0}),
    ("H200", {"bf16": 989.5, "fp8": 1979.0}),
    # NVIDIA A100 Tensor Core GPU datasheet: BF16/FP16 312 dense (624 with sparsity), SXM and PCIe
    # alike; no FP8 tensor cores.
    ("A100", {"bf16": 312.0}),
)


def run_precision(bf16: bool, fp8: Optional[str]) -> str:
    """The GEMM precision a run's peak is looked up for: fp8, bf16 or fp32 (no table entry)."""
    return "fp8" if fp8 else "bf16" if bf16 else "fp32"


def known_peak_tflops(device_name: str, precision: str) -> Optional[float]:
    """The dense peak TFLOP/s of ``device_name`` in ``precision`` ("bf16", "fp8"), or None."""
    for needle, peaks in KNOWN_PEAKS:
        if needle in device_name:
            return peaks.get(precision)
    return None


def peak_tflops_for_run(override: Optional[float], device_name: Optional[str],
                        precision: str) -> Tuple[Optional[float], str]:
    """(peak TFLOP/s per device or None, where it comes from) for the log's MFU.

    ``device_name`` is None on CPU; ``override`` is ``--peak-tflops``.
    """
    if override is not None:
        return override, f"--peak-tflops {override:g}"
    if device_name is None:
        return None, "no peak known for a CPU (--peak-tflops sets one)"
    peak = known_peak_tflops(device_name, precision)
    if peak is None:
        return None, f"no peak known for {device_name} in {precision} (--peak-tflops sets one)"
    return peak, f"{device_name}: {peak:g} TFLOP/s dense {precision.upper()}"


def model_flops_utilization(achieved_tflops: float, peak_tflops: Optional[float]) -> Optional[float]:
    """Achieved / peak TFLOP/s as a fraction (None without a peak: MFU is omitted, not 0)."""
    if peak_tflops is None:
        return None
    return achieved_tflops / peak_tflops
