"""The docs table: best layout per model size, method and cluster size (docs/planning.md)."""

from __future__ import annotations

from dataclasses import replace
from typing import List, Tuple

from megatron_ponder.planning.layouts import search_layouts
from megatron_ponder.planning.memory import GIB, total_params
from megatron_ponder.planning.shapes import Method, ModelShape, Precision, RunSpec, h100_cluster

# (label, preset, vocabulary): the papers' Pythia shapes (GPT-NeoX tokenizer) and LLaMA shapes.
MODELS: List[Tuple[str, str, int]] = [
    ("1.4B", "pythia-1.4b", 50304),
    ("2.8B", "pythia-2.8b", 50304),
    ("7B", "llama-7b", 32000),
    ("70B", "llama-70b", 32000),
]
METHODS: List[Tuple[str, Method]] = [
    ("vanilla", Method("none")),
    ("PonderLM S=3", Method("ponder", ponder_steps=3)),
    ("PonderLM-2 N=1 J=2", Method("latent", num_latent_thoughts=1, jacobi_rounds=(2, 2))),
    ("PonderLM-2 N=1 J=3", Method("latent", num_latent_thoughts=1, jacobi_rounds=(3, 3))),
]
GPU_COUNTS = (8, 64, 512)


HEADER = [
    "| model | method | GPUs | recommended layout | memory/GPU (GiB) | bubble | tokens/s | MFU |",
    "|---|---|---|---|---|---|---|---|",
]


def planning_table(seq_length: int = 2048, global_batch_size: int = 1024, precision: str = "bf16",
                   utilisation: float = None) -> str:
    """Markdown table: recommended layout, memory per GPU and predicted tokens/s."""
    return "\n".join(HEADER + planning_rows(seq_length, global_batch_size, precision, utilisation))


def planning_rows(seq_length: int = 2048, global_batch_size: int = 1024, precision: str = "bf16",
                  utilisation: float = None, models=MODELS, methods=METHODS, gpu_counts=GPU_COUNTS) -> List[str]:
    """The table's rows for the given models, methods and GPU counts (a subset for tests)."""
    rows = []
    for label, preset, vocab in models:
        shape = ModelShape.from_preset(preset, vocab_size=vocab, seq_length=seq_length)
        label = f"{label} ({preset}, {total_params(shape) / 1e9:.2f}B)"
        for method_label, method in methods:
            run = RunSpec(shape, method, seq_length, global_batch_size, Precision(precision, "te"))
            for gpus in gpu_counts:
                best = search_layouts(replace(run), h100_cluster(gpus), utilisation, top=1)
                if not best:
                    rows.append(f"| {label} | {method_label} | {gpus} | does not fit | | | | |")
                    continue
                plan = best[0]
                rows.append(
                    f"| {label} | {method_label} | {gpus} | {plan.layout.describe()} | "
                    f"{plan.memory.total / GIB:.1f} | {plan.time.bubble:.1%} | {plan.time.tokens_per_s:,.0f} | "
                    f"{plan.time.mfu:.1%} |"
                )
    return rows
