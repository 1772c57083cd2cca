"""Training-dynamics study: which init, LR, warm-up and input scale each method trains best with.

Why: at the main job's settings ponder and latent once learned worse than vanilla at equal tokens.
This study runs the public entry point (``python -m megatron_ponder.pretrain``) at the main job's
scale and token budget (cpu-tiny, 300 steps x 8 samples x 128 tokens, seed 1234: every run sees
the same tokens in the same order) for none / ponder S=3 / latent N=1 (J in {2,3}, J=3 at
evaluation), on two corpora:

* ``stdlib``: the built-in corpus (Python standard-library sources, ``--default-corpus``);
* ``pydocs``: English prose, the reStructuredText sources of the Python documentation that
  Debian's ``python3-doc`` package installs (``apt-get install python3-doc``), built here into
  the same 4096-token byte-level BPE and indexed dataset as the built-in corpus.

Coordinate search, one knob at a time, per corpus and method; "best" is the lowest final
validation loss among that method's finished 300-step runs so far:

1. ``lr``: 1e-3, 3e-3, 1e-2 at the main job's other settings: Megatron's init, 20 warm-up steps,
   the mode's default input scale;
2. ``init``: the best so far with the papers' init (``--init-style ponderlm``);
3. ``warmup``: the best so far with 60 warm-up steps;
4. ``scale``: the best so far with the alternative input-embedding scale (ponder: sqrt(h)
   instead of 1; latent: 1 instead of its default 1/init-method-std);
5. ``relr``: where the best so far has the papers' init, its neighbouring learning rates of stage 1
   again (stage 1 chose the LR with Megatron's init);
6. ``defaults``: the main job's per-mode settings (``DEFAULTS``, chosen from the above) on every corpus;
7. ``long``: the best setting per method at 4x the steps (1200), to see whether the order holds;
8. ``long-defaults``: the main job's defaults (``DEFAULTS``) at 4x the steps, needing no earlier stage;
9. ``grad-rounds`` (issue 24): truncated backpropagation at 4x the steps, the main job's defaults
   otherwise: latent with ``--jacobi-grad-rounds K`` and ponder with ``--ponder-grad-steps K`` for K
   in ``--grad-counts`` (1, 2, all); "all" is the papers' path (no flag: the ``long-defaults``
   runs), and with it vanilla, the reference at equal FLOPs.

Every run is one process with one thread; ``--jobs`` runs run side by side (default 2, one per
core). A run whose folder holds a finished run of the same command is not run again, so the
study resumes where it stopped. The report (:mod:`training_dynamics_report`) reads the folders.

    python benchmarks/training_dynamics.py                      # all stages (about 2.5 h on 2 cores)
    python benchmarks/training_dynamics.py --stages lr init     # some stages
    python benchmarks/training_dynamics.py --corpora stdlib --stages grad-rounds --jobs 1   # issue 24
    python benchmarks/training_dynamics.py --corpora stdlib --train-iters 4 --long-iters 8 \\
        --eval-interval 2 --eval-iters 1 --out /tmp/dyn           # smoke-size
"""

from __future__ import annotations

import argparse
import glob
import json
import socket
import math
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from reproduce_papers import finished  # noqa: E402

HIDDEN = 128  # cpu-tiny
VOCAB = 4096
MODES: Dict[str, List[str]] = {
    "none": ["--ponder-mode", "none"],
    "ponder": ["--ponder-mode", "ponder", "--ponder-steps", "3"],
    "latent": ["--ponder-mode", "latent", "--num-latent-thoughts", "1", "--jacobi-train-rounds", "2,3",
               "--jacobi-eval-rounds", "3"],
}
LEARNING_RATES = (1e-3, 3e-3, 1e-2)
LONG_WARMUP = 60
# The alternative input-embedding scale per mode (None: that mode has no alternative studied).
ALTERNATIVE_SCALE = {"none": None, "ponder": math.sqrt(HIDDEN), "latent": 1.0}
STAGES = ("lr", "init", "warmup", "scale", "relr", "defaults", "long", "long-defaults", "grad-rounds")
# The flag that truncates backpropagation per mode (issue 24), and the K the grad-rounds stage runs.
GRAD_FLAG = {"ponder": "--ponder-grad-steps", "latent": "--jacobi-grad-rounds"}
GRAD_COUNTS = ("1", "2", "all")
# What the main job (examples/pretrain_ponder_gpt.sh) uses per mode, chosen from the stages above on
# both corpora (docs/training_dynamics.md); the ``defaults`` stage runs each on every corpus.
DEFAULTS = {
    "none": dict(lr=3e-3, init="ponderlm", warmup=60),
    "ponder": dict(lr=3e-3, init="ponderlm", warmup=20, scale=math.sqrt(HIDDEN), grad=2),
    "latent": dict(lr=3e-3, init="ponderlm", warmup=20, grad=2),
}
PROSE_GLOB = "/usr/share/doc/python3*/html/_sources"


