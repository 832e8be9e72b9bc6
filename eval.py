"""Success rate by trial on held-out tasks for ReAct, Reflexion and Retroformer (the paper's table).

    python eval.py                                    # the offline default; reads out/adapters.pt
    python eval.py config/hotpotqa_http_llama3.py --eval_seeds=0,1,2,3,4

Takes the same config as train.py. For each environment and seed, the first `eval_tasks` tasks of
the `test` split get one trial 0 with an empty memory (shared by the three methods), then up to
eval_trials - 1 retries of the tasks not yet solved:
    react        retries with no memory, same sampling settings as the others
    reflexion    reflections by the retrospector with its adapters off (the frozen base model)
    retroformer  reflections by the retrospector with the trained adapters (out_dir/adapters.pt)
success_by_trial[k] = fraction of tasks solved in any of trials 0..k, averaged over seeds;
ci95_by_trial[k] = 1.96 * sample std over seeds / sqrt(n_seeds) (a normal interval over seeds; null
with one seed); right_plan_share = the share of the method's reflections that state the plan the env
reads off the failed trial (envs.right_plan; generated worlds only, else null). Tasks whose episode
failed in the backend are left out (n_void); more than max_void_share void episodes in a method's run
stop the evaluation with a non-zero exit. Writes out_dir/eval.json, prints a markdown table and draws
the curves in out_dir/eval.svg.
Every trial is logged to out_dir/eval_episodes.jsonl with its seed and method ("shared": trial 0).
--resume after a crash or a kill continues from out_dir/eval_progress.jsonl (infra/runstate.py): the
(env, seed, method) blocks that finished are not run again, and eval.json equals an uninterrupted run's.
--eval_split=val runs a validation slice of the train split instead of test (envs.VAL_FIRST on;
neither PPO nor pretrain.py reads it): choose settings there, without looking at the test tasks.
"""

import dataclasses
import hashlib
import json
import math
import os
from xml.sax.saxutils import escape

import numpy as np
import torch

import envs
import train
from actor import LLMError, Trajectory
from infra import runlog, runstate
from lora import load_lora
from worlds.scripted import few_shot_examples

METHODS = ("react", "reflexion", "retroformer")


