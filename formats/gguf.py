"""GGUF (llama.cpp's one-file checkpoint) read by hand: metadata, tensor infos, dequantized weights, vocab.

Layout (versions 2 and 3, little-endian): magic b"GGUF", u32 version, u64 tensor count, u64 metadata count;
metadata entries (string key, u32 value type, value); tensor infos (string name, u32 n_dims, u64 dims
innermost first, u32 ggml type, u64 offset into the data section); then the data section, which starts at
the next multiple of `general.alignment` (default 32). A string is a u64 byte length + UTF-8 bytes.
Every read is checked against the file size, so a truncated or corrupt file is an error that says where.
"""

import math
import mmap
import os
import struct

import numpy as np
import torch

from formats.checkpoint import permute_rotary
from formats.tokenizer import (
    GPT2_PATTERN,
    LLAMA3_PATTERN,
    QWEN2_PATTERN,
    Tokenizer,
    bpe_to_ranks,
    digits_pattern,
)

# metadata value types: id -> (name, numpy dtype of one element; None for string / array)
_VALUE_TYPES = {
    0: ("uint8", "<u1"), 1: ("int8", "<i1"), 2: ("uint16", "<u2"), 3: ("int16", "<i2"), 4: ("uint32", "<u4"),
    5: ("int32", "<i4"), 6: ("float32", "<f4"), 7: ("bool", "<u1"), 8: ("string", None), 9: ("array", None),
    10: ("uint64", "<u8"), 11: ("int64", "<i8"), 12: ("float64", "<f8"),
}  # fmt: skip
# ggml tensor types: id -> (name, elements per block, bytes per block); sizes of all, so any file's layout
# can be checked, though only some types can be dequantized (_DEQUANT below)
GGML_TYPES = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20), 6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 40), 10: ("Q2_K", 256, 84),
    11: ("Q3_K", 256, 110), 12: ("Q4_K", 256, 144), 13: ("Q5_K", 256, 176), 14: ("Q6_K", 256, 210),
    15: ("Q8_K", 256, 292),
    16: ("IQ2_XXS", 256, 66), 17: ("IQ2_XS", 256, 74), 18: ("IQ3_XXS", 256, 98), 19: ("IQ1_S", 256, 50),
    20: ("IQ4_NL", 32, 18), 21: ("IQ3_S", 256, 110), 22: ("IQ2_S", 256, 82), 23: ("IQ4_XS", 256, 136),
    24: ("I8", 1, 1), 25: ("I16", 1, 2), 26: ("I32", 1, 4), 27: ("I64", 1, 8), 28: ("F64", 1, 8),
    29: ("IQ1_M", 256, 56), 30: ("BF16", 1, 2), 34: ("TQ1_0", 256, 54), 35: ("TQ2_0", 256, 66),
    39: ("MXFP4", 32, 17), 40: ("NVFP4", 64, 36), 41: ("Q1_0", 128, 18),
}  # fmt: skip


