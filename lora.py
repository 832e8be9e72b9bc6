"""Low-rank adapters (LoRA, Hu et al. 2021) for the retrospector.

`apply_lora` wraps chosen nn.Linear layers as W x + (alpha/r) * B A dropout(x) with A (r, in) random
and B (out, r) zero, so a fresh adapter changes nothing, and freezes everything else. Turning the
adapters off (`disable_lora`) gives back the frozen base model: that is the reference policy for
PPO's KL penalty and the Reflexion baseline, with no second copy of the weights.

Adapters are stored in float32 whatever the base dtype: they are tiny, and AdamW's small updates
to bf16/fp16 weights would round away. They are computed in the activations' dtype (fast half
precision matmuls; the input saved for backward is the one the base layer saves anyway), with
float32 gradients. They live on the wrapped layer's device. The base may be a weight-only quantized
QuantLinear (infra/quantize.py, QLoRA-style): the adapters are the same, only merging is refused.
"""

import math
from contextlib import contextmanager
from fnmatch import fnmatchcase

import torch
import torch.nn as nn
import torch.nn.functional as F

from infra.quantize import QuantLinear

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class LoRALinear(nn.Module):
    """nn.Linear or QuantLinear `base` (frozen) plus a low-rank update (alpha/r) * B @ A."""

    def __init__(self, base: nn.Linear | QuantLinear, r: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        if r <= 0:
            raise ValueError(f"LoRA rank r must be positive, got {r}")
        self.base = base
        self.r, self.alpha, self.scale = r, alpha, alpha / r
        dev = (base.qweight if isinstance(base, QuantLinear) else base.weight).device
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, device=dev, dtype=torch.float32))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, device=dev, dtype=torch.float32))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear (and peft)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.enabled = True  # adapters on
        self.merged = False  # B A folded into base.weight

    def delta_weight(self) -> torch.Tensor:
        return (self.lora_B @ self.lora_A) * self.scale  # (out, in), float32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged or not self.enabled:
            y = self.base(x)  # (..., out)
            if self.merged and not self.enabled:
                # adapters off while merged: take the update back out of the result
                y = y - F.linear(x.to(self.lora_A.dtype), self.delta_weight()).to(y.dtype)
            return y
        x2 = x.reshape(-1, x.shape[-1])  # (N, in)
        if isinstance(self.base, QuantLinear):
            y = self.base(x2)  # (N, out), a fresh tensor too: safe to update in place below
        else:
            y = F.linear(x2, self.base.weight, self.base.bias)  # (N, out)
        # computed in the base output's dtype (model dtype, or autocast's) from the float32 adapters;
        # the casts are differentiable
        A, B = self.lora_A.to(y.dtype), self.lora_B.to(y.dtype)  # (r, in), (out, r)
        ha = F.linear(self.dropout(x2).to(y.dtype), A)  # (N, r)
        # y += scale * ha @ B^T in one kernel, in place: no (N, out) temporaries for the update, its
        # scaling and the sum (the base matmul's backward does not need y)
        y = y.addmm_(ha, B.t(), alpha=self.scale)
        return y.view(*x.shape[:-1], y.shape[-1])  # (..., out)

    def extra_repr(self) -> str:
        return f"r={self.r}, alpha={self.alpha}, merged={self.merged}, enabled={self.enabled}"


def lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    """Name -> LoRALinear for every adapter in `model`."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def _matches(name: str, target: str) -> bool:
    # "q_proj" matches "layers.0.attn.q_proj"; "attn.*" style patterns match the whole name
    return name == target or name.endswith("." + target) or fnmatchcase(name, target)


def apply_lora(model: nn.Module, r: int = 8, alpha: float = 16, dropout: float = 0.0,
               targets=DEFAULT_TARGETS) -> nn.Module:
    """Wrap the nn.Linear (or QuantLinear) layers named by `targets` with LoRALinear; freeze the rest."""
    if lora_modules(model):
        raise ValueError("model already has LoRA adapters: apply_lora once (or load_lora into it)")
    if isinstance(targets, str):
        targets = (targets,)
    targets = tuple(targets)
    linears = [name for name, m in model.named_modules() if isinstance(m, (nn.Linear, QuantLinear))]
    chosen = [name for name in linears if any(_matches(name, t) for t in targets)]
    if not chosen:
        raise ValueError(f"no LoRA target {list(targets)} matches a Linear layer of the model; "
                         f"its Linear layers are: {linears}")
    for p in model.parameters():
        p.requires_grad_(False)
    for name in chosen:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, LoRALinear(getattr(parent, child), r, alpha, dropout))
    model.lora_config = {"r": r, "alpha": alpha, "dropout": dropout, "targets": list(targets)}
    return model


def lora_report(model: nn.Module) -> str:
    """'trainable: N / total: M (p%)' over all parameters of `model`."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return (f"LoRA: {len(lora_modules(model))} adapted layers, trainable params {trainable:,} / "
            f"total {total:,} ({100 * trainable / max(total, 1):.3f}%)")


