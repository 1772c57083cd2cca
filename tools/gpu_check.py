"""The prepared check of the GPU path: one run on one H100/H200 that says what works there.

    bash tools/gpu_check.sh                    # GPU machine: installs from .gpu_wheels, then runs this
    python tools/gpu_check.py                  # GPU machine with the packages already installed
    python tools/gpu_check.py --cpu-smoke      # the same parts, smallest sizes, CPU/gloo (plumbing)

Parts, in this order, each in its own process with a hard timeout (a hang costs that part only),
all within ``--budget-s`` (default 450 s; the wheel install before it takes well under a minute):

  tests/gpu            python -m pytest tests/gpu; passed / skipped / failed counts
  train IMPL MODE      IMPL local (and te when transformer_engine.pytorch imports), MODE none, ponder,
                       latent: 20 steps of the pretrain entry point (bf16, NCCL world of one, the
                       built-in corpus), run three times in one process through pretrain.main:
                       uninterrupted to 20; to 10 with a save; resumed from that save to 20. Passes when
                       the loss falls (mean of steps 16-20 < mean of steps 1-5) and the resumed steps
                       11-20 equal the uninterrupted ones bit for bit (read from --metrics-file)
  bench MODE           benchmarks/gpu/ponder_throughput.py at one fixed shape (the 0.96B LLaMA-style
                       model, sequence 2048, 1 x 4 sequences per step, bf16): tokens/s, TFLOP/s, MFU,
                       peak memory beside the planner's estimate, each mode beside vanilla

Prints one table (part, result, figures) and writes a JSON (``--json``; default gpu_check.json under
$OUT when set, else in the current folder) with every figure, the environment and, for a failed
part, its log's tail; the logs go to a folder beside it. Exit code 1 when a part failed, 2 when the
check cannot start (no CUDA without --cpu-smoke).

Resume exactness needs deterministic kernels: the training processes run with
``torch.use_deterministic_algorithms(True, warn_only=True)``, ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` and
``NVTE_ALLOW_NONDETERMINISTIC_ALGO=0``; ops that still have no deterministic implementation are
listed in the figures, and the first 10 steps of the two runs from scratch are compared too, so a
mismatch says whether the resume or the hardware path is nondeterministic.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]
MODES = ("none", "ponder", "latent")
STEPS, HALF = 20, 10

# Model and batch per size. The GPU size is small enough that the three runs of a mode take
# seconds, and every GEMM dimension is a multiple of 16 (as TE wants); the smoke size is the
# smallest that still trains on CPU in a few seconds per run.
TRAIN_SIZES = {
    "gpu": ["--num-layers", "4", "--hidden-size", "512", "--num-attention-heads", "8", "--num-query-groups", "4",
            "--ffn-hidden-size", "1408", "--seq-length", "256", "--micro-batch-size", "8", "--global-batch-size", "16"],
    "smoke": ["--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4", "--num-query-groups", "2",
              "--ffn-hidden-size", "128", "--seq-length", "32", "--micro-batch-size", "4", "--global-batch-size", "8"],
}
# The main job's per-mode settings (examples/pretrain_ponder_gpt.sh, docs/training_dynamics.md).
MODE_FLAGS = {
    "none": ["--ponder-mode", "none"],
    "ponder": ["--ponder-mode", "ponder", "--input-embedding-scale", "sqrt-hidden"],
    "latent": ["--ponder-mode", "latent"],
}
BENCH_SIZES = {
    "gpu": ["--steps", "5", "--warmup", "2"],  # the benchmark's own default shape: 0.96B, sequence 2048, 1 x 4
    "smoke": ["--device", "cpu", "--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4",
              "--num-query-groups", "2", "--ffn-hidden-size", "128", "--vocab-size", "512", "--seq-length", "32",
              "--micro-batch-size", "2", "--microbatches", "2", "--steps", "2", "--warmup", "1",
              # A CPU has no BF16 tensor-core peak: a nominal 1 TFLOP/s keeps the MFU column computed.
              "--peak-tflops", "1"],
}
BENCH_MODES = {"none": "none", "ponder": "ponder", "latent": "latent1"}  # check's name -> benchmark's

# Hard limits per part (seconds), and what each part still to come is kept (so an early part that
# hangs cannot take the later parts' time).
CAP = {"tests": 150, "train": 90, "bench": 180}
RESERVE = {"tests": 30, "train": 20, "bench": 60}
MIN_BUDGET_S = RESERVE["tests"] + 6 * RESERVE["train"] + RESERVE["bench"]


# ---------------------------------------------------------------------------------------------
# Running parts
# ---------------------------------------------------------------------------------------------

def child_env(smoke: bool) -> dict:
    """The parts' environment: no torchrun variables (each part is a world of one on a free port),
    the repo importable, deterministic kernels (resume exactness), one CPU thread in smoke mode."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    env.setdefault("NVTE_ALLOW_NONDETERMINISTIC_ALGO", "0")
    if smoke:
        env["OMP_NUM_THREADS"] = "1"  # 2 threads per process on 2 shared cores made steps 40x slower
        env["CUDA_VISIBLE_DEVICES"] = ""  # CPU/gloo even on a GPU machine: the smoke run tests plumbing
    return env


