"""LoRA training step speed and peak memory: our model.py + lora.py vs transformers + peft.

Same GPT-2-small config (124M, random weights), same batch, one step = forward + cross-entropy +
backward + AdamW step on the adapters. Same adapters: rank 8 on our q/k/v/o/up/down projections;
peft on GPT-2's fused c_attn (rank 12, so that it has as many parameters as our rank-8 q, k and v
together) and c_proj / c_fc (rank 8), so both train exactly the same number of parameters.

Each run is a fresh subprocess, the two sides alternating for --rounds rounds; speed is the best
(least disturbed by other processes on a shared machine) and the median step. Peak memory is the
process's peak resident set size (resource.getrusage ru_maxrss), which includes the Python and
library imports, and is also shown minus the RSS just before the model is built (libraries already
imported: the model, activations, gradients and optimizer state).

    python bench/bench_lora.py [--batch 4] [--seq 256] [--steps 3] [--warmup 1] [--rounds 2] [--threads N]
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GPT2_SMALL = dict(vocab_size=50257, dim=768, n_layers=12, n_heads=12, max_seq_len=1024)
RANK, ALPHA = 8, 16


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def build_ours():
    sys.path.insert(0, ROOT)
    from lora import apply_lora
    from model import ModelConfig, Transformer

    c = GPT2_SMALL
    cfg = ModelConfig(arch="gpt2", vocab_size=c["vocab_size"], dim=c["dim"], n_layers=c["n_layers"],
                      n_heads=c["n_heads"], n_kv_heads=c["n_heads"], hidden_dim=4 * c["dim"],
                      max_seq_len=c["max_seq_len"], norm_eps=1e-5, tie_embeddings=True)
    model = apply_lora(Transformer(cfg), r=RANK, alpha=ALPHA,
                       targets=("q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"))
    return model, lambda idx: model(idx)


def build_peft():
    from peft import LoraConfig, get_peft_model
    from transformers import GPT2Config, GPT2LMHeadModel

    c = GPT2_SMALL
    cfg = GPT2Config(vocab_size=c["vocab_size"], n_embd=c["dim"], n_layer=c["n_layers"], n_head=c["n_heads"],
                     n_positions=c["max_seq_len"], resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    base = GPT2LMHeadModel(cfg)
    lcfg = LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=["c_attn", "c_proj", "c_fc"],
                      rank_pattern={"c_attn": 12}, alpha_pattern={"c_attn": 24}, fan_in_fan_out=True)
    model = get_peft_model(base, lcfg)
    return model, lambda idx: model(input_ids=idx).logits


def worker(impl: str, batch: int, seq: int, steps: int, warmup: int) -> dict:
    import torch
    import torch.nn.functional as F

    if impl == "peft":  # imported before the RSS baseline: the delta column counts no imports
        import peft  # noqa: F401
        import transformers  # noqa: F401
    torch.manual_seed(0)
    rss_before = rss_mb()
    model, logits_of = build_ours() if impl == "ours" else build_peft()
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    idx = torch.randint(0, GPT2_SMALL["vocab_size"], (batch, seq))

    def step():
        logits = logits_of(idx)  # (B, T, V)
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), idx[:, 1:].flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux -> MiB
    return {"impl": impl, "step_s": times, "peak_rss_mb": peak, "peak_minus_start_mb": peak - rss_before,
            "trainable": sum(p.numel() for p in params), "total": sum(p.numel() for p in model.parameters()),
            "threads": torch.get_num_threads()}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=2, help="alternating runs per side (best step counts)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads in each worker (0: default)")
    ap.add_argument("--worker", choices=["ours", "peft"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        print(json.dumps(worker(args.worker, args.batch, args.seq, args.steps, args.warmup)))
        return
    runs = {"peft": [], "ours": []}
    for _ in range(args.rounds):  # alternate, each run in a fresh process: clean peak RSS, fair load
        for impl in ("peft", "ours"):
            cmd = [sys.executable, os.path.abspath(__file__), "--worker", impl, "--batch", str(args.batch),
                   "--seq", str(args.seq), "--steps", str(args.steps), "--warmup", str(args.warmup),
                   "--threads", str(args.threads)]
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode != 0:
                sys.exit(f"{impl} worker failed:\n{out.stderr}")
            runs[impl].append(json.loads(out.stdout.strip().splitlines()[-1]))
    tokens = args.batch * args.seq
    res = {}
    for impl, rs in runs.items():
        times = sorted(t for r in rs for t in r["step_s"])
        res[impl] = dict(rs[0], best=tokens / times[0], median=tokens / times[len(times) // 2],
                         peak_rss_mb=max(r["peak_rss_mb"] for r in rs),
                         peak_minus_start_mb=max(r["peak_minus_start_mb"] for r in rs))
    o, p = res["ours"], res["peft"]
    if o["trainable"] != p["trainable"]:
        print(f"WARNING: trainable parameters differ: ours {o['trainable']:,}, peft {p['trainable']:,}")
    print(f"GPT-2 small (124M, random init), one LoRA training step (forward, loss, backward, AdamW), "
          f"B={args.batch}, T={args.seq}, CPU, {o['threads']} threads; "
          f"{args.rounds} alternating runs per side, "
          f"each {args.steps} timed steps after {args.warmup} warm-up\n")
    rows = [("trainable params", p["trainable"], o["trainable"], ",", ""),
            ("total params", p["total"], o["total"], ",", ""),
            ("tokens/s, best step", p["best"], o["best"], ".0f", " (target >= 1.0)"),
            ("tokens/s, median step", p["median"], o["median"], ".0f", ""),
            ("peak RSS, MiB (ru_maxrss)", p["peak_rss_mb"], o["peak_rss_mb"], ".0f", " (target <= 1.0)"),
            ("peak RSS - RSS before the model, MiB", p["peak_minus_start_mb"], o["peak_minus_start_mb"],
             ".0f", "")]
    print("| | transformers + peft | ours (model.py + lora.py) | ours / peft |")
    print("|---|---|---|---|")
    for name, a, b, fmt, note in rows:
        print(f"| {name} | {a:{fmt}} | {b:{fmt}} | {b / a:.2f}{note} |")

if __name__ == "__main__":
    main()
