"""The table of docs/ablations.md from the runs of scripts/ablations.sh.

    python scripts/ablation_table.py [out/ablations]

One row per run folder with an eval.json (on the val split): the keys that differ from train.py's
defaults; per env, the success after the last trial of Reflexion and of Retroformer and their gap in
points; the last PPO update's KL to the frozen retrospector (metrics.jsonl's kl_ref, summed over a
reflection's tokens) and its share of distinct reflections (replay.jsonl; 1.0: no collapse to one
repeated reflection).
"""

import dataclasses
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from train import Config  # noqa: E402

NOT_ABLATED = ("out_dir", "threads", "progress", "eval_split")  # what every ablation run sets


def changed_keys(config: dict) -> str:
    defaults = dataclasses.asdict(Config())
    keys = [f"--{k}={v}" for k, v in config.items()
            if k in defaults and k not in NOT_ABLATED and v != defaults[k]]  # fmt: skip
    return " ".join(keys) or "(the default)"


def env_cell(methods: dict) -> str:
    last = {m: r["success_by_trial"][-1] for m, r in methods.items()}
    if "reflexion" not in last or "retroformer" not in last:
        return "-"
    before, after = last["reflexion"], last["retroformer"]
    return f"{before:.3f} / {after:.3f} ({100 * (after - before):+.1f})"


def last_update(run_dir: str) -> str:
    """The last PPO update's KL to the frozen retrospector and its share of distinct reflections."""
    metrics, replay = os.path.join(run_dir, "metrics.jsonl"), os.path.join(run_dir, "replay.jsonl")
    if not (os.path.exists(metrics) and os.path.exists(replay)):
        return "- | -"
    with open(metrics) as f:
        last = [json.loads(line) for line in f if line.strip()][-1]
    with open(replay) as f:
        texts = [r["reflection"] for r in map(json.loads, f) if r["update"] == last["update"]]
    return f"{last['kl_ref']:.2f} | {len(set(texts)) / max(1, len(texts)):.2f}"


def main(root="out/ablations"):
    names = sorted(d for d in os.listdir(root) if os.path.exists(os.path.join(root, d, "eval.json")))
    if not names:
        raise SystemExit(f"{root}: no run folder with an eval.json; run scripts/ablations.sh first")
    names.sort(key=lambda d: d != "default")  # the default first, the rest by name
    rows = []
    for name in names:
        path = os.path.join(root, name, "eval.json")
        with open(path) as f:
            ev = json.load(f)
        split = ev["config"].get("eval_split")
        if split != "val":
            raise SystemExit(f"{path}: eval_split is {split!r}; ablations are chosen and read on val")
        if not rows:
            envs = list(ev["results"])
            rows.append("| run | keys | " + " | ".join(envs) + " | KL | distinct |")
            rows.append("| --- " * (len(envs) + 4) + "|")
        cells = [env_cell(ev["results"].get(env, {})) for env in envs]
        rows.append(f"| {name} | `{changed_keys(ev['config'])}` | " + " | ".join(cells)
                    + f" | {last_update(os.path.join(root, name))} |")  # fmt: skip
    print("\n".join(rows))


if __name__ == "__main__":
    main(*sys.argv[1:])
