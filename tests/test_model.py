"""model.py and formats/ checkpoints: logits parity with transformers, save round trip, bad input."""

import json
import os
import struct

import pytest
import torch
from conftest import hf_gpt2, hf_llama, meta_llama, random_model

import model as M
from formats.safetensors import read_safetensors, write_safetensors


def ids(T, B=2, vocab=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (B, T), generator=g)


def max_diff(ours, ref, x):
    with torch.no_grad():
        return (ours(x).float() - ref(x).logits.float()).abs().max().item()


@pytest.mark.parametrize("fmt", ["single", "sharded", "bin"])
def test_gpt2_parity(tmp_path, fmt):
    ref, path = hf_gpt2(tmp_path, fmt=fmt)
    files = os.listdir(path)
    expect = {"single": "model.safetensors", "sharded": "model.safetensors.index.json",
              "bin": "pytorch_model.bin"}[fmt]  # fmt: skip
    assert expect in files, files
    ours = M.from_pretrained(path)
    assert ours.config.arch == "gpt2" and ours.config.tie_embeddings
    assert max_diff(ours, ref, ids(40)) < 1e-4


def test_llama2_mha_untied_parity(tmp_path):
    ref, path = hf_llama(tmp_path, style="llama2")
    ours = M.from_pretrained(path)
    c = ours.config
    assert (c.n_heads, c.n_kv_heads, c.tie_embeddings, c.rope_scaling) == (4, 4, False, None)
    assert ours.lm_head.weight is not ours.tok_emb.weight
    assert max_diff(ours, ref, ids(48)) < 1e-4


@pytest.mark.parametrize("rope_keys", ["rope_parameters", "classic"])
def test_llama32_gqa_tied_rope_scaling_parity(tmp_path, rope_keys):
    ref, path = hf_llama(tmp_path, style="llama3.2", rope_keys=rope_keys)
    ours = M.from_pretrained(path)
    c = ours.config
    assert (c.n_kv_heads, c.tie_embeddings, c.rope_theta) == (2, True, 500000.0)
    assert c.rope_scaling["rope_type"] == "llama3"
    assert c.rope_scaling["original_max_position_embeddings"] == 32
    assert ours.lm_head.weight is ours.tok_emb.weight
    x = ids(128)
    assert max_diff(ours, ref, x) < 1e-4
    # the scaling must matter at this length, otherwise the parity above proves nothing about it
    plain = M.Transformer(M.ModelConfig(**{**c.__dict__, "rope_scaling": None}))
    plain.load_state_dict(ours.state_dict())
    with torch.no_grad():
        assert (plain(x) - ours(x)).abs().max().item() > 1e-3


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_checkpoint(tmp_path, dtype):
    ref, path = hf_llama(tmp_path, style="llama3.2", dtype=dtype)
    ours = M.from_pretrained(path)  # dtype=None keeps the checkpoint's dtype
    assert {p.dtype for p in ours.parameters()} == {dtype}
    x = ids(64)
    with torch.no_grad():
        out, want = ours(x).float(), ref(x).logits.float()
    assert (out - want).abs().max().item() < 0.05 * want.abs().max().item()
    # cast on load: fp32 from bf16 weights == transformers run in fp32 on the same weights
    ours32 = M.from_pretrained(path, dtype=torch.float32)
    assert ours32.tok_emb.weight.dtype == torch.float32
    assert max_diff(ours32, ref.float(), x) < 1e-4


