"""Hugging Face and Meta checkpoint folders: config parsing, weight files, and our parameter names.

A checkpoint is read into plain data, a dict of model.ModelConfig's fields and a state dict under our
parameter names; model.from_pretrained builds the Transformer from them. Layouts: Hugging Face
(`config.json` + `model.safetensors`, sharded safetensors with an index, or `pytorch_model.bin`) with
model_type gpt2 or llama, and Meta (`params.json` + `consolidated.*.pth`, split model-parallel).
"""

import glob
import json
import os

import torch

from formats.safetensors import read_safetensors, write_safetensors
from formats.tokenizer import read_json


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
            weight_map = read_json(os.path.join(path, index)).get("weight_map")
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


def _config_from_hf(c: dict, path) -> dict:
    mt = c.get("model_type")
    try:
        if mt == "gpt2":
            act = c.get("activation_function", "gelu_new")
            if act not in ("gelu_new", "gelu_pytorch_tanh"):
                raise ValueError(f"{path}: gpt2 activation_function {act!r} is not supported (gelu_new)")
            return dict(
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
            return dict(
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


def _config_from_meta(p: dict, path, vocab_size: int) -> dict:
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
        return dict(
            arch="llama", vocab_size=p["vocab_size"] if p.get("vocab_size", -1) > 0 else vocab_size, dim=dim,
            n_layers=p["n_layers"], n_heads=n_heads, n_kv_heads=p.get("n_kv_heads") or n_heads,
            hidden_dim=hidden, max_seq_len=p.get("max_seq_len", max_len),
            norm_eps=p.get("norm_eps", 1e-5), rope_theta=theta, rope_scaling=scaling, tie_embeddings=False,
        )  # fmt: skip
    except KeyError as e:
        raise ValueError(f"{path}: params.json is missing key {e}") from None


def permute_rotary(w, n_heads):
    # Meta rotates interleaved pairs (2i, 2i+1); HF's converter permutes q/k rows so the rotate_half
    # RoPE (pairs i, i + hd/2) computes the same thing. We do the same at load time.
    out, inp = w.shape
    return w.view(n_heads, out // n_heads // 2, 2, inp).transpose(1, 2).reshape(out, inp)


def unpermute_rotary(w, n_heads):
    """Inverse of permute_rotary: our q/k rows back to the interleaved order (scripts/export_gguf.py)."""
    out, inp = w.shape
    return w.view(n_heads, 2, out // n_heads // 2, inp).transpose(1, 2).reshape(out, inp)


def _split_c_attn(prefix, C):
    """GPT-2 c_attn weight (C, 3C) or bias (3C,) -> our q/k/v_proj weights (out, in) or biases."""

    def fn(t):
        ext = "weight" if t.dim() == 2 else "bias"
        q, k, v = (x.t() if t.dim() == 2 else x for x in t.split(C, dim=-1))
        p = f"{prefix}attn."
        return {f"{p}q_proj.{ext}": q, f"{p}k_proj.{ext}": k, f"{p}v_proj.{ext}": v}

    return fn


def _checkpoint_schema(cfg: dict, layout: str):
    """{checkpoint name: (expected shape, fn(tensor) -> {our name: tensor})} for a layout."""
    C, H, V, hd = cfg["dim"], cfg["hidden_dim"], cfg["vocab_size"], cfg["dim"] // cfg["n_heads"]
    q_out, kv_out = cfg["n_heads"] * hd, cfg["n_kv_heads"] * hd
    same = lambda ours: lambda t: {ours: t}
    s = {}
    if layout == "gpt2":  # Conv1D weights are stored (in, out): transpose; c_attn holds q, k, v
        s["wte.weight"] = ((V, C), same("tok_emb.weight"))
        s["wpe.weight"] = ((cfg["max_seq_len"], C), same("pos_emb.weight"))
        for i in range(cfg["n_layers"]):
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
    if not cfg["tie_embeddings"]:
        s["lm_head.weight" if hf else "output.weight"] = ((V, C), same("lm_head.weight"))
    for i in range(cfg["n_layers"]):
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
                nh = cfg["n_heads"] if ours == "attn.q_proj" else cfg["n_kv_heads"]
                fn = lambda t, n=f"{o}{ours}.weight", nh=nh: {n: permute_rotary(t, nh)}
            key = f"model.layers.{i}.{hf_name}.weight" if hf else f"layers.{i}.{meta_name}.weight"
            s[key] = (shape, fn)
    return s


# derived buffers some older checkpoints carry: recomputed here, so safe to drop
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq", ".attn.bias", ".attn.masked_bias", "rope.freqs")


def _to_our_names(cfg: dict, sd: dict, layout: str, source: str) -> dict[str, torch.Tensor]:
    """A checkpoint's tensors under our parameter names, each checked against the config's shape."""
    if layout == "gpt2":  # GPT2LMHeadModel prefixes "transformer."; bare GPT2Model checkpoints don't
        sd = {k.removeprefix("transformer."): v for k, v in sd.items()}
        if "lm_head.weight" in sd:  # tied to wte; the tie is what we load
            sd.pop("lm_head.weight")
    if layout == "hf" and cfg["tie_embeddings"] and "lm_head.weight" in sd:
        sd = dict(sd)
        sd.pop("lm_head.weight")
    schema = _checkpoint_schema(cfg, layout)
    missing = [k for k in schema if k not in sd]
    if missing:
        raise ValueError(f"{source}: missing tensor(s) {missing[:20]}{' ...' if len(missing) > 20 else ''}")
    extra = [k for k in sd if k not in schema and not k.endswith(_IGNORED_SUFFIXES)]
    if extra:
        raise ValueError(f"{source}: unexpected tensor(s) {extra[:20]}{' ...' if len(extra) > 20 else ''}")
    ours = {}
    for name, (shape, fn) in schema.items():
        t = sd[name]
        if tuple(t.shape) != shape:
            raise ValueError(
                f"{source}: tensor {name!r} has shape {tuple(t.shape)}, expected {shape} from the config"
            )
        ours.update(fn(t))
    return ours


def load_checkpoint(path) -> tuple[dict, dict[str, torch.Tensor], str]:
    """Read a Hugging Face (config.json) or Meta (params.json + consolidated.*.pth) Llama/GPT-2 folder.

    Returns (config, state_dict, source): model.ModelConfig's fields; the checkpoint's tensors under our
    parameter names, in its own dtype and not copied (views of memory-mapped files); the weights file(s)
    read, for error messages.
    """
    path = str(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"checkpoint folder {path} not found")
    cfg_path, params_path = os.path.join(path, "config.json"), os.path.join(path, "params.json")
    if os.path.isfile(cfg_path):
        hf = read_json(cfg_path)
        cfg = _config_from_hf(hf, cfg_path)
        sd, source = _load_hf_weights(path)
        return cfg, _to_our_names(cfg, sd, "gpt2" if cfg["arch"] == "gpt2" else "hf", source), source
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
        params = read_json(params_path)
        emb = sd.get("tok_embeddings.weight")
        cfg = _config_from_meta(params, params_path, emb.shape[0] if emb is not None else -1)
        source = f"{path}/consolidated.*.pth"
        return cfg, _to_our_names(cfg, sd, "meta", source), source
    raise FileNotFoundError(f"{path}: no config.json (Hugging Face) or params.json (Meta) found")


def save_checkpoint(cfg: dict, sd: dict[str, torch.Tensor], path):
    """Write config.json + model.safetensors in the Hugging Face layout (GPT-2 or Llama).

    cfg: model.ModelConfig's fields; sd: a plain Transformer's state dict (our parameter names).
    """
    os.makedirs(path, exist_ok=True)
    dtype = str(sd["tok_emb.weight"].dtype).removeprefix("torch.")
    out = {}
    if cfg["arch"] == "gpt2":
        if cfg["n_kv_heads"] != cfg["n_heads"] or not cfg["tie_embeddings"]:
            raise ValueError("save_pretrained: a gpt2 model needs n_kv_heads == n_heads and tied embeddings")
        hf = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": cfg["vocab_size"],
              "n_embd": cfg["dim"], "n_layer": cfg["n_layers"], "n_head": cfg["n_heads"],
              "n_inner": cfg["hidden_dim"], "n_positions": cfg["max_seq_len"], "n_ctx": cfg["max_seq_len"],
              "layer_norm_epsilon": cfg["norm_eps"], "activation_function": "gelu_new",
              "tie_word_embeddings": True}  # fmt: skip
        out["wte.weight"], out["wpe.weight"] = sd["tok_emb.weight"], sd["pos_emb.weight"]
        for i in range(cfg["n_layers"]):
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
        hf = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": cfg["vocab_size"],
              "hidden_size": cfg["dim"], "intermediate_size": cfg["hidden_dim"],
              "num_hidden_layers": cfg["n_layers"], "num_attention_heads": cfg["n_heads"],
              "num_key_value_heads": cfg["n_kv_heads"],
              "head_dim": cfg["dim"] // cfg["n_heads"], "max_position_embeddings": cfg["max_seq_len"],
              "rms_norm_eps": cfg["norm_eps"], "hidden_act": "silu", "rope_theta": cfg["rope_theta"],
              "rope_scaling": cfg["rope_scaling"], "tie_word_embeddings": cfg["tie_embeddings"],
              "attention_bias": False, "mlp_bias": False}  # fmt: skip
        for name, (_, fn) in _checkpoint_schema(cfg, "hf").items():
            (ours,) = fn(torch.empty(0)).keys()  # every llama entry is a 1:1 rename
            out[name] = sd[ours]
    hf["torch_dtype"] = dtype
    write_safetensors(out, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(hf, f, indent=2)
