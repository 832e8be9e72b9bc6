"""GGUF checkpoints (formats/gguf.py): tiny random models written with the `gguf` package as llama.cpp's
convert_hf_to_gguf would, loaded through model.from_pretrained, compared with transformers' own GGUF loader
(which dequantizes with gguf-py) and with the original model. Nothing is downloaded."""

import math
import os
import struct

import numpy as np
import pytest
import torch
from conftest import unpermute_rotary

import model as M
from formats.gguf import gguf_tensor, read_gguf

gguf = pytest.importorskip("gguf")
Q = gguf.GGMLQuantizationType
LLAMA_NAMES = {  # HF suffix -> GGUF name, per layer
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
}  # fmt: skip


def _llama(tie=False, scaling=None, seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    # every row length (64, 192) a multiple of 32, the quantization block
    cfg = LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=192, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      rms_norm_eps=1e-5, rope_theta=500000.0, tie_word_embeddings=tie,
                      rope_scaling=scaling)  # fmt: skip
    ref = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # larger weights than the 0.02 init: logits far from zero, quantization visible
        for p in ref.parameters():
            p.mul_(10.0) if p.dim() > 1 else p.uniform_(0.5, 1.5)
    return ref


def _add(w, name, t, qtype):
    """A tensor as llama.cpp writes it: 1-D ones (norms) stay F32, matrices in qtype."""
    a = t.detach().float().numpy()
    if a.ndim == 1 or qtype == Q.F32:
        w.add_tensor(name, a)
    elif qtype == Q.F16:
        w.add_tensor(name, a.astype(np.float16))
    else:
        w.add_tensor(name, gguf.quants.quantize(a, qtype), raw_dtype=qtype)


def write_llama_gguf(path, ref, qtype=Q.F32, rope_freqs=None, arch="llama", skip=()):
    c, sd = ref.config, ref.state_dict()
    hd = c.hidden_size // c.num_attention_heads
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("tiny")
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_rope_freq_base(c.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_rope_dimension_count(hd)
    w.add_vocab_size(c.vocab_size)
    tensors = {"token_embd.weight": sd["model.embed_tokens.weight"],
               "output_norm.weight": sd["model.norm.weight"]}  # fmt: skip
    if not c.tie_word_embeddings:
        tensors["output.weight"] = sd["lm_head.weight"]
    if rope_freqs is not None:
        tensors["rope_freqs.weight"] = rope_freqs
    for i in range(c.num_hidden_layers):
        for hf, g in LLAMA_NAMES.items():
            t = sd[f"model.layers.{i}.{hf}.weight"]
            # convert_hf_to_gguf's permute takes q/k rows to the interleaved (Meta) RoPE layout
            if g == "attn_q":
                t = unpermute_rotary(t, c.num_attention_heads)
            if g == "attn_k":
                t = unpermute_rotary(t, c.num_key_value_heads)
            tensors[f"blk.{i}.{g}.weight"] = t
    for name, t in tensors.items():
        if name not in skip:
            _add(w, name, t, qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return str(path)


def _hf_from_gguf(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path),
                                                dtype=torch.float32).eval()  # fmt: skip


IDS = torch.tensor([[5, 17, 3, 88, 42, 42, 7, 60, 1, 95, 33, 12], [9, 9, 2, 71, 50, 4, 19, 80, 26, 0, 64, 1]])


@pytest.mark.parametrize("qtype", [Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1], ids=lambda q: q.name)
def test_llama_matches_transformers_gguf(tmp_path, qtype):
    ref = _llama(tie=qtype == Q.Q8_0)  # one tied case: no output.weight in the file
    path = write_llama_gguf(tmp_path / "tiny.gguf", ref, qtype)
    ours = M.from_pretrained(path, dtype=torch.float32)
    assert ours.config.tie_embeddings == (qtype == Q.Q8_0) and ours.config.n_kv_heads == 2
    assert ours.config.rope_theta == 500000.0 and ours.config.norm_eps == 1e-5
    hf = _hf_from_gguf(path)
    with torch.no_grad():
        a, b = ours(IDS), hf(IDS).logits
    assert b.abs().max() > 1.0  # not a degenerate comparison
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    # dequantized weights are gguf-py's exactly
    meta, tensors, buf = read_gguf(path)
    r = gguf.GGUFReader(path).get_tensor(5)
    mine = gguf_tensor(path, buf, r.name, tensors[r.name])
    theirs = gguf.quants.dequantize(r.data, r.tensor_type).reshape(mine.shape)
    assert torch.equal(mine.float(), torch.tensor(theirs).float())
    b = ref(IDS).logits
    if qtype == Q.F32:  # lossless: the original model's logits (q/k un-permuted back)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    elif qtype in (Q.F16, Q.BF16, Q.Q8_0):  # near the original (q/k left permuted would be ~0.9 off)
        assert (a - b).norm() / b.norm() < {Q.F16: 0.01, Q.BF16: 0.05, Q.Q8_0: 0.1}[qtype]
    if qtype in (Q.F16, Q.BF16):  # without dtype, a float16 / bfloat16 file stays in its dtype
        dtype = {Q.F16: torch.float16, Q.BF16: torch.bfloat16}[qtype]
        assert M.from_pretrained(path).tok_emb.weight.dtype == dtype


def _rope_freqs(theta, hd, factor, low, high, old_len):
    """convert_hf_to_gguf's rope_freqs for Llama 3.1 scaling: a divisor per frequency."""
    freqs = 1.0 / theta ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd)
    out = []
    for f in freqs.tolist():
        wavelen = 2 * math.pi / f
        if wavelen < old_len / high:
            out.append(1.0)
        elif wavelen > old_len / low:
            out.append(factor)
        else:
            smooth = (old_len / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return torch.tensor(out, dtype=torch.float32)


def test_llama31_rope_freqs(tmp_path):
    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192}  # fmt: skip
    ref = _llama(scaling=dict(scaling))  # a copy: transformers adds rope_theta to it
    freqs = _rope_freqs(500000.0, 16, 8.0, 1.0, 4.0, 8192)
    assert 1.0 < freqs[4] < 8.0 and freqs[0] == 1.0 and freqs[-1] == 8.0  # all three bands are exercised
    path = write_llama_gguf(tmp_path / "tiny.gguf", ref, rope_freqs=freqs)
    ours = M.from_pretrained(path)
    assert ours.config.rope_scaling == scaling
    ids = torch.arange(96).repeat(2)[None]  # 192 positions: the scaled low frequencies matter
    torch.testing.assert_close(ours(ids), ref(ids).logits, rtol=1e-4, atol=1e-4)
    path = write_llama_gguf(tmp_path / "odd.gguf", ref, rope_freqs=freqs * 1.5)
    with pytest.raises(ValueError, match="odd.gguf: rope_freqs.weight holds RoPE factors that are not Llama"):
        M.from_pretrained(path)


