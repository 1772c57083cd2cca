"""Benchmark: time to first token of latent generation, Jacobi prefill vs sequential prefill (CPU).

``PonderLMForCausalLM.generate(prefill=...)`` on a small random LLaMA-architecture backbone, one
prompt of ``--prompt`` tokens, ``max_new_tokens=1`` (so the time is the prefill plus one read of
the logits):

* ``jacobi`` (default): N initial passes, J Jacobi rounds and the final pass over the whole prompt
  in parallel (N+J+1 passes of up to (N+1)P slots), the papers' decoder;
* ``sequential``: the prompt fed slot by slot, (N+1)P single-slot cached steps (exact).

    python benchmarks/hf_prefill_ttft.py   # prints the table, writes docs/benchmarks/hf_prefill.md
"""

from __future__ import annotations

import argparse
import platform
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
warnings.filterwarnings("ignore")

import torch
from transformers import LlamaConfig

from megatron_ponder.hf.remote_code import load_classes


def build(num_thoughts: int, args):
    torch.manual_seed(0)
    backbone = LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=4 * args.hidden,
                           num_hidden_layers=args.layers, num_attention_heads=args.hidden // 64,
                           max_position_embeddings=max(1024, args.prompt + 1))
    config_class, model_class = load_classes()
    config = config_class(backbone_config=backbone.to_dict(), ponder_mode="latent", num_latent_thoughts=num_thoughts,
                          jacobi_eval_rounds=args.rounds, input_embedding_scale=1.0)
    return model_class(config).eval()


def time_to_first_token(model, prompt, prefill: str, repeats: int) -> float:
    """Best wall time (s) of ``generate(prompt, max_new_tokens=1, prefill=prefill)``."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        with torch.no_grad():
            out = model.generate(prompt, max_new_tokens=1, prefill=prefill)
        best = min(best, time.perf_counter() - start)
        assert out.size(1) == prompt.size(1) + 1
    return best


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--prompt", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3, help="J of the Jacobi prefill (jacobi_eval_rounds)")
    parser.add_argument("--thoughts", default="1,2", help="N values, comma-separated")
    parser.add_argument("--repeats", type=int, default=2, help="best of this many runs")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", type=Path, default=REPO / "docs/benchmarks/hf_prefill.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    prompt = torch.randint(0, args.vocab, (1, args.prompt), generator=torch.Generator().manual_seed(0))
    rows = []
    for num_thoughts in (int(n) for n in args.thoughts.split(",")):
        model = build(num_thoughts, args)
        jacobi = time_to_first_token(model, prompt, "jacobi", args.repeats)
        sequential = time_to_first_token(model, prompt, "sequential", args.repeats)
        rows.append((num_thoughts, jacobi, sequential))
        print(f"latent N={num_thoughts}: jacobi {jacobi:.3f} s   sequential {sequential:.3f} s   "
              f"x{sequential / jacobi:.1f}", flush=True)

    table = ["| mode | Jacobi prefill, J=%d (s) | sequential prefill (s) | speed-up |" % args.rounds,
             "|---|---:|---:|---:|"]
    table += [f"| latent N={n} | {j:.3f} | {s:.3f} | {s / j:.1f}x |" for n, j, s in rows]
    setup = (
        f"LLaMA backbone h={args.hidden}, {args.layers} layers, vocab {args.vocab}, fp32, batch 1, "
        f"prompt {args.prompt} tokens, time to the first generated token (max_new_tokens=1), best of "
        f"{args.repeats}, torch {torch.__version__}, {args.threads} thread(s), "
        f"{platform.processor() or platform.machine()}"
    )
    text = "\n".join([
        "# HF generation: time to first token, Jacobi vs sequential prefill (CPU)",
        "",
        "Produced by `python benchmarks/hf_prefill_ttft.py`. " + setup + ".",
        "",
        *table,
        "",
        "The Jacobi prefill (the default, the papers' decoder) runs N+J+1 passes over the whole prompt",
        "in parallel; the sequential prefill (exact) runs (N+1)P single-slot steps, each reading the",
        "growing KV cache. The two give the same tokens once J >= N*P (tests/unit/test_hf_prefill.py);",
        "at the default J they can continue differently. Timings from a shared machine (other jobs",
        "running): compare the columns, not absolute values.",
        "",
    ])
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print("\n".join(table))


if __name__ == "__main__":
    main()
