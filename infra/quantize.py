"""Weight-only int8 / int4 quantization of a model.py Transformer's frozen Linear layers.

    quantize(model, "int8")   # q/k/v/o, gate/up/down and lm_head become QuantLinear, in place

Batch-1 decoding reads every weight once per token, so it runs at the speed of memory: fewer bytes per
weight is the way to go faster and to fit a larger model. Only the weights are quantized; activations,
embeddings and norms keep the model's dtype, and a LoRA on top (lora.py) stays float32 and trainable
(QLoRA-style: the gradient reaches the adapters of earlier layers through the dequantized frozen weight).

Formats (the ones torch's packed kernels read):
- int8: symmetric, one scale per output channel: w = q * s, q in [-127, 127], s = max|w_row| / 127.
- int4: asymmetric, one (scale, zero) per group of `group_size` inputs of a row: w = (q - 8) * s + z,
  q in [0, 15], s = (max - min) / 15, z = min + 8 s (the tinygemm convention).
Scales and zeros are rounded to bfloat16 (what the kernels take) before the weights are rounded, so the
kernels multiply by exactly the dequantized weight `dequantize()` returns.

Kernels (torch 2.13), all computing in bfloat16 with float32 accumulation and a bfloat16 output; the
activations are cast to bfloat16 around them (the CPU kernels are vectorized only for bfloat16: their
float32 path is a scalar loop, ~15x slower than float32 BLAS). So a quantized layer's output has
bfloat16 resolution, as in a bfloat16 model; with the lm_head quantized, so do the logits (greedy
near-ties can flip; lm_head=False keeps it in the model's dtype). On a CPU the int8 kernel streams
weights at ~6-7 GB/s (float32 BLAS: ~15-20), so int8 decodes ~1.5x faster than float32, int4 ~2.5x.
- int8, CPU: aten._weight_int8pack_mm(x, q (N, K) int8, s (N,)). CUDA: the same op if this build has a
  CUDA kernel for it (probed once per device), else dequantize-then-matmul in the activations' dtype
  (memory saved, speed not: each call writes a temporary float copy of the weight).
- int4, CPU: aten._convert_weight_to_int4pack_for_cpu + aten._weight_int4pack_mm_for_cpu.
  CUDA (sm80+): aten._convert_weight_to_int4pack + aten._weight_int4pack_mm. No fallback: a device
  without the kernel gets a clear error. The packed layout belongs to the device it was made on:
  quantize on the device the model runs on (`device=`), do not move the model afterwards.
Shapes: int8 needs in_features % 16 == 0 (the CPU kernel reads 16 values at a time); int4 needs
out_features % 16 == 0 and in_features % group_size == 0, group_size in 32, 64, 128, 256.

A quantized model cannot be written by model.save_pretrained (it refuses tensors a plain Transformer
lacks); LoRA adapters save and load as usual (lora.save_lora), and merge_lora refuses a quantized base.
"""

import functools

import torch
import torch.nn as nn
import torch.nn.functional as F

KINDS = ("", "int8", "int4")  # "" = no quantization
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
GROUP_SIZES = (256, 128, 64, 32)  # int4 groups the kernels support
ops = torch.ops.aten


def _int4_pack(q, device):
    """q (N, K) int32 in [0, 15] -> the packed layout of this device's int4 kernel."""
    if device.type == "cpu":
        return ops._convert_weight_to_int4pack_for_cpu(q, 2)
    inner_k_tiles = next(t for t in (8, 4, 2) if q.shape[1] % (16 * t) == 0)
    return ops._convert_weight_to_int4pack((q[:, ::2] << 4 | q[:, 1::2]).to(torch.uint8), inner_k_tiles)


def _int4_mm(xb, packed, group_size, scales_zeros):
    mm = ops._weight_int4pack_mm_for_cpu if xb.is_cpu else ops._weight_int4pack_mm
    return mm(xb, packed, group_size, scales_zeros)


