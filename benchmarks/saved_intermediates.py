"""What autograd keeps for backward: the Megatron local layers against the HF remote-code model.

Same shape, weights and modes as benchmarks/hf_vs_megatron.py; one forward+backward each, the
peak bytes of saved non-parameter storages (tests/support/saved_tensor_probe.py). Variants of the
Megatron model: before (Megatron's unfused attention and unfused SwiGLU), SDPA attention only,
after (SDPA + Megatron's fused SwiGLU, the defaults), and after + Megatron's selective recompute
of the MLP (``recompute_modules=["core_attn", "mlp"]``, costs one more MLP forward).

    OMP_NUM_THREADS=1 PYTHONPATH=.:tests python benchmarks/saved_intermediates.py   # prints a markdown table

(tests/ on the path: the probe is a test helper.)
"""

from __future__ import annotations

import sys
import warnings

warnings.filterwarnings("ignore")

VARIANTS = {
    "before": {"local_attention": "unfused", "bias_activation_fusion": False},
    "sdpa, unfused SwiGLU": {"bias_activation_fusion": False},
    "after (sdpa, fused SwiGLU)": {},
    "after + recompute mlp": {"recompute_granularity": "selective", "recompute_modules": ["core_attn", "mlp"]},
}


def saved_mib(model, run) -> float:
    from support.saved_tensor_probe import SavedTensorPeak

    probe = SavedTensorPeak(model.parameters())
    with probe.measuring():
        run().backward()
    return probe.peak / 2**20


def main() -> int:
    import torch

    import hf_vs_megatron as bench
    from megatron_ponder.runtime.parallel_init import initialize_parallel

    initialize_parallel()
    shape = bench.SHAPES["tiny" if "--tiny" in sys.argv else "h256"]
    tokens, labels, positions = bench.batch(shape)
    print("| mode | " + " | ".join(VARIANTS) + " | HF |")
    print("|---" * (len(VARIANTS) + 2) + "|")
    for mode in bench.MODES:
        cells = []
        for fields in VARIANTS.values():
            bench.IMPLS["variant"] = fields
            model = bench.build_megatron(shape, mode, "variant").train()
            cells.append(saved_mib(model, lambda: bench.training_loss(model, tokens, positions, labels).mean()))
        hf = bench.build_hf(shape, mode, bench.build_megatron(shape, mode, "megatron after"))
        mask = torch.ones_like(tokens)
        cells.append(saved_mib(hf, lambda: hf(input_ids=tokens, attention_mask=mask, labels=tokens).loss))
        print(f"| {mode} | " + " | ".join(f"{c:.1f}" for c in cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
