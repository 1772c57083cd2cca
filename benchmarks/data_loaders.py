"""Benchmark: tokens/s of the default loader and the DALI loader on CPU, next to what training consumes.

Loaders (same batches, see tests/unit/test_dali_loader.py) over a synthetic Megatron indexed dataset
(documents of 20..2000 tokens, uint16 ids), one data-parallel rank, batches pulled back to back
with no training in between:

* ``single``: MicrobatchStream, ``GPTDataset.__getitem__`` + ``torch.stack`` in this process;
* ``dali``: DaliMicrobatchStream, CPU pipeline (``device_id=None``), windows read in this process;
* ``dali, 2 py workers``: the same with the window reads in 2 DALI worker processes.

Training: one ``train_step`` of the default CPU run (``--preset cpu-tiny``, latent mode, micro batch 4,
one of its processes: one thread) on the same data; tokens/s = tokens per step / step time.

    python benchmarks/data_loaders.py       # prints the tables, writes docs/benchmarks/data_loaders.md
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
warnings.filterwarnings("ignore")

import numpy as np  # noqa: E402
import torch  # noqa: E402

VOCAB = 50257
SHAPES = [(128, 4), (2048, 8)]  # (seq_length, micro_batch_size): the default CPU run's, a Pythia run's


def write_dataset(prefix: str, documents: int, seed: int = 0) -> int:
    """Random documents with Megatron's IndexedDatasetBuilder; returns the token count."""
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    rng = np.random.default_rng(seed)
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=np.uint16)
    total = 0
    for _ in range(documents):
        tokens = np.append(rng.integers(0, VOCAB - 1, rng.integers(20, 2001)), VOCAB - 1).astype(np.int64)
        builder.add_document(torch.from_numpy(tokens), [len(tokens)])
        total += len(tokens)
    builder.finalize(prefix + ".idx")
    return total


def loader_tokens_per_second(make_stream, tokens_per_microbatch: int, seconds: float, repeats: int) -> tuple:
    """Medians over ``repeats`` of (tokens per wall second, tokens per CPU second of this process)
    pulling microbatches for ``seconds`` after a warm-up. CPU time counts DALI's threads, not its
    worker processes; it is the figure that does not depend on what else shares the machine."""
    stream = make_stream()
    for _ in range(8):
        stream.next_step()
    wall, cpu = [], []
    for _ in range(repeats):
        count, start, start_cpu = 0, time.perf_counter(), time.process_time()
        while time.perf_counter() - start < seconds:
            count += len(stream.next_step())
        wall.append(count * tokens_per_microbatch / (time.perf_counter() - start))
        cpu.append(count * tokens_per_microbatch / max(time.process_time() - start_cpu, 1e-9))
    return statistics.median(wall), statistics.median(cpu)