@functools.cache
def _probe(kind: str, device: str) -> str | None:
    """None if the packed kernel of `kind` runs on `device` and matches the dequantized product on a
    random 32 x 64 weight; else why not."""
    dev, bf16 = torch.device(device), torch.bfloat16
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 64, generator=g).to(dev, bf16)
    s = (torch.rand(32, generator=g) + 0.5).to(dev, bf16)  # (N,)
    try:
        if kind == "int8":
            q = torch.randint(-127, 128, (32, 64), generator=g, dtype=torch.int8).to(dev)
            y, w = ops._weight_int8pack_mm(x, q, s), q.float() * s.float()[:, None]
        else:  # two groups of 32 per row
            q = torch.randint(0, 16, (32, 64), generator=g, dtype=torch.int32).to(dev)
            s2 = s.view(1, 32).expand(2, 32)
            z = torch.stack((s2, -s2), -1).contiguous()  # (2, 32, 2): scale, zero
            y = _int4_mm(x, _int4_pack(q, dev), 32, z)
            w = (q.float() - 8) * s.float()[:, None] - s.float()[:, None]
    except (RuntimeError, NotImplementedError) as e:
        return f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}"
    ref = x.float() @ w.t()  # (3, 32)
    err = (y.float() - ref).abs().max().item()
    return None if err < 0.05 * ref.abs().max().item() else f"wrong result (max error {err:.3g})"


