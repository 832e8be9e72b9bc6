"""The local actor against llama.cpp's OpenAI-compatible server on the same GGUF file, in one run.

    pip install -r requirements-bench.txt      # llama-cpp-python[server], a bench extra: ~10 min build
    python bench/bench_llamacpp.py [--gguf checkpoints/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf]
        [--server-python PYTHON] [--env hotpotqa] [--prompts 16] [--examples 2] [--max-tokens 64]
        [--threads 2] [--quant fp32,bf16,int8,int4] [--episodes 16]

Prompts: the first ReAct prompt of the first --prompts test tasks of --env, with --examples few-shot
examples (actor.Episode.prompt: the harness's own prompt), so they share the header and the examples.
Each side completes them greedily, max_tokens --max-tokens, no stop strings:
- batch 1: one prompt after the other (llama.cpp reuses its last prompt's prefix; we our prefix cache);
- 16 concurrent: llama.cpp gets them from 16 client threads at once; the local actor as one generate()
  call (as run_trials batches live episodes), with the shared prefix run once, and for comparison
  without that (every row runs the whole prompt, as before infra/prefix_cache.PrefixCache.shared).
tokens/s = tokens generated (each side's own count) / wall time, prefill included. Then --episodes
whole episodes through actor.run_trials at concurrency 16 (HTTPLLM to the server; LocalLLM batched):
ReAct steps/s. The local model is the GGUF dequantized to float32 (fp32), or requantized by
infra/quantize.py (int8 / int4), or cast to bfloat16 (bf16: fast where the CPU has AVX512-BF16 or AMX);
its logit error against fp32 is printed (all positions of prompt 0).
llama.cpp computes in the file's own Q4_1. Each side gets --threads threads. Not a test.
"""

import argparse
import concurrent.futures
import os
import subprocess
import sys
import tempfile
import time

import requests
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_quant import logit_error  # noqa: E402
from bench_serve import free_port, wait_up  # noqa: E402

import actor  # noqa: E402
import envs  # noqa: E402
import model as M  # noqa: E402
from infra.prefix_cache import PrefixCache  # noqa: E402
from worlds import scripted  # noqa: E402


class NoSharing(PrefixCache):
    """The prefix cache before shared-prefix prefill: a new batch's rows each run their whole prompt."""

    def shared(self, prompts, min_tokens=16):
        return []


