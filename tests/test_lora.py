"""LoRA: fresh adapters are a no-op, merge/unmerge, adapters off, save/load, errors, gradients."""

import pytest
import torch
import torch.nn as nn

from lora import (
    LoRALinear,
    apply_lora,
    disable_lora,
    fold_lora,
    load_lora,
    lora_modules,
    lora_report,
    merge_lora,
    save_lora,
    unmerge_lora,
)
from model import ModelConfig, Transformer


def tiny(arch="llama", dim=32, seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    cfg = ModelConfig(arch=arch, vocab_size=64, dim=dim, n_layers=2, n_heads=4,
                      n_kv_heads=2 if arch == "llama" else 4, hidden_dim=2 * dim, max_seq_len=32,
                      norm_eps=1e-5)
    return Transformer(cfg).to(dtype).eval()


def randomize_adapters(model, seed=1, std=0.2):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in lora_modules(model).values():
            m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=g) * std)


IDX = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_fresh_adapters_change_nothing_and_freeze_base(arch):
    model = tiny(arch)
    ref = model(IDX)
    apply_lora(model, r=4, alpha=8)
    names = list(lora_modules(model))
    expected = ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"]
    expected += ["gate_proj"] if arch == "llama" else []  # GPT-2's MLP has no gate
    assert sorted({n.rsplit(".", 1)[1] for n in names}) == sorted(expected)
    assert len(names) == 2 * len(expected)
    assert torch.equal(model(IDX), ref)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith(("lora_A", "lora_B")) for n in trainable)
    n_adapter = sum(m.r * (m.base.in_features + m.base.out_features) for m in lora_modules(model).values())
    assert f"trainable params {n_adapter:,} /" in lora_report(model)


def test_merge_unmerge_exact():
    model = tiny()
    apply_lora(model, r=4, alpha=8)
    randomize_adapters(model)
    w0 = {n: m.base.weight.clone() for n, m in lora_modules(model).items()}
    out = model(IDX)
    merge_lora(model)
    assert torch.allclose(model(IDX), out, atol=1e-5)
    with pytest.raises(ValueError, match="already merged"):
        merge_lora(model)
    unmerge_lora(model)
    for n, m in lora_modules(model).items():
        assert torch.allclose(m.base.weight, w0[n], atol=1e-6)
    assert torch.allclose(model(IDX), out, atol=1e-5)


def test_fold_gives_a_plain_model_with_the_adapted_outputs():
    model = tiny()
    apply_lora(model, r=4, alpha=8)
    randomize_adapters(model)
    out = model(IDX)
    fold_lora(model)
    assert not lora_modules(model) and not hasattr(model, "lora_config")
    assert all(type(m) is nn.Linear for n, m in model.named_modules() if n.endswith(("q_proj", "down_proj")))
    assert torch.allclose(model(IDX), out, atol=1e-5)
    assert not torch.allclose(model(IDX), tiny()(IDX), atol=1e-3)  # the adapters' change stays in


def test_disable_lora_is_the_base_model_and_restores_on_exception():
    model = tiny()
    base = model(IDX)
    apply_lora(model, r=4, alpha=8)
    randomize_adapters(model)
    tuned = model(IDX)
    assert (tuned - base).abs().max() > 1e-3  # the adapters do something
    with disable_lora(model):
        assert torch.equal(model(IDX), base)
    assert torch.equal(model(IDX), tuned)
    with pytest.raises(RuntimeError, match="boom"), disable_lora(model):
        raise RuntimeError("boom")
    assert all(m.enabled for m in lora_modules(model).values())
    merge_lora(model)  # adapters off must also hold on a merged model
    with disable_lora(model):
        assert torch.allclose(model(IDX), base, atol=1e-5)


