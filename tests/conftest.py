"""Shared test helpers: tiny reference checkpoints built from random-init `transformers` models.

Nothing is downloaded. Each builder seeds torch, saves into the given folder and returns
(reference model in eval mode, folder path) so tests can compare logits against the reference.
"""

import json
import os
import threading

import pytest
import torch

import model as M


@pytest.fixture(autouse=True)
def one_thread():
    """Every test: tiny models run faster on one thread, and far faster when the CPU is shared
    (no OpenMP spinning)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def hf_gpt2(path, seed=0, dtype=torch.float32, fmt="single"):
    """Tiny GPT-2 (GPT2LMHeadModel) saved as fmt: "single" model.safetensors, "sharded" safetensors
    shards + index, or "bin" pytorch_model.bin (torch.save of the state dict: transformers 5 no
    longer writes .bin itself)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=96, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                     bos_token_id=0, eos_token_id=0)  # fmt: skip
    ref = GPT2LMHeadModel(cfg).to(dtype).eval()
    ref.save_pretrained(path, **({"max_shard_size": "20KB"} if fmt == "sharded" else {}))
    if fmt == "bin":
        os.remove(os.path.join(path, "model.safetensors"))
        torch.save(ref.state_dict(), os.path.join(path, "pytorch_model.bin"))
    return ref, str(path)


