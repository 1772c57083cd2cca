"""Exported remote-code folders across transformers versions (run by .ci/run, leg 2).

    python tests/hf_cross_version.py save DIR   # with one transformers (the newest)
    python tests/hf_cross_version.py load DIR   # with another (the oldest of the `hf` range)

``save`` writes a tiny ponder and latent model of every backbone and its logits on fixed prompts;
``load`` loads each folder with ``trust_remote_code=True`` and checks that the logits are equal to
the saved ones and that KV-cached greedy generation equals uncached generation.
"""

import json
import sys
from pathlib import Path

import torch

PROMPTS = torch.randint(0, 60, (2, 5), generator=torch.Generator().manual_seed(0))


def save(root: Path) -> None:
    import transformers
    # tests/ is on the path: it is this script's folder.
    from support.hf_tiny_models import ARCHITECTURES, save_ponder_lm, tiny_ponder_lm

    for seed, arch in enumerate(ARCHITECTURES):
        for mode in ("ponder", "latent"):
            model = tiny_ponder_lm(arch, mode, seed=seed)
            save_ponder_lm(model, root / f"{arch}_{mode}")
            with torch.no_grad():
                torch.save(model(PROMPTS).logits, root / f"{arch}_{mode}" / "expected_logits.pt")
    (root / "saved_with.json").write_text(json.dumps({"transformers": transformers.__version__}))


def load(root: Path) -> None:
    import transformers
    from transformers import AutoModelForCausalLM

    saved_with = json.loads((root / "saved_with.json").read_text())["transformers"]
    folders = sorted(path for path in root.iterdir() if path.is_dir())
    for folder in folders:
        model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
        with torch.no_grad():
            logits = model(PROMPTS).logits
        expected = torch.load(folder / "expected_logits.pt")
        # The exact (sequential) prefill: uncached decoding is the exact definition too. (The
        # default Jacobi prefill follows the papers' decoder and may continue differently.)
        cached = model.generate(PROMPTS, max_new_tokens=6, prefill="sequential")
        uncached = model.generate(PROMPTS, max_new_tokens=6, use_cache=False)
        if not torch.equal(logits, expected) or not torch.equal(cached, uncached):
            raise SystemExit(f"{folder.name}: saved with transformers {saved_with}, loaded with "
                             f"{transformers.__version__}: max logit difference "
                             f"{float((logits - expected).abs().max()):.3g}, cached == uncached: "
                             f"{torch.equal(cached, uncached)}")
    print(f"hf_cross_version: {len(folders)} folders saved with transformers {saved_with} load with "
          f"{transformers.__version__}: logits equal, cached generation == uncached")


if __name__ == "__main__":
    torch.set_num_threads(1)
    command, folder = sys.argv[1], Path(sys.argv[2])
    folder.mkdir(parents=True, exist_ok=True)
    {"save": save, "load": load}[command](folder)
