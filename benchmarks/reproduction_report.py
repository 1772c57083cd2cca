"""Report step of the reproduction: validation table and loss curves from the runs' metrics files.

Each run folder holds ``run.json`` (``run`` name, ``command``, ``parameters``,
``embedding_parameters``, ``wall_seconds``) and ``metrics.jsonl`` as written by
``python -m megatron_ponder.pretrain --metrics-file`` (``kind`` train: iteration, loss, flops,
consumed_samples; ``kind`` valid: iteration, loss). The first folder is the baseline of the
compute column. Runs are compared at equal training tokens (same steps, batch and sequence).
"""

from __future__ import annotations

import json
import math
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

# Training loss is noisy per step: the table's "train loss" is the mean of the last TAIL steps.
TAIL_FRACTION = 0.1


@dataclass
class RunResult:
    """One finished run, read back from its folder."""

    name: str
    command: str
    parameters: int
    embedding_parameters: int
    wall_seconds: Optional[float]
    seq_length: int
    train: List[dict] = field(default_factory=list)  # metrics records of kind "train", by iteration
    valid: List[dict] = field(default_factory=list)  # metrics records of kind "valid", by iteration

    def tokens_at(self, iteration: int) -> int:
        """Training tokens consumed after ``iteration`` steps (0 before the first)."""
        if iteration == 0:
            return 0
        record = next(r for r in self.train if r["iteration"] == iteration)
        return record["consumed_samples"] * self.seq_length

    def flops_at(self, iteration: int) -> float:
        """Training FLOPs (all passes, forward + backward) spent in the first ``iteration`` steps."""
        return sum(r["flops"] for r in self.train if r["iteration"] <= iteration)

    @property
    def final_valid_loss(self) -> float:
        return self.valid[-1]["loss"]

    @property
    def tail_train_loss(self) -> float:
        tail = self.train[-max(1, int(len(self.train) * TAIL_FRACTION)):]
        return sum(r["loss"] for r in tail) / len(tail)


def _flag(command: str, name: str) -> Optional[str]:
    words = shlex.split(command)
    return words[words.index(name) + 1] if name in words else None


def load_run(folder: Path) -> RunResult:
    """Read ``run.json`` and ``metrics.jsonl`` of one run folder."""
    folder = Path(folder)
    info = json.loads((folder / "run.json").read_text())
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line.strip()]
    seq_length = _flag(info["command"], "--seq-length")
    if seq_length is None:
        raise ValueError(f"{folder / 'run.json'}: the command has no --seq-length; rerun reproduce_papers.py")
    run = RunResult(
        name=info["run"], command=info["command"], parameters=info["parameters"],
        embedding_parameters=info["embedding_parameters"], wall_seconds=info.get("wall_seconds"),
        seq_length=int(seq_length),
        train=sorted((r for r in records if r["kind"] == "train"), key=lambda r: r["iteration"]),
        valid=sorted((r for r in records if r["kind"] == "valid"), key=lambda r: r["iteration"]),
    )
    if not run.train or not run.valid:
        raise ValueError(f"{folder / 'metrics.jsonl'} has no training steps or no evaluation: is the run finished?")
    return run


def _millions(count: float) -> str:
    return f"{count / 1e6:.2f}M"


