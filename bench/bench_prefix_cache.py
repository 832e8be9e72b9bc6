"""Local actor rollouts with vs without the prefix KV cache (infra/prefix_cache.py), same model, same run.

    python bench/bench_prefix_cache.py [--tasks 16] [--envs webshop,alfworld] [--threads 1]

The tiny actor (checkpoints/tiny/actor) runs one greedy trial of actor.run_trials on the first --tasks
test tasks of each env, all episodes in one batch (as train.Config: concurrency 16, max_tokens 64,
alfworld max_steps 25). Without the cache every ReAct step re-encodes the whole ~700-token prompt;
with it only the tokens after the longest stored prefix. Completions must be identical. Prints wall
and CPU time of each, their ratio, and the prompt tokens run through the model (prefill columns).
"""

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import actor  # noqa: E402
import envs  # noqa: E402
import model as M  # noqa: E402
from worlds import scripted  # noqa: E402

ENV_OPTIONS = {"alfworld": {"max_steps": 25}}  # train.Config.env_options


def run(llm, env_name, tasks, args):
    make_env = lambda: envs.make(env_name, "test", 0, **ENV_OPTIONS.get(env_name, {}))
    examples = scripted.few_shot_examples(env_name)
    prebuilt = [make_env() for _ in range(args.concurrency)]  # env construction is not timed
    prefill = [0]

    def count(mod, a):  # the first forward of a generate() (wider than one column) is the prefill
        prefill[0] += a[0].numel() if a[0].shape[1] > 1 else 0

    hook = llm.model.register_forward_pre_hook(count)
    t0, c0 = time.perf_counter(), time.process_time()
    trajs = actor.run_trials(prebuilt.pop, tasks, llm, concurrency=args.concurrency, examples=examples,
                             max_tokens=args.max_tokens, temperature=0.0)  # fmt: skip
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    hook.remove()
    return trajs, wall, cpu, prefill[0]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="checkpoints/tiny/actor")
    p.add_argument("--envs", default="webshop,alfworld")
    p.add_argument("--tasks", type=int, default=16)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    model, tok = M.from_pretrained(args.model), M.load_tokenizer(args.model)
    for env_name in args.envs.split(","):
        tasks, res = list(range(args.tasks)), {}
        for on in (False, True):  # a fresh LocalLLM (and cache) for each
            res[on] = run(actor.LocalLLM(model, tok, prefix_cache=on), env_name, tasks, args)
        (t_off, wall_off, cpu_off, pre_off), (t_on, wall_on, cpu_on, pre_on) = res[False], res[True]
        assert [t.steps for t in t_on] == [t.steps for t in t_off], "completions differ with the cache"
        print(f"{env_name}: {len(tasks)} episodes, {sum(len(t.steps) for t in t_on)} steps")
        for on in (False, True):
            _, wall, cpu, pre = res[on]
            name = "prefix cache" if on else "no cache"
            print(f"  {name:12s}: wall {wall:7.2f} s, cpu {cpu:7.2f} s, prefill tokens {pre:8d}")
        print(f"  speed-up: wall {wall_off / wall_on:.2f}x, cpu {cpu_off / cpu_on:.2f}x, "
              f"prefill tokens {pre_off / max(pre_on, 1):.1f}x fewer; completions identical")  # fmt: skip


if __name__ == "__main__":
    main()