def evaluate(cfg: train.Config, actor_llm, retrospector, make_env=None, log_path=None, progress=None,
             sets=None) -> dict:  # fmt: skip
    """{"<env>": {"<method>": {"success_by_trial", "ci95_by_trial", "n_tasks", "seeds", "n_void",
    "right_plan_share"}}}.
    progress: an infra.runstate.EvalProgress; its finished (env, seed, method) blocks are not run again,
    and each block run is recorded there once its episodes are in its log (which replaces log_path).
    sets: eval_sets(cfg, make_env) when the caller has built them already (main() hashes them first)."""
    cfg = dataclasses.replace(cfg, max_trials=cfg.eval_trials)  # train.rollout() runs max_trials trials
    methods = [m.strip() for m in cfg.eval_methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise ValueError(f"config key 'eval_methods': unknown {bad}; choose from {list(METHODS)}")
    seeds = [int(s) for s in cfg.eval_seeds.split(",") if s.strip()]
    if not seeds:
        raise ValueError("config key 'eval_seeds' is empty: give e.g. 0,1,2")
    sets = sets or eval_sets(cfg, make_env)
    done = progress.done if progress else {}  # (env, seed, method) -> {"solved", "n", "void", "right_plan"}
    log = progress.log_path if progress else log_path
    device = next(retrospector.model.parameters()).device if retrospector is not None else "cpu"
    results = {}
    for name, (factory, tasks) in sets.items():
        examples = few_shot_examples(name, cfg.n_examples) if cfg.n_examples else ()
        curves = {m: [] for m in methods}  # method -> per seed, success fraction by trial
        voids, rights = {m: 0 for m in methods}, {m: [0, 0] for m in methods}
        for seed in seeds:
            first = None  # trial 0, shared by the methods: run once, or read back from the log on --resume
            if (name, seed, "shared") not in done:
                train.reseed_actor(actor_llm, train.derive_seed(seed, name, "trial0"))
                tag = {"seed": seed, "method": "shared"}
                first = train.actor_trials(factory, tasks, actor_llm, cfg, examples=examples, log_path=log,
                                           tag=tag)  # fmt: skip
                if progress:
                    progress.finish(name, seed, "shared")
            for m in methods:
                if (name, seed, m) not in done:
                    if first is None:
                        logged = progress.logged(name, seed, "shared", tasks)
                        first = [Trajectory.from_json(x) for x in logged]
                    counts = retries(cfg, name, seed, m, factory, tasks, first, actor_llm, retrospector,
                                     examples, log, device)  # fmt: skip
                    done[(name, seed, m)] = progress.finish(name, seed, m, **counts) if progress else counts
                b = done[(name, seed, m)]
                curves[m].append([s / b["n"] if b["n"] else float("nan") for s in b["solved"]])
                voids[m] += b["void"]
                rights[m] = [x + y for x, y in zip(rights[m], b.get("right_plan", [0, 0]), strict=True)]
        results[name] = {}
        for m in methods:
            c = np.array(curves[m])  # (n_seeds, max_trials)
            ci = 1.96 * c.std(axis=0, ddof=1) / math.sqrt(len(seeds)) if len(seeds) > 1 else None
            results[name][m] = {
                "success_by_trial": [_num(x) for x in c.mean(axis=0)],
                "ci95_by_trial": [_num(x) for x in ci] if ci is not None else [None] * cfg.max_trials,
                "n_tasks": len(tasks), "seeds": seeds, "n_void": voids[m],
                "right_plan_share": _num(rights[m][0] / rights[m][1]) if rights[m][1] else None,
            }  # fmt: skip
    return results


def eval_sets(cfg, make_env=None) -> dict:
    """{env: (factory of the env on cfg.eval_split, the task ids evaluated there)}, built once per run:
    a real env's construction talks to its engine or server (make_env: (name, split) -> factory)."""
    make_env = make_env or (lambda name, split: train.env_factory(cfg, name, split))
    out = {}
    for name in train.env_names(cfg):
        factory = make_env(name, cfg.eval_split)
        out[name] = factory, envs.task_ids(cfg.eval_split, len(factory()), cfg.eval_tasks)
    return out


def task_lists(cfg, sets=None) -> dict:
    """{env: {"split", "n", "sha256"}}: which tasks the evaluation runs, hashed (envs.tasks_sha256)."""
    sets = sets or eval_sets(cfg)
    return {name: {"split": cfg.eval_split, "n": len(tasks), "sha256": envs.tasks_sha256(factory(), tasks)}
            for name, (factory, tasks) in sets.items()}  # fmt: skip


def retries(cfg, name, seed, method, factory, tasks, first, actor_llm, retrospector, examples, log_path,
            device):  # fmt: skip
    """Trials 1.. of `method` on env `name` after the shared trial 0 `first` (with the seed's reseeded
    actor and reflection sampler): {"solved": [tasks solved by trial k], "n": tasks, "void": tasks,
    "right_plan": [reflections the env judged to state the right plan, reflections it judged]}."""
    train.reseed_actor(actor_llm, train.derive_seed(seed, name, method, "actor"))
    gen = torch.Generator(device=device).manual_seed(train.derive_seed(seed, name, method, "reflect"))
    records, history = train.rollout(factory, tasks, actor_llm, retrospector, cfg, method, examples, gen,
                                     log_path, tag={"seed": seed, "method": method}, first=first)  # fmt: skip
    trials = [t for ts in history.values() for t in ts]
    runlog.stop_if_void([([t.error for t in trials if t.error], len(trials))], cfg.max_void_share,
                        f"{name}, seed {seed}, {method}")  # fmt: skip
    solved, n, void = train.success_counts(history, cfg.max_trials)
    judged = [r["right_plan"] for r in records if r["right_plan"] is not None]  # envs.right_plan
    return {"solved": solved, "n": n, "void": void, "right_plan": [sum(judged), len(judged)]}


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


COLORS = {"react": "#7f7f7f", "reflexion": "#1f77b4", "retroformer": "#d62728"}
W, H, L, R, T, B = 320, 250, 52, 14, 30, 42  # one panel: size, then its margins around the axes box


def _line(x1, y1, x2, y2, color, width=1.0, dash=None):
    xy = f'x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}"'
    dashed = f' stroke-dasharray="{dash}"' if dash else ""
    return f'<line {xy} stroke="{color}" stroke-width="{width}"{dashed}/>'


def _circle(x, y, color):
    return f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="{color}"/>'


def _text(x, y, s, anchor="middle", extra=""):
    return f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}"{extra}>{escape(str(s))}</text>'