class Runner:
    """Runs each part's process under the part's timeout and the check's overall budget."""

    def __init__(self, budget_s: float, logs: Path, env: dict):
        self.deadline = time.monotonic() + budget_s
        self.logs = logs
        self.env = env

    def timeout_for(self, kind: str, later: List[str]) -> float:
        left = self.deadline - time.monotonic() - sum(RESERVE[k] for k in later)
        return min(CAP[kind], left)

    def run(self, name: str, command: List[str], timeout_s: float) -> dict:
        """{returncode, seconds, timed_out, log, tail}; output to logs/<name>.log."""
        log = self.logs / (name.replace("/", "_").replace(" ", "_") + ".log")
        started = time.monotonic()
        print(f"gpu_check: {name}: {' '.join(command[1:])} (timeout {timeout_s:.0f} s)", flush=True)
        timed_out = False
        with open(log, "w") as handle:
            # Own session: on timeout the whole tree (pytest's or torch's helpers) is killed.
            process = subprocess.Popen(command, cwd=REPO, env=self.env, stdout=handle, stderr=subprocess.STDOUT,
                                       start_new_session=True)
            try:
                returncode = process.wait(timeout=max(timeout_s, 1))
            except subprocess.TimeoutExpired:
                timed_out = True
                os.killpg(process.pid, signal.SIGKILL)
                returncode = process.wait()
            finally:
                try:
                    os.killpg(process.pid, signal.SIGKILL)  # stragglers (checkpoint writers) of a finished part
                except ProcessLookupError:
                    pass
        text = log.read_text(errors="replace")
        return dict(returncode=returncode, seconds=time.monotonic() - started, timed_out=timed_out, log=str(log),
                    tail=text[-2500:])


def part(name: str, result: str, seconds: float = 0.0, detail: str = "", **figures) -> dict:
    return dict(part=name, result=result, seconds=round(seconds, 1), detail=detail, figures=figures)


def with_log(row: dict, done: dict) -> dict:
    """The part's log file, and its tail when the part failed (the JSON alone then says why)."""
    row["log"] = done["log"]
    if row["result"] == "fail":
        row["log_tail"] = done["tail"]
    return row


def failure_detail(done: dict, timeout_s: float) -> str:
    if done["timed_out"]:
        return f"timed out after {timeout_s:.0f} s (log {done['log']})"
    lines = [line for line in done["tail"].splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line or line.startswith("error")]
    return f"exit {done['returncode']}: {(errors or lines or ['no output'])[-1][:300]} (log {done['log']})"


# ---------------------------------------------------------------------------------------------
# Part 1: tests/gpu
# ---------------------------------------------------------------------------------------------

