"""Rollout throughput with 1 vs 8 concurrent episodes against an endpoint with 200 ms latency per call.

A stdlib stand-in for an OpenAI-compatible server (its own process, like a real endpoint) answers each
/v1/completions request after a fixed delay with the scripted expert's next action
(worlds.scripted.ExpertLLM), so every episode runs its real length through the whole actor path
(prompt, HTTPLLM, parsing, env step, JSONL log). Target: >= 6x speed-up at 8.

    python bench/bench_rollouts.py [--env hotpotqa] [--episodes 24] [--latency 0.2]
"""

import argparse
import json
import multiprocessing
import os
import sys
import tempfile
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import actor  # noqa: E402
import envs  # noqa: E402
from worlds import scripted  # noqa: E402


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms delayed-ACK stall

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        time.sleep(self.server.latency)  # what a remote LLM call costs, minus the compute
        text = self.server.expert.answer(body["prompt"])
        data = json.dumps({"choices": [{"index": 0, "text": text, "finish_reason": "stop"}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def serve(env_name, latency, n_envs, port_queue):
    """The stand-in endpoint, run in a child process (no GIL shared with the actor)."""
    make_env = lambda: envs.make(env_name, split="test", seed=0)
    expert = scripted.ExpertLLM(make_env)
    expert._free[0] += [make_env() for _ in range(n_envs)]  # built up front, not while timing
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads, server.expert, server.latency = True, expert, latency
    port_queue.put(server.server_address[1])
    server.serve_forever()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--env", default="hotpotqa", choices=["hotpotqa", "alfworld", "webshop"])
    p.add_argument("--episodes", type=int, default=24)
    p.add_argument("--latency", type=float, default=0.2, help="seconds the server waits per call")
    p.add_argument("--concurrency", type=int, default=8)
    args = p.parse_args()

    make_env = lambda: envs.make(args.env, split="test", seed=0)
    examples = scripted.few_shot_examples(args.env)
    port_queue = multiprocessing.Queue()
    server = multiprocessing.Process(
        target=serve, args=(args.env, args.latency, args.concurrency, port_queue)
    )
    server.start()
    try:
        url = f"http://127.0.0.1:{port_queue.get(timeout=120)}/v1"
        llm = actor.HTTPLLM(url, model="expert", max_concurrency=args.concurrency)
        tasks, rates = list(range(args.episodes)), {}
        with tempfile.TemporaryDirectory() as tmp:
            for c in (1, args.concurrency):
                prebuilt = [make_env() for _ in range(c)]  # env construction is a one-time cost: not timed
                log = os.path.join(tmp, f"c{c}.jsonl")
                t0 = time.perf_counter()
                trajs = actor.run_trials(
                    prebuilt.pop, tasks, llm, log_path=log, concurrency=c, examples=examples
                )
                dt = time.perf_counter() - t0
                steps, solved = sum(len(t.steps) for t in trajs), sum(t.success for t in trajs)
                with open(log) as f:
                    assert sum(1 for _ in f) == len(tasks), "every episode must be logged exactly once"
                rates[c] = steps / dt
                print(
                    f"concurrency {c:2d}: {len(tasks)} episodes, {steps} steps, {solved} solved in {dt:.2f} s"
                    f" -> {len(tasks) / dt:6.2f} episodes/s, {steps / dt:6.2f} steps/s"
                )
    finally:
        server.terminate()
    ratio = rates[args.concurrency] / rates[1]
    verdict = "PASS" if ratio >= 6 else "FAIL"
    print(
        f"{args.env}, {args.latency * 1000:.0f} ms/call: speed-up at {args.concurrency} = {ratio:.2f}x"
        f" (target >= 6x: {verdict})"
    )


if __name__ == "__main__":
    main()