def plot(results: dict, path: str) -> None:
    # Written as SVG by hand rather than with matplotlib, which is not a runtime dependency: every
    # run of eval.py leaves the plot, with no extra install, and any browser opens it.
    w, h = W - L - R, H - T - B
    methods = [m for m in METHODS if any(m in env for env in results.values())]
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W * len(results) + 120}" height="{H}" '
           'font-family="sans-serif" font-size="11">',
           '<rect width="100%" height="100%" fill="white"/>']  # fmt: skip
    for i, (env, rs) in enumerate(results.items()):
        x0, K = i * W + L, max(len(r["success_by_trial"]) for r in rs.values())
        px = lambda k: x0 + (k + 0.5) * w / K  # noqa: B023 (only called in this iteration)
        py = lambda v: T + (1 - min(max(v, 0.0), 1.0)) * h
        out.append(_text(x0 + w / 2, T - 10, env, extra=' font-size="13"'))
        for v in (0, 0.25, 0.5, 0.75, 1):
            out += [_line(x0, py(v), x0 + w, py(v), "#e0e0e0"), _text(x0 - 5, py(v) + 4, f"{v:g}", "end")]
        for k in range(K):
            out += [_line(px(k), T + h, px(k), T + h + 4, "black"), _text(px(k), T + h + 16, k)]
        out.append(f'<rect x="{x0}" y="{T}" width="{w}" height="{h}" fill="none" stroke="black"/>')
        out.append(_text(x0 + w / 2, H - 8, "trial"))
        rotate = f' transform="rotate(-90 {x0 - 36} {T + h / 2})"'
        out.append(_text(x0 - 36, T + h / 2, "success rate", extra=rotate))
        for m in (m for m in methods if m in rs):
            curve = zip(rs[m]["success_by_trial"], rs[m]["ci95_by_trial"], strict=True)
            pts = [(k, s, c) for k, (s, c) in enumerate(curve) if s is not None]  # None: no task counted
            xy = " ".join(f"{px(k):.1f},{py(s):.1f}" for k, s, _ in pts)
            out.append(f'<polyline points="{xy}" fill="none" stroke="{COLORS[m]}" stroke-width="2"/>')
            for k, s, c in pts:
                if c is not None:  # the 95% interval over seeds; None with a single seed
                    out.append(_line(px(k), py(s - c), px(k), py(s + c), COLORS[m], 1.5))
                out.append(_circle(px(k), py(s), COLORS[m]))
    for j, m in enumerate(methods):  # the legend, right of the panels
        x, y = W * len(results) + 8, T + 10 + 18 * j
        out += [_line(x, y, x + 22, y, COLORS[m], 2), _circle(x + 11, y, COLORS[m])]
        out.append(_text(x + 28, y + 4, m, "start"))
    with open(path, "w") as f:
        f.write("\n".join(out + ["</svg>"]) + "\n")


def main(argv=None):
    cfg = train.command_line_config(argv)
    train.ensure_checkpoints(cfg)
    torch.manual_seed(cfg.seed)
    try:
        actor_llm = train.build_actor(cfg, cfg.device)
    except LLMError as e:  # the actor's start-up check: a wrong URL, model name or key
        raise SystemExit(f"error: {e}") from None
    retrospector, methods, adapters = None, set(cfg.eval_methods.split(",")), None
    if {"reflexion", "retroformer"} & methods:
        retrospector = train.Retrospector.load(cfg, cfg.device, lora=False)
    if "retroformer" in methods:  # Reflexion alone is the frozen retrospector: it needs no training
        adapters = os.path.join(cfg.out_dir, "adapters.pt")
        if not os.path.exists(adapters):
            raise SystemExit(f"{adapters} not found: run train.py with out_dir={cfg.out_dir!r} first")
        load_lora(retrospector.model, adapters)  # applies the adapters with the file's rank and targets
    os.makedirs(cfg.out_dir, exist_ok=True)
    config = {k: v for k, v in vars(cfg).items() if k != "resume"}  # what ran, not how it was started
    sets = eval_sets(cfg)
    tasks = task_lists(cfg, sets)
    for name, t in tasks.items():
        print(f"{name}: {t['n']} {t['split']} tasks, sha256 {t['sha256']}")
    header = {"config": config, "adapters_sha256": sha256(adapters) if "retroformer" in methods else None,
              "tasks": tasks}  # fmt: skip
    progress = runstate.EvalProgress(cfg.out_dir, header, cfg.resume, ignore=("progress", "threads"))
    results = evaluate(cfg, actor_llm, retrospector, progress=progress, sets=sets)
    path = os.path.join(cfg.out_dir, "eval.json")
    runstate.atomic(lambda p: write_json({"config": config, "tasks": tasks, "results": results}, p), path)
    print(markdown_table(results))
    print(f"wrote {path}")
    svg = os.path.join(cfg.out_dir, "eval.svg")
    runstate.atomic(lambda p: plot(results, p), svg)
    print(f"wrote {svg}")
    progress.close()


def write_json(obj, path: str):
    with open(path, "w") as f:
        json.dump(obj, f, indent=1)


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


if __name__ == "__main__":
    main()