def run_gpu_tests(runner: Runner, work: Path, later: List[str]) -> dict:
    timeout_s = runner.timeout_for("tests", later)
    if timeout_s < 10:
        return part("tests/gpu", "fail", detail="no time left in the budget")
    report = work / "tests_gpu.xml"
    done = runner.run("tests/gpu", [sys.executable, "-m", "pytest", "tests/gpu", "-q", "-p", "no:cacheprovider",
                                    f"--junitxml={report}"], timeout_s)
    if not report.exists():
        return with_log(part("tests/gpu", "fail", done["seconds"], failure_detail(done, timeout_s)), done)
    counts = dict(passed=0, skipped=0, failed=0, errors=0)
    reasons, failures = [], []
    for case in ElementTree.parse(report).getroot().iter("testcase"):
        outcome = next((child for child in case if child.tag in ("failure", "error", "skipped")), None)
        if outcome is None:
            counts["passed"] += 1
            continue
        key = {"failure": "failed", "error": "errors", "skipped": "skipped"}[outcome.tag]
        counts[key] += 1
        message = (outcome.get("message") or "").replace("\n", " ")[:160]
        (reasons if key == "skipped" else failures).append(f"{case.get('name')}: {message}")
    unique_reasons = sorted({r.split(": ", 1)[1] for r in reasons})
    ok = counts["failed"] == counts["errors"] == 0 and not done["timed_out"] and done["returncode"] in (0, 5)
    if done["timed_out"]:
        detail = failure_detail(done, timeout_s)
    elif failures:
        detail = "; ".join(failures[:3])
    elif unique_reasons:
        detail = "skipped because: " + "; ".join(unique_reasons[:3])
    else:
        detail = ""
    return with_log(part("tests/gpu", "pass" if ok else "fail", done["seconds"], detail, **counts,
                         skip_reasons=unique_reasons, failures=failures), done)


# ---------------------------------------------------------------------------------------------
# Part 2: training, run in a worker process (this file with --train-worker)
# ---------------------------------------------------------------------------------------------

def train_losses(metrics_file: Path) -> Dict[int, float]:
    """iteration -> loss of the last train record for it (a resumed run appends to the same file)."""
    found = {}
    if metrics_file.exists():
        for line in metrics_file.read_text().splitlines():
            record = json.loads(line)
            if record.get("kind") == "train":
                found[record["iteration"]] = record["loss"]
    return found


def median_step_ms(metrics_file: Path) -> Optional[float]:
    """Median step time after the first 5 steps (warm-up: allocator growth, kernel selection)."""
    if not metrics_file.exists():
        return None
    records = [json.loads(line) for line in metrics_file.read_text().splitlines()]
    seconds = [record["step_seconds"] for record in records if record.get("kind") == "train"]
    return 1000 * statistics.median(seconds[5:] or seconds) if seconds else None


