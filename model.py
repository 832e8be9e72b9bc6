"""Hand-written GPT-2 / Llama, checkpoint and tokenizer loading, and batched generation.

One `Transformer` covers both families; a few config switches pick learned positions or RoPE,
LayerNorm or RMSNorm, GELU or SwiGLU. Module names are shared by both families (q_proj, k_proj,
v_proj, o_proj, gate_proj, up_proj, down_proj) so that LoRA targets read the same for both.
"""

import base64
import collections
import functools
import glob
import heapq
import itertools
import json
import math
import mmap
import os
import struct
from dataclasses import dataclass

import numpy as np
import regex  # installed with tiktoken (its dependency); only train_bpe uses it
import tiktoken
import torch
import torch.nn as nn
import torch.nn.functional as F

# === model ===


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
        if cache is not None:
            # write into the pre-allocated cache in place, attend over everything filled so far
            L = cache.length
            cache.k[self.layer_idx, :, :, L : L + T] = k
            cache.v[self.layer_idx, :, :, L : L + T] = v
            k = cache.k[self.layer_idx, :, :, : L + T]  # (B, nkv, S, hd)
            v = cache.v[self.layer_idx, :, :, : L + T]
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

        cache: KVCache (filled in place, `cache.length` advanced by T); pos: (B, T) positions (default
        start..start+T); attn_mask: (B, S) bool, True = real (non-pad) key, S = cache.length + T.
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


# --- checkpoint files ---

_ST_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}  # fmt: skip


def read_safetensors(path) -> dict[str, torch.Tensor]:
    """Parse a .safetensors file by hand: u64 header length, JSON header, raw little-endian data."""
    path = str(path)
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"{path}: truncated safetensors file ({size} bytes, no 8-byte header length)")
        (n,) = struct.unpack("<Q", head)
        if 8 + n > size:
            raise ValueError(f"{path}: header length {n} runs past the end of the file ({size} bytes)")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: safetensors header is not valid JSON ({e})") from None
        if not isinstance(header, dict):
            raise ValueError(f"{path}: safetensors header is not a JSON object")
        start, data_len = 8 + n, size - 8 - n
        # copy-on-write map: tensors are views into the file, torch.frombuffer gets a writable buffer
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY) if size > 0 else b""
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (b, e) = _ST_DTYPES[info["dtype"]], info["shape"], info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{path}: tensor {name!r} has a bad header entry {info!r}") from None
        numel = math.prod(shape)
        nbytes = numel * dtype.itemsize
        if not (0 <= b <= e <= data_len):
            raise ValueError(
                f"{path}: tensor {name!r} data_offsets [{b}, {e}] run past the end of the data "
                f"({data_len} bytes): file truncated or header corrupt"
            )
        if e - b != nbytes:
            raise ValueError(
                f"{path}: tensor {name!r} data_offsets [{b}, {e}] span {e - b} bytes but shape {shape} "
                f"of {info['dtype']} needs {nbytes}"
            )
        if numel == 0:
            out[name] = torch.empty(shape, dtype=dtype)
        elif (start + b) % dtype.itemsize:  # misaligned: copy instead of viewing
            out[name] = torch.frombuffer(bytearray(buf[start + b : start + e]), dtype=dtype).reshape(shape)
        else:
            out[name] = torch.frombuffer(buf, dtype=dtype, count=numel, offset=start + b).reshape(shape)
    return out


