"""What checkpoint checksums cost: the save of a run's checkpoint beside the CRC-32 pass over it,
and the verification a load (or export) does first.

One process, a model of ``--hidden-size``/``--num-layers`` (default ~100M parameters: a
checkpoint of ~1.2 GB with Adam's fp32 state) saved once by the training entry point; then the
checksums are computed again and verified, as at save and load time.

    OMP_NUM_THREADS=1 python benchmarks/checkpoint_checksums.py   # prints a markdown table
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings

warnings.filterwarnings("ignore")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden-size", type=int, default=1024)
    parser.add_argument("--num-layers", type=int, default=8)
    args = parser.parse_args()

    from megatron_ponder.pretrain import main as pretrain
    from megatron_ponder.training.checkpointing import save_load
    from megatron_ponder.training.checkpointing.checksums import compute_checksums, damaged_by_checksum

    timings = {}
    original_save = checkpointing._save_or_explain

    def timed_save(state, folder, *strategy):
        started = time.perf_counter()
        original_save(state, folder, *strategy)
        timings["save"] = time.perf_counter() - started

    checkpointing._save_or_explain = timed_save
    with tempfile.TemporaryDirectory() as root:
        run = os.path.join(root, "run")
        shape = ["--hidden-size", str(args.hidden_size), "--num-layers", str(args.num_layers),
                 "--num-attention-heads", "16", "--num-query-groups", "16", "--ffn-hidden-size", str(4 * args.hidden_size)]
        assert pretrain(["--mock-data", "--seq-length", "64", "--micro-batch-size", "1", "--global-batch-size", "1",
                         "--eval-iters", "0", "--train-iters", "1", "--ponder-mode", "none", "--save", run, *shape]) == 0
        folder = checkpointing.checkpoint_dir(run, 1)
        size = sum(os.path.getsize(os.path.join(folder, name)) for name in os.listdir(folder))
        started = time.perf_counter()
        compute_checksums(folder)
        timings["checksums"] = time.perf_counter() - started
        started = time.perf_counter()
        assert damaged_by_checksum(folder) is None
        timings["verify"] = time.perf_counter() - started
    gib = size / 2**30
    print("| checkpoint | save (dist_checkpointing) | CRC-32 at save | verify at load | CRC-32 throughput |")
    print("|---|---|---|---|---|")
    print(f"| {gib:.2f} GiB | {timings['save']:.2f} s | {timings['checksums']:.2f} s "
          f"(+{100 * timings['checksums'] / timings['save']:.0f}% of the save) | {timings['verify']:.2f} s | "
          f"{gib / timings['checksums']:.2f} GiB/s |")


if __name__ == "__main__":
    main()