class QuantLinear(nn.Module):
    """Frozen y = x W^T + b with W stored as int8 (per output channel) or int4 (per group); see the top."""

    def __init__(self, linear: nn.Linear, kind: str, group_size: int = 64, device=None):
        super().__init__()
        if kind not in ("int8", "int4"):
            raise ValueError(f"QuantLinear: kind must be int8 or int4, got {kind!r}")
        dev = torch.device(device) if device is not None else linear.weight.device
        self.kind, self.in_features, self.out_features = kind, linear.in_features, linear.out_features
        N, K = self.out_features, self.in_features
        err = _probe("int4", str(dev)) if kind == "int4" else None
        if err:
            raise ValueError(f"int4 has no working kernel on {dev} (on CUDA, aten._weight_int4pack_mm needs "
                             f"compute capability >= 8.0): {err}. Use int8 there.")
        w = linear.weight.detach().to(dev, torch.float32).contiguous()  # (N, K)
        if kind == "int8":
            if K % 16:
                raise ValueError(f"int8 needs in_features % 16 == 0, got a {N} x {K} weight")
            s = (w.abs().amax(1) / 127).clamp(min=1e-12).to(torch.bfloat16)  # (N,)
            q = (w / s.float()[:, None]).round_().clamp_(-127, 127).to(torch.int8)  # (N, K)
            self.group_size, self.fast = 0, _probe("int8", str(dev)) is None  # else the fallback
        else:
            g = next((g for g in GROUP_SIZES if g <= group_size and K % g == 0), None)
            if N % 16 or g is None:
                raise ValueError(f"int4 needs out_features % 16 == 0 and in_features divisible by a group "
                                 f"size in {GROUP_SIZES} (<= {group_size}), got a {N} x {K} weight")
            wg = w.view(N, K // g, g)
            lo, hi = wg.amin(-1), wg.amax(-1)  # (N, K/g)
            s = ((hi - lo) / 15).clamp(min=1e-6).to(torch.bfloat16)
            z = (lo + 8 * s.float()).to(torch.bfloat16)
            qi = ((wg - z.float()[..., None]) / s.float()[..., None] + 8).round_().clamp_(0, 15)
            q = _int4_pack(qi.to(torch.int32).view(N, K), dev)
            s = torch.stack((s, z), -1).transpose(0, 1).contiguous()  # (K/g, N, 2): scale, zero
            self.group_size, self.fast = g, True
        # frozen Parameters, not buffers: DistributedDataParallel re-broadcasts buffers at every forward
        self.qweight = nn.Parameter(q, requires_grad=False)
        self.scales = nn.Parameter(s, requires_grad=False)
        b = linear.bias
        self.bias = None if b is None else nn.Parameter(b.detach().to(dev), requires_grad=False)
        self.packed_for = dev.type  # the int4 layout is device-specific

    def _mm(self, x2):
        """x2 (M, K) -> x2 @ W^T (M, N) in x2's dtype, no bias."""
        if x2.device.type != self.packed_for and self.kind == "int4":
            raise RuntimeError(f"int4 weights packed for {self.packed_for} got an input on {x2.device}: "
                               "quantize on the device the model runs on")
        if not self.fast:  # int8 on a device without the kernel: dequantize 4096 rows at a time, matmul
            q, dt = self.qweight, x2.dtype
            y = torch.cat([F.linear(x2, q[i : i + 4096].to(dt)) for i in range(0, q.shape[0], 4096)], -1)
            return y * self.scales.to(dt)
        xb = x2.to(torch.bfloat16).contiguous()
        if xb.data_ptr() % 64:  # the CPU kernels use aligned vector loads
            xb = xb.clone()
        if self.kind == "int8":
            y = ops._weight_int8pack_mm(xb, self.qweight, self.scales.to(torch.bfloat16))
        else:
            y = _int4_mm(xb, self.qweight, self.group_size, self.scales.to(torch.bfloat16))
        return y.to(x2.dtype)

    def forward(self, x):
        x2 = x.reshape(-1, self.in_features)  # (M, K)
        if torch.is_grad_enabled() and x.requires_grad:
            y = _QuantMatmul.apply(x2, self)
        else:
            y = self._mm(x2)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.view(*x.shape[:-1], self.out_features)

    @torch.no_grad()
    def dequantize(self, dtype=torch.float32, k0: int = 0, k1: int | None = None) -> torch.Tensor:
        """Columns k0:k1 (default all) of the weight (N, K) the kernels multiply by (exact up to `dtype`)."""
        k1 = self.in_features if k1 is None else k1
        if self.kind == "int8":
            return self.qweight[:, k0:k1].to(dtype) * self.scales.to(dtype)[:, None]
        # the packed layout is the kernel's own: read it back through the kernel, W^T = I @ W^T
        idx = torch.arange(k0, k1, device=self.qweight.device)
        eye = torch.zeros(len(idx), self.in_features, device=idx.device, dtype=torch.bfloat16)
        return self._mm(eye.scatter_(1, idx[:, None], 1.0)).t().to(dtype)  # (N, k1 - k0)

    def extra_repr(self) -> str:
        g = f", group_size={self.group_size}" if self.kind == "int4" else ""
        return f"{self.in_features}, {self.out_features}, kind={self.kind}{g}, bias={self.bias is not None}"


class _QuantMatmul(torch.autograd.Function):
    """x @ W^T through the packed kernel; backward: grad_x = grad_y @ W (the weight gets no gradient).

    The weight is dequantized for each backward call, 256 input columns at a time so that the temporary
    stays small even for a 128k-vocabulary lm_head (int4: by identity matmuls, K*K*N multiply-adds,
    the price of training LoRA over int4 weights)."""

    @staticmethod
    def forward(ctx, x2, layer):
        ctx.layer = layer
        return layer._mm(x2)

    @staticmethod
    def backward(ctx, gy):
        layer, K = ctx.layer, ctx.layer.in_features
        parts = [gy @ layer.dequantize(gy.dtype, k, min(k + 256, K)) for k in range(0, K, 256)]  # (M, <=256)
        return torch.cat(parts, -1), None


def quantize(model: nn.Module, kind: str, group_size: int = 64, lm_head: bool = True, device=None):
    """Replace the frozen projections (TARGETS, and lm_head) of `model` by QuantLinear, in place.

    kind: "" (no-op), "int8" or "int4". device: quantize each layer there (then move the rest of the
    model there): load the float model on the CPU and the accelerator never holds its float weights.
    Call before lora.apply_lora. Returns the model.
    """
    if kind not in KINDS:
        raise ValueError(f"quantize: kind must be '', 'int8' or 'int4', got {kind!r}")
    if not kind:
        return model if device is None else model.to(device)
    # adapters are recognised by their lora_A, not by importing lora.py: lora.py builds on this module
    if any(hasattr(m, "lora_A") or isinstance(m, QuantLinear) for m in model.modules()):
        raise ValueError("quantize: the model already has LoRA adapters or quantized layers: quantize once, "
                         "before apply_lora")
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)
             and (n.rpartition(".")[2] in TARGETS or (lm_head and n == "lm_head"))]  # fmt: skip
    if not names:
        raise ValueError("quantize: no Linear layer named like a projection or lm_head in the model")
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        try:
            setattr(parent, child, QuantLinear(getattr(parent, child), kind, group_size, dev))
        except ValueError as e:
            raise ValueError(f"quantize: layer {name!r}: {e}" + (" (try lm_head=False)" if
                             name == "lm_head" else "")) from None  # fmt: skip
    return model.to(dev)
