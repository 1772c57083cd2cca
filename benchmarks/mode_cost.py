"""Benchmark: what each mode costs against the FLOP model of the method, and its peak memory.

Part 1, step time: one forward + backward of the same model in every mode, one process, one
thread, configurations timed round-robin (each repeat runs every configuration once, so load
from other processes hits all of them alike) and the median taken; the ratios use the
process's CPU time, which a shared machine's other jobs disturb much less than wall time. "FLOP model" is
:func:`megatron_ponder.training.flops.step_flops` relative to mode ``none``: ponder pays S+1
full passes plus S vocabulary mixtures; latent pays one L-length pass per initial thought plus
J+1 passes over the (N+1)L interleaved sequence (attention quadratic in it) and logits only at
the last thought slots. "time / FLOP model" near 1 means the implementation costs what the
method must; above 1 is overhead of ours (or of small shapes on a CPU).

Part 2, peak memory: for a subset of modes, with recompute none / selective / full, the peak
resident memory of one forward + backward above the memory held before it (model, data), each
in a fresh process (the kernel's resident high-water mark, reset before the step). Includes the gradients.

    OMP_NUM_THREADS=1 python benchmarks/mode_cost.py              # writes docs/benchmarks/mode_cost.md
    python benchmarks/mode_cost.py --tiny --repeats 1 --output /tmp/x.md   # seconds, for tests
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

from megatron_ponder.variants import RECOMPUTE, label, variant

REPO = Path(__file__).resolve().parents[1]
warnings.filterwarnings("ignore")

MODES = {label(fields): fields for fields in [
    variant("none"),
    *(variant("ponder", ponder_steps=steps) for steps in (1, 2, 3)),
    *(variant("latent1", rounds=(rounds, rounds)) for rounds in (1, 2, 3)),
    variant("latent2", rounds=(2, 2)),
]}
MEMORY_MODES = ["none", "ponder S=3", "latent N=1 J=2", "latent N=2 J=2"]
RECOMPUTES = ["none", "selective", "full"]  # keys of RECOMPUTE, in table order
# Default shape: the cpu-tiny preset as the reproduction trains it (vocab of the default corpus).
SHAPES = {
    "cpu-tiny": {"size": {"num_layers": 4, "hidden_size": 128, "num_attention_heads": 4, "num_query_groups": 2,
                          "ffn_hidden_size": 352}, "vocab": 4096, "seq": 128, "batch": 8},
    "tiny": {"size": {"num_layers": 2, "hidden_size": 64, "num_attention_heads": 2, "num_query_groups": 1,
                      "ffn_hidden_size": 128}, "vocab": 256, "seq": 32, "batch": 2},
}


def build(shape: dict, fields: dict, recompute: str):
    """The model of ``shape`` in the mode ``fields`` (train mode, no dropout, seeded init)."""
    import torch

    from megatron_ponder.model.architectures import build_ponder_gpt, make_ponder_config

    torch.manual_seed(0)
    config = make_ponder_config(
        "llama", use_cpu_initialization=True, hidden_dropout=0.0, attention_dropout=0.0,
        calculate_per_token_loss=True, **shape["size"], **fields, **RECOMPUTE[recompute],
    )
    model = build_ponder_gpt(config, "llama", shape["vocab"], shape["seq"])
    model.train()
    return model


def batch(shape: dict):
    """(tokens, labels, position ids), each [b, L]."""
    import torch

    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, shape["vocab"], (shape["batch"], shape["seq"] + 1), generator=generator)
    return ids[:, :-1], ids[:, 1:], torch.arange(shape["seq"]).expand(shape["batch"], -1)


def model_flops(shape: dict, model) -> float:
    """Training FLOPs of one step (forward + backward, all passes) by the FLOP model."""
    from megatron_ponder.training.flops import step_flops

    rounds = model.config.jacobi_train_rounds[0] if model.config.ponder_mode == "latent" else 0
    return step_flops(model.config, shape["seq"], shape["batch"], shape["vocab"], rounds)


def training_loss(model, tokens, positions, labels):
    """Per-token loss [b, L] of the model's training forward at the step's J.

    Latent mode: J drawn from ``jacobi_train_rounds`` as the training step draws it (the
    benchmarks fix the range to one J); without ``num_jacobi_rounds`` the forward would run
    ``jacobi_eval_rounds`` (3) whatever the mode's J.
    """
    config = model.config
    rounds = config.jacobi_rounds_for_iteration(1) if config.ponder_mode == "latent" else None
    return model(tokens, positions, None, labels=labels, num_jacobi_rounds=rounds)


def step(model, data) -> None:
    tokens, labels, positions = data
    model.zero_grad(set_to_none=True)
    training_loss(model, tokens, positions, labels).sum().backward()


# ------------------------------------------------------------------ part 1: step time
def time_table(shape: dict, modes, recomputes, repeats: int):
    """Median step seconds per (mode, recompute), configurations interleaved round-robin."""
    from megatron_ponder.runtime.parallel_init import initialize_parallel

    initialize_parallel()
    data = batch(shape)
    configs = [(mode, recompute) for recompute in recomputes for mode in modes
               if recompute == "none" or mode in MEMORY_MODES]
    models = {config: build(shape, MODES[config[0]], config[1]) for config in configs}
    for model in models.values():  # warm-up: first-call allocations and lazy initialisation
        step(model, data)
    cpu = {config: [] for config in configs}
    wall = {config: [] for config in configs}
    for _ in range(repeats):
        for config, model in models.items():
            start_cpu, start_wall = time.process_time(), time.perf_counter()
            step(model, data)
            cpu[config].append(time.process_time() - start_cpu)
            wall[config].append(time.perf_counter() - start_wall)
    base_time = statistics.median(cpu[("none", "none")])
    base_flops = model_flops(shape, models[("none", "none")])
    rows = []
    for (mode, recompute), samples in cpu.items():
        flops = model_flops(shape, models[(mode, recompute)])
        median = statistics.median(samples)
        rows.append({"mode": mode, "recompute": recompute, "cpu_ms": 1000 * median,
                     "wall_ms": 1000 * statistics.median(wall[(mode, recompute)]), "time_ratio": median / base_time,
                     "flop_ratio": flops / base_flops, "gflops": flops / 1e9})
    return rows


# ------------------------------------------------------------------ part 2: peak memory
def _status_bytes(field: str) -> int:
    """A memory field of /proc/self/status (VmRSS: resident now, VmHWM: resident high-water mark)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}: this benchmark's memory part needs Linux")


