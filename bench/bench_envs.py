"""Time env.reset and env.step for each environment (target: well under 1 ms each).

    python bench/bench_envs.py [--episodes 200]

The expert picks the actions; only the time spent inside reset() and step() is counted.
The ratio column is the mean time against the 1 ms budget.
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import envs  # noqa: E402


def bench(name: str, episodes: int) -> tuple[float, float, float]:
    t0 = time.perf_counter()
    env = envs.make(name, "test")
    build = time.perf_counter() - t0
    resets, steps = [], []
    for k in range(episodes):
        i = k % len(env)
        t = time.perf_counter()
        env.reset(i)
        resets.append(time.perf_counter() - t)
        done = False
        while not done:
            _, action = env.expert()
            t = time.perf_counter()
            _, _, done, _ = env.step(action)
            steps.append(time.perf_counter() - t)
    return build, sum(resets) / len(resets), sum(steps) / len(steps)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--episodes", type=int, default=200)
    args = ap.parse_args()
    print("| env | build (ms) | reset (us) | step (us) | step / 1 ms budget |")
    print("| --- | --- | --- | --- | --- |")
    for name in ("hotpotqa", "alfworld", "webshop"):
        build, reset, step = bench(name, args.episodes)
        print(f"| {name} | {build * 1e3:.1f} | {reset * 1e6:.1f} | {step * 1e6:.1f} | {step / 1e-3:.3f} |")


if __name__ == "__main__":
    main()
