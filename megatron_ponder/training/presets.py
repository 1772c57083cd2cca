"""Model shapes by name: the papers' sizes and tiny CPU shapes.

A preset fills the shape flags the user did not give. ``architecture`` picks the style
(:mod:`megatron_ponder.model.architectures`). The Pythia shapes are the GPT-NeoX models the
papers train, in the ``neox`` style (parallel residual, RoPE on 25% of each head, untied), so a
Pythia checkpoint converts exactly (``tools/convert_checkpoint.py import``).
"""

PRESETS = {
    # CPU demo / tests: minutes on a laptop.
    "cpu-tiny": dict(architecture="llama", num_layers=4, hidden_size=128, num_attention_heads=4,
                     num_query_groups=2, ffn_hidden_size=352, seq_length=128),
    "cpu-small": dict(architecture="llama", num_layers=6, hidden_size=256, num_attention_heads=8,
                      num_query_groups=4, ffn_hidden_size=704, seq_length=256),
    # Pythia suite shapes (PonderLM / PonderLM-2 experiments), sequence 2048.
    "pythia-70m": dict(architecture="neox", num_layers=6, hidden_size=512, num_attention_heads=8,
                       ffn_hidden_size=2048, seq_length=2048),
    "pythia-160m": dict(architecture="neox", num_layers=12, hidden_size=768, num_attention_heads=12,
                        ffn_hidden_size=3072, seq_length=2048),
    "pythia-410m": dict(architecture="neox", num_layers=24, hidden_size=1024, num_attention_heads=16,
                        ffn_hidden_size=4096, seq_length=2048),
    "pythia-1b": dict(architecture="neox", num_layers=16, hidden_size=2048, num_attention_heads=8,
                      ffn_hidden_size=8192, seq_length=2048),
    "pythia-1.4b": dict(architecture="neox", num_layers=24, hidden_size=2048, num_attention_heads=16,
                        ffn_hidden_size=8192, seq_length=2048),
    "pythia-2.8b": dict(architecture="neox", num_layers=32, hidden_size=2560, num_attention_heads=32,
                        ffn_hidden_size=10240, seq_length=2048),
    # LLaMA-style 1.4B as PonderLM-2 trains it: SwiGLU (FFN 5504), RoPE, 32 heads (no GQA),
    # untied; vocabulary 50304 with the GPT-NeoX tokenizer (padded to a multiple of 128).
    "llama-1.4b": dict(architecture="llama", num_layers=24, hidden_size=2048, num_attention_heads=32,
                       num_query_groups=32, ffn_hidden_size=5504, seq_length=2048),
    # LLaMA(-2) 7B and 70B shapes for planning runs at scale (tools/plan_run.py).
    "llama-7b": dict(architecture="llama", num_layers=32, hidden_size=4096, num_attention_heads=32,
                     num_query_groups=32, ffn_hidden_size=11008, seq_length=2048),
    "llama-70b": dict(architecture="llama", num_layers=80, hidden_size=8192, num_attention_heads=64,
                      num_query_groups=8, ffn_hidden_size=28672, seq_length=2048),
}