@dataclass(frozen=True)
class Setting:
    """One training run of the study: method, knobs and length."""

    corpus: str
    mode: str
    lr: float
    init: str = "megatron"
    warmup: int = 20
    scale: Optional[float] = None  # None: the mode's default input-embedding scale
    iters: int = 300
    grad: Optional[int] = None  # K of --jacobi-grad-rounds / --ponder-grad-steps; None: all (no flag)

    @property
    def name(self) -> str:
        scale = "default" if self.scale is None else f"{self.scale:.3g}"
        grad = "" if self.grad is None else f"-grad{self.grad}"  # (folders of the earlier stages unchanged)
        return f"{self.mode}-lr{self.lr:g}-{self.init}-wu{self.warmup}-scale{scale}-{self.iters}{grad}"

    @property
    def folder(self) -> str:
        return f"{self.corpus}/{self.name}"


def prose_corpus(work_dir: Path):
    """The pydocs corpus: Python documentation sources (Debian python3-doc), one file per document."""
    from megatron_ponder.data.default_corpus import prepare_file_corpus

    roots = sorted(glob.glob(PROSE_GLOB))
    if not roots:
        sys.exit(f"error: no {PROSE_GLOB}: install the English prose corpus with `apt-get install python3-doc`")
    root = Path(roots[-1])
    sources = sorted((path.relative_to(root).as_posix(), path) for path in root.rglob("*.txt"))
    return prepare_file_corpus(work_dir, sources, dict(source=str(root)), vocab_size=VOCAB)


def data_flags(corpus: str, out: Path) -> List[str]:
    if corpus == "stdlib":
        from megatron_ponder.data.default_corpus import prepare_default_corpus

        prepare_default_corpus(out / "data-stdlib")  # built once here, not by two runs at once
        return ["--default-corpus", str(out / "data-stdlib")]
    built = prose_corpus(out / "data-pydocs")
    return ["--data-path", built.train_prefix, "--valid-data-path", built.valid_prefix,
            "--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", str(built.tokenizer_dir)]


