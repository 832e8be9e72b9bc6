"""The learning signal: the env's judgment of a reflection's plan (envs.right_plan), carried by the
rollout's records into metrics.jsonl and eval.json, and drawn by scripts/learning_curve.py."""

import json
import random
import xml.etree.ElementTree as ET

import pytest
import torch

import envs
import eval as evaluation
import pretrain
import train
from actor import Trajectory
from infra import runlog
from scripts import learning_curve
from worlds.scripted import ExplorerLLM

SVG = "{http://www.w3.org/2000/svg}"


@pytest.mark.parametrize("name", ["hotpotqa", "alfworld", "webshop"])
def test_the_env_plan_is_judged_right_and_a_plausible_wrong_one_wrong(name):
    # pretrain.wrong_reflection: the right plan's format with one entity, place, item or option swapped
    opts = pretrain.ENV_OPTIONS[name]
    env = envs.make(name, "train", seed=pretrain.ENV_SEED, n_tasks=80, **opts)
    rng, right_ok, wrong_ok, n = random.Random(0), 0, 0, 0
    for i in range(len(env)):
        t = pretrain.scripted_trial(env, i, rng)
        if t.success:
            continue
        env.reset(i)
        right = pretrain.correct_reflection(env, t)
        if right is None:
            assert envs.right_plan(env, t, "anything") is None  # no plan: nothing to judge
            continue
        wrong = pretrain.wrong_reflection(env, t, right, rng)
        n, right_ok = n + 1, right_ok + envs.right_plan(env, t, right)
        wrong_ok += envs.right_plan(env, t, wrong)
        assert envs.right_plan(env, t, right.upper().replace(" ", "  ")) is True  # case and spacing
        assert envs.right_plan(env, t, "I failed. I will try harder next time.") is False
    assert n >= 15 and (right_ok, wrong_ok) == (n, 0)


def test_envs_without_plans_are_not_judged_and_not_reset():
    class RealEnv:  # as the real ALFWorld and WebShop: no plan(); reset() would load a game or a page
        def reset(self, i):
            raise AssertionError("reset() called")

    class RealQA:  # as HotPotQA on real data: plan() raises NotImplementedError
        def reset(self, i):
            return ""

        def plan(self, trajectory):
            raise NotImplementedError("real data")

    trajs = [Trajectory("x", i, 0, "task") for i in range(2)]
    assert envs.right_plans(RealEnv, trajs, ["a plan", None]) == [None, None]
    assert envs.right_plans(RealQA, trajs, ["a plan", "another"]) == [None, None]
    assert envs.right_plans(lambda: pytest.fail("no env needed"), trajs, [None, None]) == [None, None]


class PlanRetrospector:
    """Writes the env's plan on even tasks and a plausible wrong plan on odd ones (a stand-in
    retrospector whose judgments the test knows)."""

    def __init__(self, make_env):
        self.env, self.rng = make_env(), random.Random(0)
        self.model = torch.nn.Linear(1, 1)  # eval.evaluate reads the device off it

    def right(self, t):
        self.env.reset(t.task)
        return self.env.plan([s[:3] for s in t.steps])

    def reflect(self, trajs, generator=None, adapters=True):
        out = []
        for t in trajs:
            right = self.right(t)
            if right is not None and t.task % 2:
                right = pretrain.wrong_reflection(self.env, t, right, self.rng)
            text = right
            out.append(train.Reflection("prompt", [1], text or "No plan.", [1, 2], [-0.5], "stop"))
        return out


def hotpotqa(split):
    return envs.factory("hotpotqa", split, seed=0, **pretrain.ENV_OPTIONS["hotpotqa"])


def test_rollout_records_the_judgment_and_the_metrics_row_its_share(tmp_path):
    factory = hotpotqa("train")
    cfg = train.Config(max_trials=2, concurrency=2, progress=False)
    retro = PlanRetrospector(factory)
    actor_llm = ExplorerLLM(factory)
    records, history = train.rollout(factory, list(range(40)), actor_llm, retro, cfg, "retroformer")
    judged = [r for r in records if r["right_plan"] is not None]
    assert len(judged) >= 10 and {r["right_plan"] for r in judged} == {True, False}
    for r in judged:
        assert r["right_plan"] == (r["task"] % 2 == 0)
    # the signal means something: the explorer obeys its memory, so right plans solve more retries
    solved = {ok: [r["return_after"] > r["return_before"] for r in judged if r["right_plan"] == ok]
              for ok in (True, False)}  # fmt: skip
    assert sum(solved[True]) / len(solved[True]) > sum(solved[False]) / len(solved[False])

    solved_by_trial, n, void = train.success_counts(history, 2)
    runlog.log_update(str(tmp_path), 1, records, {"hotpotqa": [n, void, *solved_by_trial], "cut": [0, 0]},
                      {"kl_ref": 0.01}, 1.0, 1.0, 64)  # fmt: skip
    row = json.loads((tmp_path / "metrics.jsonl").read_text())
    share = sum(r["right_plan"] for r in judged) / len(judged)
    assert row["right_plan_share"] == row["hotpotqa/right_plan_share"] == pytest.approx(share)
    assert row["hotpotqa/retry_success"] == pytest.approx(
        (solved_by_trial[1] - solved_by_trial[0]) / (n - solved_by_trial[0]))


def test_eval_reports_each_methods_share_and_the_script_draws_the_curves(tmp_path, capsys):
    cfg = train.Config(envs="hotpotqa", eval_split="test", eval_tasks=30, eval_trials=2, eval_seeds="0",
                       eval_methods="react,reflexion", concurrency=2, n_examples=0,
                       progress=False)  # fmt: skip
    make_env = lambda name, split: hotpotqa(split)  # noqa: E731
    results = evaluation.evaluate(cfg, ExplorerLLM(hotpotqa("test")), PlanRetrospector(hotpotqa("test")),
                                  make_env=make_env, log_path=str(tmp_path / "log.jsonl"))  # fmt: skip
    r = results["hotpotqa"]
    assert r["react"]["right_plan_share"] is None  # no reflections
    assert 0.3 < r["reflexion"]["right_plan_share"] < 0.7  # half the tasks get the right plan

    out = tmp_path / "run"
    out.mkdir()
    (out / "eval.json").write_text(json.dumps({"results": results}))
    rows = [{"update": u, "right_plan_share": s, "hotpotqa/right_plan_share": s, "hotpotqa/retry_success": s,
             "reward_mean": s - 0.5, "kl_ref": 0.1 * u} for u, s in ((1, 0.2), (2, 0.5), (2, 0.6), (3, 0.9))]
    (out / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in rows))
    learning_curve.main([str(out)])
    table = capsys.readouterr().out
    assert "| 2 | 0.600 | 0.600 |" in table and "0.500" not in table  # a redone update's last line counts
    svg = ET.parse(out / "learning.svg").getroot()
    lines = svg.findall(f"{SVG}polyline")
    assert len(lines) == 5  # right plan: all + hotpotqa; retried: hotpotqa; reward; KL
    assert all(len(p.get("points").split()) == 3 for p in lines)
    dashed = [e for e in svg.iter(f"{SVG}line") if e.get("stroke-dasharray")]
    assert len(dashed) == 3  # Reflexion's share and its retried share, and the legend's entry
    (out / "metrics.jsonl").write_text('{"update": 1}\nnot json\n')
    with pytest.raises(SystemExit, match=r"metrics.jsonl line 2: not a metrics row"):
        learning_curve.main([str(out)])
