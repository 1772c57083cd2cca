"""Benchmark: step time and activation memory per mode (recompute on/off), and the pipeline bubble.

Part 1 (one process, CPU): for modes none / ponder / latent, a small LLaMA-style model, one
forward+backward step: median step time and the bytes of activations saved for backward
(unique storages seen by autograd's saved-tensor hooks: the memory recompute trades for time),
without recompute and with Megatron's full and selective recompute.

Part 2 (torchrun, 2 CPU processes, PP=2): step time of the looped pipeline vs the same step in
one process, giving the measured bubble fraction next to the interleaved schedule's prediction
(p-1) / (m*v + p-1) with v = passes per step (mode none: v = 1, plain 1F1B).

    python benchmarks/pipeline_recompute.py            # prints tables, writes docs/benchmarks/pipeline_recompute.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

from megatron_ponder.variants import RECOMPUTE, label, variant
from mode_cost import training_loss  # the training forward at the step's J (a sibling script)

REPO = Path(__file__).resolve().parents[1]
warnings.filterwarnings("ignore")

MODES = {label(fields): fields for fields in [
    variant("none"), variant("ponder", ponder_steps=3), variant("latent1", rounds=(2, 2)),
    variant("latent2", rounds=(2, 2)),
]}
RECOMPUTES = ["none", "selective", "full"]  # keys of RECOMPUTE, in table order
SIZE = dict(num_layers=4, hidden_size=128, num_attention_heads=4, num_query_groups=2, ffn_hidden_size=352)
VOCAB, SEQ, BATCH = 512, 64, 4


def passes_per_step(fields) -> int:
    if fields["ponder_mode"] == "ponder":
        return fields["ponder_steps"] + 1
    if fields["ponder_mode"] == "latent":
        return fields["num_latent_thoughts"] + fields["jacobi_train_rounds"][0] + 1
    return 1


def build(fields, **extra):
    import torch

    from megatron_ponder.model.architectures import build_ponder_gpt, make_ponder_config

    torch.manual_seed(0)
    config = make_ponder_config(
        "llama", use_cpu_initialization=True, hidden_dropout=0.0, attention_dropout=0.0,
        calculate_per_token_loss=True, **SIZE, **fields, **extra,
    )
    return build_ponder_gpt(config, "llama", VOCAB, SEQ)


def batch(seed=0):
    import torch

    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (BATCH, SEQ + 1), generator=generator)
    return ids[:, :-1], ids[:, 1:], torch.arange(SEQ).expand(BATCH, -1)


def saved_activation_bytes(model, tokens, labels, positions) -> int:
    """Bytes of distinct storages autograd saves for backward during one forward."""
    import torch

    seen = {}

    def pack(tensor):
        if isinstance(tensor, torch.nn.Parameter) or not tensor.device.type == "cpu":
            return tensor
        storage = tensor.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = training_loss(model, tokens, positions, labels).sum()
    loss.backward()
    return sum(size for ptr, size in seen.items() if ptr not in parameters)


def single_process_table(repeats: int):
    from megatron_ponder.runtime.parallel_init import initialize_parallel

    initialize_parallel()
    tokens, labels, positions = batch()
    rows = []
    for mode, fields in MODES.items():
        for recompute in RECOMPUTES:
            model = build(fields, **RECOMPUTE[recompute])
            model.train()
            memory = saved_activation_bytes(model, tokens, labels, positions)
            times = []
            for _ in range(repeats):
                model.zero_grad(set_to_none=True)
                start = time.perf_counter()
                training_loss(model, tokens, positions, labels).sum().backward()
                times.append(time.perf_counter() - start)
            rows.append(dict(mode=mode, recompute=recompute, passes=passes_per_step(fields),
                             step_ms=1000 * statistics.median(times), activation_mib=memory / 2**20))
    return rows


# ------------------------------------------------------------------ part 2: PP=2 bubble
def pipeline_worker(out_path: str, microbatches: int, repeats: int):
    """Runs under torchrun (PP=2) or alone (PP=1, one thread): times one training step per mode."""
    import torch

    from megatron.core.optimizer import OptimizerConfig

    from megatron_ponder.runtime.parallel_init import initialize_parallel
    from megatron_ponder.training.optimizer import wrap_and_build_optimizer
    from megatron_ponder.training.step import train_step

    world = int(os.environ.get("WORLD_SIZE", "1"))
    initialize_parallel(pipeline_model_parallel_size=world)
    results = {}
    for mode, fields in MODES.items():
        model = build(fields, pipeline_model_parallel_size=world, pipeline_dtype=torch.float32)
        chunks, optimizer = wrap_and_build_optimizer([model], OptimizerConfig(optimizer="adam", lr=1e-4))
        tokens, labels, positions = batch()
        microbatch = dict(tokens=tokens, labels=labels, position_ids=positions,
                          loss_mask=torch.ones_like(tokens), attention_mask=None)
        times = []
        for step in range(repeats + 1):
            torch.distributed.barrier()
            start = time.perf_counter()
            train_step(chunks, optimizer, [microbatch] * microbatches, BATCH, SEQ, iteration=step)
            torch.distributed.barrier()
            if step:  # the first step warms up
                times.append(time.perf_counter() - start)
        results[mode] = statistics.median(times)
    if torch.distributed.get_rank() == 0:
        Path(out_path).write_text(json.dumps(results))


def _run_worker(nproc: int, microbatches: int, repeats: int) -> dict:
    out = tempfile.mktemp(suffix=".json")
    # The parent initialised its own world of one: do not hand its rendezvous to the child.
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    args = [__file__, "--worker", out, "--microbatches", str(microbatches), "--repeats", str(repeats)]
    if nproc == 1:
        command = [sys.executable, *args]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
                   "--master-port", "29733", *args]
    subprocess.run(command, env=env, check=True, capture_output=True)
    return json.loads(Path(out).read_text())


def pipeline_table(microbatch_counts, repeats: int):
    rows = []
    stages = 2
    for microbatches in microbatch_counts:
        single = _run_worker(1, microbatches, repeats)
        piped = _run_worker(stages, microbatches, repeats)
        for mode, fields in MODES.items():
            virtual = passes_per_step(fields)
            ideal = single[mode] / stages
            rows.append(dict(
                mode=mode, microbatches=microbatches, passes=virtual,
                single_s=single[mode], pp2_s=piped[mode],
                measured_bubble=max(0.0, 1 - ideal / piped[mode]),
                predicted_bubble=(stages - 1) / (microbatches * virtual + stages - 1),
            ))
    return rows


def markdown(memory_rows, bubble_rows) -> str:
    lines = [
        "# Pipeline and recompute benchmark",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, {platform.python_version()}, "
        "torch CPU build, fp32. Produced by `python benchmarks/pipeline_recompute.py`.",
        f"Model: LLaMA style, {SIZE['num_layers']} layers, hidden {SIZE['hidden_size']}, vocab {VOCAB}, "
        f"{BATCH} x {SEQ} tokens per step.",
        "",
        "## Step time and activation memory (one process, forward + backward)",
        "",
        "Activation memory = bytes of distinct tensors autograd saves for backward in one forward "
        "(what recompute trades for time; parameters excluded).",
        "",
        "| mode | passes | recompute | step ms | activations MiB |",
        "|---|---|---|---|---|",
    ]
    for row in memory_rows:
        lines.append(f"| {row['mode']} | {row['passes']} | {row['recompute']} | {row['step_ms']:.1f} | {row['activation_mib']:.2f} |")
    lines += [
        "",
        "## Pipeline bubble, PP=2 (2 processes, 1 thread each) vs one process (1 thread)",
        "",
        "measured bubble = 1 - (one-process step / 2) / (PP=2 step); predicted = (p-1)/(m*v + p-1) "
        "with p = 2 stages, m microbatches, v = passes per step (the passes are the virtual stages "
        "of the interleaved schedule; mode none runs plain 1F1B, v = 1). Measured includes gloo p2p "
        "and Python overhead, so it sits above the prediction at this tiny size.",
        "",
        "| mode | passes v | microbatches m | 1-process s | PP=2 s | measured bubble | predicted bubble |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in bubble_rows:
        lines.append(
            f"| {row['mode']} | {row['passes']} | {row['microbatches']} | {row['single_s']:.3f} | "
            f"{row['pp2_s']:.3f} | {row['measured_bubble']:.2f} | {row['predicted_bubble']:.2f} |"
        )
    lines += [
        "",
        "Second estimate, free of the one-process baseline: a PP=2 step should cost c*(m*v + p-1) "
        "plus fixed per-step work (optimizer). The slope between the two largest m gives the cost of "
        "a microbatch; what is left at the largest m is the m-independent share of the step "
        "(bubble + fixed work):",
        "",
        "| mode | m | PP=2 s | s per microbatch (slope) | m-independent share | predicted bubble |",
        "|---|---|---|---|---|---|",
    ]
    for mode in dict.fromkeys(row["mode"] for row in bubble_rows):
        runs = sorted((r for r in bubble_rows if r["mode"] == mode), key=lambda r: r["microbatches"])
        low, high = runs[-2], runs[-1]
        slope = (high["pp2_s"] - low["pp2_s"]) / (high["microbatches"] - low["microbatches"])
        share = max(0.0, 1 - slope * high["microbatches"] / high["pp2_s"])
        lines.append(
            f"| {mode} | {high['microbatches']} | {high['pp2_s']:.3f} | {slope:.3f} | {share:.2f} | "
            f"{high['predicted_bubble']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--microbatches", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", default=str(REPO / "docs" / "benchmarks" / "pipeline_recompute.md"))
    args = parser.parse_args()
    if args.worker:
        pipeline_worker(args.worker, args.microbatches, args.repeats)
        return
    report = markdown(single_process_table(args.repeats), pipeline_table([2, 4, 8], args.repeats))
    print(report)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(report)


if __name__ == "__main__":
    main()
