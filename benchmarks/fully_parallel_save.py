"""What ``--ckpt-fully-parallel-save`` costs or saves: a checkpoint save at DP=2 with and without it.

Two processes (torchrun, gloo, CPU; the script launches them itself), a model built by the training
entry point's builders (the pretrain default tiny model unless ``--hidden-size``/``--num-layers``
say otherwise), Adam's state included. Each round saves the same state once fully parallel (each
DP rank writes a share) and once plain (DP rank 0 writes every replicated tensor), alternating,
after one warm-up save of each. A save is timed on every rank from a barrier to the end of
``save_checkpoint`` (``dist_checkpointing.save``, checksums, pointer); the table gives the slowest
rank's median and the bytes each rank wrote.

    python benchmarks/fully_parallel_save.py            # prints a markdown table
    python benchmarks/fully_parallel_save.py --hidden-size 512 --num-layers 8 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter

warnings.filterwarnings("ignore")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _options(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden-size", type=int, default=None)
    parser.add_argument("--num-layers", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=5)
    return parser.parse_args(argv)


def _launch(argv) -> int:
    """Run this script on 2 local processes (one thread each: the 2-core machine's budget)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]))
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
               "--master-port", str(29400 + os.getpid() % 1000), os.path.abspath(__file__), *argv]
    return subprocess.call(command, env=env)


def _bytes_by_rank(folder) -> Counter:
    from torch.distributed.checkpoint import FileSystemReader

    written = Counter()
    for info in FileSystemReader(folder).read_metadata().storage_data.values():
        written[int(re.fullmatch(r"__(\d+)_\d+\.distcp", info.relative_path).group(1))] += info.length
    return written


def _worker(options) -> None:
    import torch
    import torch.distributed as dist

    from megatron_ponder.runtime.parallel_init import initialize_parallel, shutdown_parallel
    from megatron_ponder.training.arguments import finalize_args, parse_args
    from megatron_ponder.training.build import build_training_state, prepare_data
    from megatron_ponder.training.checkpointing.save_load import checkpoint_dir, save_checkpoint
    from megatron_ponder.training.model_config import model_config

    flags = ["--mock-data", "--seq-length", "32", "--micro-batch-size", "1", "--global-batch-size", "2",
             "--train-iters", "1", "--ponder-mode", "none"]
    if options.hidden_size:
        flags += ["--hidden-size", str(options.hidden_size), "--num-attention-heads", "8", "--num-query-groups", "8",
                  "--ffn-hidden-size", str(4 * options.hidden_size)]
    if options.num_layers:
        flags += ["--num-layers", str(options.num_layers)]
    args = parse_args(flags)
    finalize_args(args, int(os.environ["WORLD_SIZE"]))
    initialize_parallel(seed=args.seed)
    prepare_data(args)
    model, _, optimizer, scheduler = build_training_state(args, model_config(args))
    for group in optimizer.param_groups:  # Adam's state exists from the first step on
        for parameter in group["params"]:
            parameter.grad = torch.zeros_like(parameter)
    optimizer.step()
    parameters = sum(p.numel() for p in model.parameters())

    times = {True: [], False: []}
    written = {}
    with tempfile.TemporaryDirectory() as scratch:
        root = [scratch]
        dist.broadcast_object_list(root, src=0)  # one folder for all ranks (rank 0's)
        iteration = 0
        for round_index in range(options.rounds + 1):  # round 0 warms up
            for fully_parallel in (True, False):
                iteration += 1
                save_root = os.path.join(root[0], "parallel" if fully_parallel else "plain")
                os.makedirs(save_root, exist_ok=True)
                dist.barrier()
                started = time.perf_counter()
                save_checkpoint(save_root, iteration, model, optimizer, scheduler, 0, run_args={},
                                distributed_optimizer=False, keep_last=1, fully_parallel=fully_parallel)
                elapsed = torch.tensor([time.perf_counter() - started])
                dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)  # the save ends when its slowest rank does
                if round_index:
                    times[fully_parallel].append(elapsed.item())
                written[fully_parallel] = _bytes_by_rank(checkpoint_dir(save_root, iteration))
        dist.barrier()
    if dist.get_rank() == 0:
        print(f"model: {parameters / 1e6:.2f}M parameters, fp32 + Adam; DP=2 on CPU (gloo), {options.rounds} rounds")
        print("| save | median s (slowest rank) | min s | bytes written by rank 0 / rank 1 |")
        print("|---|---|---|---|")
        for fully_parallel, name in ((True, "--ckpt-fully-parallel-save"), (False, "--no-ckpt-fully-parallel-save")):
            share = written[fully_parallel]
            print(f"| {name} | {statistics.median(times[fully_parallel]):.3f} | {min(times[fully_parallel]):.3f} | "
                  f"{share[0] / 2**20:.1f} MiB / {share[1] / 2**20:.1f} MiB |")
    shutdown_parallel()


if __name__ == "__main__":
    if "RANK" not in os.environ:
        sys.exit(_launch(sys.argv[1:]))
    _worker(_options(sys.argv[1:]))