def memory_worker(shape_name: str, mode: str, recompute: str) -> None:
    """In a fresh process: peak resident bytes of one training step above what was resident before."""
    from megatron_ponder.runtime.parallel_init import initialize_parallel

    initialize_parallel()
    shape = SHAPES[shape_name]
    model, data = build(shape, MODES[mode], recompute), batch(shape)
    # Reset the high-water mark to the current resident size (Linux >= 4.0), so imports and the
    # model build do not hide the step's peak.
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")
    before = _status_bytes("VmRSS")
    step(model, data)
    print(json.dumps({"before": before, "peak": _status_bytes("VmHWM")}))


def memory_table(shape_name: str, modes, recomputes):
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE")}
    # glibc serves large blocks from mmap (returned to the kernel on free) only above a threshold it
    # raises as the process runs; fixing it low makes resident memory follow the live tensors, so
    # the peak is reproducible (without it repeats differed by up to 20%).
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), MALLOC_MMAP_THRESHOLD_="65536")
    rows = []
    for mode in modes:
        for recompute in recomputes:
            output = subprocess.run(
                [sys.executable, __file__, "--memory-worker", shape_name, mode, recompute],
                env=env, check=True, capture_output=True, text=True,
            ).stdout
            result = json.loads(output.strip().splitlines()[-1])
            step_mib = (result["peak"] - result["before"]) / 2**20
            rows.append({"mode": mode, "recompute": recompute, "step_mib": step_mib})
    return rows


def machine() -> str:
    import torch

    model = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{model}, {os.cpu_count()} cores (shared with other jobs), Python {platform.python_version()}, "
            f"torch {torch.__version__}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, fp32")


