"""One PPO update of a train.py run, its wall time split into actor rollouts, reflection sampling and PPO.

    python bench/bench_update.py [config/smollm2.py] [--quantize=int8 ...]   # train.py's arguments

Runs train.train with the given config files and overrides, forced to one update in a temporary
out_dir, and times three calls from outside (the loop is not touched): the actor's completions
(LocalLLM.generate / HTTPLLM.complete), the retrospector's reflections (Retrospector.reflect) and the
PPO step (PPOTrainer.step). "other" is the rest of the update: envs, prompt building, logging, the
checkpoint. Actor time overlaps nothing else (episodes step in batches; HTTP episodes in threads are
summed per call, so with an HTTP actor it is the summed latency, not wall time). Not a test.
"""

import functools
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import actor  # noqa: E402
import ppo  # noqa: E402
import train  # noqa: E402

spent = {"actor": 0.0, "reflection sampling": 0.0, "PPO step": 0.0}


def timer(cls, name, part):
    fn = getattr(cls, name)

    @functools.wraps(fn)
    def timed(*a, **kw):
        t0 = time.perf_counter()
        try:
            return fn(*a, **kw)
        finally:
            spent[part] += time.perf_counter() - t0

    setattr(cls, name, timed)


def main():
    timer(actor.LocalLLM, "generate", "actor")
    timer(actor.HTTPLLM, "complete", "actor")
    timer(train.Retrospector, "reflect", "reflection sampling")
    timer(ppo.PPOTrainer, "step", "PPO step")
    args = [a for a in sys.argv[1:] if not a.startswith(("--updates=", "--out_dir=", "--resume"))]
    with tempfile.TemporaryDirectory() as out:
        cfg = train.command_line_config(args + ["--updates=1", f"--out_dir={out}", "--progress=False"])
        t0 = time.perf_counter()
        train.train(cfg)
        total = time.perf_counter() - t0
        with open(os.path.join(out, "metrics.jsonl")) as f:
            row = json.loads(f.readline())
    update = row["rollout_s"] + row["update_s"]
    reward = "-" if row["reward_mean"] is None else f"{row['reward_mean']:+.3f}"
    print(f"{' '.join(args) or 'defaults'}: update 1 took {update:.1f} s (train() {total:.1f} s, loading "
          f"included); {row['n_reflections']} reflections, mean reward {reward}")
    for part, s in [*spent.items(), ("other", update - sum(spent.values()))]:
        print(f"  {part:20s} {s:8.1f} s  {s / update:6.1%}")


if __name__ == "__main__":
    main()
