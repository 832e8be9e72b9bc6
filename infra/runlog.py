"""What a training run writes and says: one line of metrics.jsonl per update, a console summary, and
the stop when too many episodes are void (the actor's server or a data source failing)."""

import collections
import json
import os

import numpy as np
from tqdm import tqdm


def n_cut(llm) -> int:
    """The actor's completions so far that hit max_tokens (finish_reason "length"; scripted actors: 0)."""
    return getattr(llm, "finish_reasons", {}).get("length", 0)


def stop_if_void(parts, max_share: float, where: str):
    """parts: (errors of the void episodes, number of episodes) of each rank. Stops the run with a
    non-zero exit when more than max_share of the episodes are void: their rewards would mean nothing."""
    errors, n = [e for errs, _ in parts for e in errs], sum(k for _, k in parts)
    if n and len(errors) / n > max_share:
        cause, k = collections.Counter(errors).most_common(1)[0]
        raise SystemExit(f"error: {where}: {len(errors)} of {n} episodes are void (more than max_void_share="
                         f"{max_share}): the actor's server or a data source is failing. Most common cause "
                         f"({k}x): {cause}")  # fmt: skip


def right_plan_share(records):
    """The share of `records` whose reflection the env judges to state the right plan (right_plan),
    of those it could judge; None when it judged none (real data, or no reflections)."""
    judged = [r["right_plan"] for r in records if r.get("right_plan") is not None]
    return sum(judged) / len(judged) if judged else None


def retry_success(success_by_trial):
    """Of the tasks trial 0 failed, the share solved by the last trial (success_by_trial: fractions);
    None when trial 0 solved them all or a fraction is missing."""
    s = success_by_trial
    return (s[-1] - s[0]) / (1 - s[0]) if s and None not in (s[0], s[-1]) and s[0] < 1 else None


def log_update(out_dir: str, update: int, scored, counts, metrics, rollout_s: float, update_s: float,
               actor_max_tokens: int):
    """One line of out_dir/metrics.jsonl, and a summary on the console. counts: {env: [n_tasks, n_void,
    solved by trial...]} and "cut": [actor completions, reflections] cut at max_tokens."""
    actor_cut, reflections_cut = counts.pop("cut")
    row = {"update": update, "n_reflections": len(scored),
           "reward_mean": float(np.mean([r["reward"] for r in scored])) if scored else None,
           "rollout_s": round(rollout_s, 2), "update_s": round(update_s, 2),
           "actor_truncated": actor_cut, "reflections_truncated": reflections_cut}  # fmt: skip
    row["right_plan_share"] = right_plan_share(scored)
    for name, (n, void, *solved) in counts.items():
        row[f"{name}/success_by_trial"] = [s / max(n, 1) for s in solved]
        row[f"{name}/n_tasks"], row[f"{name}/n_void"] = n, void
        # what the reflections are for; None when every task was void (n = 0)
        row[f"{name}/retry_success"] = retry_success(row[f"{name}/success_by_trial"]) if n else None
        row[f"{name}/right_plan_share"] = right_plan_share([r for r in scored if r["env"] == name])
    row.update(metrics)
    with open(os.path.join(out_dir, "metrics.jsonl"), "a") as f:
        f.write(json.dumps(row) + "\n")
    succ = " ".join(f"{k.split('/')[0]} {v[0]:.2f}->{v[-1]:.2f}" for k, v in row.items()
                    if k.endswith("success_by_trial"))  # fmt: skip
    rm = "-" if row["reward_mean"] is None else f"{row['reward_mean']:+.3f}"
    rp = "" if row["right_plan_share"] is None else f", right plan {row['right_plan_share']:.2f}"
    tqdm.write(f"update {update}: {len(scored)} reflections, reward {rm}{rp}, success {succ}, "
               f"kl {metrics.get('kl_ref', 0):.4f}")  # fmt: skip
    if actor_cut:
        tqdm.write(f"update {update}: {actor_cut} actor completions were cut at actor_max_tokens="
                   f"{actor_max_tokens} (finish_reason 'length'): raise it if they are steps cut short")
