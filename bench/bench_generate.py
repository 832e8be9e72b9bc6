"""Greedy generation speed: our model.generate vs transformers' model.generate, same weights, same run.

    python bench/bench_generate.py [--new-tokens 128] [--repeats 2] [--threads 2] [--models gpt2,llama]

Random-init GPT-2 small (124M) and a small GQA Llama (~125M) are built with transformers, saved to a
temp folder and loaded by our from_pretrained, so both sides run identical fp32 weights on CPU.
Batch 1 and batch 8 (prompts of different lengths, left-padded for transformers). Both produce
exactly --new-tokens tokens (no stop ids for us, min_new_tokens for transformers). Target: ratio >= 1.3.
Peak memory = peak RSS above the pre-run RSS, sampled from /proc/self/statm every 2 ms.
Ratio (CPU time) = transformers' process CPU seconds / ours: steadier than wall time on a shared machine
(at --threads 1; with more threads it also counts OpenMP spin-waiting).
"""

import argparse
import os
import sys
import tempfile
import threading
import time
from functools import partial

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import model as M  # noqa: E402


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(fn):
    """Run fn(); return (wall seconds, process CPU seconds, peak RSS above the starting RSS, output)."""
    base, peak, stop = rss_bytes(), [0], threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], rss_bytes() - base)
            time.sleep(0.002)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    stop.set()
    th.join()
    return dt, cpu, peak[0], out


def build(name, folder):
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    if name == "gpt2":  # GPT-2 small
        cfg = GPT2Config(vocab_size=50257, n_embd=768, n_layer=12, n_head=12, n_positions=1024)
        ref = GPT2LMHeadModel(cfg)
    else:  # small Llama with grouped-query attention
        cfg = LlamaConfig(vocab_size=32000, hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
                          num_attention_heads=12, num_key_value_heads=4, max_position_embeddings=2048,
                          tie_word_embeddings=False)  # fmt: skip
        ref = LlamaForCausalLM(cfg)
    ref.eval()
    ref.generation_config.pad_token_id = 0
    ref.save_pretrained(folder)
    return ref, M.from_pretrained(folder)


def prompts_for(batch, vocab, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = [32] if batch == 1 else [16 + (37 * i) % 33 for i in range(batch)]  # 16..48 tokens
    return [torch.randint(1, vocab, (n,), generator=g).tolist() for n in lengths]


def run_ours(model, prompts, n):
    return [g.tokens for g in M.generate(model, prompts, n, temperature=0)]


def run_hf(ref, prompts, n):
    P = max(len(p) for p in prompts)
    idx = torch.zeros(len(prompts), P, dtype=torch.long)
    mask = torch.zeros(len(prompts), P, dtype=torch.long)
    for i, p in enumerate(prompts):  # left padding
        idx[i, P - len(p) :], mask[i, P - len(p) :] = torch.tensor(p), 1
    with torch.inference_mode():
        out = ref.generate(input_ids=idx, attention_mask=mask, max_new_tokens=n, min_new_tokens=n,
                           do_sample=False, pad_token_id=0)  # fmt: skip
    return out[:, P:].tolist()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per case; the fastest is kept")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--models", default="gpt2,llama")
    ap.add_argument("--batches", default="1,8")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    n = args.new_tokens
    rows = []
    for name in args.models.split(","):
        with tempfile.TemporaryDirectory() as folder:
            ref, ours = build(name, folder)
            params = sum(p.numel() for p in ours.parameters()) / 1e6
            for batch in map(int, args.batches.split(",")):
                prompts = prompts_for(batch, ours.config.vocab_size)
                run_ours(ours, prompts, 8), run_hf(ref, prompts, 8)  # warm-up
                fns = {"ours": partial(run_ours, ours, prompts, n), "hf": partial(run_hf, ref, prompts, n)}
                runs = {"ours": [], "hf": []}
                for _ in range(args.repeats):  # interleaved, best of N: the CPU is shared and noisy
                    for who, fn in fns.items():
                        runs[who].append(measure(fn))
                best = {k: [min(r[i] for r in v) for i in (0, 1)] for k, v in runs.items()}
                same = sum(a == b for a, b in zip(runs["ours"][0][3], runs["hf"][0][3], strict=True))
                tps = {k: batch * n / v[0] for k, v in best.items()}
                mib = {k: max(r[2] for r in v) / 2**20 for k, v in runs.items()}
                cpu_ratio = best["hf"][1] / best["ours"][1]
                rows.append((f"{name} ({params:.0f}M)", batch, tps["ours"], tps["hf"],
                             tps["ours"] / tps["hf"], cpu_ratio, mib["ours"], mib["hf"],
                             f"{same}/{batch}"))  # fmt: skip
                print(rows[-1], flush=True)
    print(f"\ntorch {torch.__version__}, {args.threads} threads, greedy, {n} new tokens, fp32, CPU, best of "
          f"{args.repeats}; peak mem = peak RSS above pre-run RSS (sampled /proc/self/statm)\n")  # fmt: skip
    print("| model | batch | ours tok/s | transformers tok/s | ratio (wall) | ratio (CPU time) "
          "| ours peak MiB | transformers peak MiB | same tokens |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print("| {} | {} | {:.1f} | {:.1f} | {:.2f}x | {:.2f}x | {:.0f} | {:.0f} | {} |".format(*r))


if __name__ == "__main__":
    main()