def train_worker(args) -> int:
    """Three runs of pretrain.main in this process; writes the verdict's inputs to --result."""
    import warnings

    import torch
    import torch.distributed as dist

    torch.use_deterministic_algorithms(True, warn_only=True)
    backends = []
    init_process_group = dist.init_process_group

    def recording_init(*positional, **keywords):  # which backend the entry point really chose
        backends.append(keywords.get("backend", positional[0] if positional else None))
        return init_process_group(*positional, **keywords)

    dist.init_process_group = recording_init
    from megatron_ponder.pretrain import main as pretrain

    work = Path(args.work)
    tag = f"{args.impl}_{args.mode}"
    impl = {"local": "local", "te": "transformer_engine"}[args.impl]
    common = [*TRAIN_SIZES[args.size], *MODE_FLAGS[args.mode], "--default-corpus", str(work / "corpus"),
              "--transformer-impl", impl, "--bf16", "--lr", "3e-3", "--init-style", "ponderlm",
              "--train-iters", str(STEPS), "--eval-iters", "0", "--log-interval", "5", "--seed", "1234"]
    straight, resumed, checkpoints = work / f"{tag}_straight.jsonl", work / f"{tag}_resumed.jsonl", work / f"{tag}_ckpt"
    runs = [("uninterrupted", ["--metrics-file", straight]),
            ("first half, saved", ["--metrics-file", resumed, "--save", checkpoints, "--exit-interval", str(HALF)]),
            ("resumed", ["--metrics-file", resumed, "--load", checkpoints])]
    codes = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        for label, extra in runs:
            print(f"train {args.impl} {args.mode}: {label}", flush=True)
            code = pretrain([str(a) for a in common + extra])
            codes.append(code)
            if code != 0:
                break
    nondeterministic = sorted({str(w.message).split(" does not have a deterministic")[0][:120]
                               for w in caught if "deterministic" in str(w.message)})
    result = dict(returncodes=codes, backends=backends, straight=train_losses(straight),
                  resumed=train_losses(resumed), nondeterministic_ops=nondeterministic,
                  step_ms_median=median_step_ms(straight),
                  cuda_peak_gib=torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
                  device=torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU")
    Path(args.result).write_text(json.dumps(result))
    return 0 if all(code == 0 for code in codes) and len(codes) == len(runs) else 1


def judge_training(name: str, outcome: dict, seconds: float) -> dict:
    """pass: all runs finished, the loss fell, the resumed steps equal the uninterrupted ones."""
    straight = {int(k): v for k, v in outcome["straight"].items()}
    resumed = {int(k): v for k, v in outcome["resumed"].items()}
    expected = list(range(1, STEPS + 1))
    figures = dict(device=outcome["device"], backend=",".join(sorted(set(map(str, outcome["backends"])))),
                   step_ms_median=outcome["step_ms_median"], cuda_peak_gib=outcome["cuda_peak_gib"],
                   nondeterministic_ops=outcome["nondeterministic_ops"])
    if outcome["returncodes"] != [0, 0, 0] or sorted(straight) != expected or sorted(resumed) != expected:
        return part(name, "fail", seconds, f"runs exited {outcome['returncodes']}; steps logged: uninterrupted "
                                           f"{len(straight)}, resumed {len(resumed)} of {STEPS}", **figures)
    first = statistics.fmean(straight[i] for i in range(1, 6))
    last = statistics.fmean(straight[i] for i in range(STEPS - 4, STEPS + 1))
    second_half = range(HALF + 1, STEPS + 1)
    exact = all(resumed[i] == straight[i] for i in second_half)
    reproduced = all(resumed[i] == straight[i] for i in range(1, HALF + 1))
    max_rel = max(abs(resumed[i] - straight[i]) / max(abs(straight[i]), 1e-12) for i in second_half)
    finite = all(math.isfinite(v) for v in straight.values())
    figures.update(loss_first5=first, loss_last5=last, loss_fell=finite and last < first, resume_exact=exact,
                   resume_max_rel_diff=max_rel, first_half_reproduced=reproduced,
                   losses=[straight[i] for i in expected])
    problems = []
    if not figures["loss_fell"]:
        problems.append(f"loss did not fall ({first:.4f} -> {last:.4f})")
    if not exact:
        cause = ("the resume" if reproduced else
                 "nondeterministic kernels (steps 1-10 of two runs from scratch differ too"
                 + (f": {', '.join(outcome['nondeterministic_ops'][:3])}" if outcome["nondeterministic_ops"] else "")
                 + ")")
        problems.append(f"resumed steps 11-20 differ from the uninterrupted run (max rel {max_rel:.1e}): {cause}")
    return part(name, "fail" if problems else "pass", seconds, "; ".join(problems), **figures)


def run_training(runner: Runner, work: Path, impl: str, mode: str, size: str, later: List[str]) -> dict:
    name = f"train {impl} {mode}"
    timeout_s = runner.timeout_for("train", later)
    if timeout_s < 10:
        return part(name, "fail", detail="no time left in the budget")
    result = work / f"train_{impl}_{mode}.json"
    done = runner.run(name, [sys.executable, str(Path(__file__).resolve()), "--train-worker", "--impl", impl,
                             "--mode", mode, "--size", size, "--work", str(work), "--result", str(result)], timeout_s)
    if done["timed_out"] or not result.exists():
        return with_log(part(name, "fail", done["seconds"], failure_detail(done, timeout_s)), done)
    judged = judge_training(name, json.loads(result.read_text()), done["seconds"])
    if done["returncode"] != 0 and judged["result"] == "pass":  # e.g. a crash at exit
        judged.update(result="fail", detail=failure_detail(done, timeout_s))
    return with_log(judged, done)


# ---------------------------------------------------------------------------------------------
# Part 3: the throughput benchmark with peak memory beside the planner's estimate
# ---------------------------------------------------------------------------------------------

def run_benchmark(runner: Runner, work: Path, size: str, later: List[str]) -> List[dict]:
    names = [f"bench {mode}" for mode in MODES]
    timeout_s = runner.timeout_for("bench", later)
    if timeout_s < 10:
        return [part(name, "fail", detail="no time left in the budget") for name in names]
    out = work / "bench.json"
    command = [sys.executable, str(REPO / "benchmarks" / "gpu" / "ponder_throughput.py"),
               "--modes", ",".join(BENCH_MODES[m] for m in MODES), "--precisions", "bf16", "--mixing", "dense",
               "--transformer-impl", "auto", *BENCH_SIZES[size], "--json", str(out)]
    done = runner.run("bench", command, timeout_s)
    if done["timed_out"] or done["returncode"] != 0 or not out.exists():
        return [with_log(part(name, "fail", done["seconds"], failure_detail(done, timeout_s)), done) for name in names]
    summary = json.loads(out.read_text())
    by_mode = {record["mode"]: record for record in summary["configurations"]}
    vanilla = by_mode.get("none", {})
    rows = []
    for mode, name in zip(MODES, names):
        record = by_mode.get(BENCH_MODES[mode], {})
        if "error" in record or "tokens_per_second" not in record:
            rows.append(part(name, "fail", done["seconds"], record.get("error", "not measured")))
            continue
        figures = {k: record[k] for k in ("tokens_per_second", "tflops_per_gpu", "mfu", "peak_memory_gib",
                                          "planned_memory_gib", "step_seconds", "final_loss", "transformer_impl")}
        figures.update(
            device=summary["device"], peak_tflops=summary["peak_tflops"], peak_source=summary["peak_source"],
            peak_memory_source=summary["peak_memory_source"],
            tokens_vs_none=record["tokens_per_second"] / vanilla["tokens_per_second"] if vanilla else None,
            tflops_vs_none=record["tflops_per_gpu"] / vanilla["tflops_per_gpu"] if vanilla else None,
            memory_measured_over_planned=record["peak_memory_gib"] / record["planned_memory_gib"],
            shape=dict(summary["shape"], vocab_size=summary["vocab_size"], seq_length=summary["seq_length"],
                       micro_batch_size=summary["micro_batch_size"], microbatches=summary["microbatches"]))
        numbers = [figures[k] for k in ("tokens_per_second", "tflops_per_gpu", "peak_memory_gib",
                                         "planned_memory_gib", "final_loss")]
        ok = all(isinstance(v, (int, float)) and math.isfinite(v) for v in numbers)
        rows.append(part(name, "pass" if ok else "fail", done["seconds"], "" if ok else "a figure is not finite",
                         **figures))
    return [with_log(row, done) for row in rows]


# ---------------------------------------------------------------------------------------------
# The table, the JSON, the environment
# ---------------------------------------------------------------------------------------------

def _g(value, digits=3) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


def _memory(gib) -> str:
    """GiB, or MiB below 1 GiB (the smoke run's figures are a few MiB)."""
    if gib is None:
        return "-"
    return f"{gib:.3g} GiB" if gib >= 1 else f"{gib * 1024:.3g} MiB"


def summary_of(row: dict) -> str:
    """The table's figures column: the few numbers that matter for the part."""
    f = row["figures"]
    if row["part"] == "tests/gpu" and "passed" in f:
        text = f"{f['passed']} passed, {f['skipped']} skipped, {f['failed']} failed, {f['errors']} errors"
    elif row["part"].startswith("train") and "loss_first5" in f:
        text = (f"loss {f['loss_first5']:.3f} -> {f['loss_last5']:.3f}; resume "
                f"{'exact' if f['resume_exact'] else 'differs (max rel %.1e)' % f['resume_max_rel_diff']}; "
                f"{f['backend']}; step {_g(f['step_ms_median'])} ms"
                + (f"; CUDA peak {_memory(f['cuda_peak_gib'])}" if f.get("cuda_peak_gib") is not None else ""))
    elif row["part"].startswith("bench") and "tokens_per_second" in f:
        mfu = "-" if f["mfu"] is None else f"{100 * f['mfu']:.1f}%"
        text = (f"{f['tokens_per_second']:,.0f} tok/s ({_g(f['tokens_vs_none'], 2)}x none), "
                f"{_g(f['tflops_per_gpu'])} TFLOP/s, MFU {mfu}; peak {_memory(f['peak_memory_gib'])} vs planned "
                f"{_memory(f['planned_memory_gib'])} ({_g(f['memory_measured_over_planned'], 2)}x)")
    elif row["part"] == "install" and f:
        text = ", ".join(f"{k} {v}" for k, v in f.items())
    else:
        text = ""
    if row["detail"] and (row["result"] != "pass" or not text or row["part"] == "tests/gpu"):
        text = (text + "; " if text else "") + row["detail"]
    return text


def print_table(rows: List[dict]) -> None:
    width = max(len(r["part"]) for r in rows)
    print(f"\n{'part'.ljust(width)} | result | figures")
    print(f"{'-' * width}-|--------|{'-' * 60}")
    for row in rows:
        print(f"{row['part'].ljust(width)} | {row['result'].ljust(6)} | {summary_of(row)}")


def environment(smoke: bool) -> dict:
    import torch

    found = dict(python=platform.python_version(), torch=torch.__version__,
                 torch_cuda=getattr(getattr(torch, "version", None), "cuda", None),
                 device=torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU",
                 mode="cpu-smoke" if smoke else "gpu")
    for package in ("megatron-core", "transformer-engine", "numpy", "tokenizers"):
        try:
            from importlib.metadata import version

            found[package] = version(package)
        except Exception:  # not installed: the parts say what that means
            found[package] = None
    try:
        found["git_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                             text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        found["git_commit"] = None
    return found


def te_unusable_reason(env: dict) -> Optional[str]:
    """Asked in a child process: importing TE here would put CUDA state into this process."""
    probe = ("from megatron_ponder.runtime.transformer_engine import transformer_engine_unusable_reason as r; "
             "print(r() or '')")
    try:
        done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=120)
    except subprocess.TimeoutExpired:
        return "importing transformer_engine.pytorch hung for 120 s"
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or ["no output"]
        return f"the check of Transformer Engine failed: {lines[-1][:200]}"
    return done.stdout.strip() or None


def guarded(names: List[str], run_parts) -> List[dict]:
    """The parts' rows, or failed rows naming the exception: a bug in reading one part's output must
    not cost the JSON of the others."""
    try:
        return run_parts()
    except Exception as error:
        return [part(name, "fail", detail=f"gpu_check itself failed: {type(error).__name__}: {error}")
                for name in names]


def default_json_path() -> Path:
    return Path(os.environ["OUT"]) / "gpu_check.json" if os.environ.get("OUT") else Path.cwd() / "gpu_check.json"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu-smoke", action="store_true", default=os.environ.get("GPU_CHECK_CPU_SMOKE") == "1",
                        help="run every part at the smallest size on CPU/gloo (tests the check itself; "
                             "also GPU_CHECK_CPU_SMOKE=1)")
    parser.add_argument("--json", type=Path, default=None, help="where the JSON goes (default: $OUT/gpu_check.json, "
                                                                "else ./gpu_check.json)")
    parser.add_argument("--budget-s", type=float, default=450.0, help="the whole check's time limit (default 450)")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one, removed)")
    parser.add_argument("--install", default=None, help=argparse.SUPPRESS)  # tools/gpu_check.sh: RESULT|DETAIL|JSON
    # The training worker (one process per implementation and mode), started by the check itself.
    parser.add_argument("--train-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--impl", choices=["local", "te"], help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--size", choices=sorted(TRAIN_SIZES), help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.train_worker:
        return train_worker(args)
    import torch

    if not args.cpu_smoke and not torch.cuda.is_available():
        print("gpu_check: no CUDA device visible (torch.cuda.is_available() is False): run it on a GPU machine, "
              "or pass --cpu-smoke for the CPU plumbing run", file=sys.stderr)
        return 2
    if args.budget_s < MIN_BUDGET_S:
        print(f"gpu_check: --budget-s {args.budget_s:g} is too short to give every part its share: give at least "
              f"{MIN_BUDGET_S}", file=sys.stderr)
        return 2
    smoke = args.cpu_smoke
    size = "smoke" if smoke else "gpu"
    json_path = (args.json or default_json_path()).resolve()
    json_path.parent.mkdir(parents=True, exist_ok=True)
    logs = json_path.with_name(json_path.stem + "_logs")
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir()
    work = args.work.resolve() if args.work else Path(tempfile.mkdtemp(prefix="gpu_check_"))
    work.mkdir(parents=True, exist_ok=True)
    env = child_env(smoke)
    started = time.monotonic()
    runner = Runner(args.budget_s, logs, env)
    print(f"gpu_check: {'CPU smoke run (plumbing, smallest sizes)' if smoke else torch.cuda.get_device_name()}, "
          f"budget {args.budget_s:.0f} s, logs in {logs}", flush=True)

    rows = []
    if args.install:
        result, detail, figures = (args.install.split("|", 2) + ["", "{}"])[:3]
        rows.append(part("install", result, detail=detail, **json.loads(figures or "{}")))
    te_reason = "Transformer Engine is GPU-only" if smoke else te_unusable_reason(env)
    impls = ["local"] + (["te"] if te_reason is None else [])
    train_parts = [(impl, mode) for impl in impls for mode in MODES]
    later = ["train"] * len(train_parts) + ["bench"]
    rows += guarded(["tests/gpu"], lambda: [run_gpu_tests(runner, work, later)])
    for index, (impl, mode) in enumerate(train_parts):
        later = ["train"] * (len(train_parts) - index - 1) + ["bench"]
        rows += guarded([f"train {impl} {mode}"], lambda: [run_training(runner, work, impl, mode, size, later)])
        print(f"gpu_check: {rows[-1]['part']}: {rows[-1]['result']} {summary_of(rows[-1])}", flush=True)
    if te_reason is not None:
        rows += [part(f"train te {mode}", "skip", detail=te_reason) for mode in MODES]
    rows += guarded([f"bench {mode}" for mode in MODES], lambda: run_benchmark(runner, work, size, []))

    failed = [row["part"] for row in rows if row["result"] == "fail"]
    try:
        found = environment(smoke)
    except Exception as error:  # the report matters more than its header
        found = dict(error=f"{type(error).__name__}: {error}")
    report = dict(check="megatron_ponder GPU check", ok=not failed, failed=failed,
                  seconds=round(time.monotonic() - started, 1), environment=found, parts=rows)
    json_path.write_text(json.dumps(report, indent=1) + "\n")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)  # checkpoints of six runs: too big to keep by default
    print_table(rows)
    print(f"\ngpu_check: {'all parts passed' if not failed else 'FAILED: ' + ', '.join(failed)} in "
          f"{report['seconds']:.0f} s; JSON: {json_path}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