def pretrain_flags(setting: Setting, args, data: List[str]) -> List[str]:
    eval_interval = args.eval_interval * setting.iters // args.train_iters  # same number of evaluations
    flags = ["--preset", "cpu-tiny", *data, "--vocab-size", str(VOCAB), "--seq-length", "128",
             "--micro-batch-size", "8", "--train-iters", str(setting.iters), "--lr", f"{setting.lr:g}",
             # (the warm-up clamp is for smoke sizes only)
             "--lr-warmup-iters", str(min(setting.warmup, setting.iters // 5)),
             "--init-style", setting.init, "--seed", "1234",
             "--eval-interval", str(eval_interval), "--eval-iters", str(args.eval_iters),
             "--log-interval", str(max(1, setting.iters // 10)), *MODES[setting.mode]]
    if setting.scale is not None:
        flags += ["--input-embedding-scale", f"{setting.scale:g}"]
    if setting.grad is not None:
        flags += [GRAD_FLAG[setting.mode], str(setting.grad)]
    return flags


def final_loss(out: Path, setting: Setting) -> Optional[float]:
    """The last validation loss of a finished run, None if it has not finished."""
    metrics = out / setting.folder / "metrics.jsonl"
    if not metrics.exists():
        return None
    valid = [r for r in map(json.loads, metrics.read_text().splitlines()) if r["kind"] == "valid"]
    done = [r for r in valid if r["iteration"] == setting.iters]
    return done[-1]["loss"] if done else None


class NoFinishedRun(RuntimeError):
    """A stage needs the best earlier run of a corpus and method, and none has finished."""


def best(out: Path, settings: List[Setting], corpus: str, mode: str) -> Setting:
    """The finished 300-step setting of this corpus and mode with the lowest final validation loss."""
    scored = [(final_loss(out, s), s) for s in settings if s.corpus == corpus and s.mode == mode]
    scored = [(loss, s) for loss, s in scored if loss is not None and math.isfinite(loss)]
    if not scored:
        raise NoFinishedRun(f"no finished {mode} run on {corpus}: run the earlier stages first")
    return min(scored, key=lambda item: item[0])[1]


def stage_settings(stage: str, out: Path, done: List[Setting], corpora: List[str], args) -> List[Setting]:
    """The runs of one stage, given the finished runs of the stages before it."""
    runs = []
    for corpus in corpora:
        for mode in getattr(args, "modes", MODES):
            if stage == "grad-rounds":
                # "all" runs the papers' path (no flag) and vanilla; K runs only the methods.
                counts = [None if k == "all" else int(k) for k in args.grad_counts]
                counts = [None] if mode == "none" else counts
                if mode == "none" and "all" not in args.grad_counts:
                    continue
                runs += [Setting(corpus, mode, iters=args.long_iters, **{**DEFAULTS[mode], "grad": k})
                         for k in counts]
                continue
            if stage == "lr":
                runs += [Setting(corpus, mode, lr, iters=args.train_iters) for lr in LEARNING_RATES]
                continue
            if stage in ("defaults", "long-defaults"):
                iters = args.train_iters if stage == "defaults" else args.long_iters
                runs.append(Setting(corpus, mode, iters=iters, **DEFAULTS[mode]))
                continue
            top = best(out, done, corpus, mode)
            if stage == "init":
                runs.append(replace(top, init="ponderlm"))
            elif stage == "warmup":
                runs.append(replace(top, warmup=LONG_WARMUP))
            elif stage == "scale" and ALTERNATIVE_SCALE[mode] is not None:
                runs.append(replace(top, scale=ALTERNATIVE_SCALE[mode]))
            elif stage == "relr" and top.init != "megatron":
                # The LR was chosen with Megatron's init: with the papers' init, try its neighbours again.
                index = LEARNING_RATES.index(top.lr)
                runs += [replace(top, lr=LEARNING_RATES[i]) for i in (index - 1, index + 1)
                         if 0 <= i < len(LEARNING_RATES)]
            elif stage == "long":
                runs.append(replace(top, iters=args.long_iters))
    return [run for run in runs if run not in done]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_one(setting: Setting, args, out: Path, data: Dict[str, List[str]]) -> None:
    folder = out / setting.folder
    folder.mkdir(parents=True, exist_ok=True)
    flags = pretrain_flags(setting, args, data[setting.corpus])
    shown = " ".join(["python", "-m", "megatron_ponder.pretrain", *flags])
    if finished(folder, shown, setting.iters):
        return
    metrics = folder / "metrics.jsonl"
    metrics.unlink(missing_ok=True)
    (folder / "run.json").unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    env["MASTER_PORT"] = str(free_port())  # each run its own rendezvous: runs side by side must not meet
    started = time.time()
    with open(folder / "log.txt", "w") as log:
        child = subprocess.Popen([sys.executable, "-m", "megatron_ponder.pretrain", *flags, "--metrics-file", str(metrics)],
                                 env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        # wait4: this child's own resource usage (RUSAGE_CHILDREN would be the peak over all runs so far)
        _, wait_status, usage = os.wait4(child.pid, 0)
        child.returncode = status = os.waitstatus_to_exitcode(wait_status)
    seconds = time.time() - started
    peak_rss_mib = usage.ru_maxrss / 1024  # Linux reports KiB
    record = dict(run=setting.name, command=shown, setting=setting.__dict__, wall_seconds=seconds, exit_code=status,
                  peak_rss_mib=peak_rss_mib, cpu_seconds=usage.ru_utime + usage.ru_stime)
    (folder / "run.json").write_text(json.dumps(record, indent=1))
    print(f"{setting.folder}: exit {status} in {seconds:.0f} s, final valid loss {final_loss(out, setting)}", flush=True)
    if status != 0:
        raise RuntimeError(f"{setting.folder} failed (exit {status}): see {folder / 'log.txt'}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "runs" / "training-dynamics"))
    parser.add_argument("--corpora", nargs="+", default=["stdlib", "pydocs"], choices=["stdlib", "pydocs"])
    parser.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    parser.add_argument("--jobs", type=int, default=2, help="runs side by side (one process, one thread each)")
    parser.add_argument("--train-iters", type=int, default=300)
    parser.add_argument("--long-iters", type=int, default=1200)
    parser.add_argument("--eval-interval", type=int, default=50, help="of the 300-step runs (long runs: scaled)")
    parser.add_argument("--eval-iters", type=int, default=12)
    parser.add_argument("--grad-counts", nargs="+", default=list(GRAD_COUNTS), choices=GRAD_COUNTS,
                        help="grad-rounds stage: the K of the methods; all also runs vanilla")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES),
                        help="grad-rounds stage: only these methods (to order runs when the CPU budget is short)")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()  # the command a finished run is matched by holds paths under it
    data = {corpus: data_flags(corpus, out) for corpus in args.corpora}
    done: List[Setting] = []
    started = time.time()
    for stage in STAGES:
        if stage not in args.stages:
            if stage not in ("long", "long-defaults", "grad-rounds"):
                try:
                    done += stage_settings(stage, out, done, args.corpora, args)
                except NoFinishedRun:  # its input stage has not run, so neither has it
                    pass
            continue
        runs = stage_settings(stage, out, done, args.corpora, args)
        # Longest first, so that the pool's last runs are short ones.
        cost = {"none": 1, "ponder": 4, "latent": 6}
        runs.sort(key=lambda s: -cost[s.mode] * s.iters)
        print(f"stage {stage}: {len(runs)} runs", flush=True)
        with ThreadPoolExecutor(args.jobs) as pool:
            list(pool.map(lambda s: run_one(s, args, out, data), runs))
        done += runs
    print(f"study done in {(time.time() - started) / 60:.1f} min (wall)", flush=True)


if __name__ == "__main__":
    main()
