"""Small-scale reproduction of the papers' claim: ponder-S / latent-S about match vanilla-2S.

Four runs of the training entry point (``python -m megatron_ponder.pretrain``), one after the
other, one process and one thread each, on identical training tokens in identical order (same
corpus, seed, sequence length and batch size): vanilla-S, vanilla at about twice the
parameters (vanilla-2S), ponder-S (PonderLM, S=3) and latent-S (PonderLM-2, N=1, J drawn from
{2, 3} per step, J=3 at evaluation). Data: the built-in default corpus (Python standard library
sources of the running interpreter, byte-level BPE with 4096 tokens, built offline).

Then a report step (:mod:`benchmarks.reproduction_report`) reads each run's ``--metrics-file``
and writes the validation table and the loss-curve PNG.

    python benchmarks/reproduce_papers.py                  # runs + report (about 30-45 min on 1 core)
    python benchmarks/reproduce_papers.py --report-only    # rebuild the report from finished runs
    python benchmarks/reproduce_papers.py --init-style ponderlm --out runs/reproduce-paper-init \
        --doc docs/benchmarks/reproduction_paper_init.md   # the same four runs with the papers' init
    python benchmarks/reproduce_papers.py --train-iters 4 --eval-interval 2 --eval-iters 1 \\
        --out /tmp/repro --doc /tmp/repro/report.md         # smoke-size

A run whose folder holds a finished run of the same command is not run again.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Dict, List

REPO = Path(__file__).resolve().parents[1]
warnings.filterwarnings("ignore")

# The model S is the cpu-tiny preset (LLaMA style, 4 layers, hidden 128). 2S: hidden 192, 5 layers,
# same head size (32) and GQA ratio (2): about twice S's parameters counted in full (embeddings
# included, as Pythia-1.4B vs 2.8B), about 2.8x without the embedding tables.
RUNS: Dict[str, List[str]] = {
    "vanilla-S": ["--ponder-mode", "none"],
    "vanilla-2S": ["--ponder-mode", "none", "--num-layers", "5", "--hidden-size", "192",
                   "--num-attention-heads", "6", "--num-query-groups", "3", "--ffn-hidden-size", "512"],
    "ponder-S (S=3)": ["--ponder-mode", "ponder", "--ponder-steps", "3"],
    "latent-S (N=1, J=2-3)": ["--ponder-mode", "latent", "--num-latent-thoughts", "1",
                              "--jacobi-train-rounds", "2,3", "--jacobi-eval-rounds", "3"],
}
VOCAB = 4096  # the default corpus tokenizer's size (already a multiple of 128)


def folder_name(run: str) -> str:
    return run.split(" ")[0]


def common_flags(args, data_dir: Path) -> List[str]:
    return [
        "--preset", "cpu-tiny", "--default-corpus", str(data_dir), "--vocab-size", str(VOCAB),
        "--seq-length", str(args.seq_length), "--micro-batch-size", str(args.micro_batch_size),
        "--train-iters", str(args.train_iters), "--lr", str(args.lr), "--seed", "1234",
        "--eval-interval", str(args.eval_interval), "--eval-iters", str(args.eval_iters),
        "--log-interval", str(max(1, args.train_iters // 10)), "--init-style", args.init_style,
    ]


def parameter_counts(flags: List[str]) -> Dict[str, int]:
    """(total, embedding) parameters of the model these pretrain flags build (one process)."""
    from megatron_ponder.runtime.parallel_init import initialize_parallel
    from megatron_ponder.training.arguments import finalize_args, parse_args
    from megatron_ponder.training.build import build_model
    from megatron_ponder.training.model_config import model_config

    initialize_parallel()
    args = parse_args(_without_data(flags) + ["--mock-data"])
    finalize_args(args, 1)
    args.tokenizer_vocab_size = args.vocab_size
    model = build_model(args, model_config(args))
    total = sum(p.numel() for p in model.parameters())
    embedding = sum(p.numel() for name, p in model.named_parameters()
                    if "word_embeddings" in name or "output_layer" in name or "position_embeddings" in name)
    return dict(parameters=total, embedding_parameters=embedding)


def _without_data(flags: List[str]) -> List[str]:
    out, skip = [], False
    for flag in flags:
        if skip:
            skip = False
            continue
        if flag == "--default-corpus":
            skip = True
            continue
        out.append(flag)
    return out


def finished(folder: Path, command: str, train_iters: int) -> bool:
    """The run in ``folder`` was made by this same command and reached its final evaluation."""
    metrics, info = folder / "metrics.jsonl", folder / "run.json"
    if not metrics.exists() or not info.exists() or json.loads(info.read_text())["command"] != command:
        return False
    records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    return any(r["kind"] == "valid" and r["iteration"] == train_iters for r in records)


def run_all(args) -> None:
    out = Path(args.out)
    data_dir = out / "data"
    # This process initialises its own world of one (parameter counts): keep its rendezvous from the runs.
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    for run, extra in RUNS.items():
        folder = out / folder_name(run)
        folder.mkdir(parents=True, exist_ok=True)
        metrics = folder / "metrics.jsonl"
        flags = common_flags(args, data_dir) + extra
        shown = " ".join(["python", "-m", "megatron_ponder.pretrain", *flags])
        if finished(folder, shown, args.train_iters):
            print(f"{run}: already finished ({metrics})", flush=True)
            continue
        metrics.unlink(missing_ok=True)
        (folder / "run.json").unlink(missing_ok=True)
        command = [sys.executable, "-m", "megatron_ponder.pretrain", *flags, "--metrics-file", str(metrics)]
        record = dict(run=run, command=shown, **parameter_counts(flags))
        print(f"{run}: {record['parameters']:,} parameters; log {folder / 'log.txt'}", flush=True)
        started = time.time()
        with open(folder / "log.txt", "w") as log:
            subprocess.run(command, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, check=True)
        record["wall_seconds"] = time.time() - started
        (folder / "run.json").write_text(json.dumps(record, indent=1))
        print(f"{run}: done in {record['wall_seconds']:.0f} s", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "runs" / "reproduce"), help="run folders (default runs/reproduce)")
    parser.add_argument("--doc", default=str(REPO / "docs" / "benchmarks" / "reproduction.md"),
                        help="report markdown; the PNG goes next to it")
    parser.add_argument("--train-iters", type=int, default=400)
    parser.add_argument("--micro-batch-size", type=int, default=8)
    parser.add_argument("--seq-length", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--eval-interval", type=int, default=100)
    parser.add_argument("--eval-iters", type=int, default=24)
    parser.add_argument("--init-style", choices=["megatron", "ponderlm"], default="megatron",
                        help="every run's init (ponderlm: the papers' truncated-normal init and divisors)")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args(argv)
    if not args.report_only:
        run_all(args)
    from reproduction_report import write_report

    folders = [Path(args.out) / folder_name(run) for run in RUNS]
    report = write_report(folders, Path(args.doc), command=" ".join(["python", "benchmarks/reproduce_papers.py",
                                                                       *(argv if argv is not None else sys.argv[1:])]),
                          relative_to=REPO)
    print(report)


if __name__ == "__main__":
    main()