@pytest.mark.parametrize("n_shards", [1, 2])
def test_meta_layout_parity(tmp_path, n_shards):
    ref, path = meta_llama(tmp_path, n_shards=n_shards)
    ours = M.from_pretrained(path)
    c = ours.config
    assert (c.hidden_dim, c.n_kv_heads, c.rope_theta, c.tie_embeddings) == (192, 2, 500000.0, False)
    assert max_diff(ours, ref, ids(40)) < 1e-4


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_save_pretrained_roundtrip(tmp_path, arch):
    from transformers import AutoModelForCausalLM

    scaling = {"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 16}  # fmt: skip
    extra = {"rope_scaling": scaling, "tie_embeddings": True} if arch == "llama" else {}
    ours = random_model(arch, std=0.1, vocab_size=80, **extra)
    M.save_pretrained(ours, tmp_path)
    ref = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    x = ids(100, vocab=80)
    assert max_diff(ours, ref, x) < 1e-4
    again = M.from_pretrained(tmp_path)
    assert again.config == ours.config
    with torch.no_grad():
        assert torch.equal(again(x), ours(x))


def test_save_pretrained_keeps_bf16(tmp_path):
    ours = random_model("llama", std=0.1).to(torch.bfloat16)
    M.save_pretrained(ours, tmp_path)
    assert json.load(open(tmp_path / "config.json"))["torch_dtype"] == "bfloat16"
    again = M.from_pretrained(tmp_path)
    assert again.tok_emb.weight.dtype == torch.bfloat16
    for (n, a), (_, b) in zip(ours.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(a, b), n


def test_forward_padding_mask_and_hidden():
    m = random_model("llama", std=0.2)
    x = ids(10, B=1, vocab=64)
    with torch.no_grad():
        logits, hidden = m(x, return_hidden=True)
        assert logits.shape == (1, 10, 64) and hidden.shape == (1, 10, 32)
        assert torch.allclose(m.lm_head(hidden), logits)
        # the same sequence left-padded by 3 with per-row positions gives the same logits
        padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), x], 1)
        mask = torch.tensor([[False] * 3 + [True] * 10])
        pos = torch.cat([torch.zeros(1, 3, dtype=torch.long), torch.arange(10)[None]], 1)
        out = m(padded, pos=pos, attn_mask=mask)
        assert torch.isfinite(out).all()
        assert (out[:, 3:] - logits).abs().max().item() < 1e-5


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_hidden_only_matches_full_forward(arch):
    m = random_model(arch, std=0.2)
    x = ids(12, B=2, vocab=64)
    with torch.no_grad():
        logits, hidden = m(x, return_hidden=True)
        h = m(x, hidden_only=True)
        assert h.shape == hidden.shape == (2, 12, 32)
        assert torch.equal(h, hidden)
        # lm_head on a few positions only gives those positions' logits
        sel = torch.tensor([[0, 5, 11], [3, 3, 7]])  # (B, R)
        part = m.lm_head(h.gather(1, sel[..., None].expand(2, 3, 32)))  # (B, R, V)
        assert torch.allclose(part, logits.gather(1, sel[..., None].expand(2, 3, 64)), atol=1e-6)


# --- bad input: each error must name the problem ---


def test_missing_folder_and_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        M.from_pretrained(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="config.json"):
        M.from_pretrained(tmp_path)
    _, path = hf_gpt2(tmp_path / "m")
    os.remove(os.path.join(path, "model.safetensors"))
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        M.from_pretrained(path)


def test_bad_config(tmp_path):
    _, path = hf_gpt2(tmp_path)
    cfg = os.path.join(path, "config.json")
    c = json.load(open(cfg))
    json.dump({**c, "model_type": "mamba"}, open(cfg, "w"))
    with pytest.raises(ValueError, match="unknown model_type 'mamba'"):
        M.from_pretrained(path)
    open(cfg, "w").write("{not json")
    with pytest.raises(ValueError, match=r"config\.json: invalid JSON"):
        M.from_pretrained(path)


def _rewrite(path, fn):
    f = os.path.join(path, "model.safetensors")
    sd = read_safetensors(f)
    sd = {k: v.clone() for k, v in sd.items()}
    write_safetensors(fn(sd), f)


def test_missing_extra_and_misshapen_tensors(tmp_path):
    _, path = hf_llama(tmp_path, style="llama2")
    _rewrite(path, lambda sd: {k: v for k, v in sd.items() if k != "model.layers.1.mlp.up_proj.weight"})
    with pytest.raises(ValueError, match=r"missing tensor\(s\) \['model.layers.1.mlp.up_proj.weight'\]"):
        M.from_pretrained(path)

    _, path = hf_llama(tmp_path / "b", style="llama2")
    _rewrite(path, lambda sd: {**sd, "model.layers.0.extra.weight": torch.zeros(3)})
    with pytest.raises(ValueError, match=r"unexpected tensor\(s\) \['model.layers.0.extra.weight'\]"):
        M.from_pretrained(path)

    _, path = hf_llama(tmp_path / "c", style="llama2")
    _rewrite(path, lambda sd: {**sd, "model.norm.weight": torch.ones(63)})
    with pytest.raises(ValueError, match=r"'model.norm.weight' has shape \(63,\), expected \(64,\)"):
        M.from_pretrained(path)


