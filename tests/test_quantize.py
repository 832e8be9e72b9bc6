"""Weight-only int8 / int4 quantization (infra/quantize.py): error bounds, generation, LoRA on top, errors."""

import copy

import pytest
import torch
import torch.nn as nn

import model as M
import train
from actor import LocalLLM
from infra.quantize import QuantLinear, quantize
from lora import apply_lora, disable_lora, lora_modules, merge_lora

# on a GPU, the CUDA kernels (and the int8 fallback): python -m pytest -q -s tests/test_quantize.py -k cuda
NO_GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
DEVICES = ["cpu", pytest.param("cuda", marks=NO_GPU)]
TINY = "checkpoints/tiny/retrospector"  # pretrained 1.1M Llama (dim 128, tied embeddings)
TEXT = ("Thought: I need to search Paris. Action: search[Paris]\nObservation: Paris is the capital of "
        "France.\nThought: the answer is France. Action: finish[France]\n") * 2  # fmt: skip


def tiny(arch="llama", dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    cfg = M.ModelConfig(arch=arch, vocab_size=64, dim=64, n_layers=2, n_heads=4,
                        n_kv_heads=2 if arch == "llama" else 4, hidden_dim=128, max_seq_len=64)  # fmt: skip
    return M.Transformer(cfg).to(dtype).eval()


@pytest.fixture(scope="module")
def pretrained():
    return M.from_pretrained(TINY), M.load_tokenizer(TINY)


@pytest.mark.parametrize("kind, bias", [("int8", False), ("int4", False), ("int8", True), ("int4", True)])
def test_quant_linear_within_bound(kind, bias):
    torch.manual_seed(0)
    lin = nn.Linear(128, 48, bias=bias).requires_grad_(False)
    with torch.no_grad():
        lin.weight[3] *= 20  # an outlier row: per-channel / per-group scales keep the other rows fine
    q = QuantLinear(lin, kind, group_size=32)
    w, wq = lin.weight, q.dequantize()
    # rounding error of one weight: half a step (scale per row for int8, per group of 32 for int4)
    if kind == "int8":
        step = w.abs().amax(1, keepdim=True) / 127  # (N, 1)
    else:
        wg = w.view(48, 4, 32)
        step = ((wg.amax(-1) - wg.amin(-1)) / 15).repeat_interleave(32, 1)  # (N, K)
    # (+ the bfloat16 rounding of scales and zeros, and of the weight the int4 kernel gives back)
    assert ((wq - w).abs() <= 0.55 * step + w.abs() / 256).all()
    x = torch.randn(5, 7, 128)
    ref = lin(x)
    y = q(x)
    assert y.shape == ref.shape and y.dtype == ref.dtype
    # the kernel multiplies by exactly the dequantized weight, in bfloat16 (activations and output)
    exact = nn.functional.linear(x, wq, lin.bias)
    assert (y - exact).abs().max() <= 0.01 * (x.abs() @ w.abs().t()).max()
    bound = x.abs() @ (0.55 * step.expand_as(w)).t() + 0.01 * (x.abs() @ w.abs().t())  # (5, 7, N)
    assert ((y - ref).abs() <= bound).all()
    assert (y - ref).abs().mean() < (0.01 if kind == "int8" else 0.1) * ref.abs().mean()
    if kind == "int8":  # the path of a device without the int8 kernel: dequantize, then matmul
        q.fast = False
        torch.testing.assert_close(q(x), exact)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind, max_err, min_top1", [("int8", 0.6, 0.97), ("int4", 5.0, 0.75)])
def test_quantized_model_logits_close(pretrained, kind, max_err, min_top1, device):
    model, tok = pretrained
    ids = torch.tensor([tok.encode(TEXT)], device=device)
    with torch.no_grad():
        mq = quantize(copy.deepcopy(model), kind, device=device)  # layer by layer onto the device
        model = copy.deepcopy(model).to(device)
        ref, out = model(ids), mq(ids)
    assert all(p.device.type == device for p in mq.parameters())
    print(f"{kind} on {device}:", "packed kernel" if mq.lm_head.fast else "dequantize-then-matmul fallback")
    assert sum(isinstance(m, QuantLinear) for m in mq.modules()) == 4 * 7 + 1  # projections + lm_head
    assert torch.equal(mq.tok_emb.weight, model.tok_emb.weight)  # the tied embedding stays float
    err = (out - ref).abs()
    assert err.max() < max_err and err.mean() < max_err / 8, (err.max(), err.mean())
    assert (out.argmax(-1) == ref.argmax(-1)).float().mean() >= min_top1


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["int8", "int4"])
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_generate_on_quantized_model(kind, arch, device):
    model = quantize(tiny(arch), kind, group_size=32, device=device)
    prompts = [[1, 2, 3, 4, 5], [7, 8]]
    gens = M.generate(model, prompts, 12, temperature=0)
    assert [len(g.tokens) for g in gens] == [12, 12]
    # batched, left-padded generation = each prompt alone (the same kernels, other batch shapes)
    alone = [M.generate(model, [p], 12, temperature=0)[0].tokens for p in prompts]
    assert [g.tokens for g in gens] == alone
    gen = torch.Generator(device=device).manual_seed(0)
    sampled = M.generate(model, prompts, 6, temperature=1.0, generator=gen)
    assert all(len(g.logprobs) == 6 for g in sampled)


