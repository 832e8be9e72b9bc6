"""Memory of the retrospector's training step for real checkpoints: an estimate, and a measurement.

    python bench/bench_memory.py                      # the estimate table for Llama 3.2 1B / 3B, 3.1 8B
    python bench/bench_memory.py --measure --device cuda --model 3b   # one real PPO micro-batch on a GPU
    python bench/bench_memory.py --measure --model small              # the same on CPU, a scaled-down Llama

What the GPU holds while train.py runs (the actor is a server elsewhere): the frozen weights (bf16, or
int8 / int4 with --quantize), the LoRA adapters with their gradients and AdamW state (float32), the
activations autograd keeps for the backward pass of one PPO micro-batch (micro_batch_size sequences of
at most reflection_prompt_tokens + reflection_max_tokens tokens), the response logits (float32, only at
the reflection's positions), and the KV cache of reflection generation (reflection_batch_size prompts).
Activations per token and layer, in the weights' dtype: the two norms' inputs and outputs, q, k, v,
the attention output and its contiguous copy for o_proj, and SwiGLU's gate, silu(gate), up and their
product (7 dim + 2 kv_dim + 4 hidden). With grad_checkpoint only each layer's input stays, plus one
layer's activations while it is recomputed.

--measure builds a random-weight model of that shape (model.py + lora.py, as train.py does), runs one
forward + backward of ppo.response_forward on a micro-batch of that length and reports the peak:
torch.cuda.max_memory_allocated on a GPU, peak RSS above the start on CPU. It prints the estimate of the
same step beside it.
"""

import argparse
import os
import sys
import threading
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import model as M  # noqa: E402
from lora import apply_lora  # noqa: E402
from ppo import ValueHead, response_forward  # noqa: E402

# the public config.json values of these checkpoints (dim, layers, heads, kv heads, hidden, vocab, tied)
MODELS = {
    "1b": ("Llama-3.2-1B", 2048, 16, 32, 8, 8192, 128256, True),
    "3b": ("Llama-3.2-3B", 3072, 28, 24, 8, 8192, 128256, True),
    "8b": ("Llama-3.1-8B", 4096, 32, 32, 8, 14336, 128256, False),
    "small": ("scaled-down Llama", 1024, 8, 16, 4, 2816, 32000, True),  # CPU check of the formula
}
GiB = 2**30


def shapes(name):
    _, d, n_layers, n_heads, n_kv, h, vocab, tied = MODELS[name]
    return d, n_layers, d // n_heads * n_kv, h, vocab, tied


def estimate(name, quantize="", tokens=3328, micro_batch=2, response=256, lora_r=16, gen_batch=16,
             grad_checkpoint=False, bytes_per=2):  # fmt: skip
    """GiB of each part of a training step's peak (see the module docstring)."""
    d, n_layers, kvd, h, vocab, tied = shapes(name)
    proj = n_layers * (2 * d * d + 2 * d * kvd + 3 * d * h)  # the 7 projections of every layer
    embed = vocab * d * (1 if tied else 2)
    per_weight = {"": bytes_per, "int8": 1 + 2 / 1024, "int4": 0.5 + 4 / 64}[quantize]  # + scales
    weights = proj * per_weight + embed * bytes_per
    lora = n_layers * lora_r * (9 * d + 2 * kvd + 3 * h) * 16  # float32 param, grad, AdamW m and v
    n_tok = micro_batch * tokens
    layer = (7 * d + 2 * kvd + 4 * h) * bytes_per  # per token
    acts = n_tok * (n_layers * d * bytes_per + layer if grad_checkpoint else n_layers * layer)
    logits = micro_batch * response * vocab * 4 * 3  # float32 logits, log-softmax, its exp (entropy)
    kv = gen_batch * tokens * n_layers * 2 * kvd * bytes_per
    parts = dict(weights=weights, lora_adam=lora, activations=acts, logits=logits, kv_cache=kv)
    return {k: v / GiB for k, v in parts.items()}


