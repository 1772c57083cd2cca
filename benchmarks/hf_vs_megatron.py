"""Benchmark: the project's Megatron training step against its HF remote-code model, same weights.

Part 1. Every mode (none, ponder S=3, latent N=1 J=3, latent N=2 J=2) at hidden 256, 4 layers
(LLaMA style: RMSNorm, SwiGLU, RoPE, 4 heads in 2 query groups), seq 256, batch 4, vocab 4096,
fp32, one thread. Each measurement is a fresh process that builds the Megatron model (seeded),
and for the HF side copies its weights into ``PonderLMForCausalLM`` (megatron_ponder/hf/remote_code,
train() mode, SDPA attention): one warm-up step, one step for peak memory (resident high-water
mark above what was resident before the step, /proc/self/status), then ``--steps`` timed steps
(process CPU time, median). The processes alternate: each repeat runs every configuration once,
so load from other jobs hits all alike. Megatron runs "before" (the local spec's core attention
``unfused``, Megatron's DotProductAttention, and unfused SwiGLU) and "after" (the defaults: the
SDPA core attention and Megatron's fused SwiGLU).
Truncated backpropagation (issue 24): ponder S=3 with ``--ponder-grad-steps 1`` and latent N=1 J=3 /
N=2 J=2 with ``--jacobi-grad-rounds 1``, Megatron "after" only, against the HF model at the same
J (the HF model, like the papers' code, backpropagates through every round). Activation memory:
the peak bytes of saved non-parameter storages over one forward+backward
(tests/support/saved_tensor_probe.py, as benchmarks/saved_intermediates.py), measured in the same
worker after the timed steps.
"time / FLOP model" is (t_mode / t_none) / (FLOPs_mode / FLOPs_none) for the same kernel, with
:func:`megatron_ponder.training.flops.step_flops`.

Part 2. DP=2 (torchrun, gloo, 2 processes of one thread each) ponder S=3 with the distributed
optimizer, ``--overlap-grad-reduce --overlap-param-gather`` off and on: median step time.

    OMP_NUM_THREADS=1 python benchmarks/hf_vs_megatron.py   # writes docs/benchmarks/hf_vs_megatron.md
    python benchmarks/hf_vs_megatron.py --tiny --repeats 1 --output /tmp/x.md   # seconds
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
warnings.filterwarnings("ignore")

from mode_cost import _status_bytes, machine, training_loss  # same probes and forward (a sibling script)

MODES = {
    "none": {"ponder_mode": "none"},
    "ponder S=3": {"ponder_mode": "ponder", "ponder_steps": 3},
    "latent N=1 J=3": {"ponder_mode": "latent", "num_latent_thoughts": 1, "jacobi_train_rounds": (3, 3)},
    "latent N=2 J=2": {"ponder_mode": "latent", "num_latent_thoughts": 2, "jacobi_train_rounds": (2, 2)},
}
# Truncated backpropagation (issue 24): mode -> (its all-rounds mode, the fields that truncate it).
# Measured for the Megatron defaults only; the HF side is the all-rounds mode's (same J).
TRUNCATED = {
    "ponder S=3 K=1": ("ponder S=3", {"ponder_grad_steps": 1}),
    "latent N=1 J=3 K=1": ("latent N=1 J=3", {"jacobi_grad_rounds": 1}),
    "latent N=2 J=2 K=1": ("latent N=2 J=2", {"jacobi_grad_rounds": 1}),
}
for _mode, (_base, _fields) in TRUNCATED.items():
    MODES[_mode] = {**MODES[_base], **_fields}
SHAPES = {
    "h256": {"size": {"num_layers": 4, "hidden_size": 256, "num_attention_heads": 4, "num_query_groups": 2,
                      "ffn_hidden_size": 704}, "vocab": 4096, "seq": 256, "batch": 4},
    "tiny": {"size": {"num_layers": 2, "hidden_size": 64, "num_attention_heads": 2, "num_query_groups": 1,
                      "ffn_hidden_size": 128}, "vocab": 256, "seq": 32, "batch": 2},
}
# Implementation -> PonderConfig fields of the Megatron model ("hf": the remote-code model).
# "before": the local spec as it was (Megatron's unfused attention, unfused SwiGLU); "after": the
# defaults (SDPA core attention, Megatron's fused SwiGLU).
IMPLS = {
    "hf": {},
    "megatron before": {"local_attention": "unfused", "bias_activation_fusion": False},
    "megatron after": {},
}


def build_megatron(shape: dict, mode: str, impl: str):
    import torch

    from megatron_ponder.model.architectures import build_ponder_gpt, make_ponder_config

    torch.manual_seed(0)
    config = make_ponder_config(
        "llama", use_cpu_initialization=True, hidden_dropout=0.0, attention_dropout=0.0,
        calculate_per_token_loss=True, **shape["size"], **MODES[mode], **IMPLS.get(impl, {}),
    )
    return build_ponder_gpt(config, "llama", shape["vocab"], shape["seq"], transformer_impl="local")


def build_hf(shape: dict, mode: str, megatron_model):
    """PonderLMForCausalLM (mode none: the stock HF model) holding ``megatron_model``'s weights
    (train mode, SDPA attention)."""
    from megatron_ponder.hf.configs import hf_config_from_args, model_shape
    from megatron_ponder.hf.export import ponder_config_fields
    from megatron_ponder.hf.remote_code import load_classes
    from megatron_ponder.hf.weight_mapping import megatron_to_hf

    import transformers

    size = shape["size"]
    args = argparse.Namespace(architecture="llama", vocab_size=shape["vocab"], max_position_embeddings=shape["seq"],
                              tie_embeddings=False, **size)
    backbone = hf_config_from_args(args)
    weights = megatron_to_hf(megatron_model.state_dict(), model_shape(args))
    if megatron_model.config.ponder_mode == "none":  # mode none exports the stock architecture
        model = transformers.AutoModelForCausalLM.from_config(backbone)
        model.load_state_dict(weights)
        return model.train()
    config_class, model_class = load_classes()
    config = megatron_model.config
    fields = ponder_config_fields(config, backbone)
    if config.ponder_mode == "latent":
        fields["jacobi_eval_rounds"] = config.jacobi_train_rounds[0]  # the HF forward runs this J
    model = model_class(config_class(backbone_config=backbone.to_dict(), **fields))
    model.backbone.load_state_dict(weights)
    return model.train()


def batch(shape: dict):
    import torch

    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, shape["vocab"], (shape["batch"], shape["seq"] + 1), generator=generator)
    return ids[:, :-1], ids[:, 1:], torch.arange(shape["seq"]).expand(shape["batch"], -1)


def worker(shape_name: str, mode: str, impl: str, steps: int) -> None:
    """In a fresh process: peak step memory, median CPU seconds of ``steps`` steps, and the peak
    bytes autograd saves for backward (activation memory)."""
    import torch

    from megatron_ponder.runtime.parallel_init import initialize_parallel

    initialize_parallel()
    shape = SHAPES[shape_name]
    tokens, labels, positions = batch(shape)
    model = build_megatron(shape, mode, impl)
    if impl == "hf":
        model = build_hf(shape, mode, model)
        gc.collect()
        mask = torch.ones_like(tokens)
        # HF shifts labels inside (predicts labels[:, 1:] from logits[:, :-1]); pass the inputs.
        run = lambda: model(input_ids=tokens, attention_mask=mask, labels=tokens).loss.backward()  # noqa: E731
    else:
        model.train()
        run = lambda: training_loss(model, tokens, positions, labels).mean().backward()  # noqa: E731

    def step():
        model.zero_grad(set_to_none=True)
        run()

    step()  # warm-up
    model.zero_grad(set_to_none=True)
    gc.collect()
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # reset the high-water mark to the resident size now
    before = _status_bytes("VmRSS")
    run()
    peak = _status_bytes("VmHWM") - before
    times = []
    for _ in range(steps):
        start = time.process_time()
        step()
        times.append(time.process_time() - start)
    sys.path.insert(0, str(REPO / "tests"))  # the probe is a test helper
    from support.saved_tensor_probe import SavedTensorPeak

    model.zero_grad(set_to_none=True)
    probe = SavedTensorPeak(model.parameters())
    with probe.measuring():
        run()
    print(json.dumps({"peak_mib": peak / 2**20, "cpu_s": statistics.median(times), "saved_mib": probe.peak / 2**20}))


def _env():
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE")}
    # Large blocks from mmap so resident memory follows live tensors (as in mode_cost.py).
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), MALLOC_MMAP_THRESHOLD_="65536")
    return env


def part1(shape_name: str, repeats: int, steps: int, truncated_only: bool = False):
    samples = {(mode, impl): [] for mode in MODES for impl in IMPLS if mode not in TRUNCATED or impl == "megatron after"}
    if truncated_only:  # the truncated rows and what they are compared with
        bases = {base for base, _ in TRUNCATED.values()}
        samples = {(mode, impl): runs for (mode, impl), runs in samples.items()
                   if mode in TRUNCATED or (mode in bases and impl != "megatron before")}
    for _ in range(repeats):
        for config in samples:
            output = subprocess.run([sys.executable, __file__, "--worker", shape_name, *config, str(steps)],
                                    env=_env(), check=True, capture_output=True, text=True).stdout
            samples[config].append(json.loads(output.strip().splitlines()[-1]))
    return {config: {key: statistics.median(s[key] for s in runs) for key in ("peak_mib", "cpu_s", "saved_mib")}
            for config, runs in samples.items()}


def flops(shape: dict, mode: str) -> float:
    from types import SimpleNamespace

    from megatron_ponder.training.flops import step_flops

    fields = MODES[mode]
    size = shape["size"]
    config = SimpleNamespace(
        hidden_size=size["hidden_size"], num_query_groups=size["num_query_groups"],
        kv_channels=size["hidden_size"] // size["num_attention_heads"], gated_linear_unit=True,
        ffn_hidden_size=size["ffn_hidden_size"], num_layers=size["num_layers"], recompute_granularity=None,
        ponder_mode=fields["ponder_mode"], ponder_steps=fields.get("ponder_steps", 0),
        num_latent_thoughts=fields.get("num_latent_thoughts", 1), ponder_topk=None,
        ponder_grad_steps=fields.get("ponder_grad_steps"), jacobi_grad_rounds=fields.get("jacobi_grad_rounds"),
    )
    rounds = fields.get("jacobi_train_rounds", (0, 0))[0]
    return step_flops(config, shape["seq"], shape["batch"], shape["vocab"], rounds)


# ------------------------------------------------------------------ part 2: DP=2 overlap
def dp_worker(shape_name: str, overlap: bool, steps: int) -> None:
    """torchrun rank: median wall seconds of a DP=2 ponder S=3 train step."""
    import torch
    from megatron.core.optimizer import OptimizerConfig

    from megatron_ponder.runtime.parallel_init import initialize_parallel, shutdown_parallel
    from megatron_ponder.training.optimizer import wrap_and_build_optimizer
    from megatron_ponder.training.step import train_step

    initialize_parallel()
    shape = SHAPES[shape_name]
    model = build_megatron(shape, "ponder S=3", "megatron after")
    chunks, optimizer = wrap_and_build_optimizer(
        [model], OptimizerConfig(optimizer="adam", lr=1e-4, use_distributed_optimizer=True),
        overlap_grad_reduce=overlap, overlap_param_gather=overlap,
        bucket_size=1_000_000 if overlap else None,  # several buckets at this size
    )
    tokens, labels, positions = batch(shape)
    half = shape["batch"] // 2  # two microbatches per rank (every rank reads the same samples)
    micro = [dict(tokens=tokens[i:i + half], labels=labels[i:i + half], position_ids=positions[i:i + half],
                  loss_mask=torch.ones_like(tokens[i:i + half]), attention_mask=None) for i in (0, half)]
    times = []
    for iteration in range(steps + 1):
        torch.distributed.barrier()
        start = time.perf_counter()
        train_step(chunks, optimizer, micro, half, shape["seq"], iteration)
        times.append(time.perf_counter() - start)
    if torch.distributed.get_rank() == 0:
        print(json.dumps({"step_s": statistics.median(times[1:])}))  # first: DDP records its counts
    shutdown_parallel()


def part2(shape_name: str, repeats: int, steps: int):
    samples = {False: [], True: []}
    for _ in range(repeats):
        for overlap in samples:
            command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                       str(Path(__file__)), "--dp-worker", shape_name, str(int(overlap)), str(steps)]
            output = subprocess.run(command, env=_env(), check=True, capture_output=True, text=True).stdout
            samples[overlap].append(json.loads(output.strip().splitlines()[-1])["step_s"])
    return {overlap: statistics.median(values) for overlap, values in samples.items()}


def truncated_table(results) -> list:
    """Rows of the truncated-backpropagation table (issue 24): the all-rounds modes, then K=1."""
    bases = [base for base, _ in TRUNCATED.values()]
    lines = ["| mode | HF s | Megatron s | time / HF | HF activation MiB | Megatron activation MiB | activation / HF "
             "| HF resident MiB | Megatron resident MiB | resident / HF |", "|---|---|---|---|---|---|---|---|---|---|"]
    for mode in [*dict.fromkeys(bases), *TRUNCATED]:
        hf = results[(TRUNCATED[mode][0] if mode in TRUNCATED else mode, "hf")]
        new = results[(mode, "megatron after")]
        lines.append(
            f"| {mode} | {hf['cpu_s']:.2f} | {new['cpu_s']:.2f} | {new['cpu_s'] / hf['cpu_s']:.2f} "
            f"| {hf['saved_mib']:.0f} | {new['saved_mib']:.0f} | {new['saved_mib'] / hf['saved_mib']:.2f} "
            f"| {hf['peak_mib']:.0f} | {new['peak_mib']:.0f} | {new['peak_mib'] / hf['peak_mib']:.2f} |"
        )
    return lines


def truncated_intro() -> list:
    return ["Truncated backpropagation (issue 24), Megatron after against the HF model at the same J (which "
            "backpropagates through every round, as the papers' code does). Activation = peak bytes autograd "
            "saves for backward (saved non-parameter storages); resident = the peak above:", ""]


def markdown(shape_name: str, results, overlap, repeats: int, steps: int, command: str) -> str:
    shape = SHAPES[shape_name]
    lines = [
        "# The Megatron training step against the HF remote-code model (same weights)",
        "",
        f"Produced by `{command}` on {machine()}.",
        f"Shape `{shape_name}`: {shape['size']}, vocab {shape['vocab']}, seq {shape['seq']}, batch {shape['batch']}; "
        f"median of {repeats} alternating processes x {steps} steps (CPU time). Peak = resident high-water mark "
        "of one forward+backward above the memory held before it (gradients included).",
        "",
        "| mode | HF s | Megatron before s | Megatron after s | time after / HF | time before / HF "
        "| HF MiB | before MiB | after MiB | memory after / HF | memory before / HF |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    full_modes = [mode for mode in MODES if mode not in TRUNCATED]
    for mode in full_modes:
        hf, old, new = (results[(mode, impl)] for impl in IMPLS)
        lines.append(
            f"| {mode} | {hf['cpu_s']:.2f} | {old['cpu_s']:.2f} | {new['cpu_s']:.2f} | {new['cpu_s'] / hf['cpu_s']:.2f} "
            f"| {old['cpu_s'] / hf['cpu_s']:.2f} | {hf['peak_mib']:.0f} | {old['peak_mib']:.0f} | {new['peak_mib']:.0f} "
            f"| {new['peak_mib'] / hf['peak_mib']:.2f} | {old['peak_mib'] / hf['peak_mib']:.2f} |"
        )
    lines += ["", "Step time against the FLOP model, (t_mode / t_none) / (FLOPs_mode / FLOPs_none):", "",
              "| mode | FLOP ratio | HF | Megatron before | Megatron after |", "|---|---|---|---|---|"]
    base = flops(shape, "none")
    for mode in full_modes:
        ratio = flops(shape, mode) / base
        cells = [results[(mode, impl)]["cpu_s"] / results[("none", impl)]["cpu_s"] / ratio for impl in IMPLS]
        lines.append(f"| {mode} | {ratio:.2f} | " + " | ".join(f"{c:.2f}" for c in cells) + " |")
    lines += ["", *truncated_intro(), *truncated_table(results)]
    if overlap:
        lines += ["", "DP=2 (gloo, 2 processes), ponder S=3, distributed optimizer, median step wall time:", "",
                  "| overlap off s | overlap on s | on / off |", "|---|---|---|",
                  f"| {overlap[False]:.2f} | {overlap[True]:.2f} | {overlap[True] / overlap[False]:.2f} |"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
        return 0
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--dp-worker":
        dp_worker(sys.argv[2], bool(int(sys.argv[3])), int(sys.argv[4]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny shape (seconds), for tests")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--no-dp", action="store_true", help="skip part 2 (DP=2 overlap)")
    parser.add_argument("--truncated-only", action="store_true",
                        help="only the truncated-backpropagation table (issue 24): K=1 rows and their all-rounds modes")
    parser.add_argument("--output", default=None,
                        help="markdown file to write (default: docs/benchmarks/hf_vs_megatron.md for the full "
                             "benchmark; with --truncated-only the table is only printed, so the page's other "
                             "tables stay)")
    args = parser.parse_args(argv)
    shape_name = "tiny" if args.tiny else "h256"
    results = part1(shape_name, args.repeats, args.steps, args.truncated_only)
    command = "python benchmarks/hf_vs_megatron.py" + (" " + " ".join(sys.argv[1:]) if len(sys.argv) > 1 else "")
    if args.truncated_only:
        text = "\n".join([f"Produced by `{command}` on {machine()}, shape `{shape_name}`.", "",
                          *truncated_intro(), *truncated_table(results)]) + "\n"
        if args.output:
            Path(args.output).write_text(text)
        print(text)
        return 0
    overlap = None if args.no_dp else part2(shape_name, args.repeats, args.steps + 1)
    text = markdown(shape_name, results, overlap, args.repeats, args.steps, command)
    Path(args.output or REPO / "docs" / "benchmarks" / "hf_vs_megatron.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
