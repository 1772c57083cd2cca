"""megatron_ponder: PonderLM / PonderLM-2 pretraining on Megatron-Core."""

from setuptools import find_packages, setup

setup(
    name="megatron_ponder",
    version="0.1.0",
    description=(
        "Megatron-Core plugin for GPT models that think in continuous space: "
        "PonderLM pondering and PonderLM-2 latent thoughts with Jacobi iterations"
    ),
    packages=find_packages(include=["megatron_ponder", "megatron_ponder.*"]),
    python_requires=">=3.10",
    install_requires=[
        # 0.16.1 is the newest megatron-core for Python 3.11; its APIs are what we call.
        "megatron-core==0.16.1",
        # Any torch that megatron-core supports; on CPU machines install the `cpu` extra so pip
        # takes the CPU wheel instead of resolving a multi-GB CUDA build.
        "torch>=2.6",
        # Undeclared by megatron-core, but dist_checkpointing.save hangs without it.
        "psutil",
        "numpy",
        # Byte-level BPE training and tokenization for the data layer (megatron_ponder.data).
        "tokenizers>=0.20",
    ],
    extras_require={
        "cpu": ["torch==2.13.0"],
        # The reproduction report (benchmarks/reproduction_report.py) tests draw its loss-curve PNG.
        "test": ["pytest>=8.0", "matplotlib==3.10.9"],
        # Benchmark and reproduction plots (benchmarks/*.py write PNGs next to their tables).
        "bench": ["matplotlib==3.10.9"],
    },
)