def table(args):
    print(f"micro-batch {args.micro_batch} x {args.tokens} tokens (prompt cap + reflection), {args.response} "
          f"reflection tokens, LoRA r={args.lora_r}, reflection generation batch {args.gen_batch}; GiB\n")
    print("| model | weights | LoRA + AdamW | activations | with grad_checkpoint | logits | KV cache "
          "| peak: train step | peak, checkpointed |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in ("1b", "3b", "8b"):
        for q in ("", "int8", "int4"):
            kw = dict(tokens=args.tokens, micro_batch=args.micro_batch, response=args.response,
                      lora_r=args.lora_r, gen_batch=args.gen_batch)  # fmt: skip
            e, c = estimate(name, q, **kw), estimate(name, q, grad_checkpoint=True, **kw)
            # the step's peak: generation (weights + KV cache) and the update (the rest) do not overlap
            peak = lambda x: x["weights"] + x["lora_adam"] + max(x["kv_cache"],
                                                                  x["activations"] + x["logits"])
            label = f"{MODELS[name][0]} {q or 'bf16'}"
            print(f"| {label} | {e['weights']:.1f} | {e['lora_adam']:.2f} | {e['activations']:.1f} | "
                  f"{c['activations']:.1f} | {e['logits']:.2f} | {e['kv_cache']:.1f} | {peak(e):.1f} | "
                  f"{peak(c):.1f} |")


def peak_rss_during(fn):
    """fn() and the peak resident set size above the start, sampled every 2 ms (CPU)."""
    statm = lambda: int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    base, peak, stop = statm(), [0], threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], statm() - base)
            time.sleep(0.002)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    fn()
    stop.set()
    th.join()
    return peak[0]


def measure(args):
    d, n_layers, kvd, h, vocab, tied = shapes(args.model)
    n_heads = MODELS[args.model][3]
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    cfg = M.ModelConfig(arch="llama", vocab_size=vocab, dim=d, n_layers=n_layers, n_heads=n_heads,
                        n_kv_heads=n_heads * kvd // d, hidden_dim=h, max_seq_len=args.tokens,
                        tie_embeddings=tied)  # fmt: skip
    with torch.device(args.device):
        model = M.Transformer(cfg).to(dtype)
    for p in model.parameters():
        p.requires_grad_(False)
    apply_lora(model, r=args.lora_r, alpha=2 * args.lora_r)
    model.grad_checkpoint = args.grad_checkpoint
    vh = ValueHead(d).to(args.device)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (args.micro_batch, args.tokens), generator=g).to(args.device)
    prompt_lens = torch.full((args.micro_batch,), args.tokens - args.response, device=args.device)
    resp = ids[:, -args.response :]

    def step():
        logp, ent, values = response_forward(model, vh, ids, prompt_lens, resp)
        (logp.mean() + ent.mean() + values.mean()).backward()

    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        got = (torch.cuda.max_memory_allocated() - base) / GiB
    else:
        got = peak_rss_during(step) / GiB
    e = estimate(args.model, tokens=args.tokens, micro_batch=args.micro_batch, response=args.response,
                 lora_r=args.lora_r, grad_checkpoint=args.grad_checkpoint,
                 bytes_per=dtype.itemsize)  # fmt: skip
    want = e["activations"] + e["logits"]
    print(f"{MODELS[args.model][0]} on {args.device} ({dtype}), micro-batch {args.micro_batch} x "
          f"{args.tokens} tokens, grad_checkpoint={args.grad_checkpoint}: measured {got:.2f} GiB above the "
          f"weights, estimated {want:.2f} (activations {e['activations']:.2f} + logits {e['logits']:.2f}); "
          f"ratio {got / want:.2f}")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--measure", action="store_true")
    p.add_argument("--model", default="small", choices=list(MODELS))
    p.add_argument("--device", default="cpu")
    p.add_argument("--grad-checkpoint", action="store_true")
    p.add_argument("--tokens", type=int, default=3328, help="prompt + reflection tokens of a sequence")
    p.add_argument("--response", type=int, default=256, help="reflection tokens")
    p.add_argument("--micro-batch", type=int, default=2)
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--gen-batch", type=int, default=16)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    measure(args) if args.measure else table(args)


if __name__ == "__main__":
    main()
