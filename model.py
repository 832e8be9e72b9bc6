"""A hand-written GPT-2 / Llama, its checkpoint loaders, and one batched sampler with a KV cache.

One `Transformer` covers both families; a few config switches pick learned positions or RoPE,
LayerNorm or RMSNorm, GELU or SwiGLU. Module names are shared by both families (q_proj, k_proj,
v_proj, o_proj, gate_proj, up_proj, down_proj) so that LoRA targets read the same for both.
File formats (Hugging Face / Meta checkpoints, safetensors, tokenizers) live in formats/.
"""

import dataclasses
import math
import os
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

import formats.checkpoint
import formats.gguf
import formats.tokenizer


@dataclass
class ModelConfig:
    arch: str = "llama"  # "gpt2" | "llama"
    vocab_size: int = 32000
    dim: int = 512
    n_layers: int = 8
    n_heads: int = 8
    n_kv_heads: int = 8  # grouped-query attention when n_kv_heads < n_heads
    hidden_dim: int = 1536  # MLP inner size
    max_seq_len: int = 2048
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None  # llama3 type: factor, low/high_freq_factor, original_max_pos...
    tie_embeddings: bool = False


def rope_inv_freq(config: ModelConfig) -> torch.Tensor:
    """Rotary inverse frequencies (head_dim // 2,), float32, with Llama 3 long-context scaling."""
    hd = config.dim // config.n_heads
    # explicit cpu: from_pretrained builds the model under torch.device("meta")
    steps = torch.arange(0, hd, 2, dtype=torch.int64, device="cpu").float()
    inv_freq = 1.0 / (config.rope_theta ** (steps / hd))
    s = config.rope_scaling
    if s is None:
        return inv_freq
    rope_type = s.get("rope_type", s.get("type"))
    if rope_type != "llama3":
        raise ValueError(f"rope_scaling type {rope_type!r} is not supported (only 'llama3'): {s}")
    factor, low, high = s["factor"], s["low_freq_factor"], s["high_freq_factor"]
    old_len = s["original_max_position_embeddings"]
    # Long wavelengths (low frequencies) are stretched by `factor`, short ones kept, and the band in
    # between interpolated smoothly; same formula as Meta's apply_scaling.
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
    return torch.where(medium, smoothed, scaled)


class KVCache:
    """Pre-allocated keys/values for all layers; `length` positions are filled (same for every row)."""

    def __init__(self, config: ModelConfig, batch: int, max_len: int, device=None, dtype=None):
        hd = config.dim // config.n_heads
        shape = (config.n_layers, batch, config.n_kv_heads, max_len, hd)
        # empty, not zeros: a slot is always written before attention reads it
        self.k = torch.empty(shape, device=device, dtype=dtype)  # (L, B, n_kv, T_max, hd)
        self.v = torch.empty(shape, device=device, dtype=dtype)
        self.length = 0

    def update(self, layer: int, k, v):
        """Write the new keys/values (B, n_kv, T, hd) in place; return all filled so far (B, n_kv, S, hd)."""
        L, T = self.length, k.shape[2]
        self.k[layer, :, :, L : L + T] = k
        self.v[layer, :, :, L : L + T] = v
        return self.k[layer, :, :, : L + T], self.v[layer, :, :, : L + T]


class PrefixKV:
    """Fixed keys/values of a prefix (n_layers, B, n_kv, length, hd) for one forward of the tokens after it.

    Unlike KVCache, the new tokens' keys are concatenated, not written in place, so gradients flow
    through them (PPO over a prompt read once by the frozen model: ppo.frozen_prompt_kv)."""

    def __init__(self, k: torch.Tensor, v: torch.Tensor):
        self.k, self.v, self.length = k, v, k.shape[3]

    def update(self, layer: int, k, v):
        return torch.cat((self.k[layer], k), dim=2), torch.cat((self.v[layer], v), dim=2)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        # one fused kernel (float accumulation) instead of ~10 small ops: decoding is overhead-bound
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


