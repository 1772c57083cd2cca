"""Report of the training-dynamics study: tables and curves from the run folders.

Reads ``OUT/<corpus>/<setting>/{run.json,metrics.jsonl}`` as :mod:`training_dynamics` writes them
and writes one markdown file (every run's numbers, the best setting per method, equal tokens and
equal compute side by side) and one PNG per corpus next to it.

    python benchmarks/training_dynamics_report.py                      # runs/training-dynamics ->
                                                                       # docs/benchmarks/training_dynamics.md
    python benchmarks/training_dynamics_report.py --out /tmp/dyn --doc /tmp/dyn/report.md
    python benchmarks/training_dynamics_report.py --grad-rounds --out /work/study/grad   # issue 24:
        # the grad-rounds stage's section of docs/benchmarks/training_dynamics.md (replaced in place,
        # the rest of the file kept) and docs/benchmarks/training_dynamics_grad_rounds.png
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from reproduction_report import _moving_average  # noqa: E402

from megatron_ponder.training.grad_norm_watch import GradNormSpikeWatch  # noqa: E402
from training_dynamics import DEFAULTS, MODES, Setting  # noqa: E402

SEQ_LENGTH = 128
VOCAB = 4096
DEFAULT_SPIKE_FACTOR = 5.0  # --grad-norm-spike-factor's default
LABELS = {"none": "vanilla", "ponder": "ponder S=3", "latent": "latent N=1"}


@dataclass
class Run:
    """One finished run of the study."""

    setting: Setting
    wall_seconds: float
    train: List[dict]
    valid: List[dict]

    @property
    def final(self) -> float:
        return self.valid[-1]["loss"]

    def flops_at(self, iteration: int) -> float:
        return sum(r["flops"] for r in self.train if r["iteration"] <= iteration)

    def valid_at_flops(self, flops: float) -> Optional[float]:
        """Validation loss at ``flops`` training FLOPs, linear between evaluations (None: beyond the run)."""
        points = [(self.flops_at(r["iteration"]), r["loss"]) for r in self.valid]
        for (f0, l0), (f1, l1) in zip(points, points[1:]):
            if f0 <= flops <= f1:
                return l0 + (l1 - l0) * (flops - f0) / (f1 - f0)
        return None

    def grad_norm_peak(self, after: int = 10) -> float:
        """Largest grad norm after the first ``after`` steps (the first steps' norms are large for all)."""
        return max((r["grad_norm"] for r in self.train if r["iteration"] > after and r["grad_norm"] is not None),
                   default=float("nan"))

    def spike_warnings(self) -> int:
        """How many warnings the training log's default grad-norm watch printed (or would print)."""
        watch = GradNormSpikeWatch(DEFAULT_SPIKE_FACTOR)
        return sum(watch.check(r["iteration"], r["grad_norm"]) is not None for r in self.train)

    def final_residual(self) -> Optional[float]:
        """Mean over the last 10% of steps of the last Jacobi round's residual (latent only)."""
        tail = [r["jacobi_residuals"][-1] for r in self.train[-max(1, len(self.train) // 10):]
                if r.get("jacobi_residuals")]
        return sum(tail) / len(tail) if tail else None


def load_runs(out: Path) -> Dict[str, List[Run]]:
    """corpus -> its finished runs (exit 0, final evaluation reached)."""
    runs: Dict[str, List[Run]] = {}
    for info_path in sorted(out.glob("*/*/run.json")):
        info = json.loads(info_path.read_text())
        setting = Setting(**info["setting"])
        records = [json.loads(line) for line in (info_path.parent / "metrics.jsonl").read_text().splitlines() if line]
        valid = sorted((r for r in records if r["kind"] == "valid"), key=lambda r: r["iteration"])
        if info.get("exit_code") != 0 or not valid or valid[-1]["iteration"] != setting.iters:
            continue
        train = sorted((r for r in records if r["kind"] == "train"), key=lambda r: r["iteration"])
        runs.setdefault(setting.corpus, []).append(Run(setting, info["wall_seconds"], train, valid))
    return runs


def _knobs(setting: Setting) -> str:
    scale = "default" if setting.scale is None else f"{setting.scale:.3g}"
    return f"lr {setting.lr:g}, {setting.init} init, warm-up {setting.warmup}, scale {scale}"


def best_per_mode(runs: List[Run], iters: int) -> Dict[str, Run]:
    best: Dict[str, Run] = {}
    for run in runs:
        if run.setting.iters == iters and (run.setting.mode not in best or run.final < best[run.setting.mode].final):
            best[run.setting.mode] = run
    return best


def defaults_per_mode(runs: List[Run], iters: int) -> Dict[str, Run]:
    """The finished runs of the main job's per-mode settings (``training_dynamics.DEFAULTS``)."""
    found = {}
    for run in runs:
        s = run.setting
        if s.iters == iters and s == Setting(s.corpus, s.mode, iters=iters, **DEFAULTS[s.mode]):
            found[s.mode] = run
    return found


def corpus_markdown(corpus: str, runs: List[Run], plot_name: str) -> str:
    short = min(run.setting.iters for run in runs)
    lines = [f"## Corpus `{corpus}`", "",
             f"Every {short}-step run (sorted by method, then final validation loss). Grad-norm peak: the largest "
             "norm after step 10; spike warnings: how many the training log prints at the default "
             f"`--grad-norm-spike-factor {DEFAULT_SPIKE_FACTOR:g}` (a norm above that multiple of the median of the "
             "previous 100 steps, from step 51 on).", "",
             "| method | lr | init | warm-up | input scale | valid loss | grad-norm peak | spike warnings | "
             "Jacobi residual (last round) | training FLOPs | wall s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    order = list(MODES)
    for run in sorted((r for r in runs if r.setting.iters == short), key=lambda r: (order.index(r.setting.mode), r.final)):
        s = run.setting
        residual = run.final_residual()
        lines.append(f"| {LABELS[s.mode]} | {s.lr:g} | {s.init} | {s.warmup} | "
                     f"{'default' if s.scale is None else f'{s.scale:.3g}'} | {run.final:.4f} | "
                     f"{run.grad_norm_peak():.2f} | {run.spike_warnings()} | "
                     f"{'-' if residual is None else f'{residual:.1e}'} | {run.flops_at(s.iters):.2e} | "
                     f"{run.wall_seconds:.0f} |")
    best = best_per_mode(runs, short)
    lines += ["", f"Best setting per method at {short} steps ({short * 8 * SEQ_LENGTH:,} tokens), against the best "
              "vanilla run:", "", "| method | setting | valid loss | vs vanilla (equal tokens) |", "|---|---|---|---|"]
    for mode in order:
        if mode in best:
            run = best[mode]
            delta = run.final - best["none"].final if "none" in best else float("nan")
            lines.append(f"| {LABELS[mode]} | {_knobs(run.setting)} | {run.final:.4f} | {delta:+.3f} |")
    defaults = defaults_per_mode(runs, short)
    if defaults:
        lines += ["", "The main job's per-mode defaults (`examples/pretrain_ponder_gpt.sh`), against its vanilla default:",
                  "", "| method | setting | valid loss | vs vanilla (equal tokens) |", "|---|---|---|---|"]
        for mode in order:
            if mode in defaults:
                run = defaults[mode]
                delta = run.final - defaults["none"].final if "none" in defaults else float("nan")
                lines.append(f"| {LABELS[mode]} | {_knobs(run.setting)} | {run.final:.4f} | {delta:+.3f} |")
    long_runs = {r.setting.mode: r for r in runs if r.setting.iters > short}
    if long_runs:
        longest = max(r.setting.iters for r in long_runs.values())
        budget = min(r.flops_at(r.setting.iters) for r in long_runs.values())
        lines += ["", f"The best setting per method at {longest} steps ({longest * 8 * SEQ_LENGTH:,} tokens). Equal "
                  f"compute: each long run's validation loss at {budget:.2e} training FLOPs (the smallest run's total; "
                  "linear between evaluations; mid-schedule for the costlier methods, so not annealed).", "",
                  f"| method | valid loss at {longest} steps | vs vanilla (equal tokens) | valid loss at equal FLOPs | "
                  "vs vanilla (equal FLOPs) | wall s |", "|---|---|---|---|---|---|"]
        base = long_runs.get("none")
        for mode in order:
            if mode in long_runs:
                run = long_runs[mode]
                at_budget = run.valid_at_flops(budget)
                tokens_delta = run.final - base.final if base else float("nan")
                flops_delta = at_budget - base.valid_at_flops(budget) if base and at_budget is not None else float("nan")
                lines.append(f"| {LABELS[mode]} | {run.final:.4f} | {tokens_delta:+.3f} | "
                             f"{'-' if at_budget is None else f'{at_budget:.4f}'} | {flops_delta:+.3f} | "
                             f"{run.wall_seconds:.0f} |")
    lines += ["", f"![{corpus} curves]({plot_name})", ""]
    return "\n".join(lines)


def _style_loss_axes(by_tokens, by_flops, flops_title: str, flops_label: str) -> None:
    """The loss-against-tokens and loss-against-FLOPs panels: titles, labels, grid, legend, log FLOPs."""
    for axes, title in ((by_tokens, "validation loss, equal tokens"), (by_flops, flops_title)):
        axes.set_ylabel("loss (nats / token)")
        axes.set_title(title)
        axes.grid(alpha=0.3)
        axes.legend(fontsize=7)
    by_tokens.set_xlabel("training tokens (millions)")
    by_flops.set_xlabel(flops_label)
    by_flops.set_xscale("log")


def plot_corpus(runs: List[Run], path: Path) -> None:
    """Four panels: valid loss vs tokens (the main job's defaults, else the best run, per method; the long
    runs), vs FLOPs, grad norms of the LR sweep, Jacobi residuals."""
    try:
        import matplotlib
    except ImportError:
        raise SystemExit('matplotlib is not installed: pip install -e ".[bench]"') from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    short = min(run.setting.iters for run in runs)
    best = {**best_per_mode(runs, short), **defaults_per_mode(runs, short)}
    shown = list(best.values()) + [r for r in runs if r.setting.iters > short]
    color = {mode: f"C{i}" for i, mode in enumerate(MODES)}
    figure, ((by_tokens, by_flops), (norms, residuals)) = plt.subplots(2, 2, figsize=(12, 8.5))
    lowest = min(r["loss"] for run in shown for r in run.valid)
    for run in shown:
        s = run.setting
        style = "o-" if s.iters == short else "s--"
        label = f"{LABELS[s.mode]}, {s.iters} steps"
        valid = [r for r in run.valid if r["iteration"] > 0]
        by_tokens.plot([r["iteration"] * 8 * SEQ_LENGTH / 1e6 for r in valid], [r["loss"] for r in valid], style,
                       color=color[s.mode], markersize=3, label=label)
        by_flops.plot([run.flops_at(r["iteration"]) for r in valid], [r["loss"] for r in valid], style,
                      color=color[s.mode], markersize=3, label=label)
    _style_loss_axes(by_tokens, by_flops, "validation loss vs compute", "training FLOPs (all passes)")
    for axes in (by_tokens, by_flops):
        axes.set_ylim(lowest - 0.1, lowest + 2.0)
    dashes = {1e-3: ":", 3e-3: "-", 1e-2: "--"}
    for run in runs:  # the LR sweep: grad norms per method and LR
        s = run.setting
        if s.iters != short or s.init != "megatron" or s.warmup != 20 or s.scale is not None:
            continue
        smooth = _moving_average([r["grad_norm"] or 0.0 for r in run.train], 5)
        norms.plot([r["iteration"] for r in run.train], smooth, dashes.get(s.lr, "-"), color=color[s.mode],
                   linewidth=1, label=f"{LABELS[s.mode]}, lr {s.lr:g}")
        if s.mode == "latent":
            tail = [(r["iteration"], r["jacobi_residuals"][-1]) for r in run.train if r.get("jacobi_residuals")]
            residuals.plot([i for i, _ in tail], _moving_average([v for _, v in tail], 5), dashes.get(s.lr, "-"),
                           color=color["latent"], linewidth=1, label=f"lr {s.lr:g}, Megatron init")
    if "latent" in best:
        run = best["latent"]
        tail = [(r["iteration"], r["jacobi_residuals"][-1]) for r in run.train if r.get("jacobi_residuals")]
        residuals.plot([i for i, _ in tail], _moving_average([v for _, v in tail], 5), color="k", linewidth=1,
                       label=f"shown above: {_knobs(run.setting)}")
    norms.set_yscale("log")
    norms.set_title("gradient norm (LR sweep; 5-step mean)")
    norms.set_xlabel("iteration")
    norms.legend(fontsize=7, ncol=2)
    norms.grid(alpha=0.3)
    residuals.set_yscale("log")
    residuals.set_title("latent: last Jacobi round's residual (5-step mean)")
    residuals.set_xlabel("iteration")
    residuals.legend(fontsize=7)
    residuals.grid(alpha=0.3)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=80)
    plt.close(figure)


# ------------------------------------------------------------------ grad-rounds stage (issue 24)
GRAD_SECTION = "## Truncated backpropagation (`--jacobi-grad-rounds`, `--ponder-grad-steps`)"
TINY = dict(num_layers=4, hidden_size=128, num_attention_heads=4, num_query_groups=2, ffn_hidden_size=352)  # cpu-tiny


def _tiny_config(setting: Setting):
    """The fields of ``training.flops`` and ``model.passes`` for a run of the study (cpu-tiny)."""
    from types import SimpleNamespace

    grad = setting.grad
    return SimpleNamespace(
        ponder_mode=setting.mode, num_layers=TINY["num_layers"], hidden_size=TINY["hidden_size"],
        num_query_groups=TINY["num_query_groups"], kv_channels=TINY["hidden_size"] // TINY["num_attention_heads"],
        ffn_hidden_size=TINY["ffn_hidden_size"], gated_linear_unit=True, recompute_granularity=None,
        ponder_steps=3, ponder_accumulate=True, ponder_topk=None, num_latent_thoughts=1,
        ponder_grad_steps=grad if setting.mode == "ponder" else None,
        jacobi_grad_rounds=grad if setting.mode == "latent" else None)


def grad_step_flops(setting: Setting, jacobi_rounds: int) -> float:
    """Training FLOPs of one step (8 x 128 tokens) of a run of the study: ``training.flops.step_flops``,
    which counts a pass without a graph (the leading passes --jacobi-grad-rounds / --ponder-grad-steps
    truncate) as its forward only. Recomputed here from the setting rather than read from the log,
    because runs made before that count landed logged every pass at 3x its forward."""
    from megatron_ponder.training.flops import step_flops

    return step_flops(_tiny_config(setting), SEQ_LENGTH, 8, VOCAB, jacobi_rounds)


def _run_flops(run: Run) -> List[float]:
    """Per training record, the FLOPs of that step (J of a latent step = its number of residuals)."""
    return [grad_step_flops(run.setting, len(r.get("jacobi_residuals") or [])) for r in run.train]


def _grad_label(setting: Setting) -> str:
    if setting.mode == "none":
        return "vanilla"
    return f"{LABELS[setting.mode]}, K={'all' if setting.grad is None else setting.grad}"


def _grad_runs(runs: List[Run], iters: int) -> List[Run]:
    """The grad-rounds stage's runs: the main job's defaults at ``iters`` steps with any K."""
    found = [r for r in runs if r.setting.iters == iters
             and replace(r.setting, grad=None) == Setting(r.setting.corpus, r.setting.mode, iters=iters,
                                                       **{**DEFAULTS[r.setting.mode], "grad": None})]
    order = list(MODES)
    return sorted(found, key=lambda r: (order.index(r.setting.mode), -(r.setting.grad or 99)))


def _log_peak_rss(folder: Path) -> Optional[float]:
    """The largest "peak RSS (GiB)" of the training log (the trainer's own figure), in MiB."""
    import re

    values = [float(v) for v in re.findall(r"peak RSS \(GiB\): ([0-9.]+)", (folder / "log.txt").read_text())]
    return max(values) * 1024 if values else None


def grad_rounds_markdown(out: Path, runs: Dict[str, List[Run]], iters: int, plot_name: str) -> str:
    lines = [GRAD_SECTION, "",
             f"`python benchmarks/training_dynamics.py --stages grad-rounds --jobs 1` (the main job's defaults at "
             f"{iters} steps, each run one process with one thread; on pydocs two ran side by side) and "
             "`python benchmarks/training_dynamics_report.py --grad-rounds`. "
             "K: the Jacobi rounds (latent, J drawn from {2, 3}) or ponder steps (S=3) that build the autograd graph; "
             "all = the papers' path. Training FLOPs count a pass without a graph as its forward only. Step s: "
             "the median and the 10th percentile of the run's `step_seconds` (wall, one thread; other jobs shared "
             "the 2 cores, at times 30 processes to a core, so the fastest steps are the cleaner figure); CPU s / "
             "step: the process's CPU time (wait4) over its steps, start-up and evaluations included; peak RSS: "
             "the process's resident high-water mark (wait4), the trainer's own figure in brackets.", ""]
    for corpus, corpus_runs in runs.items():
        chosen = _grad_runs(corpus_runs, iters)
        if not chosen:
            continue
        vanilla = next((r for r in chosen if r.setting.mode == "none"), None)
        evals = sorted({r["iteration"] for run in chosen for r in run.valid if r["iteration"] > 0})
        lines += [f"### Corpus `{corpus}`", "",
                  "| run | FLOPs / token | vs K=all | vs vanilla | " + " | ".join(f"valid @{i}" for i in evals)
                  + " | final vs K=all | step s (median / p10) | CPU s / step | peak RSS MiB | wall s |",
                  "|---" * (len(evals) + 9) + "|"]
        vanilla_step = grad_step_flops(Setting(corpus, "none", iters=iters, **DEFAULTS["none"]), 0)
        for run in chosen:
            s = run.setting
            flops = _run_flops(run)
            # The same steps (same J draws) with every pass building its graph: the logged FLOPs when K = all.
            all_rounds = _run_flops(replace(run, setting=replace(s, grad=None)))
            if s.grad is None:  # every pass builds its graph: what any version of flops.py logged
                logged = [r["flops"] for r in run.train]
                assert all(abs(a - b) <= 1e-6 * b for a, b in zip(flops, logged)), "FLOP count differs from the log"
            full = next((r for r in chosen if r.setting.mode == s.mode and r.setting.grad is None), None)
            token_cost = sum(flops) / (len(flops) * 8 * SEQ_LENGTH)
            ratio_all = f"{sum(flops) / sum(all_rounds):.3f}x"
            ratio_vanilla = f"{sum(flops) / (len(flops) * vanilla_step):.2f}x"
            at = {r["iteration"]: r["loss"] for r in run.valid}
            delta = f"{run.final - full.final:+.3f}" if full and s.mode != "none" else "-"
            steps = sorted(r["step_seconds"] for r in run.train)
            step = f"{statistics.median(steps):.2f} / {steps[len(steps) // 10]:.2f}"
            info = json.loads((out / s.folder / "run.json").read_text())
            cpu = f"{info['cpu_seconds'] / s.iters:.2f}" if "cpu_seconds" in info else "-"
            rss = info.get("peak_rss_mib")
            logged_rss = _log_peak_rss(out / s.folder)
            rss_cell = ("-" if rss is None else f"{rss:.0f}") + ("" if logged_rss is None else f" ({logged_rss:.0f})")
            lines.append(f"| {_grad_label(s)} | {token_cost:.3g} | {ratio_all} | {ratio_vanilla} | "
                         + " | ".join(f"{at[i]:.4f}" if i in at else "-" for i in evals)
                         + f" | {delta} | {step} | {cpu} | {rss_cell} | {run.wall_seconds:.0f} |")
        if vanilla:
            budget = vanilla.flops_at(vanilla.setting.iters)
            lines += ["", f"At equal training FLOPs: vanilla's whole run ({budget:.2e} FLOPs) ends at {vanilla.final:.4f}; "
                      "each method's validation loss at that many of its own training FLOPs (linear between "
                      "evaluations, mid-schedule, so not annealed), and the FLOPs it needed to first reach vanilla's "
                      "final loss:", "", "| run | valid loss at vanilla's FLOPs | vs vanilla | reaches vanilla's loss at |",
                      "|---|---|---|---|"]
            for run in chosen:
                if run.setting.mode == "none":
                    continue
                points = list(zip(_cumulative_at_evals(run), (r["loss"] for r in run.valid)))
                at_budget = _interpolate(points, budget)
                reach = next((f for f, loss in points if loss <= vanilla.final), None)
                lines.append(f"| {_grad_label(run.setting)} | {'-' if at_budget is None else f'{at_budget:.4f}'} | "
                             f"{'-' if at_budget is None else f'{at_budget - vanilla.final:+.3f}'} | "
                             f"{'not within the run' if reach is None else f'{reach:.2e} FLOPs ({reach / budget:.1f}x vanilla)'} |")
        lines += ["", f"![{corpus}: validation loss vs training FLOPs]({plot_name.format(corpus=corpus)})", ""]
    return "\n".join(lines)


def _cumulative_at_evals(run: Run) -> List[float]:
    """Training FLOPs (pass by pass, :func:`grad_step_flops`) done before each evaluation."""
    flops = _run_flops(run)
    return [sum(f for r, f in zip(run.train, flops) if r["iteration"] <= v["iteration"]) for v in run.valid]


def _interpolate(points, x: float) -> Optional[float]:
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x0 <= x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return None


def plot_grad_rounds(runs: List[Run], iters: int, path: Path) -> None:
    """Validation loss against training FLOPs for vanilla and each method at every K (one corpus)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chosen = _grad_runs(runs, iters)
    figure, (by_tokens, by_flops) = plt.subplots(1, 2, figsize=(12, 4.5))
    color = {mode: f"C{i}" for i, mode in enumerate(MODES)}
    style = {None: "-", 2: "--", 1: ":"}
    for run in chosen:
        valid = [(f, r) for f, r in zip(_cumulative_at_evals(run), run.valid) if r["iteration"] > 0]
        kw = dict(color=color[run.setting.mode], linestyle=style.get(run.setting.grad, "-."), marker="o",
                  markersize=3, label=_grad_label(run.setting))
        by_tokens.plot([r["iteration"] * 8 * SEQ_LENGTH / 1e6 for _, r in valid], [r["loss"] for _, r in valid], **kw)
        by_flops.plot([f for f, _ in valid], [r["loss"] for _, r in valid], **kw)
    _style_loss_axes(by_tokens, by_flops, "validation loss vs training FLOPs",
                     "training FLOPs (passes without a graph: forward only)")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=80)
    plt.close(figure)


def write_grad_rounds(out: Path, doc: Path, iters: int, plot: bool = True) -> str:
    """The grad-rounds section of ``doc``: replaced where it is, appended otherwise (the rest kept)."""
    runs = load_runs(out)
    plot_name = doc.stem + "_grad_rounds_{corpus}.png"
    section = grad_rounds_markdown(out, runs, iters, plot_name)
    if plot:
        for corpus, corpus_runs in runs.items():
            if _grad_runs(corpus_runs, iters):
                plot_grad_rounds(corpus_runs, iters, doc.with_name(plot_name.format(corpus=corpus)))
    text = doc.read_text() if doc.exists() else ""
    start = text.find(GRAD_SECTION)
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        end = text.find("\n## ", start + len(GRAD_SECTION))
        text = text[:start] + section + ("" if end < 0 else text[end:])
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text)
    return section


def write_report(out: Path, doc: Path, plot: bool = True) -> str:
    runs = load_runs(out)
    if not runs:
        raise SystemExit(f"no finished runs under {out}: run benchmarks/training_dynamics.py first")
    hours = sum(run.wall_seconds for corpus in runs.values() for run in corpus) / 3600
    parts = ["# Training-dynamics study: the numbers", "",
             "Produced by `python benchmarks/training_dynamics.py` and "
             "`python benchmarks/training_dynamics_report.py`; conclusions in "
             "[../training_dynamics.md](../training_dynamics.md). Every run: cpu-tiny, 8 samples x 128 tokens per "
             "step, seed 1234, one process with one thread; validation loss at the end (12 batches of the held-out "
             f"documents, J=3 for latent). CPU time of the runs below: {hours:.1f} core-hours.", ""]
    for corpus, corpus_runs in runs.items():
        plot_name = f"{doc.stem}_{corpus}.png"
        parts.append(corpus_markdown(corpus, corpus_runs, plot_name))
        if plot:
            plot_corpus(corpus_runs, doc.with_name(plot_name))
    text = "\n".join(parts)
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text)
    return text


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "runs" / "training-dynamics"))
    parser.add_argument("--doc", default=str(REPO / "docs" / "benchmarks" / "training_dynamics.md"))
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--grad-rounds", action="store_true",
                        help="only the grad-rounds stage's section (issue 24), replaced in --doc")
    parser.add_argument("--long-iters", type=int, default=1200, help="with --grad-rounds: the runs' length")
    args = parser.parse_args(argv)
    if args.grad_rounds:
        print(write_grad_rounds(Path(args.out), Path(args.doc), args.long_iters, plot=not args.no_plot))
        return
    print(write_report(Path(args.out), Path(args.doc), plot=not args.no_plot))


if __name__ == "__main__":
    main()