def test_gpt2_matches_transformers_gguf(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    # transformers reads gpt2.context_length as n_ctx and leaves n_positions at 1024, and its vocab size from
    # the token list: a model it can load back
    c = GPT2Config(vocab_size=96, n_embd=64, n_layer=2, n_head=4, n_positions=1024)
    ref = GPT2LMHeadModel(c).eval()
    sd = {k.removeprefix("transformer."): v for k, v in ref.state_dict().items()}
    w = gguf.GGUFWriter(str(tmp_path / "gpt2.gguf"), "gpt2")
    w.add_context_length(1024)
    w.add_tokenizer_model("gpt2")
    w.add_token_list([chr(0x100 + i) for i in range(96)])
    w.add_embedding_length(64)
    w.add_feed_forward_length(256)
    w.add_block_count(2)
    w.add_head_count(4)
    w.add_layer_norm_eps(c.layer_norm_epsilon)
    # convert_hf_to_gguf: Conv1D weights transposed to (out, in); output.weight a copy of the embedding
    out = {"token_embd.weight": sd["wte.weight"], "position_embd.weight": sd["wpe.weight"],
           "output_norm.weight": sd["ln_f.weight"], "output_norm.bias": sd["ln_f.bias"],
           "output.weight": sd["wte.weight"]}  # fmt: skip
    names = {"ln_1": "attn_norm", "attn.c_attn": "attn_qkv", "attn.c_proj": "attn_output", "ln_2": "ffn_norm",
             "mlp.c_fc": "ffn_up", "mlp.c_proj": "ffn_down"}  # fmt: skip
    for i in range(2):
        for hf, g in names.items():
            wt = sd[f"h.{i}.{hf}.weight"]
            out[f"blk.{i}.{g}.weight"] = wt if wt.dim() == 1 else wt.t()
            out[f"blk.{i}.{g}.bias"] = sd[f"h.{i}.{hf}.bias"]
    for name, t in out.items():
        _add(w, name, t, Q.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    path = str(tmp_path / "gpt2.gguf")
    ours = M.from_pretrained(tmp_path)  # a folder holding one .gguf
    assert ours.config.arch == "gpt2" and ours.config.max_seq_len == 1024
    with torch.no_grad():
        torch.testing.assert_close(ours(IDS), _hf_from_gguf(path)(IDS).logits, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def small_gguf(tmp_path_factory):
    return write_llama_gguf(tmp_path_factory.mktemp("g") / "tiny.gguf", _llama(tie=True), Q.Q8_0)


def test_truncated_files(small_gguf, tmp_path):
    data = open(small_gguf, "rb").read()
    _, tensors, _ = read_gguf(small_gguf)
    last = max(tensors, key=lambda n: tensors[n][2])
    cases = {  # cut at -> what the error says
        2: "magic", 6: "version", 20: "metadata count",
        40: "metadata key 0 at offset 32 needs 20 bytes, the file has 40",
        60: "metadata 'general.architecture' length at offset 56",
        len(data) - 100: f"tensor {last!r} \\(F32, shape \\(64,\\)\\) data .* runs past the end of the file",
    }  # fmt: skip
    for cut, what in cases.items():
        (tmp_path / "cut.gguf").write_bytes(data[:cut])
        with pytest.raises(ValueError, match=f"cut.gguf: .*{what}"):
            M.from_pretrained(tmp_path / "cut.gguf")
    # cut inside the tensor infos: the error names the tensor being read
    infos_end = data.index(b"blk.1.ffn_norm.weight") + 10
    (tmp_path / "cut.gguf").write_bytes(data[:infos_end])
    with pytest.raises(ValueError, match=r"cut.gguf: truncated or corrupt GGUF: tensor \d+ name at offset"):
        read_gguf(tmp_path / "cut.gguf")


def test_corrupt_files(small_gguf, tmp_path):
    data = bytearray(open(small_gguf, "rb").read())
    bad = tmp_path / "bad.gguf"

    def expect(blob, match):
        bad.write_bytes(bytes(blob))
        with pytest.raises(ValueError, match=match):
            M.from_pretrained(bad)

    expect(b"GGML" + data[4:], "bad.gguf: not a GGUF file")
    expect(data[:4] + struct.pack("<I", 1) + data[8:], "GGUF version 1 is not supported")
    k = data.index(b"general.architecture") + len("general.architecture")
    expect(data[:k] + struct.pack("<I", 99) + data[k + 4 :], "architecture' has unknown value type 99")
    n = data.index(b"token_embd.weight") + len("token_embd.weight")  # then n_dims, 2 dims, type, offset
    expect(data[:n] + struct.pack("<I", 7) + data[n + 4 :], "tensor 'token_embd.weight' has 7 dims")
    off = n + 4 + 16 + 4
    expect(data[:off] + struct.pack("<Q", 1 << 40) + data[off + 8 :], "'token_embd.weight' .* runs past")
    expect(data[:off] + struct.pack("<Q", 3) + data[off + 8 :], "offset 3 is not a multiple of alignment 32")
    expect(data[: n + 20] + struct.pack("<I", 200) + data[n + 24 :], "'token_embd.weight' has unknown ggml")
    a = k + 4 + 8  # the architecture's value, after its type and length
    assert data[a : a + 5] == b"llama"
    expect(data[:a] + b"mamba" + data[a + 5 :], "general.architecture 'mamba' is not supported")


def test_unsupported_and_inconsistent(tmp_path):
    ref = _llama()
    path = write_llama_gguf(tmp_path / "q5.gguf", ref, Q.Q5_0)
    msg = r"q5.gguf: tensor 'token_embd.weight' has type Q5_0, not supported \(F32, F16, BF16, Q4_0, Q4_1"
    with pytest.raises(ValueError, match=msg):
        M.from_pretrained(path)
    path = write_llama_gguf(tmp_path / "part.gguf", ref, skip={"blk.1.ffn_up.weight"})
    with pytest.raises(ValueError, match=r"part.gguf: llama tensors missing \['blk.1.ffn_up.weight'\]"):
        M.from_pretrained(path)
    path = write_llama_gguf(tmp_path / "qwen.gguf", ref, arch="qwen2")
    with pytest.raises(ValueError, match="qwen.gguf: general.architecture 'qwen2' is not supported"):
        M.from_pretrained(path)
    two = tmp_path / "two"
    two.mkdir()
    for n in ("a.gguf", "b.gguf"):
        write_llama_gguf(two / n, ref)
    with pytest.raises(ValueError, match=r"holds 2 .gguf files \['a.gguf', 'b.gguf'\]"):
        M.from_pretrained(two)
    with pytest.raises(ValueError, match="tokenizer.ggml.model None is not supported"):
        M.load_tokenizer(two / "a.gguf")


def test_folder_dispatch(small_gguf, tmp_path):
    """A folder with one .gguf loads it, unless the other loaders' files are there: config.json (weights),
    tokenizer.json and co. (tokenizer)."""
    import shutil

    shutil.copy(small_gguf, tmp_path / "m.gguf")
    (tmp_path / "tokenizer.json").write_text("{}")
    assert M.from_pretrained(tmp_path).config.vocab_size == 96  # the weights come from the GGUF
    with pytest.raises(ValueError, match="tokenizer.json: found model None"):  # the tokenizer from the json
        M.load_tokenizer(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="config.json: unknown model_type None"):
        M.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="nope.gguf"):
        M.from_pretrained(tmp_path / "nope.gguf")


def test_export_with_adapter_folded(tmp_path):
    """scripts/export_gguf.py: a LoRA folded into a GGUF file for llama.cpp. transformers' GGUF loader (which
    undoes llama.cpp's q/k row order itself) must see the model we run with the adapter folded in."""
    import subprocess
    import sys

    from actor import load_frozen
    from lora import apply_lora, save_lora

    src = write_llama_gguf(tmp_path / "src.gguf", _llama(), Q.Q8_0)
    tuned = apply_lora(M.from_pretrained(src), r=4, alpha=8, targets=["q_proj", "k_proj", "down_proj"])
    with torch.no_grad():
        for name, p in tuned.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # save_lora's B starts at zero: an update that does nothing
    save_lora(tuned, tmp_path / "a.pt")
    with torch.no_grad():
        want = load_frozen(src, adapter=str(tmp_path / "a.pt"))(IDS)
        plain = M.from_pretrained(src)(IDS)
    assert (want - plain).norm() / plain.norm() > 0.1  # the adapter changes the model a lot
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts",
                          "export_gguf.py")  # fmt: skip
    for kind in ("f32", "q8_0"):
        out = tmp_path / kind / f"{kind}.gguf"
        out.parent.mkdir()
        done = subprocess.run([sys.executable, script, src, tmp_path / "a.pt", out, "--type", kind],
                              capture_output=True, text=True)  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert "6 matrices with the adapter folded in" in done.stdout  # 2 layers x (q, k, down)
        with torch.no_grad():
            theirs = _hf_from_gguf(str(out))(IDS).logits
        if kind == "f32":
            torch.testing.assert_close(theirs, want, rtol=1e-4, atol=1e-4)
        else:
            assert (theirs - want).norm() / want.norm() < 0.05  # Q8_0's rounding, far below the update
        a, b = gguf.GGUFReader(src), gguf.GGUFReader(str(out))
        assert {k: f.contents() for k, f in a.fields.items() if not k.startswith("GGUF.")} == {
            k: f.contents() for k, f in b.fields.items() if not k.startswith("GGUF.")}
        untouched = {t.name: t for t in b.tensors if "attn_q" not in t.name and "attn_k" not in t.name
                     and "ffn_down" not in t.name}  # fmt: skip
        assert len(untouched) == len(a.tensors) - 6
        for t in a.tensors:  # copied byte for byte, in their own type
            if t.name in untouched:
                assert untouched[t.name].tensor_type == t.tensor_type
                assert np.array_equal(untouched[t.name].data, t.data)
    bad = subprocess.run([sys.executable, script, src, tmp_path / "a.pt", tmp_path / "x.gguf", "--type",
                          "q4_0"], capture_output=True, text=True)  # fmt: skip
    assert bad.returncode != 0 and "invalid choice: 'q4_0'" in bad.stderr
    same = subprocess.run([sys.executable, script, src, tmp_path / "a.pt", src], capture_output=True,
                          text=True)  # fmt: skip
    assert same.returncode != 0 and "the output would overwrite the source" in same.stderr