def markdown(shape_name: str, time_rows, memory_rows, repeats: int, command: str) -> str:
    shape = SHAPES[shape_name]
    size = shape["size"]
    lines = [
        "# Cost per mode: step time against the FLOP model, and peak memory",
        "",
        f"Produced by `{command}` on {machine()}.",
        f"Model: LLaMA style ({shape_name}), {size['num_layers']} layers, hidden {size['hidden_size']}, "
        f"vocab {shape['vocab']}, {shape['batch']} x {shape['seq']} tokens per step; one forward + backward "
        f"(no optimizer). Median of {repeats} repeats, configurations interleaved round-robin. "
        "\"measured\" is this process's CPU time (one thread), which other jobs on a shared machine "
        "disturb far less than wall time (also shown).",
        "",
        "## Step time relative to mode none vs the FLOP model",
        "",
        "| mode | recompute | GFLOP/step (model) | FLOP model x | measured x | measured / FLOP model "
        "| CPU ms | wall ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in time_rows:
        lines.append(
            f"| {row['mode']} | {row['recompute']} | {row['gflops']:.2f} | {row['flop_ratio']:.2f} | "
            f"{row['time_ratio']:.2f} | {row['time_ratio'] / row['flop_ratio']:.2f} | {row['cpu_ms']:.1f} | "
            f"{row['wall_ms']:.1f} |"
        )
    if memory_rows:
        lines += [
            "",
            "## Peak memory of one training step",
            "",
            "Peak resident memory during one forward + backward above what was resident before it "
            "(model, batch, interpreter), in a fresh process per row with glibc's mmap threshold fixed at "
            "64 KiB (resident memory then follows live tensors): activations alive at the peak, gradients "
            "and temporaries.",
            "",
            "| mode | " + " | ".join(f"recompute {r} MiB" for r in RECOMPUTES) + " |",
            "|---|" + "---|" * len(RECOMPUTES),
        ]
        for mode in dict.fromkeys(row["mode"] for row in memory_rows):
            cells = {row["recompute"]: row["step_mib"] for row in memory_rows if row["mode"] == mode}
            row = " | ".join(f"{cells[r]:.1f}" if r in cells else "-" for r in RECOMPUTES)
            lines.append(f"| {mode} | {row} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--memory-worker", nargs=3, metavar=("SHAPE", "MODE", "RECOMPUTE"), help=argparse.SUPPRESS)
    parser.add_argument("--tiny", action="store_true", help="tiny model (tests)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of: " + ", ".join(MODES))
    parser.add_argument("--recomputes", default=",".join(RECOMPUTES),
                        help="comma-separated subset of: " + ", ".join(RECOMPUTES))
    parser.add_argument("--no-memory", action="store_true", help="skip the peak memory part")
    parser.add_argument("--output", default=str(REPO / "docs" / "benchmarks" / "mode_cost.md"))
    args = parser.parse_args(argv)
    if args.memory_worker:
        memory_worker(*args.memory_worker)
        return
    modes = [mode.strip() for mode in args.modes.split(",")]
    unknown = [mode for mode in modes if mode not in MODES]
    if unknown or "none" not in modes:
        parser.error(f"--modes must include 'none' and name only {', '.join(MODES)}; got {args.modes!r}")
    recomputes = [recompute.strip() for recompute in args.recomputes.split(",")]
    if "none" not in recomputes or any(r not in RECOMPUTES for r in recomputes):
        parser.error(f"--recomputes must include 'none' and name only {', '.join(RECOMPUTES)}; got {args.recomputes!r}")
    shape_name = "tiny" if args.tiny else "cpu-tiny"
    time_rows = time_table(SHAPES[shape_name], modes, recomputes, args.repeats)
    memory_modes = [mode for mode in MEMORY_MODES if mode in modes]
    memory_rows = [] if args.no_memory else memory_table(shape_name, memory_modes, recomputes)
    command = " ".join(["python", "benchmarks/mode_cost.py", *(argv if argv is not None else sys.argv[1:])])
    report = markdown(shape_name, time_rows, memory_rows, args.repeats, command)
    print(report)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(report)


if __name__ == "__main__":
    main()