def test_save_load_round_trip(tmp_path):
    model = tiny()
    apply_lora(model, r=4, alpha=8, targets=("q_proj", "v_proj", "down_proj"))
    randomize_adapters(model)
    out = model(IDX)
    path = tmp_path / "adapter.pt"
    save_lora(model, path)
    n_adapter = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad)
    assert path.stat().st_size < 4 * n_adapter + 20_000  # the adapters alone, not the base model
    fresh = tiny()  # same base weights (same seed), no adapters yet: applied from the file's config
    load_lora(fresh, path)
    assert sorted(lora_modules(fresh)) == sorted(lora_modules(model))
    assert torch.equal(fresh(IDX), out)
    again = apply_lora(tiny(), r=4, alpha=8, targets=("q_proj", "v_proj", "down_proj"))
    load_lora(again, path)  # into a model that already has (fresh) adapters
    assert torch.equal(again(IDX), out)


def test_load_wrong_shapes_or_targets_errors(tmp_path):
    model = apply_lora(tiny(), r=4, alpha=8)
    path = tmp_path / "adapter.pt"
    save_lora(model, path)
    with pytest.raises(ValueError, match=r"layers\.0\.attn\.q_proj.*lora_A.*\(4, 32\).*\(8, 32\)"):
        load_lora(apply_lora(tiny(), r=8, alpha=8), path)
    with pytest.raises(ValueError, match=r"layers\.0\.attn\.q_proj.*lora_A.*\(4, 32\).*\(4, 48\)"):
        load_lora(tiny(dim=48), path)  # other base dims
    with pytest.raises(ValueError, match=r"not in the model: \[.*gate_proj"):
        load_lora(apply_lora(tiny(), r=4, targets=("q_proj", "k_proj")), path)
    bad = tmp_path / "bad.pt"
    torch.save({"state": {}}, bad)
    with pytest.raises(ValueError, match="missing key 'config'"):
        load_lora(tiny(), bad)


def test_only_adapter_grads_nonzero():
    model = tiny()
    apply_lora(model, r=4, alpha=8)
    randomize_adapters(model)  # with B = 0 the gradient of A would be 0 too
    model(IDX).float().logsumexp(-1).mean().backward()
    for name, p in model.named_parameters():
        if name.endswith(("lora_A", "lora_B")):
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name


def test_no_target_matched_errors_and_double_apply():
    model = tiny()
    with pytest.raises(ValueError, match=r"no LoRA target \['c_attn'\].*layers\.0\.attn\.q_proj"):
        apply_lora(model, targets=("c_attn",))
    apply_lora(model, targets=("layers.1.*",))  # patterns match the whole name
    assert all(n.startswith("layers.1.") for n in lora_modules(model))
    with pytest.raises(ValueError, match="already has LoRA"):
        apply_lora(model)


def test_bf16_model_keeps_fp32_adapters():
    model = tiny(dtype=torch.bfloat16)
    ref = model(IDX)
    apply_lora(model, r=4, alpha=8)
    m = next(iter(lora_modules(model).values()))
    assert m.lora_A.dtype == torch.float32 and m.base.weight.dtype == torch.bfloat16
    out = model(IDX)
    assert out.dtype == ref.dtype and torch.equal(out, ref)
    randomize_adapters(model)
    out = model(IDX)
    out.float().sum().backward()
    assert m.lora_B.grad.dtype == torch.float32 and m.lora_B.grad.abs().sum() > 0
    merge_lora(model)  # bf16 weights: exact up to bf16 rounding
    assert (model(IDX).float() - out.float()).abs().max() < 0.1 * out.float().abs().max()


def test_autocast_runs_adapters_in_half_precision():
    model = apply_lora(tiny(), r=4, alpha=8)
    randomize_adapters(model)
    out = model(IDX)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = model(IDX)
    assert half.dtype == torch.bfloat16
    assert (half.float() - out).abs().max() < 0.05 * out.abs().max()
    half.float().sum().backward()
    assert all(p.grad.dtype == torch.float32 for p in model.parameters() if p.requires_grad)


def test_adapter_follows_the_layer_device():
    lin = nn.Linear(8, 4, device="meta")
    m = LoRALinear(lin, r=2, alpha=4)
    assert m.lora_A.device.type == "meta" and m.lora_B.device.type == "meta"
    if torch.cuda.is_available():
        m = LoRALinear(nn.Linear(8, 4, device="cuda"), r=2, alpha=4)
        x = torch.randn(3, 8, device="cuda")
        assert m(x).device.type == "cuda" and m.lora_A.device.type == "cuda"
