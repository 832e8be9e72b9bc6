"""Hand-written GPT-2 / Llama, checkpoint and tokenizer loading, and batched generation.

One `Transformer` covers both families; a few config switches pick learned positions or RoPE,
LayerNorm or RMSNorm, GELU or SwiGLU. Module names are shared by both families (q_proj, k_proj,
v_proj, o_proj, gate_proj, up_proj, down_proj) so that LoRA targets read the same for both.
"""

# === model ===
# (architecture, checkpoint loading and saving: written here)
# === end model ===

# === generation ===
# (one batched sampler with a KV cache: written here)
# === end generation ===

# === tokenizer ===
# (tiktoken-based tokenizer loading and the Llama 3 chat template: written here)
# === end tokenizer ===