def training_tokens_per_second(train_set, steps: int) -> tuple:
    """(tokens/s, ms/step) of the default CPU run's train_step, one process with one thread."""
    from megatron_ponder.data.datasets import MicrobatchStream
    from megatron_ponder.training.arguments import finalize_args, parse_args
    from megatron_ponder.training.build import build_training_state
    from megatron_ponder.training.model_config import model_config
    from megatron_ponder.training.step import train_step

    args = parse_args(["--mock-data", "--vocab-size", str(VOCAB + 175)])  # the default run's flags otherwise
    finalize_args(args, 1)
    args.tokenizer_vocab_size = VOCAB
    config = model_config(args)
    _, chunks, optimizer, _ = build_training_state(args, config)
    stream = MicrobatchStream(train_set, args.global_batch_size, args.micro_batch_size, 0, 1)
    wall, cpu = [], []
    for iteration in range(steps + 2):
        batches = stream.next_step()
        start, start_cpu = time.perf_counter(), time.process_time()
        train_step(chunks, optimizer, batches, args.micro_batch_size, args.seq_length, iteration)
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    tokens = args.global_batch_size * args.seq_length
    step, step_cpu = statistics.median(wall[2:]), statistics.median(cpu[2:])
    return tokens / step, tokens / step_cpu, step * 1e3, step_cpu * 1e3, args


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=4000)
    parser.add_argument("--seconds", type=float, default=2.0, help="per measurement")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--train-steps", type=int, default=10)
    parser.add_argument("--output", default=str(REPO / "docs" / "benchmarks" / "data_loaders.md"))
    args = parser.parse_args()

    from megatron_ponder.data.dali_loader import DaliMicrobatchStream
    from megatron_ponder.data.datasets import MicrobatchStream, build_gpt_datasets
    from megatron_ponder.data.tokenizer import NullTokenizer
    from megatron_ponder.runtime.parallel_init import initialize_parallel

    initialize_parallel()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        prefix = os.path.join(folder, "docs")
        tokens = write_dataset(prefix, args.documents)
        print(f"dataset: {args.documents} documents, {tokens / 1e6:.1f} M tokens", flush=True)
        datasets = {}
        for seq, mbs in SHAPES:
            train, _, _ = build_gpt_datasets([prefix], "1,0,0", seq, 1234, NullTokenizer(VOCAB),
                                             (4 * tokens // seq, 0, 0), cache_dir=os.path.join(folder, "cache"))
            datasets[seq] = train
            loaders = {
                "single": lambda: MicrobatchStream(train, mbs, mbs, 0, 1),
                "dali": lambda: DaliMicrobatchStream(train, mbs, mbs, 0, 1, device_id=None),
                "dali, 2 py workers": lambda: DaliMicrobatchStream(train, mbs, mbs, 0, 1, device_id=None,
                                                                   py_workers=2),
            }
            for name, make in loaders.items():
                rate, cpu_rate = loader_tokens_per_second(make, seq * mbs, args.seconds, args.repeats)
                rows.append((name, seq, mbs, rate, cpu_rate))
                print(f"{name:20s} seq {seq:5d} x {mbs}: {rate / 1e6:7.2f} M tokens/s, "
                      f"{cpu_rate / 1e6:7.2f} M tokens/CPU-s", flush=True)
        torch.set_num_threads(1)  # as each of the default run's 2 CPU processes (OMP_NUM_THREADS=1)
        rate, cpu_rate, step_ms, step_cpu_ms, run = training_tokens_per_second(datasets[128], args.train_steps)
        print(f"train_step (cpu-tiny, {run.ponder_mode}): {step_ms:.0f} ms/step ({step_cpu_ms:.0f} CPU ms), "
              f"{rate:,.0f} tokens/s ({cpu_rate:,.0f} tokens/CPU-s)", flush=True)

    load = os.getloadavg()[1]  # 5-minute load average: how busy the shared machine was
    single_128 = next(r[4] for r in rows if r[0] == "single" and r[1] == 128)
    lines = [
        "# Data loader benchmark",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores (shared: 5-minute load average {load:.1f} "
        "at the end of the run), "
        f"Python {platform.python_version()}, torch {torch.__version__}. "
        "Produced by `python benchmarks/data_loaders.py`.",
        f"Data: {args.documents} random documents of 20..2000 tokens ({tokens / 1e6:.1f} M tokens, uint16), "
        "read through Megatron's GPTDataset indices; one data-parallel rank; median of "
        f"{args.repeats} x {args.seconds:.0f} s.",
        "",
        "## Loader throughput (batches pulled back to back, no training)",
        "",
        "Wall-clock rates depend on what else runs on the machine; rates per CPU second of the loading "
        "process (DALI's threads included; its worker processes not, so the py-workers rows understate "
        "their cost) depend much less on it.",
        "",
        "| loader | seq length | micro batch | M tokens/s | M tokens per CPU-s |",
        "|---|---|---|---|---|",
        *[f"| {name} | {seq} | {mbs} | {r / 1e6:.2f} | {c / 1e6:.2f} |" for name, seq, mbs, r, c in rows],
        "",
        "## What a training step consumes",
        "",
        "| run | tokens per step | ms per step | CPU ms per step | tokens/s | tokens per CPU-s |",
        "|---|---|---|---|---|---|",
        f"| default CPU run (preset {run.preset}, {run.ponder_mode}, micro batch {run.micro_batch_size} x "
        f"{run.seq_length}, one process, 1 thread) | {run.global_batch_size * run.seq_length} | {step_ms:.0f} "
        f"| {step_cpu_ms:.0f} | {rate:,.0f} | {cpu_rate:,.0f} |",
        "",
        f"Per CPU second the default loader supplies {single_128 / cpu_rate:,.0f}x the tokens this step "
        "consumes: on CPU loading is a negligible share of a step with either loader.",
        "",
    ]
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text("\n".join(lines))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