def hf_llama(path, seed=0, style="llama2", dtype=torch.float32, rope_keys="rope_parameters", **save_kwargs):
    """Tiny Llama. style: "llama2" (MHA, untied, no scaling) or "llama3.2" (GQA, tied, llama3 rope
    scaling with original_max_position_embeddings=32 so that a 128-token input exercises it).
    rope_keys: "rope_parameters" (what transformers 5 writes) or "classic" (rope_theta + rope_scaling)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    kw = dict(vocab_size=96, hidden_size=64, intermediate_size=192, num_hidden_layers=2,
              num_attention_heads=4, max_position_embeddings=256, rms_norm_eps=1e-5,
              bos_token_id=0, eos_token_id=1)  # fmt: skip
    if style == "llama3.2":
        scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                   "original_max_position_embeddings": 32}  # fmt: skip
        kw.update(num_key_value_heads=2, tie_word_embeddings=True, rope_scaling=scaling, rope_theta=500000.0)
    elif style == "llama2":
        kw.update(num_key_value_heads=4, tie_word_embeddings=False)
    else:
        raise ValueError(style)
    ref = LlamaForCausalLM(LlamaConfig(**kw)).to(dtype).eval()
    ref.save_pretrained(path, **save_kwargs)
    cfg_file = os.path.join(path, "config.json")
    with open(cfg_file) as f:
        c = json.load(f)
    if rope_keys == "classic":  # rewrite to the pre-transformers-5 keys
        rp = c.pop("rope_parameters")
        c["rope_theta"] = rp.pop("rope_theta")
        c["rope_scaling"] = rp if rp.get("rope_type", "default") != "default" else None
    else:
        assert "rope_parameters" in c and "rope_scaling" not in c, "transformers changed its config keys"
    with open(cfg_file, "w") as f:
        json.dump(c, f)
    return ref, str(path)


def unpermute_rotary(w, n_heads):
    """Inverse of HF's convert-script permute: HF (rotate_half) q/k rows -> Meta (interleaved) rows."""
    out, inp = w.shape
    return w.view(n_heads, 2, out // n_heads // 2, inp).transpose(1, 2).reshape(out, inp)


def meta_llama(path, seed=0, n_shards=1):
    """Meta layout (params.json + consolidated.XX.pth) made from a tiny GQA HF Llama by renaming its
    weights, un-permuting q/k and splitting along Meta's model-parallel dims into n_shards."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    # Meta sizing: 2/3 * 4 * 64 = 170 -> rounded up to multiple_of 32 = 192
    cfg = LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=192, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5, rope_theta=500000.0,
                      tie_word_embeddings=False)  # fmt: skip
    ref = LlamaForCausalLM(cfg).eval()
    sd = ref.state_dict()
    meta = {"tok_embeddings.weight": sd["model.embed_tokens.weight"], "norm.weight": sd["model.norm.weight"],
            "output.weight": sd["lm_head.weight"]}  # fmt: skip
    names = {"self_attn.q_proj": "attention.wq", "self_attn.k_proj": "attention.wk",
             "self_attn.v_proj": "attention.wv", "self_attn.o_proj": "attention.wo",
             "mlp.gate_proj": "feed_forward.w1", "mlp.up_proj": "feed_forward.w3",
             "mlp.down_proj": "feed_forward.w2"}  # fmt: skip
    for i in range(cfg.num_hidden_layers):
        for hf, mt in names.items():
            w = sd[f"model.layers.{i}.{hf}.weight"]
            if hf == "self_attn.q_proj":
                w = unpermute_rotary(w, cfg.num_attention_heads)
            if hf == "self_attn.k_proj":
                w = unpermute_rotary(w, cfg.num_key_value_heads)
            meta[f"layers.{i}.{mt}.weight"] = w
        meta[f"layers.{i}.attention_norm.weight"] = sd[f"model.layers.{i}.input_layernorm.weight"]
        meta[f"layers.{i}.ffn_norm.weight"] = sd[f"model.layers.{i}.post_attention_layernorm.weight"]
    os.makedirs(path, exist_ok=True)
    row = ("attention.wo.weight", "feed_forward.w2.weight", "tok_embeddings.weight")
    for s in range(n_shards):
        shard = {}
        for k, v in meta.items():
            if v.dim() == 1:
                shard[k] = v.clone()
            else:
                dim = 1 if k.endswith(row) else 0
                shard[k] = v.chunk(n_shards, dim=dim)[s].clone()
        torch.save(shard, os.path.join(path, f"consolidated.{s:02d}.pth"))
    params = {"dim": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "vocab_size": 96, "multiple_of": 32,
              "ffn_dim_multiplier": None, "norm_eps": 1e-5, "rope_theta": 500000.0, "use_scaled_rope": False}
    with open(os.path.join(path, "params.json"), "w") as f:
        json.dump(params, f)
    return ref, str(path)


def random_model(arch="llama", seed=0, std=0.3, vocab_size=64, **overrides):
    """Our own tiny Transformer with large random weights, so greedy output is varied (a 0.02-std model
    repeats one token) and argmax gaps are wide enough that batching noise cannot flip a choice."""
    torch.manual_seed(seed)
    kw = dict(arch=arch, vocab_size=vocab_size, dim=32, n_layers=2, n_heads=4,
              n_kv_heads=2 if arch == "llama" else 4, hidden_dim=64, max_seq_len=128, norm_eps=1e-5,
              tie_embeddings=arch == "gpt2")  # fmt: skip
    kw.update(overrides)
    m = M.Transformer(M.ModelConfig(**kw))
    with torch.no_grad():
        for name, p in m.named_parameters():
            if p.dim() > 1:
                p.normal_(0.0, std)
            elif "norm" not in name:
                p.normal_(0.0, 0.1)
    return m.eval()


class CharTokenizer:
    """Stand-in tokenizer for stop-string tests: token i decodes to PIECES[i % len(PIECES)]."""

    PIECES = ["a", "b", "c", "d", "e", " ", "\n", "xy", "z.", "ab", "q\nr", "END", "s", "t", "u", "v"]

    def decode(self, ids):
        return "".join(self.PIECES[i % len(self.PIECES)] for i in ids)


@pytest.fixture
def char_tokenizer():
    return CharTokenizer()


@pytest.fixture
def background_server():
    """start(srv): srv (a socketserver) serves on a daemon thread until the test ends, then is closed."""
    servers = []

    def start(srv):
        threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        srv.shutdown()
        srv.server_close()