class _Cursor:
    """Reads little-endian values from the file's bytes; each read is bounds-checked and says what it read."""

    def __init__(self, buf, path):
        self.buf, self.path, self.pos = buf, path, 0

    def take(self, n: int, what: str) -> int:
        if n < 0 or self.pos + n > len(self.buf):
            raise ValueError(f"{self.path}: truncated or corrupt GGUF: {what} at offset {self.pos} needs {n} "
                             f"bytes, the file has {len(self.buf)}")  # fmt: skip
        self.pos += n
        return self.pos - n

    def scalar(self, fmt: str, what: str):
        return struct.unpack_from(fmt, self.buf, self.take(struct.calcsize(fmt), what))[0]

    def string(self, what: str) -> str:
        n = self.scalar("<Q", f"{what} length")
        raw = self.buf[self.take(n, what) : self.pos]
        try:
            return str(raw, "utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"{self.path}: {what} at offset {self.pos - n} is not valid UTF-8") from None

    def strings(self, n: int, what: str) -> list[str]:
        buf, pos, size, out = self.buf, self.pos, len(self.buf), []
        for i in range(n):
            (k,) = struct.unpack_from("<Q", buf, pos) if pos + 8 <= size else (-1,)
            if k < 0 or pos + 8 + k > size:
                self.pos = pos
                self.take(size + 1, f"{what}[{i}]")  # raises the truncation error, with the offset
            try:
                out.append(str(buf[pos + 8 : pos + 8 + k], "utf-8"))
            except UnicodeDecodeError:
                raise ValueError(f"{self.path}: {what}[{i}] at offset {pos + 8} is not valid UTF-8") from None
            pos += 8 + k
        self.pos = pos
        return out

    def value(self, vtype: int, what: str):
        if vtype not in _VALUE_TYPES:
            raise ValueError(f"{self.path}: {what} has unknown value type {vtype} (corrupt file?)")
        name, dt = _VALUE_TYPES[vtype]
        if name == "string":
            return self.string(what)
        if name == "array":
            etype, n = self.scalar("<I", f"{what} element type"), self.scalar("<Q", f"{what} length")
            if etype not in _VALUE_TYPES:
                raise ValueError(f"{self.path}: {what} has unknown array element type {etype}")
            edt = _VALUE_TYPES[etype][1]
            if etype == 8:  # the tokenizer's vocab and merges: ~100k strings, so a tight loop
                return self.strings(n, what)
            if edt is None:  # nested arrays
                return [self.value(etype, f"{what}[{i}]") for i in range(n)]
            size = np.dtype(edt).itemsize
            arr = np.frombuffer(self.buf, edt, count=n, offset=self.take(n * size, f"{what} ({n} elements)"))
            return arr.astype(bool).tolist() if etype == 7 else arr.tolist()
        v = np.frombuffer(self.buf, dt, count=1, offset=self.take(np.dtype(dt).itemsize, what))[0]
        return bool(v) if name == "bool" else v.item()


def read_gguf(path) -> tuple[dict, dict, memoryview]:
    """Parse a GGUF file: (metadata {key: value}, tensors {name: (shape, ggml type id, byte offset, nbytes)},
    the file's bytes). Shapes are torch order (outermost first); offsets are absolute; nothing is read yet."""
    path = str(path)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        # copy-on-write map: torch.frombuffer needs a writable buffer, the file itself is never written
        buf = memoryview(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)) if size else memoryview(b"")
    c = _Cursor(buf, path)
    magic = bytes(buf[c.take(4, "magic") : c.pos])
    if magic != b"GGUF":
        raise ValueError(f"{path}: not a GGUF file (magic {magic!r}, expected b'GGUF')")
    version = c.scalar("<I", "version")
    if version not in (2, 3):  # v1 had 32-bit counts; a byte-swapped version means a big-endian file
        raise ValueError(f"{path}: GGUF version {version} is not supported (2 or 3, little-endian)")
    n_tensors, n_kv = c.scalar("<Q", "tensor count"), c.scalar("<Q", "metadata count")
    meta = {}
    for i in range(n_kv):
        key = c.string(f"metadata key {i}")
        if key in meta:
            raise ValueError(f"{path}: metadata key {key!r} appears twice")
        meta[key] = c.value(c.scalar("<I", f"metadata {key!r} type"), f"metadata {key!r}")
    infos = []
    for i in range(n_tensors):
        name = c.string(f"tensor {i} name")
        n_dims = c.scalar("<I", f"tensor {name!r} n_dims")
        if n_dims > 4:  # GGML_MAX_DIMS
            raise ValueError(f"{path}: tensor {name!r} has {n_dims} dims (at most 4): corrupt file")
        dims = [c.scalar("<Q", f"tensor {name!r} dim {d}") for d in range(n_dims)]
        t, off = c.scalar("<I", f"tensor {name!r} type"), c.scalar("<Q", f"tensor {name!r} offset")
        infos.append((name, dims, t, off))
    align = meta.get("general.alignment", 32)
    if not isinstance(align, int) or align <= 0 or align & (align - 1):
        raise ValueError(f"{path}: general.alignment {align!r} is not a power of two")
    start = -(-c.pos // align) * align
    tensors = {}
    for name, dims, t, off in infos:
        if t not in GGML_TYPES:
            raise ValueError(f"{path}: tensor {name!r} has unknown ggml type id {t}")
        tname, block, bsize = GGML_TYPES[t]
        numel = int(np.prod(dims, dtype=np.uint64)) if dims else 1
        if dims and dims[0] % block:
            raise ValueError(f"{path}: tensor {name!r} ({tname}) row length {dims[0]} is not a multiple of "
                             f"its block size {block}")  # fmt: skip
        nbytes = numel // block * bsize
        if off % align:
            raise ValueError(f"{path}: tensor {name!r} offset {off} is not a multiple of alignment {align}")
        if start + off + nbytes > size:
            raise ValueError(f"{path}: tensor {name!r} ({tname}, shape {tuple(dims[::-1])}) data "
                             f"[{start + off}, {start + off + nbytes}) runs past the end of the file "
                             f"({size} bytes): file truncated or header corrupt")  # fmt: skip
        if name in tensors:
            raise ValueError(f"{path}: tensor {name!r} appears twice")
        tensors[name] = (tuple(dims[::-1]), t, start + off, nbytes)
    return meta, tensors, buf


# -----------------------------------------------------------------------------
# dequantization: whole tensors at once, numpy on (n_blocks, bytes per block), the same float32 arithmetic
# as gguf-py (and so transformers' GGUF loader) for bit-identical weights


def _halves(blocks, i):
    """The fp16 scalar at byte i of each block, as float32 (n_blocks, 1)."""
    return blocks[:, i : i + 2].view("<f2").astype(np.float32)


def _nibbles(qs):
    """(n, 16) bytes -> (n, 32): low nibbles are elements 0-15 of a block, high nibbles 16-31."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=1)


def _q8_0(b):
    return b[:, 2:].view(np.int8).astype(np.float32) * _halves(b, 0)


def _q4_0(b):
    return _halves(b, 0) * (_nibbles(b[:, 2:]).astype(np.int8) - np.int8(8)).astype(np.float32)


def _q4_1(b):
    return _halves(b, 0) * _nibbles(b[:, 4:]).astype(np.float32) + _halves(b, 2)


_DEQUANT = {2: _q4_0, 3: _q4_1, 8: _q8_0}  # quantized types -> float32
_PLAIN = {0: torch.float32, 1: torch.float16, 30: torch.bfloat16}  # kept in their own dtype


def gguf_tensor(path, buf, name, info) -> torch.Tensor:
    """One tensor: a view of the file for F32/F16/BF16, dequantized to float32 for Q8_0/Q4_0/Q4_1."""
    shape, t, off, nbytes = info
    if t in _PLAIN:
        dtype = _PLAIN[t]
        return torch.frombuffer(buf, dtype=dtype, count=nbytes // dtype.itemsize, offset=off).view(shape)
    if t not in _DEQUANT:
        ok = ", ".join(GGML_TYPES[k][0] for k in (*_PLAIN, *_DEQUANT))
        raise ValueError(f"{path}: tensor {name!r} has type {GGML_TYPES[t][0]}, not supported ({ok})")
    blocks = np.frombuffer(buf, np.uint8, count=nbytes, offset=off).reshape(-1, GGML_TYPES[t][2])
    return torch.from_numpy(_DEQUANT[t](blocks)).view(shape)


# -----------------------------------------------------------------------------
# checkpoint: metadata -> model.ModelConfig's fields, GGUF tensor names -> ours


def gguf_file(path, what="weights") -> str | None:
    """The GGUF file `path` names: a .gguf path, or a folder holding exactly one .gguf and none of the files
    the other loaders read for `what` ("weights" or "tokenizer"), which keep those folders. Else None."""
    path = os.fspath(path)
    if path.endswith(".gguf") or not os.path.isdir(path):  # a missing .gguf fails in read_gguf, naming it
        return path if path.endswith(".gguf") else None
    names = os.listdir(path)
    tokenizer_files = ("tokenizer.json", "tokenizer.model", "vocab.json", "encoder.json")
    others = {"weights": ("config.json", "params.json"), "tokenizer": tokenizer_files}[what]
    found = sorted(n for n in names if n.endswith(".gguf"))
    if not found or any(n in names for n in others):
        return None
    if len(found) > 1:
        raise ValueError(f"{path}: holds {len(found)} .gguf files {found}; pass the path of one")
    return os.path.join(path, found[0])


def _f32(v):
    # metadata floats are float32: 1e-5 is stored as 9.99999974738e-06; keep the shortest decimal that
    # reads back as the same float32, which is the value the model was configured with
    return float(str(np.float32(v)))


def _llama3_scaling(factors: torch.Tensor, theta: float, hd: int, path) -> dict:
    """llama.cpp stores Llama 3.1's RoPE scaling as a tensor of per-frequency divisors (rope_freqs); recover
    the llama3 rope_scaling they came from, assuming Meta's constants (low 1, high 4, length 8192)."""
    factor, low, high, old_len = float(factors.max()), 1.0, 4.0, 8192
    # convert_hf_to_gguf's formula: 1 for short wavelengths, `factor` for long ones, smooth in between
    wavelen = 2 * math.pi * theta ** (np.arange(0, hd, 2, dtype=np.float32) / hd)
    smooth = (old_len / wavelen - low) / (high - low)
    expect = np.where(wavelen < old_len / high, 1.0,
                      np.where(wavelen > old_len / low, factor, 1 / ((1 - smooth) / factor + smooth)))
    if tuple(factors.shape) != expect.shape or not np.allclose(factors.float().numpy(), expect, rtol=1e-4):
        raise ValueError(f"{path}: rope_freqs.weight holds RoPE factors that are not Llama 3's scaling "
                         f"(factor {factor}, low 1, high 4, original length 8192); not supported")
    return {"rope_type": "llama3", "factor": factor, "low_freq_factor": low, "high_freq_factor": high,
            "original_max_position_embeddings": old_len}  # fmt: skip


def _llama_config(meta, tensors, path) -> dict:
    a = "llama."

    def get(key, default=None):
        v = meta.get(a + key, default)
        if v is None:
            raise ValueError(f"{path}: metadata key {a + key!r} is missing")
        if isinstance(v, list):
            raise ValueError(f"{path}: metadata {a + key!r} is a per-layer list; not supported")
        return v

    dim, n_heads = get("embedding_length"), get("attention.head_count")
    hd = dim // n_heads
    for key in ("rope.dimension_count", "attention.key_length", "attention.value_length"):
        if meta.get(a + key, hd) != hd:
            raise ValueError(f"{path}: {a + key} = {meta[a + key]} but embedding_length / head_count = {hd}; "
                             "only full-width heads and full RoPE are supported")  # fmt: skip
    theta = _f32(get("rope.freq_base", 10000.0))
    kind = meta.get(a + "rope.scaling.type", "none")
    if kind != "none" and not (kind == "linear" and meta.get(a + "rope.scaling.factor") == 1.0):
        raise ValueError(f"{path}: {a}rope.scaling.type {kind!r} is not supported (only llama3 scaling, "
                         "which llama.cpp stores as a rope_freqs tensor)")  # fmt: skip
    tokens = meta.get("tokenizer.ggml.tokens")
    vocab = len(tokens) if tokens else meta.get(a + "vocab_size") or tensors["token_embd.weight"][0][0]
    return dict(
        arch="llama", vocab_size=vocab, dim=dim, n_layers=get("block_count"), n_heads=n_heads,
        n_kv_heads=get("attention.head_count_kv", n_heads), hidden_dim=get("feed_forward_length"),
        max_seq_len=get("context_length", 2048), norm_eps=_f32(get("attention.layer_norm_rms_epsilon", 1e-5)),
        rope_theta=theta, rope_scaling=None, tie_embeddings="output.weight" not in tensors,
    )  # fmt: skip


def _gpt2_config(meta, tensors, path) -> dict:
    try:
        dim, n_heads, a = meta["gpt2.embedding_length"], meta["gpt2.attention.head_count"], "gpt2."
        return dict(
            arch="gpt2", vocab_size=tensors["token_embd.weight"][0][0], dim=dim,
            n_layers=meta[a + "block_count"], n_heads=n_heads, n_kv_heads=n_heads,
            hidden_dim=meta.get(a + "feed_forward_length", 4 * dim), max_seq_len=meta[a + "context_length"],
            norm_eps=_f32(meta.get(a + "attention.layer_norm_epsilon", 1e-5)), tie_embeddings=True,
        )  # fmt: skip
    except KeyError as e:
        raise ValueError(f"{path}: metadata key {e} is missing") from None


def tensor_schema(cfg) -> dict:
    """{GGUF tensor name: (our name, expected torch shape, rotary heads to un-permute or 0)}; a "{}" in our
    name takes q, k, v (gpt2's fused attention)."""
    C, H, V, hd = cfg["dim"], cfg["hidden_dim"], cfg["vocab_size"], cfg["dim"] // cfg["n_heads"]
    q_out, kv_out = cfg["n_heads"] * hd, cfg["n_kv_heads"] * hd
    s = {"token_embd.weight": ("tok_emb.weight", (V, C), 0), "output_norm.weight": ("norm.weight", (C,), 0)}
    if cfg["arch"] == "gpt2":
        s["position_embd.weight"] = ("pos_emb.weight", (cfg["max_seq_len"], C), 0)
        s["output_norm.bias"] = ("norm.bias", (C,), 0)
    if not cfg["tie_embeddings"]:
        s["output.weight"] = ("lm_head.weight", (V, C), 0)
    for i in range(cfg["n_layers"]):
        b, o = f"blk.{i}.", f"layers.{i}."
        if cfg["arch"] == "gpt2":
            s[b + "attn_qkv.weight"] = (o + "attn.{}_proj.weight", (3 * C, C), 0)
            s[b + "attn_qkv.bias"] = (o + "attn.{}_proj.bias", (3 * C,), 0)
            names = {"attn_output": ("attn.o_proj", (C, C)), "ffn_up": ("mlp.up_proj", (H, C)),
                     "ffn_down": ("mlp.down_proj", (C, H)), "attn_norm": ("attn_norm", (C,)),
                     "ffn_norm": ("mlp_norm", (C,))}  # fmt: skip
            for g, (ours, shape) in names.items():
                s[f"{b}{g}.weight"] = (f"{o}{ours}.weight", shape, 0)
                s[f"{b}{g}.bias"] = (f"{o}{ours}.bias", shape[:1], 0)
            continue
        # llama.cpp's convert_hf_to_gguf permutes q/k rows to the interleaved RoPE layout; undone here
        s[b + "attn_q.weight"] = (o + "attn.q_proj.weight", (q_out, C), cfg["n_heads"])
        s[b + "attn_k.weight"] = (o + "attn.k_proj.weight", (kv_out, C), cfg["n_kv_heads"])
        s[b + "attn_v.weight"] = (o + "attn.v_proj.weight", (kv_out, C), 0)
        s[b + "attn_output.weight"] = (o + "attn.o_proj.weight", (C, q_out), 0)
        s[b + "ffn_gate.weight"] = (o + "mlp.gate_proj.weight", (H, C), 0)
        s[b + "ffn_up.weight"] = (o + "mlp.up_proj.weight", (H, C), 0)
        s[b + "ffn_down.weight"] = (o + "mlp.down_proj.weight", (C, H), 0)
        s[b + "attn_norm.weight"] = (o + "attn_norm.weight", (C,), 0)
        s[b + "ffn_norm.weight"] = (o + "mlp_norm.weight", (C,), 0)
    return s


def load_gguf(path) -> tuple[dict, dict[str, torch.Tensor], str]:
    """Read a llama or gpt2 GGUF file: (model.ModelConfig's fields, state dict under our names, source)."""
    path = str(path)
    meta, tensors, buf = read_gguf(path)
    arch = meta.get("general.architecture")
    if arch not in ("llama", "gpt2"):
        raise ValueError(f"{path}: general.architecture {arch!r} is not supported (llama, gpt2)")
    cfg = (_llama_config if arch == "llama" else _gpt2_config)(meta, tensors, path)
    # not parameters: llama's RoPE scaling factors; gpt2's output, a copy of token_embd (tied)
    extra = {"rope_freqs.weight"} if arch == "llama" else {"output.weight"}
    schema = tensor_schema(cfg)
    missing = [k for k in schema if k not in tensors]
    unknown = [k for k in tensors if k not in schema and k not in extra]
    if missing or unknown:
        raise ValueError(f"{path}: {arch} tensors missing {missing[:10]}, unexpected {unknown[:10]}")
    if arch == "gpt2" and "output.weight" in tensors:  # convert_hf_to_gguf writes the tied embedding again
        (_, _, o, n), (_, _, e, m) = tensors["output.weight"], tensors["token_embd.weight"]
        if buf[o : o + n] != buf[e : e + m]:
            raise ValueError(f"{path}: gpt2 output.weight differs from token_embd.weight: not tied")
    if "rope_freqs.weight" in tensors:
        factors = gguf_tensor(path, buf, "rope_freqs.weight", tensors["rope_freqs.weight"])
        cfg["rope_scaling"] = _llama3_scaling(factors, cfg["rope_theta"], cfg["dim"] // cfg["n_heads"], path)
    sd = {}
    for name, (ours, shape, rot_heads) in schema.items():
        if tensors[name][0] != shape:
            raise ValueError(f"{path}: tensor {name!r} has shape {tensors[name][0]}, expected {shape} from "
                             "the metadata")  # fmt: skip
        t = gguf_tensor(path, buf, name, tensors[name])
        if rot_heads:
            t = permute_rotary(t, rot_heads)
        if "{}" in ours:  # gpt2's fused attention: rows are q, k, v
            sd.update({ours.format(p): part for p, part in zip("qkv", t.chunk(3, dim=0), strict=True)})
        else:
            sd[ours] = t
    return cfg, sd, path


# -----------------------------------------------------------------------------
# tokenizer: tokenizer.ggml.* metadata -> formats.tokenizer.Tokenizer

# tokenizer.ggml.pre (llama.cpp's name for the pre-tokenizer) -> split regex, as Hugging Face's tokenizer.json
# of that model family pre-tokenizes
_PRE_PATTERNS = {
    "gpt2": GPT2_PATTERN, "smollm": digits_pattern(), "starcoder": digits_pattern(),
    "llama-bpe": LLAMA3_PATTERN, "llama3": LLAMA3_PATTERN, "llama-v3": LLAMA3_PATTERN,
    "smaug-bpe": LLAMA3_PATTERN, "qwen2": QWEN2_PATTERN, "deepseek-r1-qwen": QWEN2_PATTERN,
}  # fmt: skip
_CONTROL, _USER_DEFINED = 3, 4  # llama.cpp's token types (1 normal, 2 unknown, 5 unused, 6 byte)


def load_gguf_tokenizer(path) -> Tokenizer:
    """The byte-level BPE tokenizer (tokenizer.ggml.model "gpt2") a GGUF file describes."""
    path = str(path)
    meta, _, _ = read_gguf(path)
    kind, pre = meta.get("tokenizer.ggml.model"), meta.get("tokenizer.ggml.pre", "gpt2")
    if kind != "gpt2":
        raise ValueError(f"{path}: tokenizer.ggml.model {kind!r} is not supported (only 'gpt2', byte-level "
                         "BPE)")
    if pre not in _PRE_PATTERNS:
        raise ValueError(f"{path}: tokenizer.ggml.pre {pre!r} is not supported ({', '.join(_PRE_PATTERNS)})")
    tokens, merges = meta.get("tokenizer.ggml.tokens"), meta.get("tokenizer.ggml.merges")
    if not tokens or merges is None:
        raise ValueError(f"{path}: tokenizer.ggml.tokens or tokenizer.ggml.merges is missing")
    types = meta.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    if len(types) != len(tokens):
        raise ValueError(f"{path}: {len(types)} token types for {len(tokens)} tokens")
    user = [t for t, k in zip(tokens, types, strict=True) if k == _USER_DEFINED]
    if user:  # added tokens that are matched in any text: the tokenizer.json loader rejects them too
        raise ValueError(f"{path}: user-defined (non-special added) tokens {user[:5]} are not supported")
    specials = {t: i for i, (t, k) in enumerate(zip(tokens, types, strict=True)) if k == _CONTROL}
    vocab = {t: i for i, t in enumerate(tokens)}
    # Llama 3 vocabs come from tiktoken ranks, whose tokenizer.json sets ignore_merges: ids are ranks by
    # construction (see formats.tokenizer.bpe_to_ranks)
    check = _PRE_PATTERNS[pre] is not LLAMA3_PATTERN
    ranks, specials = bpe_to_ranks(vocab, [m.split(" ") for m in merges], path, specials, check=check)

    def token(key):
        i = meta.get(f"tokenizer.ggml.{key}_token_id")
        if i is not None and not 0 <= i < len(tokens):
            raise ValueError(f"{path}: tokenizer.ggml.{key}_token_id {i} is outside the vocab "
                             f"({len(tokens)} tokens)")
        return None if i is None else tokens[i]

    # a bos is prepended only when add_bos_token says so (SmolLM2 names <|im_start|> as bos, never adds it);
    # without the key, llama.cpp adds one for Llama 3 vocabs only
    bos = token("bos") if meta.get("tokenizer.ggml.add_bos_token", not check) else None
    return Tokenizer(ranks, _PRE_PATTERNS[pre], specials, eos=token("eos"), bos=bos,
                     chat_template=meta.get("tokenizer.chat_template"), drop_unknown_bytes=True)  # fmt: skip