def report_markdown(runs: Sequence[RunResult], command: str, plot_name: Optional[str]) -> str:
    """The reproduction section: settings, the final table, validation over training, the plot."""
    base = runs[0]
    steps = base.train[-1]["iteration"]
    tokens = base.tokens_at(steps)
    mismatched = [r.name for r in runs if r.tokens_at(r.train[-1]["iteration"]) != tokens]
    lines = [
        "# Reproduction: ponder-S and latent-S against vanilla-S and vanilla-2S",
        "",
        f"Produced by `{command}`.",
        f"Every run: {steps} steps, {tokens:,} training tokens, same tokens in the same order. "
        "Validation loss = mean token cross-entropy on the held-out validation documents "
        "(latent mode evaluates with its fixed evaluation J).",
    ]
    if mismatched:
        lines.append(f"**Warning: {', '.join(mismatched)} trained on a different number of tokens.**")
    lines += [
        "",
        "| run | parameters (non-embedding) | training FLOPs | FLOPs vs " + base.name + " | "
        "train loss (last 10%) | valid loss | valid PPL | wall s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    base_flops = base.flops_at(steps)
    for run in runs:
        last = run.train[-1]["iteration"]
        flops = run.flops_at(last)
        wall = f"{run.wall_seconds:.0f}" if run.wall_seconds is not None else "-"
        lines.append(
            f"| {run.name} | {_millions(run.parameters)} ({_millions(run.parameters - run.embedding_parameters)}) | "
            f"{flops:.3g} | {flops / base_flops:.2f}x | {run.tail_train_loss:.4f} | {run.final_valid_loss:.4f} | "
            f"{math.exp(run.final_valid_loss):.2f} | {wall} |"
        )
    iterations = sorted({r["iteration"] for r in base.valid})
    lines += [
        "",
        "Validation loss over training (columns: training tokens):",
        "",
        "| run | " + " | ".join(f"{base.tokens_at(i):,}" for i in iterations) + " |",
        "|---|" + "---|" * len(iterations),
    ]
    for run in runs:
        by_iteration: Dict[int, float] = {r["iteration"]: r["loss"] for r in run.valid}
        cells = [f"{by_iteration[i]:.4f}" if i in by_iteration else "-" for i in iterations]
        lines.append(f"| {run.name} | " + " | ".join(cells) + " |")
    if plot_name:
        lines += ["", f"![loss curves]({plot_name})"]
    lines += ["", "Commands of the runs (one process, `OMP_NUM_THREADS=1`, one after the other):", ""]
    lines += [f"- {run.name}: `{run.command} --metrics-file <run folder>/metrics.jsonl`" for run in runs]
    return "\n".join(lines) + "\n"


def _moving_average(values: List[float], window: int) -> List[float]:
    out, total = [], 0.0
    for index, value in enumerate(values):
        total += value
        if index >= window:
            total -= values[index - window]
        out.append(total / min(index + 1, window))
    return out


def plot_curves(runs: Sequence[RunResult], path: Path) -> None:
    """Two panels: loss vs training tokens (train smoothed + validation), validation loss vs FLOPs."""
    try:
        import matplotlib
    except ImportError:
        raise SystemExit('matplotlib is not installed: pip install -e ".[bench]"') from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (by_tokens, by_flops) = plt.subplots(1, 2, figsize=(11, 4.2))
    lowest = float("inf")
    for index, run in enumerate(runs):
        color = f"C{index}"
        tokens = [run.tokens_at(r["iteration"]) / 1e6 for r in run.train]
        window = max(1, len(run.train) // 40)
        smoothed = _moving_average([r["loss"] for r in run.train], window)
        lowest = min(lowest, *smoothed, *(r["loss"] for r in run.valid))
        by_tokens.plot(tokens, smoothed, color=color, alpha=0.6, linewidth=1, label=f"{run.name} train")
        valid_tokens = [run.tokens_at(r["iteration"]) / 1e6 for r in run.valid]
        valid_loss = [r["loss"] for r in run.valid]
        by_tokens.plot(valid_tokens, valid_loss, "o--", color=color, markersize=4, label=f"{run.name} valid")
        trained = [r for r in run.valid if r["iteration"] > 0]  # log axis: no point at zero FLOPs
        by_flops.plot([run.flops_at(r["iteration"]) for r in trained], [r["loss"] for r in trained], "o-",
                      color=color, markersize=4, label=run.name)
    for axes in (by_tokens, by_flops):
        axes.set_ylabel("loss (nats / token)")
        axes.set_ylim(lowest - 0.2, lowest + 3.0)  # the start (~ln V) would flatten the part that differs
        axes.grid(alpha=0.3)
    by_tokens.set_xlabel("training tokens (millions)")
    by_tokens.set_title("equal tokens")
    by_tokens.legend(fontsize=7)
    by_flops.set_xlabel("training FLOPs (all passes)")
    by_flops.set_xscale("log")
    by_flops.set_title("validation loss vs compute")
    by_flops.legend(fontsize=7)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=90)
    plt.close(figure)


def write_report(folders: Sequence[Path], doc: Path, command: str, plot: bool = True,
                 relative_to: Optional[Path] = None) -> str:
    """Read the run folders, write ``doc`` (markdown) and ``<doc stem>_loss.png`` next to it.

    ``relative_to``: a folder whose path prefix is dropped from the recorded commands.
    """
    runs = [load_run(folder) for folder in folders]
    if relative_to is not None:
        prefix = str(Path(relative_to).resolve()) + "/"
        for run in runs:
            run.command = run.command.replace(prefix, "")
    doc = Path(doc)
    plot_path = doc.with_name(doc.stem + "_loss.png")
    if plot:
        plot_curves(runs, plot_path)
    report = report_markdown(runs, command, plot_path.name if plot else None)
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(report)
    return report
