"""Adaptive Jacobi rounds at evaluation (issue 24, item 3): validation perplexity and mean rounds
per tolerance, against the fixed rounds (tolerance 0).

A latent model at the main job's shape and budget (cpu-tiny, N=1, J drawn from {2, 3}, 300 steps
x 8 samples x 128 tokens, the main job's per-mode settings with every round backpropagated, seed
1234, on ``--corpus``: the built-in one or the study's prose) is trained once into ``--out`` (skipped when it already holds the finished run), then
evaluated by the public entry point (``python -m megatron_ponder.pretrain --load``: a finished
run only evaluates) at every tolerance of ``--tols`` with ``--jacobi-eval-rounds`` 3 (the main
job's cap), on the same 12 held-out batches. One process, one thread.

Prints one table row per tolerance: validation loss, perplexity and its change against
tolerance 0, mean Jacobi rounds per microbatch, and the passes of an evaluation forward
(N + rounds + 1) relative to the fixed rounds.

    python benchmarks/adaptive_jacobi_eval.py --out /tmp/adaptive            # trains, then evaluates
    python benchmarks/adaptive_jacobi_eval.py --out /tmp/adaptive --tols 0,1e-3,5e-3,2e-2
    python benchmarks/adaptive_jacobi_eval.py --out /tmp/adaptive-prose --corpus pydocs
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import List

REPO = Path(__file__).resolve().parents[1]
THOUGHTS = 1
CAP = 3  # --jacobi-eval-rounds of the main job (and of the checkpoint: a resume checks it)
TRAIN_ITERS = 300


def run_flags(data: List[str], checkpoint: Path) -> List[str]:
    """The main job's latent run (benchmarks/training_dynamics.py's settings and DEFAULTS, but every
    Jacobi round backpropagated) on the corpus of ``data`` (training_dynamics.data_flags)."""
    return ["--preset", "cpu-tiny", *data, "--vocab-size", "4096", "--seq-length", "128",
            "--micro-batch-size", "8", "--train-iters", str(TRAIN_ITERS), "--lr", "3e-3", "--lr-warmup-iters", "20",
            "--init-style", "ponderlm", "--seed", "1234", "--eval-interval", str(TRAIN_ITERS), "--eval-iters", "12",
            "--log-interval", "30", "--ponder-mode", "latent", "--num-latent-thoughts", str(THOUGHTS),
            "--jacobi-train-rounds", "2,3", "--jacobi-eval-rounds", str(CAP), "--load", str(checkpoint)]


def pretrain(flags: List[str], log: Path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    with open(log, "w") as out:
        done = subprocess.run([sys.executable, "-m", "megatron_ponder.pretrain", *flags], cwd=REPO, env=env,
                              stdout=out, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        sys.exit(f"error: pretrain failed ({log}):\n" + log.read_text()[-2000:])


def evaluate(out: Path, data: List[str], checkpoint: Path, tolerance: str) -> dict:
    metrics = out / f"eval-tol{tolerance}.jsonl"
    if not metrics.exists():
        partial = metrics.with_suffix(".partial")
        partial.unlink(missing_ok=True)
        pretrain(run_flags(data, checkpoint) + ["--jacobi-eval-tol", tolerance, "--metrics-file", str(partial)],
                 out / f"eval-tol{tolerance}.log")
        partial.rename(metrics)
    record = [r for r in map(json.loads, metrics.read_text().splitlines()) if r["kind"] == "valid"][-1]
    return dict(loss=record["loss"], rounds=record["jacobi_rounds"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/adaptive_jacobi_eval"))
    parser.add_argument("--tols", default="0,1e-3,3e-3,1e-2", help="comma-separated; 0 (fixed rounds) first")
    parser.add_argument("--corpus", choices=["stdlib", "pydocs"], default="stdlib",
                        help="the training-dynamics study's corpora: the built-in one, or English prose")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]
    from training_dynamics import data_flags  # the study's corpora (a sibling script)

    data, checkpoint = data_flags(args.corpus, args.out), args.out / "checkpoint"
    pointer = checkpoint / "latest_checkpointed_iteration.txt"
    if not pointer.exists() or pointer.read_text().strip() != str(TRAIN_ITERS):
        print(f"training the main job's latent model into {checkpoint} ({TRAIN_ITERS} steps, one core)", flush=True)
        pretrain(run_flags(data, checkpoint) + ["--save", str(checkpoint)], args.out / "train.log")

    tolerances = args.tols.split(",")
    if float(tolerances[0]) != 0:
        tolerances.insert(0, "0")
    fixed = evaluate(args.out, data, checkpoint, tolerances[0])
    passes_fixed = THOUGHTS + CAP + 1
    print(f"{args.corpus}: latent N={THOUGHTS}, cap J={CAP}, 12 validation batches of 8 x 128 tokens; residual = "
          "||z^j - z^(j-1)||^2 / numel")
    print("| tolerance | val loss | ppl | ppl vs fixed | mean rounds | rounds vs fixed | eval passes vs fixed |")
    print("|---|---|---|---|---|---|---|")
    for tolerance in tolerances:
        result = evaluate(args.out, data, checkpoint, tolerance)
        ppl, ppl_fixed = math.exp(result["loss"]), math.exp(fixed["loss"])
        passes = THOUGHTS + result["rounds"] + 1
        print(f"| {tolerance} | {result['loss']:.4f} | {ppl:.2f} | {100 * (ppl / ppl_fixed - 1):+.2f}% | "
              f"{result['rounds']:.2f} | {100 * (result['rounds'] / CAP - 1):+.0f}% | "
              f"{100 * (passes / passes_fixed - 1):+.0f}% |", flush=True)


if __name__ == "__main__":
    main()