def write_safetensors(tensors: dict[str, torch.Tensor], path, metadata: dict | None = None):
    header, offset = {}, 0
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    items = [(k, t.detach().cpu().contiguous()) for k, t in tensors.items()]
    rev = {v: k for k, v in _ST_DTYPES.items()}
    for name, t in items:
        if t.dtype not in rev:
            raise ValueError(f"write_safetensors: tensor {name!r} has unsupported dtype {t.dtype}")
        n = t.numel() * t.element_size()
        header[name] = {"dtype": rev[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + n]}
        offset += n
    hb = json.dumps(header, separators=(",", ":")).encode()
    hb += b" " * (-len(hb) % 8)  # pad so tensor data starts 8-byte aligned
    tmp = f"{path}.tmp"  # write then rename: a reader (or a mmap) never sees a half-written file
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(hb)) + hb)
        for _, t in items:
            if t.numel():
                f.write(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    os.replace(tmp, path)


def _load_file(path) -> dict[str, torch.Tensor]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint file {path} not found")
    if str(path).endswith(".safetensors"):
        return read_safetensors(path)
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:
        raise ValueError(f"{path}: cannot read torch checkpoint ({type(e).__name__}: {e})") from None
    if isinstance(sd, dict) and "model" in sd and isinstance(sd["model"], dict):
        sd = sd["model"]
    if not isinstance(sd, dict):
        raise ValueError(f"{path}: expected a dict of tensors, got {type(sd).__name__}")
    return sd


def _load_hf_weights(path) -> tuple[dict[str, torch.Tensor], str]:
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if os.path.isfile(os.path.join(path, index)):
            weight_map = _read_json(os.path.join(path, index)).get("weight_map")
            if not isinstance(weight_map, dict):
                raise ValueError(f"{os.path.join(path, index)}: no 'weight_map' object")
            sd = {}
            for shard in sorted(set(weight_map.values())):
                sd.update(_load_file(os.path.join(path, shard)))
            return sd, os.path.join(path, index)
    for name in ("model.safetensors", "pytorch_model.bin"):
        if os.path.isfile(os.path.join(path, name)):
            return _load_file(os.path.join(path, name)), os.path.join(path, name)
    raise FileNotFoundError(
        f"{path}: no weights found (expected model.safetensors, model.safetensors.index.json, "
        "pytorch_model.bin or pytorch_model.bin.index.json)"
    )


# --- config translation ---


def _config_from_hf(c: dict, path) -> ModelConfig:
    mt = c.get("model_type")
    try:
        if mt == "gpt2":
            act = c.get("activation_function", "gelu_new")
            if act not in ("gelu_new", "gelu_pytorch_tanh"):
                raise ValueError(f"{path}: gpt2 activation_function {act!r} is not supported (gelu_new)")
            return ModelConfig(
                arch="gpt2", vocab_size=c["vocab_size"], dim=c["n_embd"], n_layers=c["n_layer"],
                n_heads=c["n_head"], n_kv_heads=c["n_head"], hidden_dim=c.get("n_inner") or 4 * c["n_embd"],
                max_seq_len=c["n_positions"], norm_eps=c.get("layer_norm_epsilon", 1e-5), tie_embeddings=True,
            )  # fmt: skip
        if mt == "llama":
            if c.get("attention_bias") or c.get("mlp_bias"):
                raise ValueError(f"{path}: llama attention_bias/mlp_bias are not supported")
            n_heads = c["num_attention_heads"]
            if c.get("head_dim") not in (None, c["hidden_size"] // n_heads):
                raise ValueError(f"{path}: head_dim {c['head_dim']} != hidden_size / num_attention_heads")
            # transformers < 5 writes rope_theta + rope_scaling; transformers 5 writes rope_parameters
            rp = dict(c.get("rope_parameters") or {})
            theta = rp.pop("rope_theta", c.get("rope_theta", 10000.0))
            scaling = c.get("rope_scaling") or (rp if rp else None)
            if scaling is not None and scaling.get("rope_type", scaling.get("type")) == "default":
                scaling = None
            if scaling is not None:
                scaling = {k: v for k, v in scaling.items() if k != "rope_theta"}
            return ModelConfig(
                arch="llama", vocab_size=c["vocab_size"], dim=c["hidden_size"],
                n_layers=c["num_hidden_layers"], n_heads=n_heads,
                n_kv_heads=c.get("num_key_value_heads") or n_heads, hidden_dim=c["intermediate_size"],
                max_seq_len=c.get("max_position_embeddings", 2048), norm_eps=c.get("rms_norm_eps", 1e-6),
                rope_theta=float(theta), rope_scaling=scaling,
                tie_embeddings=bool(c.get("tie_word_embeddings", False)),
            )  # fmt: skip
    except KeyError as e:
        raise ValueError(f"{path}: config is missing key {e}") from None
    raise ValueError(f"{path}: unknown model_type {mt!r} (supported: 'gpt2', 'llama')")


def _config_from_meta(p: dict, path, vocab_size: int) -> ModelConfig:
    try:
        dim, n_heads = p["dim"], p["n_heads"]
        # Meta's FeedForward sizing: 2/3 of 4*dim, times the multiplier, rounded up to multiple_of
        hidden = int(2 * 4 * dim / 3)
        if p.get("ffn_dim_multiplier") is not None:
            hidden = int(p["ffn_dim_multiplier"] * hidden)
        hidden = p["multiple_of"] * ((hidden + p["multiple_of"] - 1) // p["multiple_of"])
        scaled = bool(p.get("use_scaled_rope", False))
        theta = float(p.get("rope_theta", 10000.0))
        scaling, max_len = None, 131072 if scaled else 8192 if theta >= 5e5 else 4096
        if scaled:  # constants of Meta's apply_scaling
            scaling = {"rope_type": "llama3", "factor": float(p.get("rope_scaling_factor") or 8.0),
                       "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                       "original_max_position_embeddings": 8192}  # fmt: skip
        return ModelConfig(
            arch="llama", vocab_size=p["vocab_size"] if p.get("vocab_size", -1) > 0 else vocab_size, dim=dim,
            n_layers=p["n_layers"], n_heads=n_heads, n_kv_heads=p.get("n_kv_heads") or n_heads,
            hidden_dim=hidden, max_seq_len=p.get("max_seq_len", max_len),
            norm_eps=p.get("norm_eps", 1e-5), rope_theta=theta, rope_scaling=scaling, tie_embeddings=False,
        )  # fmt: skip
    except KeyError as e:
        raise ValueError(f"{path}: params.json is missing key {e}") from None


def _permute_rotary(w, n_heads):
    # Meta rotates interleaved pairs (2i, 2i+1); HF's converter permutes q/k rows so the rotate_half
    # RoPE (pairs i, i + hd/2) computes the same thing. We do the same at load time.
    out, inp = w.shape
    return w.view(n_heads, out // n_heads // 2, 2, inp).transpose(1, 2).reshape(out, inp)


def _split_c_attn(prefix, C):
    """GPT-2 c_attn weight (C, 3C) or bias (3C,) -> our q/k/v_proj weights (out, in) or biases."""

    def fn(t):
        ext = "weight" if t.dim() == 2 else "bias"
        q, k, v = (x.t() if t.dim() == 2 else x for x in t.split(C, dim=-1))
        p = f"{prefix}attn."
        return {f"{p}q_proj.{ext}": q, f"{p}k_proj.{ext}": k, f"{p}v_proj.{ext}": v}

    return fn


def _checkpoint_schema(cfg: ModelConfig, layout: str):
    """{checkpoint name: (expected shape, fn(tensor) -> {our name: tensor})} for a layout."""
    C, H, V, hd = cfg.dim, cfg.hidden_dim, cfg.vocab_size, cfg.dim // cfg.n_heads
    q_out, kv_out = cfg.n_heads * hd, cfg.n_kv_heads * hd
    same = lambda ours: lambda t: {ours: t}
    s = {}
    if layout == "gpt2":  # Conv1D weights are stored (in, out): transpose; c_attn holds q, k, v
        s["wte.weight"] = ((V, C), same("tok_emb.weight"))
        s["wpe.weight"] = ((cfg.max_seq_len, C), same("pos_emb.weight"))
        for i in range(cfg.n_layers):
            h, o = f"h.{i}.", f"layers.{i}."
            s[h + "attn.c_attn.weight"] = ((C, 3 * C), _split_c_attn(o, C))
            s[h + "attn.c_attn.bias"] = ((3 * C,), _split_c_attn(o, C))
            for a, b, shape in (("attn.c_proj", "attn.o_proj", (C, C)), ("mlp.c_fc", "mlp.up_proj", (C, H)),
                                ("mlp.c_proj", "mlp.down_proj", (H, C))):  # fmt: skip
                s[f"{h}{a}.weight"] = (shape, lambda t, n=f"{o}{b}.weight": {n: t.t()})
                s[f"{h}{a}.bias"] = ((shape[1],), same(f"{o}{b}.bias"))
            for a, b in (("ln_1", "attn_norm"), ("ln_2", "mlp_norm")):
                s[f"{h}{a}.weight"] = ((C,), same(f"{o}{b}.weight"))
                s[f"{h}{a}.bias"] = ((C,), same(f"{o}{b}.bias"))
        s["ln_f.weight"] = ((C,), same("norm.weight"))
        s["ln_f.bias"] = ((C,), same("norm.bias"))
        return s
    hf = layout == "hf"
    s["model.embed_tokens.weight" if hf else "tok_embeddings.weight"] = ((V, C), same("tok_emb.weight"))
    s["model.norm.weight" if hf else "norm.weight"] = ((C,), same("norm.weight"))
    if not cfg.tie_embeddings:
        s["lm_head.weight" if hf else "output.weight"] = ((V, C), same("lm_head.weight"))
    for i in range(cfg.n_layers):
        o = f"layers.{i}."
        names = {  # ours: (hf name, meta name, shape)
            "attn.q_proj": ("self_attn.q_proj", "attention.wq", (q_out, C)),
            "attn.k_proj": ("self_attn.k_proj", "attention.wk", (kv_out, C)),
            "attn.v_proj": ("self_attn.v_proj", "attention.wv", (kv_out, C)),
            "attn.o_proj": ("self_attn.o_proj", "attention.wo", (C, q_out)),
            "mlp.gate_proj": ("mlp.gate_proj", "feed_forward.w1", (H, C)),
            "mlp.up_proj": ("mlp.up_proj", "feed_forward.w3", (H, C)),
            "mlp.down_proj": ("mlp.down_proj", "feed_forward.w2", (C, H)),
            "attn_norm": ("input_layernorm", "attention_norm", (C,)),
            "mlp_norm": ("post_attention_layernorm", "ffn_norm", (C,)),
        }
        for ours, (hf_name, meta_name, shape) in names.items():
            fn = same(f"{o}{ours}.weight")
            if not hf and ours in ("attn.q_proj", "attn.k_proj"):
                nh = cfg.n_heads if ours == "attn.q_proj" else cfg.n_kv_heads
                fn = lambda t, n=f"{o}{ours}.weight", nh=nh: {n: _permute_rotary(t, nh)}
            key = f"model.layers.{i}.{hf_name}.weight" if hf else f"layers.{i}.{meta_name}.weight"
            s[key] = (shape, fn)
    return s


# derived buffers some older checkpoints carry: recomputed here, so safe to drop
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq", ".attn.bias", ".attn.masked_bias", "rope.freqs")


_LINEAR_WEIGHTS = ("_proj.weight", "lm_head.weight")


def _to_col_major(w, device, dtype):
    """Copy of a linear weight (out, in) stored as the transpose of a contiguous (in, out) buffer.

    Same values and shape; F.linear then multiplies by a contiguous W^T, which CPU BLAS runs about
    2x faster than row-major W for the few rows of batched decoding (and no slower for one row).
    """
    return torch.empty(w.shape[::-1], device=device, dtype=dtype).copy_(w.t()).t()


def _build(cfg, sd, layout, source, device, dtype) -> Transformer:
    if layout == "gpt2":  # GPT2LMHeadModel prefixes "transformer."; bare GPT2Model checkpoints don't
        sd = {k.removeprefix("transformer."): v for k, v in sd.items()}
        if "lm_head.weight" in sd:  # tied to wte; the tie is what we load
            sd.pop("lm_head.weight")
    if layout == "hf" and cfg.tie_embeddings and "lm_head.weight" in sd:
        sd = dict(sd)
        sd.pop("lm_head.weight")
    schema = _checkpoint_schema(cfg, layout)
    missing = [k for k in schema if k not in sd]
    if missing:
        raise ValueError(f"{source}: missing tensor(s) {missing[:20]}{' ...' if len(missing) > 20 else ''}")
    extra = [k for k in sd if k not in schema and not k.endswith(_IGNORED_SUFFIXES)]
    if extra:
        raise ValueError(f"{source}: unexpected tensor(s) {extra[:20]}{' ...' if len(extra) > 20 else ''}")
    if dtype is None:  # keep the checkpoint's own dtype
        emb = next(iter(schema))
        dtype = sd[emb].dtype if sd[emb].is_floating_point() else torch.float32
    ours = {}
    for name, (shape, fn) in schema.items():
        t = sd[name]
        if tuple(t.shape) != shape:
            raise ValueError(
                f"{source}: tensor {name!r} has shape {tuple(t.shape)}, expected {shape} from the config"
            )
        ours.update(fn(t))
    with torch.device("meta"):  # no random init: every parameter is assigned from the checkpoint
        model = Transformer(cfg)
    # always copy: the read tensors are views of memory-mapped files, which must not stay tied to a file
    # that a later save_pretrained may overwrite
    ours = {k: _to_col_major(v, device, dtype) if k.endswith(_LINEAR_WEIGHTS) or (
                cfg.tie_embeddings and k == "tok_emb.weight")  # it is the lm_head too
            else v.to(device=device, dtype=dtype, memory_format=torch.contiguous_format, copy=True)
            for k, v in ours.items()}  # fmt: skip
    model.load_state_dict(ours, strict=False, assign=True)
    if cfg.tie_embeddings:
        model.lm_head.weight = model.tok_emb.weight
    unset = [n for n, p in model.named_parameters() if p.is_meta]
    if unset:  # internal consistency: the schema must cover every parameter
        raise ValueError(f"{source}: parameters not filled from the checkpoint: {unset}")
    return model.eval()


def from_pretrained(path, device="cpu", dtype=None) -> Transformer:
    """Load a Hugging Face (config.json) or Meta (params.json + consolidated.*.pth) Llama/GPT-2 folder."""
    path = str(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"checkpoint folder {path} not found")
    cfg_path, params_path = os.path.join(path, "config.json"), os.path.join(path, "params.json")
    if os.path.isfile(cfg_path):
        hf = _read_json(cfg_path)
        cfg = _config_from_hf(hf, cfg_path)
        sd, source = _load_hf_weights(path)
        return _build(cfg, sd, "gpt2" if cfg.arch == "gpt2" else "hf", source, device, dtype)
    if os.path.isfile(params_path):
        shards = sorted(glob.glob(os.path.join(path, "consolidated.*.pth")))
        if not shards:
            raise FileNotFoundError(f"{path}: params.json found but no consolidated.*.pth weights")
        parts = [_load_file(s) for s in shards]
        sd = {}
        for name in parts[0]:
            lacking = [s for s, p in zip(shards, parts, strict=True) if name not in p]
            if lacking:
                raise ValueError(f"{lacking[0]}: missing tensor {name!r} that {shards[0]} has")
            ts = [p[name] for p in parts]
            if len(ts) == 1 or ts[0].dim() < 2:  # norms are replicated across model-parallel shards
                sd[name] = ts[0]
            else:  # Meta's split: row-parallel wo/w2 and embedding on dim 1, column-parallel on dim 0
                row = ("attention.wo.weight", "feed_forward.w2.weight", "tok_embeddings.weight")
                sd[name] = torch.cat(ts, dim=1 if name.endswith(row) else 0)
        params = _read_json(params_path)
        emb = sd.get("tok_embeddings.weight")
        cfg = _config_from_meta(params, params_path, emb.shape[0] if emb is not None else -1)
        return _build(cfg, sd, "meta", f"{path}/consolidated.*.pth", device, dtype)
    raise FileNotFoundError(f"{path}: no config.json (Hugging Face) or params.json (Meta) found")


def save_pretrained(model: Transformer, path):
    """Write config.json + model.safetensors in the Hugging Face layout (GPT-2 or Llama)."""
    cfg = model.config
    os.makedirs(path, exist_ok=True)
    sd = model.state_dict()
    with torch.device("meta"):  # expected names, no weights built
        plain = Transformer(cfg)
    if sd.keys() != plain.state_dict().keys():
        odd = sorted(set(sd) ^ set(plain.state_dict()))[:10]
        raise ValueError(f"save_pretrained: model tensors differ from a plain Transformer's: {odd} "
                         "(LoRA adapters? merge them into the base weights and unwrap first)")  # fmt: skip
    dtype = str(model.tok_emb.weight.dtype).removeprefix("torch.")
    out = {}
    if cfg.arch == "gpt2":
        if cfg.n_kv_heads != cfg.n_heads or not cfg.tie_embeddings:
            raise ValueError("save_pretrained: a gpt2 model needs n_kv_heads == n_heads and tied embeddings")
        hf = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": cfg.vocab_size,
              "n_embd": cfg.dim, "n_layer": cfg.n_layers, "n_head": cfg.n_heads, "n_inner": cfg.hidden_dim,
              "n_positions": cfg.max_seq_len, "n_ctx": cfg.max_seq_len, "layer_norm_epsilon": cfg.norm_eps,
              "activation_function": "gelu_new", "tie_word_embeddings": True}  # fmt: skip
        out["wte.weight"], out["wpe.weight"] = sd["tok_emb.weight"], sd["pos_emb.weight"]
        for i in range(cfg.n_layers):
            h, o = f"h.{i}.", f"layers.{i}."
            qkv = [f"{o}attn.{n}_proj" for n in "qkv"]
            out[h + "attn.c_attn.weight"] = torch.cat([sd[n + ".weight"] for n in qkv], 0).t()
            out[h + "attn.c_attn.bias"] = torch.cat([sd[n + ".bias"] for n in qkv], 0)
            for a, b in (("attn.c_proj", "attn.o_proj"), ("mlp.c_fc", "mlp.up_proj"),
                         ("mlp.c_proj", "mlp.down_proj")):  # fmt: skip
                out[f"{h}{a}.weight"], out[f"{h}{a}.bias"] = sd[f"{o}{b}.weight"].t(), sd[f"{o}{b}.bias"]
            for a, b in (("ln_1", "attn_norm"), ("ln_2", "mlp_norm")):
                out[f"{h}{a}.weight"], out[f"{h}{a}.bias"] = sd[f"{o}{b}.weight"], sd[f"{o}{b}.bias"]
        out["ln_f.weight"], out["ln_f.bias"] = sd["norm.weight"], sd["norm.bias"]
        out = {"transformer." + k: v for k, v in out.items()}
    else:
        hf = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": cfg.vocab_size,
              "hidden_size": cfg.dim, "intermediate_size": cfg.hidden_dim, "num_hidden_layers": cfg.n_layers,
              "num_attention_heads": cfg.n_heads, "num_key_value_heads": cfg.n_kv_heads,
              "head_dim": cfg.dim // cfg.n_heads, "max_position_embeddings": cfg.max_seq_len,
              "rms_norm_eps": cfg.norm_eps, "hidden_act": "silu", "rope_theta": cfg.rope_theta,
              "rope_scaling": cfg.rope_scaling, "tie_word_embeddings": cfg.tie_embeddings,
              "attention_bias": False, "mlp_bias": False}  # fmt: skip
        for name, (_, fn) in _checkpoint_schema(cfg, "hf").items():
            (ours,) = fn(torch.empty(0)).keys()  # every llama entry is a 1:1 rename
            out[name] = sd[ours]
    hf["torch_dtype"] = dtype
    write_safetensors(out, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(hf, f, indent=2)


# === end model ===

# === generation ===


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


class PrefixCache:
    """Keys/values of earlier prompts, so that generate() runs only the tokens past the longest match.

    A ReAct actor's next prompt is its last prompt + completion + observation: re-encoding the shared
    prefix at every step dominates the cost of a small model. An entry is one prompt's token ids and
    its keys/values at every layer; matching is on token ids (not text: BPE merges across a cut). Keys
    depend on the weights: one cache per model, clear() after changing them (LoRA, merge, load).
    Least recently used entries are evicted beyond max_entries or max_bytes of keys/values (a real
    model's are large: Llama-3-8B in bf16 holds 128 KiB per token).
    """

    def __init__(self, max_entries: int = 64, max_bytes: int | None = None):
        if max_entries < 1:
            raise ValueError(f"PrefixCache: max_entries must be >= 1, got {max_entries}")
        self.max_entries, self.max_bytes, self.nbytes = max_entries, max_bytes, 0
        self.entries = collections.OrderedDict()  # tuple(ids) -> (ids array, k, v), least recent first

    def __len__(self):
        return len(self.entries)

    def clear(self):
        self.entries.clear()
        self.nbytes = 0

    def pop(self, key):
        _, k, v = self.entries.pop(key)
        self.nbytes -= k.nbytes + v.nbytes

    def match(self, ids: list[int]) -> tuple[tuple | None, int]:
        """(key, n): the entry sharing the longest prefix with ids and that prefix's length n."""
        q, best, best_n = np.asarray(ids), None, 0
        for key, (e, _, _) in self.entries.items():
            n = min(len(q), len(e))
            diff = np.flatnonzero(q[:n] != e[:n])  # numpy: ~50x faster than a Python loop over 700 ids
            n = int(diff[0]) if diff.size else n
            if n > best_n:
                best, best_n = key, n
        return best, best_n

    def put(self, ids: list[int], k: torch.Tensor, v: torch.Tensor):
        """Store ids with their keys/values k, v (n_layers, n_kv, len(ids), hd)."""
        key = tuple(ids)
        if key in self.entries:
            self.pop(key)
        self.entries[key] = (np.asarray(ids), k, v)
        self.nbytes += k.nbytes + v.nbytes
        while len(self.entries) > self.max_entries or (self.max_bytes and self.nbytes > self.max_bytes):
            self.pop(next(iter(self.entries)))  # the least recently used

    def fill(self, prompts: list[list[int]], cache: KVCache) -> tuple[int, list]:
        """Copy each row's cached prefix into the left-padded `cache`; return (L, matches).

        The forward then runs only columns [L, P) (P = longest prompt). Row i may reuse
        c_i = min(match, P_i - 1) tokens (its last token must run to give logits), so the block of
        N = max(P_i - c_i) columns holds every row's new tokens, L = P - N, and row i's slots
        [P - P_i, L) take its first P_i - N cached tokens (c_i >= P_i - N: enough are cached).
        """
        P = max(len(p) for p in prompts)
        matches = [self.match(p) for p in prompts]  # (key, n) per row
        N = max(len(p) - min(n, len(p) - 1) for p, (_, n) in zip(prompts, matches, strict=True))
        L = P - N
        for i, (p, (key, _)) in enumerate(zip(prompts, matches, strict=True)):
            if key is not None:
                self.entries.move_to_end(key)
            # pad slots are masked, but torch.empty may hold NaN, and NaN * 0 attention weight is NaN
            cache.k[:, i, :, : min(P - len(p), L)] = 0
            cache.v[:, i, :, : min(P - len(p), L)] = 0
            m = len(p) - N  # cached tokens this row takes
            if m > 0:
                _, k, v = self.entries[key]  # (n_layers, n_kv, T, hd)
                cache.k[:, i, :, P - len(p) : L] = k[:, :, :m]
                cache.v[:, i, :, P - len(p) : L] = v[:, :, :m]
        cache.length = L
        return L, matches

    def store(self, prompts: list[list[int]], cache: KVCache, matches):
        """After the prefill: store each prompt with its keys/values (its last len(p) slots of P)."""
        P = max(len(p) for p in prompts)
        for i, (p, (key, n)) in enumerate(zip(prompts, matches, strict=True)):
            if key is not None and n == len(key) and key in self.entries:
                # the old entry is a prefix of this prompt: the new one matches all it would, and more
                self.pop(key)
            # clone: a compact copy, not a view that keeps the whole batch's cache alive
            self.put(p, cache.k[:, i, :, P - len(p) : P].clone(), cache.v[:, i, :, P - len(p) : P].clone())


@torch.inference_mode()
def generate(model, prompts: list[list[int]], max_new_tokens: int, temperature: float = 1.0,
             top_p: float = 1.0, stop_ids=(), stop_strings=(), tokenizer=None,
             generator: torch.Generator | None = None,
             prefix_cache: PrefixCache | None = None) -> list[Generation]:  # fmt: skip
    """Batched sampling with a KV cache; prompts of different lengths are left-padded.

    temperature 0 = greedy. Returns one Generation per prompt with the log-probs of its sampled tokens
    under the model's raw distribution (what PPO needs). A stop token is not included; a stop string
    cuts `text` before it and keeps the shortest token prefix whose text covers the kept text (a token
    straddling the cut stays). Rows that finish leave the batch; the loop ends when all have finished.
    prefix_cache: reuse the keys/values of the longest stored prefix of each prompt and store every
    prompt's (same results up to float rounding; see PrefixCache).
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


# === end generation ===

# === tokenizer ===
# All sources become one tiktoken.Encoding: byte-level BPE vocab -> {token bytes: rank}, a split regex,
# and special tokens. tiktoken's token ids are its ranks, so a vocab's ids must be in merge order.

GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Meta's llama3 tokenizer.py: 256 specials numbered right after the mergeable ranks (128000 for Llama 3).
LLAMA3_SPECIALS = [
    "<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>", "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>", "<|step_id|>", "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>",
    "<|eot_id|>", "<|python_tag|>",
] + [f"<|reserved_special_token_{2 + i}|>" for i in range(256 - 11)]
CHAT_ROLES = ("system", "user", "assistant")


class Tokenizer:
    """Byte-level BPE on tiktoken. Special-token text is plain text unless allowed_special says otherwise."""

    def __init__(self, mergeable_ranks: dict[bytes, int], pat_str: str, special_tokens: dict[str, int],
                 eos: str | None = None, bos: str | None = None):
        missing = [b for b in range(256) if bytes([b]) not in mergeable_ranks]
        if missing:  # tiktoken cannot encode a byte that has no token
            raise ValueError(f"tokenizer vocab lacks tokens for {len(missing)} of 256 bytes: {missing[:5]}")
        clash = set(special_tokens.values()) & set(mergeable_ranks.values())
        if clash:
            raise ValueError(f"special token ids {sorted(clash)[:5]} are also ids of ordinary tokens")
        self.mergeable_ranks, self.pat_str = mergeable_ranks, pat_str
        self.special_tokens = dict(special_tokens)
        self.enc = tiktoken.Encoding("retroformer", pat_str=pat_str, mergeable_ranks=mergeable_ranks,
                                     special_tokens=self.special_tokens)
        self.vocab_size = self.enc.n_vocab
        if eos is None:  # GPT-2, then Llama 3 base; instruct models name <|eot_id|> in tokenizer_config.json
            eos = next((t for t in ("<|endoftext|>", "<|end_of_text|>", "<|eot_id|>") if t in special_tokens),
                       None)
        if eos not in special_tokens:
            raise ValueError(f"end-of-sequence token {eos!r} is not a special token of this tokenizer")
        if bos is None and "<|begin_of_text|>" in special_tokens:
            bos = "<|begin_of_text|>"
        if bos is not None and bos not in special_tokens:
            raise ValueError(f"begin-of-sequence token {bos!r} is not a special token of this tokenizer")
        if bos == eos:  # GPT-2's configs name <|endoftext|> as bos too, but it has no real bos
            bos = None
        self.eos, self.bos = eos, bos
        self.eos_id = special_tokens[eos]
        self.bos_id = special_tokens[bos] if bos is not None else None
        # generation stops at any end-of-turn token, not only eos (chat models end turns with <|eot_id|>)
        ends = ("<|endoftext|>", "<|end_of_text|>", "<|eot_id|>", "<|eom_id|>")
        self.stop_ids = sorted({self.eos_id} | {special_tokens[t] for t in ends if t in special_tokens})

    @classmethod
    def from_ranks(cls, mergeable_ranks, pat_str, special_tokens, eos=None, bos=None) -> "Tokenizer":
        return cls(mergeable_ranks, pat_str, special_tokens, eos=eos, bos=bos)

    def encode(self, text: str, allowed_special="none") -> list[int]:
        if allowed_special == "none":
            return self.enc.encode_ordinary(text)
        if allowed_special != "all":
            unknown = set(allowed_special) - set(self.special_tokens)
            if unknown:
                raise ValueError(f"allowed_special names unknown special tokens {sorted(unknown)}")
        return self.enc.encode(text, allowed_special=allowed_special, disallowed_special=())

    def decode(self, ids) -> str:
        ids = [int(i) for i in ids]  # accepts tensors and numpy arrays too
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"decode: token ids {bad[:5]} outside the vocabulary (size {self.vocab_size})")
        try:
            return self.enc.decode_bytes(ids).decode("utf-8", errors="replace")
        except KeyError as e:  # a gap in the id range (e.g. an unused id below the specials)
            raise ValueError(f"decode: {e.args[0]}") from None

    def _chat_parts(self, messages, add_generation_prompt):
        """Llama 3 chat format as (text, is_control) pieces."""
        need = ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")
        if any(t not in self.special_tokens for t in need):
            raise ValueError(f"the Llama 3 chat template needs special tokens {need}; tokenizer lacks them")
        messages, parts = list(messages), [("<|begin_of_text|>", True)]
        turns = messages + ([{"role": "assistant"}] if add_generation_prompt else [])
        for i, m in enumerate(turns):
            if not isinstance(m, dict) or m.get("role") not in CHAT_ROLES:
                raise ValueError(f"chat message {i}: expected a dict with role in {CHAT_ROLES}, got {m!r}")
            parts += [("<|start_header_id|>", True), (m["role"], False), ("<|end_header_id|>", True),
                      ("\n\n", False)]
            if i == len(messages):  # the generation prompt: an open assistant header
                break
            if not isinstance(m.get("content"), str):
                raise ValueError(f"chat message {i}: 'content' must be a string, got {m.get('content')!r}")
            parts += [(m["content"].strip(), False), ("<|eot_id|>", True)]
        return parts

    def apply_chat_template(self, messages: list[dict], add_generation_prompt=True) -> str:
        """Llama 3 chat format. Encode with allowed_special="all"; encode_chat also keeps content inert."""
        return "".join(t for t, _ in self._chat_parts(messages, add_generation_prompt))

    def encode_chat(self, messages: list[dict], add_generation_prompt=True) -> list[int]:
        """Ids of apply_chat_template's string, but control-token text inside messages stays plain text."""
        ids, plain = [], ""
        for text, is_control in self._chat_parts(messages, add_generation_prompt):
            if is_control:  # plain runs are encoded whole, as in the string form, so both give the same ids
                ids += self.encode(plain) + [self.special_tokens[text]]
                plain = ""
            else:
                plain += text
        return ids + self.encode(plain)

    def save(self, path):
        """Write tiktoken-format tokenizer.model + tiktoken_config.json (pattern, specials) into `path`."""
        os.makedirs(path, exist_ok=True)
        with open(os.path.join(path, "tokenizer.model"), "w") as f:
            for tok, rank in sorted(self.mergeable_ranks.items(), key=lambda kv: kv[1]):
                f.write(f"{base64.b64encode(tok).decode()} {rank}\n")
        cfg = dict(pat_str=self.pat_str, special_tokens=self.special_tokens, eos=self.eos, bos=self.bos)
        with open(os.path.join(path, "tiktoken_config.json"), "w") as f:
            json.dump(cfg, f, indent=1)


@functools.cache
def _byte_decoder() -> dict[str, int]:
    """Inverse of GPT-2's bytes_to_unicode: the printable character that stands for each byte."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = [b for b in range(256) if b not in bs]
    return {chr(b): b for b in bs} | {chr(256 + n): b for n, b in enumerate(extra)}


def _bpe_to_ranks(vocab: dict[str, int], merges: list, where: str, specials: dict[str, int], check=True):
    """Byte-level BPE (vocab with bytes_to_unicode strings + merge list) -> tiktoken ranks and specials.

    tiktoken merges the adjacent pair whose concatenation has the lowest rank (and takes a whole piece
    at once when it is a token); HF merges pairs by merge order. Both agree when ids grow with merge order
    and every token's own bytes BPE back to it, which `check` verifies (skipped for vocabs converted from
    tiktoken ranks, where the ids are the ranks by construction).
    """
    dec = _byte_decoder()
    to_bytes = lambda s: bytes(dec[c] for c in s)
    ranks, pair_rank, made, prev = {}, {}, set(), -1
    for n, m in enumerate(merges):
        if len(m) != 2:
            raise ValueError(f"{where}: merge {n + 1} is {m!r}, expected two tokens")
        a, b = m
        if a not in vocab or b not in vocab or a + b not in vocab:
            raise ValueError(f"{where}: merge {n + 1} ({a!r} {b!r}) uses or makes a token not in the vocab")
        if check and vocab[a + b] < prev:
            raise ValueError(f"{where}: merge {n + 1} ({a!r} {b!r}) makes id {vocab[a + b]} after id {prev}; "
                             "ids must grow with merge order for rank-based (tiktoken) merging")
        prev = vocab[a + b]
        pair_rank.setdefault((a, b), n)
        made.add(a + b)
    for tok, i in vocab.items():
        if tok in specials:
            continue
        if (len(tok) == 1 or tok in made) and all(c in dec for c in tok):
            ranks[to_bytes(tok)] = i
        elif tok.startswith("<") and tok.endswith(">"):  # e.g. GPT-2's <|endoftext|> listed in vocab.json
            specials = {**specials, tok: i}
        else:
            raise ValueError(f"{where}: vocab token {tok!r} (id {i}) is neither a byte, a merge result "
                             "nor a special token")
    if check:
        NONE = len(merges)  # rank of a pair that is not a merge
        for tok in made:
            parts = list(tok)
            while len(parts) > 1:  # HF's BPE on the token's own characters
                r, j = min((pair_rank.get(p, NONE), j) for j, p in enumerate(itertools.pairwise(parts)))
                if r == NONE:
                    break
                parts[j : j + 2] = [parts[j] + parts[j + 1]]
            if parts != [tok]:
                raise ValueError(f"{where}: token {tok!r} BPE-encodes to {parts} under its own merges, so "
                                 "tiktoken's rank-based merging cannot reproduce this tokenizer")
    return ranks, specials


def _read_json(file):
    try:
        with open(file, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{file}: invalid JSON ({e})") from None


def _read_merges(file) -> list[list[str]]:
    with open(file, encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = []
    for n, line in enumerate(lines, 1):
        if (n == 1 and line.startswith("#version")) or not line:
            continue
        if len(line.split(" ")) != 2:
            raise ValueError(f"{file}: line {n}: expected two space-separated tokens, got {line!r}")
        merges.append(line.split(" "))
    return merges


def _read_tiktoken_ranks(file) -> dict[bytes, int]:
    with open(file, "rb") as f:
        data = f.read()
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise ValueError(f"{file}: not a tiktoken-format tokenizer.model (base64 token and rank per line); "
                         "a SentencePiece model (e.g. Llama 2) is not supported") from None
    ranks = {}
    for n, line in enumerate(text.splitlines(), 1):
        tok, _, rank = line.partition(" ")
        try:
            ranks[base64.b64decode(tok, validate=True)] = int(rank)
        except ValueError as e:
            raise ValueError(f"{file}: line {n}: expected '<base64 token> <rank>', got {line[:60]!r}") from e
    return ranks


def _load_tokenizer_json(file, specials):
    tj = _read_json(file)
    model = tj.get("model") or {}
    pre = tj.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    kinds = [s.get("type") for s in steps]
    norm = (tj.get("normalizer") or {}).get("type")
    found = f"model {model.get('type')!r}, pre_tokenizer {kinds}, normalizer {norm}"
    supported = "only byte-level BPE (GPT-2 / Llama 3 style: BPE with a ByteLevel pre-tokenizer) is supported"
    if (model.get("type") != "BPE" or "ByteLevel" not in kinds or set(kinds) - {"ByteLevel", "Split"}
            or tj.get("normalizer") or model.get("byte_fallback")):
        raise ValueError(f"{file}: found {found}; {supported}")
    byte_level = steps[kinds.index("ByteLevel")]
    split = steps[kinds.index("Split")] if "Split" in kinds else None
    if any((byte_level.get("add_prefix_space"), model.get("continuing_subword_prefix"),
            model.get("end_of_word_suffix"))):
        raise ValueError(f"{file}: add_prefix_space / subword prefix or suffix are not supported")
    mode = split and (split.get("behavior"), split.get("invert", False), "Regex" in split.get("pattern", {}))
    if split is None:
        pat = GPT2_PATTERN
    elif mode != ("Isolated", False, True):
        raise ValueError(f"{file}: only an isolating Split with a Regex pattern is supported, got {split}")
    elif byte_level.get("use_regex", True):
        raise ValueError(f"{file}: a Split regex followed by ByteLevel(use_regex=true) is not supported")
    else:
        pat = split["pattern"]["Regex"]
    for t in tj.get("added_tokens") or []:
        if not t.get("special"):
            raise ValueError(f"{file}: added token {t.get('content')!r} is not special; not supported")
        specials = {**specials, t["content"]: t["id"]}
    merges = [m.split(" ") if isinstance(m, str) else m for m in model.get("merges", [])]
    check = not model.get("ignore_merges")  # set in vocabs converted from tiktoken ranks (Llama 3)
    ranks, specials = _bpe_to_ranks(model.get("vocab", {}), merges, file, specials, check=check)
    return ranks, pat, specials


def load_tokenizer(path) -> Tokenizer:
    """Folder (or file) with tokenizer.json, tokenizer.model (tiktoken format), vocab.json + merges.txt,
    or encoder.json + vocab.bpe. tokenizer_config.json / special_tokens_map.json, if present, name eos/bos."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"tokenizer path {path} does not exist")
    kinds = {"tokenizer.json": "json", "tokenizer.model": "tiktoken", "vocab.json": "hf", "merges.txt": "hf",
             "encoder.json": "openai", "vocab.bpe": "openai"}
    if os.path.isdir(path):
        folder, kind = path, next((k for f, k in kinds.items() if os.path.isfile(os.path.join(path, f))),
                                  None)
    else:
        folder, kind = os.path.dirname(path), kinds.get(os.path.basename(path))
    if kind is None:
        raise FileNotFoundError(f"no tokenizer files at {path}: expected tokenizer.json, tokenizer.model "
                                "(tiktoken), vocab.json + merges.txt, or encoder.json + vocab.bpe")
    file = lambda f: os.path.join(folder, f)
    cfg = {}
    for f in ("special_tokens_map.json", "tokenizer_config.json", "tiktoken_config.json"):  # later ones win
        if os.path.isfile(file(f)):
            cfg |= {k: v for k, v in _read_json(file(f)).items() if v is not None}
    specials = {t["content"]: int(i) for i, t in (cfg.get("added_tokens_decoder") or {}).items()}
    specials |= cfg.get("special_tokens", {})
    pat = cfg.get("pat_str")
    if kind == "json":
        ranks, pat, specials = _load_tokenizer_json(file("tokenizer.json"), specials)
    elif kind == "tiktoken":
        ranks = _read_tiktoken_ranks(file("tokenizer.model"))
        pat = pat or LLAMA3_PATTERN
        specials = specials or {t: len(ranks) + i for i, t in enumerate(LLAMA3_SPECIALS)}
    else:
        v, m = ("vocab.json", "merges.txt") if kind == "hf" else ("encoder.json", "vocab.bpe")
        for f in (v, m):
            if not os.path.isfile(file(f)):
                raise FileNotFoundError(f"{file(f)} is missing: a GPT-2 tokenizer needs both {v} and {m}")
        ranks, specials = _bpe_to_ranks(_read_json(file(v)), _read_merges(file(m)), file(v), specials)
        pat = pat or GPT2_PATTERN
    token = lambda k: (cfg.get(k) or {}).get("content") if isinstance(cfg.get(k), dict) else cfg.get(k)
    eos, bos = token("eos") or token("eos_token"), token("bos") or token("bos_token")
    return Tokenizer(ranks, pat, specials, eos=eos, bos=bos)


def train_bpe(texts, vocab_size: int, pat_str=LLAMA3_PATTERN, special_tokens=("<|endoftext|>",)) -> Tokenizer:
    """Byte-level BPE from scratch: 256 byte tokens, then merges, then special_tokens (the first is eos).

    Counts pairs once over unique pre-tokenized pieces and updates only the pieces a merge touches.
    """
    n_merges = vocab_size - 256 - len(special_tokens)
    if n_merges < 0:
        raise ValueError(f"vocab_size {vocab_size} is below 256 bytes + {len(special_tokens)} special tokens")
    pat = regex.compile(pat_str)
    pieces = collections.Counter(p for t in texts for p in pat.findall(t))
    words = [[bytes([b]) for b in p.encode()] for p in pieces]  # each piece as a list of tokens
    counts = list(pieces.values())
    pair_count, pair_words = collections.Counter(), collections.defaultdict(set)
    for w, (word, c) in enumerate(zip(words, counts, strict=True)):
        for pair in itertools.pairwise(word):
            pair_count[pair] += c
            pair_words[pair].add(w)
    heap = [(-c, pair) for pair, c in pair_count.items()]  # max count first, ties by smallest bytes
    heapq.heapify(heap)
    ranks = {bytes([b]): b for b in range(256)}
    while len(ranks) < 256 + n_merges and heap:
        neg, pair = heapq.heappop(heap)
        if pair_count.get(pair, 0) != -neg or neg == 0:  # stale entry
            continue
        ranks.setdefault(pair[0] + pair[1], len(ranks))  # (a, bc) and (ab, c) make the same token
        for w in pair_words.pop(pair):
            word, c, new = words[w], counts[w], []
            for p in itertools.pairwise(word):
                pair_count[p] -= c
            i = 0  # merge left to right, without overlaps
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
                    new.append(word[i] + word[i + 1])
                    i += 2
                else:
                    new.append(word[i])
                    i += 1
            words[w] = new
            for p in itertools.pairwise(new):
                pair_count[p] += c
                pair_words[p].add(w)
            for p in {*itertools.pairwise(word), *itertools.pairwise(new)} - {pair}:  # changed counts
                heapq.heappush(heap, (-pair_count[p], p))
    if len(ranks) < 256 + n_merges:
        raise ValueError(f"the texts allow only {len(ranks) - 256} merges: vocab_size {vocab_size} too big")
    specials = {t: len(ranks) + i for i, t in enumerate(special_tokens)}
    return Tokenizer(ranks, pat_str, specials, eos=special_tokens[0] if special_tokens else None)

# === end tokenizer ===
