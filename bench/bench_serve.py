"""`actor.py serve` under load: 1, 8 and 64 concurrent clients, each posting completions back to back.

    python bench/bench_serve.py [--model checkpoints/tiny/actor] [--seconds 60] [--clients 1,8,64]

The server runs in its own process (as a user starts it); each client is a thread with its own
requests.Session posting one ReAct-sized prompt (max_tokens --max-tokens, temperature 0) to
/v1/completions. Per load level: requests/s, p50 / p99 latency, errors (any reply but a 200 with a
completion, and any transport failure: goal 0) and the server's RSS, sampled every 50 ms from
/proc/PID/status: after warm-up (the highest in the first 10% of the level) and its peak (goal: flat
after warm-up).
Not a test: the numbers depend on the machine. docs/benchmarks.md keeps the results.
"""

import argparse
import os
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import requests

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPT = ("Solve the task by interleaving Thought, Action and Observation steps.\nQuestion: Which city is "
          "the capital of the country where the Rhine rises?\nThought:")  # fmt: skip


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str, threads: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = os.environ | {"OMP_NUM_THREADS": str(threads)}
    p = subprocess.Popen([sys.executable, os.path.join(ROOT, "actor.py"), "serve", "--model", model, "--port",
                          str(port), "--name", "bench", "--device", "cpu"], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    url = f"http://127.0.0.1:{port}/v1"
    wait_up(p, url, lambda: f"the server exited with code {p.returncode}: run `python actor.py serve "
                            f"--model {model}` to see why")  # fmt: skip
    return p, url


def wait_up(p: subprocess.Popen, url: str, why, seconds: float = 60.0):
    """Poll url/models until the server process p answers; SystemExit(why()) if p exits first."""
    for _ in range(int(seconds * 10)):
        try:
            requests.get(f"{url}/models", timeout=1).raise_for_status()
            return
        except requests.RequestException:
            if p.poll() is not None:
                raise SystemExit(why()) from None
            time.sleep(0.1)
    p.kill()
    raise SystemExit(f"the server at {url} did not come up in {seconds:.0f} s")


def load(url: str, clients: int, seconds: float, max_tokens: int, pid: int) -> dict:
    stop, lock = threading.Event(), threading.Lock()
    latencies, errors, rss = [], [], []
    body = {"model": "bench", "prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0}

    def client():
        session = requests.Session()
        while not stop.is_set():
            t0 = time.perf_counter()
            try:
                r = session.post(f"{url}/completions", json=body, timeout=120)
                ok = r.status_code == 200 and isinstance(r.json()["choices"][0]["text"], str)
                why = None if ok else f"HTTP {r.status_code}: {r.text[:100]}"
            except (requests.RequestException, ValueError, KeyError, IndexError) as e:
                why = f"{type(e).__name__}: {e}"[:150]
            with lock:
                (errors.append(why) if why else latencies.append(time.perf_counter() - t0))

    def sample():
        while not stop.is_set():
            rss.append((time.perf_counter(), rss_mb(pid)))
            time.sleep(0.05)

    threads = [threading.Thread(target=client) for _ in range(clients)] + [threading.Thread(target=sample)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat = np.array(latencies) * 1000
    warm = [m for t, m in rss if t - t0 <= seconds * 0.1]
    return {"clients": clients, "requests": len(lat), "req_s": len(lat) / wall,
            "p50_ms": float(np.percentile(lat, 50)) if len(lat) else float("nan"),
            "p99_ms": float(np.percentile(lat, 99)) if len(lat) else float("nan"),
            "errors": len(errors), "first_error": errors[0] if errors else "",
            "rss_warm_mb": max(warm) if warm else float("nan"),
            "rss_peak_mb": max(m for _, m in rss)}  # fmt: skip


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=os.path.join(ROOT, "checkpoints/tiny/actor"))
    p.add_argument("--seconds", type=float, default=60.0, help="per load level")
    p.add_argument("--clients", default="1,8,64")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--threads", type=int, default=2, help="the server's torch threads")
    args = p.parse_args()
    server, url = start_server(args.model, args.threads)
    try:
        print(f"model {args.model}, {args.seconds:g} s per level, max_tokens {args.max_tokens}, "
              f"server threads {args.threads}, start RSS {rss_mb(server.pid):.0f} MB")  # fmt: skip
        print("| clients | requests | req/s | p50 ms | p99 ms | errors | RSS warm-up MB | peak RSS MB |")
        print("|---|---|---|---|---|---|---|---|")
        for n in [int(c) for c in args.clients.split(",")]:
            r = load(url, n, args.seconds, args.max_tokens, server.pid)
            cells = [n, r["requests"], f"{r['req_s']:.1f}", f"{r['p50_ms']:.0f}", f"{r['p99_ms']:.0f}",
                     r["errors"], f"{r['rss_warm_mb']:.0f}", f"{r['rss_peak_mb']:.0f}"]  # fmt: skip
            print("| " + " | ".join(map(str, cells)) + " |", flush=True)
            if r["errors"]:
                print(f"  first error: {r['first_error']}")
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
