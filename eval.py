"""Success rate by trial on held-out tasks for ReAct, Reflexion and Retroformer (the paper's table).

    python eval.py                                    # the offline default; reads out/adapters.pt
    python eval.py config/hotpotqa_http_llama3.py --eval_seeds=0,1,2,3,4

Takes the same config as train.py. For each environment and seed, the first `eval_tasks` tasks of
the `test` split get one trial 0 with an empty memory (shared by the three methods), then up to
max_trials - 1 retries of the tasks not yet solved:
    react        retries with no memory, same sampling settings as the others
    reflexion    reflections by the retrospector with its adapters off (the frozen base model)
    retroformer  reflections by the retrospector with the trained adapters (out_dir/adapters.pt)
success_by_trial[k] = fraction of tasks solved in any of trials 0..k, averaged over seeds;
ci95_by_trial[k] = 1.96 * sample std over seeds / sqrt(n_seeds) (a normal interval over seeds; null
with one seed). Tasks whose episode failed in the backend are left out (n_void). Writes
out_dir/eval.json, prints a markdown table and saves out_dir/eval.png (if matplotlib is installed).
"""

import json
import math
import os

import numpy as np
import torch

from actor import few_shot_examples
from lora import load_lora
from train import (
    Config,
    Retrospector,
    actor_trials,
    build_actor,
    command_line_config,
    derive_seed,
    ensure_checkpoints,
    env_factory,
    env_names,
    reseed_actor,
    rollout,
    success_counts,
)

METHODS = ("react", "reflexion", "retroformer")


def evaluate(cfg: Config, actor_llm, retrospector, make_env=None, log_path=None) -> dict:
    """{"<env>": {"<method>": {"success_by_trial", "ci95_by_trial", "n_tasks", "seeds", "n_void"}}}."""
    methods = [m.strip() for m in cfg.eval_methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise ValueError(f"config key 'eval_methods': unknown {bad}; choose from {list(METHODS)}")
    seeds = [int(s) for s in cfg.eval_seeds.split(",") if s.strip()]
    if not seeds:
        raise ValueError("config key 'eval_seeds' is empty: give e.g. 0,1,2")
    make_env = make_env or (lambda name, split: env_factory(cfg, name, split))
    device = next(retrospector.model.parameters()).device if retrospector is not None else "cpu"
    results = {}
    for name in env_names(cfg):
        factory = make_env(name, "test")
        tasks = list(range(min(cfg.eval_tasks, len(factory()))))
        examples = few_shot_examples(name, cfg.n_examples) if cfg.n_examples else ()
        curves = {m: [] for m in methods}  # method -> per seed, success fraction by trial
        voids = {m: 0 for m in methods}
        for seed in seeds:
            reseed_actor(actor_llm, derive_seed(seed, name, "trial0"))
            first = actor_trials(factory, tasks, actor_llm, cfg, examples=examples, log_path=log_path)
            for m in methods:
                reseed_actor(actor_llm, derive_seed(seed, name, m, "actor"))
                gen = torch.Generator(device=device).manual_seed(derive_seed(seed, name, m, "reflect"))
                _, history = rollout(factory, tasks, actor_llm, retrospector, cfg, m, examples, gen, log_path,
                                     first=first)  # fmt: skip
                solved, n, void = success_counts(history, cfg.max_trials)
                curves[m].append([s / n if n else float("nan") for s in solved])
                voids[m] += void
        results[name] = {}
        for m in methods:
            c = np.array(curves[m])  # (n_seeds, max_trials)
            ci = 1.96 * c.std(axis=0, ddof=1) / math.sqrt(len(seeds)) if len(seeds) > 1 else None
            results[name][m] = {
                "success_by_trial": [_num(x) for x in c.mean(axis=0)],
                "ci95_by_trial": [_num(x) for x in ci] if ci is not None else [None] * cfg.max_trials,
                "n_tasks": len(tasks), "seeds": seeds, "n_void": voids[m],
            }  # fmt: skip
    return results


def _num(x):
    return None if math.isnan(x) else round(float(x), 6)


def markdown_table(results: dict) -> str:
    trials = max(len(r["success_by_trial"]) for env in results.values() for r in env.values())
    lines = ["| env | method | " + " | ".join(f"trial {k}" for k in range(trials)) + " |",
             "|---|---|" + "---|" * trials]  # fmt: skip
    cell = lambda s, c: "n/a" if s is None else f"{s:.3f}" + ("" if c is None else f" ± {c:.3f}")
    for env, methods in results.items():
        for m, r in methods.items():
            cells = [cell(s, c) for s, c in zip(r["success_by_trial"], r["ci95_by_trial"], strict=True)]
            lines.append(f"| {env} | {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(results: dict, path: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: skipping the plot (pip install matplotlib)")
        return False
    fig, axes = plt.subplots(1, len(results), figsize=(4 * len(results), 3.2), squeeze=False)
    for ax, (env, methods) in zip(axes[0], results.items(), strict=True):
        for m, r in methods.items():
            y = [np.nan if s is None else s for s in r["success_by_trial"]]
            err = [0.0 if c is None else c for c in r["ci95_by_trial"]]
            ax.errorbar(range(len(y)), y, yerr=err, marker="o", capsize=3, label=m)
        ax.set(title=env, xlabel="trial", ylabel="success rate", ylim=(0, 1))
        ax.set_xticks(range(len(y)))
    axes[0][0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main(argv=None):
    cfg = command_line_config(argv)
    ensure_checkpoints(cfg)
    torch.manual_seed(cfg.seed)
    actor_llm = build_actor(cfg, cfg.device)
    retrospector = None
    if {"reflexion", "retroformer"} & set(cfg.eval_methods.split(",")):
        retrospector = Retrospector.load(cfg, cfg.device, lora=False)
        adapters = os.path.join(cfg.out_dir, "adapters.pt")
        if not os.path.exists(adapters):
            raise SystemExit(f"{adapters} not found: run train.py with out_dir={cfg.out_dir!r} first")
        load_lora(retrospector.model, adapters)  # applies the adapters with the file's rank and targets
    os.makedirs(cfg.out_dir, exist_ok=True)
    log_path = os.path.join(cfg.out_dir, "eval_episodes.jsonl")
    results = evaluate(cfg, actor_llm, retrospector, log_path=log_path)
    path = os.path.join(cfg.out_dir, "eval.json")
    with open(path + ".tmp", "w") as f:
        json.dump({"config": vars(cfg), "results": results}, f, indent=1)
    os.replace(path + ".tmp", path)
    print(markdown_table(results))
    print(f"wrote {path}")
    if plot(results, os.path.join(cfg.out_dir, "eval.png")):
        print(f"wrote {os.path.join(cfg.out_dir, 'eval.png')}")


if __name__ == "__main__":
    main()