def test_corrupt_safetensors(tmp_path):
    _, path = hf_gpt2(tmp_path)
    f = os.path.join(path, "model.safetensors")
    raw = open(f, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    # truncated in the data: the last tensors' offsets now run past the end
    open(f, "wb").write(raw[: len(raw) - 100])
    with pytest.raises(ValueError, match=r"model\.safetensors: tensor '.*' data_offsets .* past the end"):
        M.from_pretrained(path)
    # truncated inside the header
    open(f, "wb").write(raw[: 8 + n // 2])
    with pytest.raises(ValueError, match=r"model\.safetensors: header length \d+ runs past the end"):
        M.from_pretrained(path)
    open(f, "wb").write(raw[:5])
    with pytest.raises(ValueError, match=r"model\.safetensors: truncated"):
        M.from_pretrained(path)
    # header offsets past the end of an intact file
    header = json.loads(raw[8 : 8 + n])
    name = next(k for k in header if k != "__metadata__")
    header[name]["data_offsets"][1] += 10**9
    hb = json.dumps(header).encode()
    open(f, "wb").write(struct.pack("<Q", len(hb)) + hb + raw[8 + n :])
    with pytest.raises(ValueError, match=rf"tensor '{name}' data_offsets .* past the end"):
        M.from_pretrained(path)
    # offsets inside the file but not matching shape * itemsize
    header = json.loads(raw[8 : 8 + n])
    header[name]["data_offsets"][1] -= 4
    hb = json.dumps(header).encode()
    open(f, "wb").write(struct.pack("<Q", len(hb)) + hb + raw[8 + n :])
    with pytest.raises(ValueError, match=rf"tensor '{name}' data_offsets .* needs"):
        M.from_pretrained(path)


def test_safetensors_roundtrip_dtypes(tmp_path):
    tensors = {"f32": torch.randn(3, 5), "f16": torch.randn(4).half(), "bf16": torch.randn(2, 2).bfloat16(),
               "i64": torch.arange(7), "scalar": torch.tensor(3.5), "empty": torch.zeros(0, 4)}  # fmt: skip
    write_safetensors(tensors, tmp_path / "t.safetensors")
    back = read_safetensors(tmp_path / "t.safetensors")
    assert back.keys() == tensors.keys()
    for k, v in tensors.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k], v), k
    # and the reference implementation reads our file
    from safetensors.torch import load_file

    assert torch.equal(load_file(tmp_path / "t.safetensors")["bf16"], tensors["bf16"])


def test_save_pretrained_rejects_wrapped_layers(tmp_path):
    m = random_model("llama", std=0.1)
    m.layers[0].attn.q_proj = torch.nn.Sequential(m.layers[0].attn.q_proj)  # stands in for an adapter wrapper
    with pytest.raises(ValueError, match=r"layers\.0\.attn\.q_proj\.0\.weight"):
        M.save_pretrained(m, tmp_path)


def test_resave_over_loaded_checkpoint(tmp_path):
    """Loading then saving to the same folder (how cached tiny models get updated) must not corrupt."""
    ours = random_model("llama", std=0.1)
    M.save_pretrained(ours, tmp_path)
    loaded = M.from_pretrained(tmp_path)
    with torch.no_grad():
        loaded.norm.weight.mul_(2.0)
    M.save_pretrained(loaded, tmp_path)
    again = M.from_pretrained(tmp_path)
    assert torch.equal(again.norm.weight, 2.0 * ours.norm.weight)
    assert torch.equal(again.layers[1].mlp.down_proj.weight, ours.layers[1].mlp.down_proj.weight)