def apply_rope(x, cos, sin_signed):
    """x (B, H, T, hd) rotated by pairs (i, i + hd/2): rotate_half(x) * sin == x.roll(hd/2) * [-sin, sin]."""
    return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * sin_signed


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads, self.n_kv_heads = config.n_heads, config.n_kv_heads
        self.head_dim = config.dim // config.n_heads
        bias = config.arch == "gpt2"
        self.q_proj = nn.Linear(config.dim, self.n_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(config.dim, self.n_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(config.dim, self.n_kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, config.dim, bias=bias)

    def forward(self, x, rope, mask, cache):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, nh, T, hd)
        k = self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, nkv, T, hd)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, nkv, T, hd)
        if rope is not None:
            cos, sin = rope  # (B, 1, T, hd)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:  # attend over the cached keys and the new ones
            k, v = cache.update(self.layer_idx, k, v)  # (B, nkv, S, hd)
        is_causal = mask is None and T > 1 and (cache is None or cache.length == 0)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=is_causal, enable_gqa=self.n_kv_heads != self.n_heads
        )  # (B, nh, T, hd)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))


class MLP(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.arch = config.arch
        bias = config.arch == "gpt2"
        if config.arch == "llama":
            self.gate_proj = nn.Linear(config.dim, config.hidden_dim, bias=False)
        self.up_proj = nn.Linear(config.dim, config.hidden_dim, bias=bias)
        self.down_proj = nn.Linear(config.hidden_dim, config.dim, bias=bias)

    def forward(self, x):
        if self.arch == "llama":  # SwiGLU
            return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
        return self.down_proj(F.gelu(self.up_proj(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        Norm = (lambda d: nn.LayerNorm(d, eps=config.norm_eps)) if config.arch == "gpt2" else (
            lambda d: RMSNorm(d, config.norm_eps)
        )
        self.attn_norm = Norm(config.dim)
        self.attn = Attention(config, layer_idx)
        self.mlp_norm = Norm(config.dim)
        self.mlp = MLP(config)

    def forward(self, x, rope, mask, cache):
        x = x + self.attn(self.attn_norm(x), rope, mask, cache)
        return x + self.mlp(self.mlp_norm(x))


class Transformer(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.arch not in ("gpt2", "llama"):
            raise ValueError(f"ModelConfig.arch must be 'gpt2' or 'llama', got {config.arch!r}")
        if config.dim % config.n_heads or config.n_heads % config.n_kv_heads:
            raise ValueError(
                f"dim ({config.dim}) must divide by n_heads ({config.n_heads}) and n_heads by "
                f"n_kv_heads ({config.n_kv_heads})"
            )
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.dim)
        if config.arch == "gpt2":
            self.pos_emb = nn.Embedding(config.max_seq_len, config.dim)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.n_layers))
        self.grad_checkpoint = False  # keep only each block's input for backward, recompute the rest
        self.norm = nn.LayerNorm(config.dim, eps=config.norm_eps) if config.arch == "gpt2" else (
            RMSNorm(config.dim, config.norm_eps)
        )
        self.lm_head = nn.Linear(config.dim, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        # kept out of the state dict and out of .to(dtype): RoPE angles need float32 precision
        self._inv_freq = rope_inv_freq(config) if config.arch == "llama" else None
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)

    def _rope_table(self, n: int, device):
        """cos, sin (n, hd/2) for positions 0..n-1, grown on demand: one lookup per step, not ~6 ops."""
        t = getattr(self, "_rope_cs", None)
        if t is None or t[0].shape[0] < n or t[0].device != device:
            if self._inv_freq.device != device:
                self._inv_freq = self._inv_freq.to(device)
            n = max(n, 2 * t[0].shape[0] if t is not None else 256)
            freqs = torch.arange(n, device=device).float()[:, None] * self._inv_freq  # (n, hd/2)
            self._rope_cs = t = (freqs.cos(), freqs.sin())
        return t

    def forward(self, idx, cache=None, pos=None, attn_mask=None, return_hidden=False, last_only=False,
                hidden_only=False):  # fmt: skip
        """idx (B, T) -> logits (B, T, vocab) (T=1 if last_only); with return_hidden also (B, T, C).

        cache: KVCache (filled in place, `cache.length` advanced by T) or PrefixKV; pos: (B, T) positions
        (default start..start+T); attn_mask: (B, S) bool, True = real (non-pad) key, S = cache.length + T.
        hidden_only: return only the final-norm hidden state (B, T, C), no lm_head: a caller that needs
        logits at a few positions applies `model.lm_head` to those (a 128k vocab makes (B, T, V) costly).
        """
        B, T = idx.shape
        L = cache.length if cache is not None else 0
        S = L + T
        if pos is None:
            pos = torch.arange(L, S, device=idx.device).expand(B, T)  # (B, T)
        x = self.tok_emb(idx)  # (B, T, C)
        rope = None
        if self.config.arch == "gpt2":
            if S > self.config.max_seq_len:  # learned positions end there
                raise ValueError(f"sequence length {S} exceeds gpt2 max_seq_len {self.config.max_seq_len}")
            x = x + self.pos_emb(pos)
        else:
            cos_t, sin_t = self._rope_table(S, idx.device)  # same float32 products as pos * inv_freq
            if int(pos.max()) >= cos_t.shape[0]:
                cos_t, sin_t = self._rope_table(int(pos.max()) + 1, idx.device)
            cos, sin = cos_t[pos], sin_t[pos]  # (B, T, hd/2)
            cos = torch.cat((cos, cos), dim=-1)[:, None].to(x.dtype)  # (B, 1, T, hd)
            sin = torch.cat((-sin, sin), dim=-1)[:, None].to(x.dtype)  # (B, 1, T, hd), signed for apply_rope
            rope = (cos, sin)
        mask = None
        if attn_mask is not None or (T > 1 and L > 0):
            if attn_mask is not None and attn_mask.shape != (B, S):
                raise ValueError(f"attn_mask must have shape (B, S) = {(B, S)}, got {tuple(attn_mask.shape)}")
            if T == 1:
                mask = attn_mask[:, None, None, :]  # (B, 1, 1, S); the new token is never a pad
            else:
                q_pos = torch.arange(L, S, device=idx.device)[:, None]  # (T, 1)
                k_pos = torch.arange(S, device=idx.device)[None]  # (1, S)
                mask = k_pos <= q_pos  # (T, S) causal
                if attn_mask is not None:
                    # a pad query sees no valid key: let every query see itself so no row is all -inf
                    mask = (mask & attn_mask[:, None, None, :]) | (k_pos == q_pos)  # (B, 1, T, S)
        if mask is not None:  # additive once here, not a bool -> float conversion inside every layer
            mask = torch.zeros(mask.shape, dtype=x.dtype, device=x.device).masked_fill_(~mask, float("-inf"))
        for layer in self.layers:
            if self.grad_checkpoint and cache is None and torch.is_grad_enabled():
                x = checkpoint(layer, x, rope, mask, None, use_reentrant=False)
            else:
                x = layer(x, rope, mask, cache)
        if cache is not None:
            cache.length = S
        if last_only:
            x = x[:, -1:]
        h = self.norm(x)  # (B, T, C)
        if hidden_only:
            return h
        logits = self.lm_head(h)  # (B, T, vocab)
        return (logits, h) if return_hidden else logits


# -----------------------------------------------------------------------------
# loading and saving: formats/ reads and writes the files, the model is built here

_LINEAR_WEIGHTS = ("_proj.weight", "lm_head.weight")


def _to_col_major(w, device, dtype):
    """Copy of a linear weight (out, in) stored as the transpose of a contiguous (in, out) buffer.

    Same values and shape; F.linear then multiplies by a contiguous W^T, which CPU BLAS runs faster
    than row-major W for the few rows of batched decoding (and no slower for one row).
    """
    return torch.empty(w.shape[::-1], device=device, dtype=dtype).copy_(w.t()).t()


def from_pretrained(path, device="cpu", dtype=None) -> Transformer:
    """Load a Hugging Face (config.json) or Meta (params.json + consolidated.*.pth) Llama/GPT-2 folder, or a
    GGUF file (or a folder holding one); quantized GGUF weights are dequantized to float32."""
    gguf = formats.gguf.gguf_file(path)
    fields, sd, source = formats.gguf.load_gguf(gguf) if gguf else formats.checkpoint.load_checkpoint(path)
    cfg = ModelConfig(**fields)
    if dtype is None:  # keep the checkpoint's own dtype
        emb = sd["tok_emb.weight"]
        dtype = emb.dtype if emb.is_floating_point() else torch.float32
    with torch.device("meta"):  # no random init: every parameter is assigned from the checkpoint
        model = Transformer(cfg)
    # always copy: the read tensors are views of memory-mapped files, which must not stay tied to a file
    # that a later save_pretrained may overwrite
    sd = {k: _to_col_major(v, device, dtype) if k.endswith(_LINEAR_WEIGHTS) or (
              cfg.tie_embeddings and k == "tok_emb.weight")  # it is the lm_head too
          else v.to(device=device, dtype=dtype, memory_format=torch.contiguous_format, copy=True)
          for k, v in sd.items()}  # fmt: skip
    model.load_state_dict(sd, strict=False, assign=True)
    if cfg.tie_embeddings:
        model.lm_head.weight = model.tok_emb.weight
    unset = [n for n, p in model.named_parameters() if p.is_meta]
    if unset:  # internal consistency: the checkpoint's name schema must cover every parameter
        raise ValueError(f"{source}: parameters not filled from the checkpoint: {unset}")
    return model.eval()


def save_pretrained(model: Transformer, path):
    """Write config.json + model.safetensors in the Hugging Face layout (GPT-2 or Llama)."""
    os.makedirs(path, exist_ok=True)
    sd = model.state_dict()
    with torch.device("meta"):  # expected names, no weights built
        plain = Transformer(model.config)
    if sd.keys() != plain.state_dict().keys():
        odd = sorted(set(sd) ^ set(plain.state_dict()))[:10]
        raise ValueError(f"save_pretrained: model tensors differ from a plain Transformer's: {odd} "
                         "(LoRA adapters? merge them into the base weights and unwrap first; quantized "
                         "weights? save the float model)")  # fmt: skip
    formats.checkpoint.save_checkpoint(dataclasses.asdict(model.config), sd, path)


def load_tokenizer(path) -> formats.tokenizer.Tokenizer:
    """Folder (or file) with tokenizer.json, tokenizer.model (tiktoken format), vocab.json + merges.txt,
    or encoder.json + vocab.bpe, or a GGUF file (its tokenizer metadata); see formats/."""
    gguf = formats.gguf.gguf_file(path, "tokenizer")
    return formats.gguf.load_gguf_tokenizer(gguf) if gguf else formats.tokenizer.load_tokenizer(path)


# -----------------------------------------------------------------------------
# generation


@dataclass
class Generation:
    tokens: list[int]  # sampled tokens, stop token excluded
    logprobs: list[float]  # log p(token) under the raw model (temperature 1, no top-p)
    text: str | None  # decoded tokens (cut at a stop string) when a tokenizer is given
    finish_reason: str  # "stop" | "length"


def _sample(logits, temperature, top_p, generator):
    """logits (B, V) float32 -> next tokens (B,)."""
    if temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits / temperature, dim=-1)  # (B, V)
    if top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        # drop tokens once the mass before them already reaches top_p (the top token always stays)
        drop = sorted_p.cumsum(-1) - sorted_p >= top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        choice = torch.multinomial(sorted_p, 1, generator=generator)  # (B, 1)
        return order.gather(-1, choice)[:, 0]
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


def _find_stop(text: str, stop_strings) -> int:
    hits = [i for i in (text.find(s) for s in stop_strings) if i >= 0]
    return min(hits) if hits else -1


@torch.inference_mode()
def generate(model, prompts: list[list[int]], max_new_tokens: int, temperature: float = 1.0,
             top_p: float = 1.0, stop_ids=(), stop_strings=(), tokenizer=None,
             generator: torch.Generator | None = None,
             prefix_cache=None) -> list[Generation]:  # fmt: skip
    """Batched sampling with a KV cache; prompts of different lengths are left-padded.

    temperature 0 = greedy. Returns one Generation per prompt with the log-probs of its sampled tokens
    under the model's raw distribution (what PPO needs). A stop token is not included; a stop string
    cuts `text` before it and keeps the shortest token prefix whose text covers the kept text (a token
    straddling the cut stays). Rows that finish leave the batch; the loop ends when all have finished.
    prefix_cache: an infra.prefix_cache.PrefixCache; reuse the keys/values of the longest stored prefix
    of each prompt, run a prefix that several rows share once, and store every prompt's (same results up
    to float rounding; see PrefixCache).
    """
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("generate: prompts must be a non-empty list of non-empty token lists")
    if max_new_tokens < 0:
        raise ValueError(f"generate: max_new_tokens must be >= 0, got {max_new_tokens}")
    if stop_strings and tokenizer is None:
        raise ValueError("generate: stop_strings need a tokenizer to decode the generated text")
    if temperature < 0 or not 0.0 < top_p <= 1.0:
        raise ValueError(f"generate: need temperature >= 0 and 0 < top_p <= 1, got {temperature}, {top_p}")
    cfg = model.config
    for i, p in enumerate(prompts):
        if min(p) < 0 or max(p) >= cfg.vocab_size:
            raise ValueError(f"generate: prompt {i} has a token id outside [0, {cfg.vocab_size})")
    B, P = len(prompts), max(len(p) for p in prompts)
    total = P + max_new_tokens
    if cfg.arch == "gpt2" and total > cfg.max_seq_len:  # learned positions end there
        raise ValueError(f"generate: prompt + max_new_tokens ({total}) exceeds max_seq_len {cfg.max_seq_len}")
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    gens = [Generation([], [], None, "length") for _ in range(B)]
    if max_new_tokens > 0:
        lengths = torch.tensor([len(p) for p in prompts], device=device)  # (B,)
        idx = torch.zeros(B, P, dtype=torch.long, device=device)  # (B, P) left-padded
        valid = torch.zeros(B, total, dtype=torch.bool, device=device)  # (B, S_max) real keys
        for i, p in enumerate(prompts):
            idx[i, P - len(p) :] = torch.tensor(p, device=device)
            valid[i, P - len(p) :] = True
        valid[:, P:] = True  # generated tokens are always real
        padded = bool((lengths < P).any())
        pos = (valid[:, :P].long().cumsum(-1) - 1).clamp(min=0)  # (B, P) per-row positions
        cache = KVCache(cfg, B, total, device=device, dtype=dtype)
        if prefix_cache is not None:  # cache slots [0, L) are filled: run only the columns after them
            for shared in prefix_cache.shared(prompts):  # run a prefix the rows share once, not per row
                generate(model, [shared], 1, temperature=0, prefix_cache=prefix_cache)
            L, matches = prefix_cache.fill(prompts, cache)
            idx, pos = idx[:, L:], pos[:, L:]  # (B, P - L); pos stays each token's index in its prompt
        stop = torch.tensor(sorted(set(stop_ids)) or [-1], device=device)
        rows = list(range(B))  # prompt index of each row still in the batch
        live = [True] * B  # per batch row: still generating
        for t in range(max_new_tokens):
            mask = valid[:, : P + t] if padded else None  # (b, S) keys so far
            logits = model(idx, cache=cache, pos=pos, attn_mask=mask, last_only=True)[:, -1].float()  # (b, V)
            if t == 0 and prefix_cache is not None:  # before rows leave the batch
                prefix_cache.store(prompts, cache, matches)
            nxt = _sample(logits, temperature, top_p, generator)  # (b,)
            # = log_softmax(logits)[nxt] without writing a (b, V) tensor
            lp = logits.gather(-1, nxt[:, None])[:, 0] - logits.logsumexp(-1)  # (b,)
            is_stop = torch.isin(nxt, stop)
            for j, (tok, logp, s) in enumerate(zip(nxt.tolist(), lp.tolist(), is_stop.tolist(), strict=True)):
                if not live[j]:
                    continue
                g = gens[rows[j]]
                if not s:
                    g.tokens.append(tok)
                    g.logprobs.append(logp)
                if s or (stop_strings and _find_stop(tokenizer.decode(g.tokens), stop_strings) >= 0):
                    live[j], g.finish_reason = False, "stop"
            if not any(live):
                break
            if sum(live) <= 0.75 * len(rows):
                # drop finished rows: they only cost compute (a cache copy, so not for every single one)
                keep = [j for j, a in enumerate(live) if a]
                rows, live = [rows[j] for j in keep], [True] * len(keep)
                k = torch.tensor(keep, device=device)
                cache.k, cache.v = cache.k[:, k], cache.v[:, k]
                valid, lengths, nxt = valid[k], lengths[k], nxt[k]
            idx = nxt[:, None]  # (b, 1)
            pos = (lengths + t)[:, None]  # (b, 1)
    for g in gens:
        if tokenizer is None:
            continue
        g.text = tokenizer.decode(g.tokens)
        cut = _find_stop(g.text, stop_strings) if stop_strings else -1
        if cut >= 0:
            g.text = g.text[:cut]
            # keep the shortest token prefix whose text covers the kept text
            n = next(n for n in range(len(g.tokens) + 1) if len(tokenizer.decode(g.tokens[:n])) >= cut)
            g.tokens, g.logprobs = g.tokens[:n], g.logprobs[:n]
    return gens
