"""How good are the tiny checkpoints? Success of the tiny actor on test tasks per env with an empty
memory, the right plan (env.plan) and a wrong one in its memory, and with the frozen retrospector's
reflections (the share of them that equals env.plan). pretrain.py's diagnostic; docs/results.md
keeps the numbers.

    python scripts/measure_tiny.py 30                          # checkpoints/tiny, 30 test tasks per env
    python scripts/measure_tiny.py 30 --path out/tiny --seed 1
"""

import argparse
import os
import random
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import actor  # noqa: E402
import envs  # noqa: E402
import model as modelpy  # noqa: E402
import pretrain  # noqa: E402


def reflect(model, tok, trajs, temperature: float = 1.0, seed: int = 0) -> list[str]:
    """The retrospector's reflections on failed trials, as train.py samples them (adapters off here)."""
    count = lambda s: len(tok.encode(s))
    budget = pretrain.CONTEXT - pretrain.REFLECT_MAX_TOKENS  # the prompt's tokens, as in pretrain.py
    prompts = [tok.encode(actor.build_reflection_prompt(t, (), count, budget)) for t in trajs]
    gen = torch.Generator().manual_seed(seed)
    gens = modelpy.generate(model, prompts, pretrain.REFLECT_MAX_TOKENS, temperature, stop_ids=tok.stop_ids,
                            tokenizer=tok, generator=gen)  # fmt: skip
    return [g.text.strip() for g in gens]


def measure(path: str = pretrain.OUT, n_tasks: int = 30, seed: int = 0):
    """Success of the tiny actor on the first n_tasks test tasks of each env: empty memory, the right
    plan, a wrong plan, and the frozen retrospector's reflections (their share that equals env.plan)."""
    llm = actor.LocalLLM.load(os.path.join(path, "actor"))
    retro = modelpy.from_pretrained(os.path.join(path, "retrospector"))
    tok = llm.tokenizer
    rng = random.Random(seed)
    for name in pretrain.ENVS:
        opts = pretrain.ENV_OPTIONS[name]
        make_env = lambda name=name, opts=opts: envs.make(name, "test", seed=pretrain.ENV_SEED, **opts)
        env, tasks = make_env(), list(range(n_tasks))

        def run(ts, mem, make_env=make_env, name=name):
            return actor.run_trials(make_env, ts, llm, mem, examples=pretrain.examples(name),
                                    k=pretrain.MEMORY_K, max_tokens=pretrain.ACTOR_MAX_TOKENS,
                                    concurrency=len(ts))  # fmt: skip

        t0 = time.time()
        first = run(tasks, None)
        wall = time.time() - t0
        explorer = sum(pretrain.scripted_trial(env, i, random.Random(i)).success for i in tasks) / n_tasks
        failed = [t for t in first if not t.success]
        right, wrong = [], []
        for t in failed:
            env.reset(t.task)
            right.append(env.plan(pretrain.trial_steps(t)))
            wrong.append(pretrain.wrong_reflection(env, t, right[-1], rng))
        fix = [(t, r) for t, r in zip(failed, right, strict=True) if r]
        ok = lambda trajs: sum(t.success for t in trajs)
        right_ok = ok(run([t.task for t, _ in fix], [[r] for _, r in fix])) if fix else 0
        wrong_ok = ok(run([t.task for t in failed], [[w] for w in wrong])) if failed else 0
        refl = reflect(retro, tok, failed, seed=seed) if failed else []
        same = sum(a == (b or "").strip() for a, b in zip(refl, right, strict=True))
        refl_ok = ok(run([t.task for t in failed], [[r] for r in refl])) if failed else 0
        nf = len(failed)
        print(f"{name}: empty memory {ok(first)}/{n_tasks} (explorer {explorer:.2f}); of {nf} failed: "
              f"right plan fixes {right_ok}/{len(fix)}, wrong plan {wrong_ok}/{nf}, frozen retrospector "
              f"correct {same}/{nf} ({same / max(1, nf):.2f}), retry success {refl_ok}/{nf}; "
              f"trial batch of {n_tasks} tasks: {wall:.1f} s")
        for r, p in list(zip(refl, right, strict=True))[:2]:
            print(f"  reflection: {r!r}\n  env.plan:   {p!r}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("n_tasks", type=int, nargs="?", default=30, help="test tasks per env")
    p.add_argument("--path", default=pretrain.OUT, help="the folder holding actor/ and retrospector/")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (pretrain.py's default)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    measure(args.path, args.n_tasks, args.seed)
