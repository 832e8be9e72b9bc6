"""Does PPO learn? The learning signal of a train.py run, per update, drawn from its metrics.jsonl.

    python scripts/learning_curve.py out            # writes out/learning.svg, prints the table

Four panels, one point per update: the share of reflections that state the right plan (the plan the
generated env reads off the failed trial: envs.right_plan), the share of the tasks failed at trial 0
that a retry solved, the mean reward of a reflection (G(k+1) - G(k)), and the KL of the adapters to the
frozen retrospector. Dashed: Reflexion, the frozen retrospector, measured once by eval.py
(out_dir/eval.json, when there; on the test split), in each env's colour. Update 1's reflections are
written before any PPO step, by adapters that start as zero: they are Reflexion's too, on train tasks.
Of a resumed run, each update's last line counts.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from eval import B, H, L, R, T, W, _circle, _line, _text  # noqa: E402 (eval.py's SVG pieces)
from infra.runlog import retry_success  # noqa: E402

ENV_COLORS = {"hotpotqa": "#1f77b4", "alfworld": "#2ca02c", "webshop": "#ff7f0e", "all": "#000000"}
PANELS = (("right_plan_share", "right-plan share"), ("retry_success", "retried tasks solved"),
          ("reward_mean", "mean reward"), ("kl_ref", "KL to the frozen model"))  # fmt: skip


def read_metrics(path: str) -> list[dict]:
    """metrics.jsonl's rows by update, the last of each (a resumed run repeats the updates it redid)."""
    rows = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            try:
                row = json.loads(line)
                rows[int(row["update"])] = row
            except (ValueError, KeyError, TypeError) as e:
                raise SystemExit(f"error: {path} line {n}: not a metrics row ({e})") from None
    return [rows[u] for u in sorted(rows)]


def curves(rows: list[dict]) -> dict:
    """{panel key: {series: [(update, value)]}}: "all" the envs together, and each env where
    metrics.jsonl has the key per env (right-plan share, retried tasks solved)."""
    envs = list(dict.fromkeys(k.split("/")[0] for r in rows for k in r if "/" in k))
    out = {}
    for key, _ in PANELS:
        series = {} if key == "retry_success" else {"all": [(r["update"], r.get(key)) for r in rows]}
        for e in envs if key in ("right_plan_share", "retry_success") else ():
            series[e] = [(r["update"], env_value(r, e, key)) for r in rows]
        out[key] = {s: [(u, v) for u, v in pts if v is not None] for s, pts in series.items()}
    return out


def env_value(row, env, key):
    """row's `env/key`; retry_success of runs older than it, from their success_by_trial."""
    if key == "retry_success" and f"{env}/{key}" not in row:
        return retry_success(row.get(f"{env}/success_by_trial"))
    return row.get(f"{env}/{key}")


def reflexion_reference(eval_path: str) -> dict:
    """{panel key: {env: value}} of eval.json's Reflexion: its right-plan share and retried share solved."""
    if not os.path.exists(eval_path):
        return {}
    with open(eval_path, encoding="utf-8") as f:
        results = json.load(f)["results"]
    ref = {"right_plan_share": {}, "retry_success": {}}
    for env, methods in results.items():
        r = methods.get("reflexion")
        if r is None:
            continue
        if r.get("right_plan_share") is not None:
            ref["right_plan_share"][env] = r["right_plan_share"]
        if retry_success(r["success_by_trial"]) is not None:
            ref["retry_success"][env] = retry_success(r["success_by_trial"])
    return ref


def plot(data: dict, ref: dict, path: str) -> None:
    w, h = W - L - R, H - T - B
    updates = [u for pts in data.values() for s in pts.values() for u, _ in s] or [1]
    u0, u1 = min(updates), max(max(updates), min(updates) + 1)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W * len(PANELS) + 110}" height="{H}" '
           'font-family="sans-serif" font-size="11">',
           '<rect width="100%" height="100%" fill="white"/>']  # fmt: skip
    for i, (key, title) in enumerate(PANELS):
        x0 = i * W + L
        vals = [v for s in data[key].values() for _, v in s] + list(ref.get(key, {}).values())
        lo, hi = (0.0, 1.0) if key in ("right_plan_share", "retry_success") else \
            (min(vals + [0.0]), max(vals + [0.0]) + 1e-9)  # fmt: skip
        px = lambda u: x0 + (u - u0) / (u1 - u0) * w  # noqa: B023, E731 (used in this iteration only)
        py = lambda v: T + (1 - (v - lo) / (hi - lo)) * h  # noqa: B023, E731
        out.append(_text(x0 + w / 2, T - 10, title, extra=' font-size="13"'))
        for k in range(5):
            v = lo + (hi - lo) * k / 4
            out += [_line(x0, py(v), x0 + w, py(v), "#e0e0e0"), _text(x0 - 5, py(v) + 4, f"{v:.3g}", "end")]
        out += [_text(x0, T + h + 16, u0), _text(x0 + w, T + h + 16, u1), _text(x0 + w / 2, H - 8, "update")]
        out.append(f'<rect x="{x0}" y="{T}" width="{w}" height="{h}" fill="none" stroke="black"/>')
        for env, v in ref.get(key, {}).items():
            out.append(_line(x0, py(v), x0 + w, py(v), ENV_COLORS.get(env, "#7f7f7f"), dash="5,4"))
        for s, pts in data[key].items():
            color = ENV_COLORS.get(s, "#7f7f7f")
            xy = " ".join(f"{px(u):.1f},{py(v):.1f}" for u, v in pts)
            out.append(f'<polyline points="{xy}" fill="none" stroke="{color}" stroke-width="2"/>')
            out += [_circle(px(u), py(v), color) for u, v in pts]
    series = [s for s in ENV_COLORS if any(s in d for d in data.values())]
    for j, s in enumerate(series + ["reflexion (eval.py)"] * bool(ref)):
        x, y = W * len(PANELS) + 8, T + 10 + 18 * j
        dash = "5,4" if s.startswith("reflexion") else None
        out.append(_line(x, y, x + 22, y, ENV_COLORS.get(s, "#7f7f7f"), 2, dash))
        out.append(_text(x + 28, y + 4, s, "start"))
    with open(path, "w") as f:
        f.write("\n".join(out + ["</svg>"]) + "\n")


def table(data: dict) -> str:
    cols = [(key, s) for key, _ in PANELS for s in data[key]]
    updates = sorted({u for key, s in cols for u, _ in data[key][s]})
    vals = {(key, s, u): v for key, s in cols for u, v in data[key][s]}
    lines = ["| update | " + " | ".join(f"{k} {s}" for k, s in cols) + " |", "|---|" + "---|" * len(cols)]
    for u in updates:
        cells = [f"{vals[k, s, u]:.3f}" if (k, s, u) in vals else "-" for k, s in cols]
        lines.append(f"| {u} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out_dir", help="a train.py out_dir: reads metrics.jsonl and, when there, eval.json")
    args = p.parse_args(argv)
    path = os.path.join(args.out_dir, "metrics.jsonl")
    if not os.path.exists(path):
        raise SystemExit(f"error: {path} not found: run train.py with out_dir={args.out_dir!r} first")
    data = curves(read_metrics(path))
    ref = reflexion_reference(os.path.join(args.out_dir, "eval.json"))
    print(table(data))
    svg = os.path.join(args.out_dir, "learning.svg")
    plot(data, ref, svg)
    print(f"wrote {svg}")


if __name__ == "__main__":
    main()