def test_bfloat16_model_and_noop():
    model = tiny(dtype=torch.bfloat16)
    idx = torch.randint(0, 64, (2, 9))
    out = quantize(model, "int8")(idx)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    plain = tiny()
    assert quantize(plain, "") is plain and not any(isinstance(m, QuantLinear) for m in plain.modules())


def dequantized_copy(mq):
    """A float model whose Linear weights are the quantized model's dequantized weights."""
    mf = copy.deepcopy(mq)
    for name, m in list(mf.named_modules()):
        if isinstance(m, QuantLinear):
            lin = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None, device=m.qweight.device)
            lin.weight.data = m.dequantize()
            if m.bias is not None:
                lin.bias.data = m.bias.data.float()
            parent, _, child = name.rpartition(".")
            setattr(mf.get_submodule(parent), child, lin)
    return mf


def logp_loss(model, idx):
    logits = model(idx[:, :-1]).float()
    return -torch.log_softmax(logits, -1).gather(-1, idx[:, 1:, None]).mean()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["int8", "int4"])
def test_lora_on_quantized_base_trains(kind, device):
    mq = quantize(tiny(), kind, group_size=32, device=device)
    idx = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(1)).to(device)
    with torch.no_grad():
        base_out = mq(idx)
    mf = dequantized_copy(mq)
    for m in (mq, mf):
        apply_lora(m, r=4, alpha=8)
        torch.manual_seed(2)
        for a in lora_modules(m).values():
            nn.init.normal_(a.lora_A, std=0.1)
            nn.init.normal_(a.lora_B, std=0.1)
    assert all(a.lora_A.dtype == torch.float32 for a in lora_modules(mq).values())
    trainable = {n for n, p in mq.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith(("lora_A", "lora_B")) for n in trainable)
    # adapters off: exactly the quantized base
    with torch.no_grad(), disable_lora(mq):
        assert torch.equal(mq(idx), base_out)
    # gradients reach the adapters of every layer through the frozen quantized weights, and match the
    # float model with the same (dequantized) weights up to the kernels' bfloat16 activations
    mq.train(), mf.train()
    logp_loss(mq, idx).backward()
    logp_loss(mf, idx).backward()
    for (name, a), b in zip(lora_modules(mq).items(), lora_modules(mf).values(), strict=True):
        for g, h in ((a.lora_A.grad, b.lora_A.grad), (a.lora_B.grad, b.lora_B.grad)):
            assert g is not None and g.abs().sum() > 0, name
            assert (g - h).norm() <= 0.05 * h.norm() + 1e-6, name
    assert all(p.grad is None for p in mq.parameters() if not p.requires_grad)
    # one optimizer step changes the output; the quantized weights do not move
    before = {n: p.clone() for n, p in mq.named_parameters() if not p.requires_grad}
    with torch.no_grad():
        out0 = mq(idx)
    torch.optim.AdamW([p for p in mq.parameters() if p.requires_grad], lr=1e-2).step()
    with torch.no_grad():
        assert not torch.allclose(mq(idx), out0)
    assert all(torch.equal(p, before[n]) for n, p in mq.named_parameters() if not p.requires_grad)
    with pytest.raises(ValueError, match="quantized base"):
        merge_lora(mq)
    assert not any(a.merged for a in lora_modules(mq).values())


def test_errors():
    with pytest.raises(ValueError, match="'int8' or 'int4', got 'int3'"):
        quantize(tiny(), "int3")
    with pytest.raises(ValueError, match="quantize"):
        train.parse_config(["--quantize=fp8"])
    assert train.parse_config(["--quantize=int4"]).quantize == "int4"
    model = apply_lora(tiny(), r=2)
    with pytest.raises(ValueError, match="before apply_lora"):
        quantize(model, "int8")
    with pytest.raises(ValueError, match="already"):
        quantize(quantize(tiny(), "int8"), "int8")
    # shapes the kernels cannot take are named
    cfg = M.ModelConfig(arch="gpt2", vocab_size=50, dim=64, n_layers=1, n_heads=4, n_kv_heads=4,
                        hidden_dim=128, max_seq_len=16)
    with pytest.raises(ValueError, match="'lm_head'.*out_features % 16.*lm_head=False"):
        quantize(M.Transformer(cfg), "int4", group_size=32)
    with pytest.raises(ValueError, match="q_proj.*in_features % 16"):
        quantize(M.Transformer(M.ModelConfig(dim=40, n_heads=4, n_kv_heads=4, hidden_dim=64)), "int8")


def test_save_refused_adapters_saved(tmp_path):
    model = quantize(tiny(), "int8")
    with pytest.raises(ValueError, match="qweight"):  # model.save_pretrained writes only plain float models
        M.save_pretrained(model, tmp_path / "q")


def test_loaders_take_quantize():
    llm = LocalLLM.load("checkpoints/tiny/actor", quantize="int8")
    assert isinstance(llm.model.lm_head, QuantLinear)
    assert isinstance(llm.model.layers[0].mlp.up_proj, QuantLinear)
    assert len(llm.generate([llm.encode("Thought:")], 5)[0].tokens) <= 5
    retro = train.Retrospector.load(train.Config(quantize="int4"), "cpu")
    q = retro.model.layers[0].attn.q_proj
    assert isinstance(q.base, QuantLinear) and q.base.kind == "int4" and q.lora_A.requires_grad