def save_lora(model: nn.Module, path) -> None:
    """Save the adapters alone (tensors + what is needed to re-apply them) with torch.save."""
    modules = lora_modules(model)
    if not modules:
        raise ValueError("save_lora: model has no LoRA adapters (call apply_lora first)")
    cfg = dict(getattr(model, "lora_config", {}))
    first = next(iter(modules.values()))
    cfg.setdefault("r", first.r)
    cfg.setdefault("alpha", first.alpha)
    cfg.setdefault("dropout", 0.0)
    state = {}
    for name, m in modules.items():
        state[name + ".lora_A"] = m.lora_A.detach().cpu().clone()
        state[name + ".lora_B"] = m.lora_B.detach().cpu().clone()
    torch.save({"config": cfg, "modules": list(modules), "state": state}, path)


def load_lora(model: nn.Module, path) -> nn.Module:
    """Load adapters saved by `save_lora`; applies them first (from the file's config) if needed."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("config", "modules", "state"):
        if not isinstance(ckpt, dict) or key not in ckpt:
            raise ValueError(f"{path}: not a LoRA file from save_lora (missing key {key!r})")
    cfg, names, state = ckpt["config"], ckpt["modules"], ckpt["state"]
    if not lora_modules(model):
        targets = cfg.get("targets") or sorted({n.rpartition(".")[2] for n in names})
        apply_lora(model, r=cfg["r"], alpha=cfg["alpha"], dropout=cfg.get("dropout", 0.0),
                   targets=targets)
    modules = lora_modules(model)
    missing, extra = sorted(set(names) - set(modules)), sorted(set(modules) - set(names))
    if missing or extra:
        raise ValueError(f"{path}: LoRA targets differ from the model's: adapters in the file but "
                         f"not in the model: {missing}; in the model but not in the file: {extra}")
    for name in names:  # check everything before touching any weight
        m = modules[name]
        if m.merged:
            raise ValueError(f"load_lora: module {name!r} is merged; unmerge_lora(model) first")
        for part in ("lora_A", "lora_B"):
            key = f"{name}.{part}"
            if key not in state:
                raise ValueError(f"{path}: tensor {key!r} missing")
            want, got = tuple(getattr(m, part).shape), tuple(state[key].shape)
            if want != got:
                raise ValueError(f"{path}: module {name!r} {part} has shape {got} in the file but "
                                 f"{want} in the model")
    for name in names:
        m = modules[name]
        with torch.no_grad():
            m.lora_A.copy_(state[f"{name}.lora_A"])
            m.lora_B.copy_(state[f"{name}.lora_B"])
        # the file's alpha belongs to its adapters
        m.alpha, m.scale = cfg["alpha"], cfg["alpha"] / m.r
    model.lora_config = {**getattr(model, "lora_config", {}), "alpha": cfg["alpha"]}
    return model


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight (faster inference; undo with unmerge_lora)."""
    quantized = [name for name, m in lora_modules(model).items() if isinstance(m.base, QuantLinear)]
    if quantized:  # before touching any weight
        raise ValueError(f"merge_lora: {quantized[0]!r} (and {len(quantized) - 1} more) has a quantized base "
                         "(infra/quantize.py): an update cannot be folded into integer weights; keep the "
                         "adapters unmerged")
    for name, m in lora_modules(model).items():
        if m.merged:
            raise ValueError(f"merge_lora: module {name!r} is already merged")
        w = m.base.weight
        w.copy_((w.float() + m.delta_weight()).to(w.dtype))  # exact up to the base dtype's rounding
        m.merged = True
    return model


@torch.no_grad()
def unmerge_lora(model: nn.Module) -> nn.Module:
    """Take merged adapters back out of the base weights."""
    for name, m in lora_modules(model).items():
        if not m.merged:
            raise ValueError(f"unmerge_lora: module {name!r} is not merged")
        w = m.base.weight
        w.copy_((w.float() - m.delta_weight()).to(w.dtype))
        m.merged = False
    return model


@torch.no_grad()
def fold_lora(model: nn.Module) -> nn.Module:
    """Merge every adapter into its base weight and put the base layer back in the wrapper's place: a plain
    model again, as fast as the base and quantizable (an actor behaviour-cloned into a LoRA, kept frozen)."""
    merge_lora(model)
    for name, m in lora_modules(model).items():
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, m.base)
    if hasattr(model, "lora_config"):
        del model.lora_config
    return model


@contextmanager
def disable_lora(model: nn.Module):
    """Inside the block the model is the frozen base model (the PPO reference policy)."""
    modules = list(lora_modules(model).values())
    before = [m.enabled for m in modules]
    for m in modules:
        m.enabled = False
    try:
        yield model
    finally:
        for m, on in zip(modules, before, strict=True):
            m.enabled = on