def start_server(python: str, gguf: str, threads: int, n_ctx: int):
    port = free_port()
    log = tempfile.TemporaryFile()  # a file, not a pipe: llama.cpp logs more than a pipe holds unread
    p = subprocess.Popen([python, "-m", "llama_cpp.server", "--model", gguf, "--port", str(port), "--n_ctx",
                          str(n_ctx), "--n_threads", str(threads), "--n_threads_batch", str(threads)],
                         stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    url = f"http://127.0.0.1:{port}/v1"

    def why():
        log.seek(0)
        return (f"llama.cpp's server exited with code {p.returncode} ({python} -m llama_cpp.server; is "
                f"llama-cpp-python[server] installed there?):\n{log.read().decode(errors='replace')[-2000:]}")

    wait_up(p, url, why, 120)
    return p, url


def server_complete(url: str, prompt: str, max_tokens: int) -> int:
    r = requests.post(f"{url}/completions", json={"prompt": prompt, "max_tokens": max_tokens,
                                                  "temperature": 0.0}, timeout=600)  # fmt: skip
    r.raise_for_status()
    return r.json()["usage"]["completion_tokens"]


def timed(fn, reset, repeats):
    """(fn's result, its best wall time of `repeats`); reset() before each empties the side's prompt cache."""
    best = float("inf")
    for _ in range(repeats):
        reset()
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return out, best


def bench_local(q, args, prompts, make_env, examples, ref):
    """The rows of the local actor with weights `q` (fp32, bf16, int8, int4); prints its logit error."""
    name, rows = f"ours {q}", []
    dtype = torch.bfloat16 if q == "bf16" else None  # bf16: weights and activations (train.py's --dtype)
    llm = actor.LocalLLM.load(args.gguf, dtype=dtype, quantize="" if q in ("fp32", "bf16") else q)
    ids = [llm.encode(s) for s in prompts]
    if q == "fp32":  # kept for the others' logit error (list fp32 first)
        ref = llm.model
    elif ref is not None:
        ((mx, mean, std, agree),) = logit_error(ref, {name: llm.model}, torch.tensor([ids[0]])).values()
        print(f"{name} vs fp32 logits on prompt 0 ({len(ids[0])} positions): max abs diff {mx:.3f}, "
              f"mean {mean:.4f}, fp32 std {std:.3f}, top-1 agreement {agree:.1%}")
    gen = lambda batch: sum(len(g.tokens) for g in llm.generate(batch, args.max_tokens))
    llm.generate([llm.encode("Hello")], 4)  # warm-up
    reset = lambda: llm.prefix_cache.clear()
    n, s = timed(lambda: sum(gen([i]) for i in ids), reset, args.repeats)
    rows.append((name, "batch 1", n, s))
    for cache, label in ((NoSharing(64), ", prefix run per row"), (PrefixCache(64), "")):
        llm.prefix_cache = cache
        n, s = timed(lambda: gen(ids), reset, args.repeats)
        rows.append((name, f"{len(prompts)} concurrent{label}", n, s))
    if args.episodes:
        trajs, s = timed(lambda: actor.run_trials(make_env, range(args.episodes), llm, concurrency=16,
                                                  examples=examples, max_tokens=args.max_tokens),
                         reset, args.repeats)  # fmt: skip
        rows.append((name, f"{args.episodes} episodes", sum(len(t.steps) for t in trajs), s))
    return rows, ref


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gguf", default="checkpoints/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    p.add_argument("--server-python", default=sys.executable, help="a Python with llama-cpp-python[server]")
    p.add_argument("--env", default="hotpotqa")
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--examples", type=int, default=2)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quant", default="fp32,bf16,int8,int4", help="fp32 first: the others' logit reference")
    p.add_argument("--episodes", type=int, default=16, help="0: skip the run_trials part")
    p.add_argument("--repeats", type=int, default=2, help="best wall time of this many runs")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if not os.path.exists(args.gguf):
        raise SystemExit(f"{args.gguf}: no such file (scripts/fetch_smollm2.sh fetches it)")
    make_env = lambda: envs.make(args.env, "test", 0)
    examples = scripted.few_shot_examples(args.env, args.examples)
    tok = M.load_tokenizer(args.gguf)
    prompts = [actor.Episode(make_env(), i, None, examples=examples).prompt() for i in range(args.prompts)]
    n_tok = [len(tok.encode(s)) for s in prompts]
    print(f"{args.prompts} {args.env} prompts of {min(n_tok)}-{max(n_tok)} tokens, {args.examples} examples, "
          f"{args.max_tokens} new tokens each, {args.threads} threads")  # fmt: skip
    rows = []  # (side, mode, tokens, seconds)

    server, url = start_server(args.server_python, args.gguf, args.threads, 4096)
    try:
        # a short unrelated prompt replaces the one llama.cpp keeps (it reuses only its last prompt's prefix)
        reset = lambda: server_complete(url, "Hello", 4)
        n, s = timed(lambda: sum(server_complete(url, q, args.max_tokens) for q in prompts), reset,
                     args.repeats)  # fmt: skip
        rows.append(("llama.cpp Q4_1", "batch 1", n, s))
        with concurrent.futures.ThreadPoolExecutor(len(prompts)) as pool:
            n, s = timed(lambda: sum(pool.map(lambda q: server_complete(url, q, args.max_tokens), prompts)),
                         reset, args.repeats)  # fmt: skip
        rows.append(("llama.cpp Q4_1", f"{len(prompts)} concurrent", n, s))
        if args.episodes:
            llm = actor.HTTPLLM(url, "bench", tokenizer=tok, max_concurrency=16, context_window=4096)
            trajs, s = timed(lambda: actor.run_trials(make_env, range(args.episodes), llm, concurrency=16,
                                                      examples=examples, max_tokens=args.max_tokens),
                             reset, args.repeats)  # fmt: skip
            rows.append(("llama.cpp Q4_1", f"{args.episodes} episodes", sum(len(t.steps) for t in trajs), s))
    finally:
        server.kill()

    fp32 = None
    for q in args.quant.split(","):
        part, fp32 = bench_local(q, args, prompts, make_env, examples, fp32)
        rows += part

    ref = {mode: n / s for side, mode, n, s in rows if side.startswith("llama.cpp")}
    print("\n| side | mode | tokens (steps) | seconds | per s | vs llama.cpp |")
    print("| --- | --- | --- | --- | --- | --- |")
    for side, mode, n, s in rows:
        base = ref.get(mode.split(",")[0])
        unit = "steps/s" if mode.endswith("episodes") else "tok/s"
        print(f"| {side} | {mode} | {n} | {s:.1f} | {n / s:.1f} {unit} | {n / s / base:.2f}x |")


if __name__ == "__main__":
    main()
