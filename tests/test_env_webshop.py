"""WebShop environment: interface, WebShop's reward, splits, expert, explorer failures and plans."""

import random
import re
from functools import partial

import pytest

import envs
from worlds import shops
from worlds.episodes import episode_steps, rollout
from worlds.webshop import PLAN_END, WebShopEnv

run = rollout  # (trajectory, return, last info) of task i played by policy()


@pytest.fixture(scope="module")
def test_env():
    return envs.make("webshop", split="test", seed=0)


def test_make_and_interface(test_env):
    env = test_env
    assert isinstance(env, WebShopEnv) and env.name == "webshop"
    assert env.max_steps == 15 and len(env) == 100
    obs = env.reset(3)
    assert obs.startswith("WebShop\nInstruction:\n") and obs.endswith("\n[Search]")
    assert ", and price lower than " in obs and " dollars" in obs
    assert len(WebShopEnv(n_tasks=7)) == 7


def test_deterministic_given_seed():
    a, b, c = WebShopEnv("train", seed=1, n_tasks=20), WebShopEnv("train", seed=1, n_tasks=20), \
        WebShopEnv("train", seed=2, n_tasks=20)
    assert [t["text"] for t in a.tasks] == [t["text"] for t in b.tasks]
    titles = [[[p["title"] for p in t["shop"]] for t in e.tasks] for e in (a, b)]
    assert titles[0] == titles[1]
    assert [t["text"] for t in a.tasks] != [t["text"] for t in c.tasks]
    for i in range(5):  # same explorer seed, same episode
        episodes = [run(e, i, partial(e.explorer, random.Random(i))) for e in (a, b)]
        assert episodes[0] == episodes[1]


def test_splits_are_disjoint():
    for seed in (0, 1):
        train, test = WebShopEnv("train", seed=seed), WebShopEnv("test", seed=seed)
        phrases = {t["phrase"] for t in train.tasks}
        assert not phrases & {t["phrase"] for t in test.tasks}
        assert not {t["text"] for t in train.tasks} & {t["text"] for t in test.tasks}
        assert not {t["target"] for t in train.tasks} & {t["target"] for t in test.tasks}
        assert len(phrases) == len(train)  # 100 distinct product phrases per split


@pytest.mark.parametrize("split", ["train", "test"])
def test_expert_solves_every_task(split):
    env = WebShopEnv(split)
    solved = 0
    for i in range(len(env)):
        traj, ret, info = run(env, i, env.expert)
        solved += info["success"] and ret == 1.0
        assert len(traj) <= 8
    assert solved / len(env) >= 0.99


@pytest.mark.parametrize("split", ["train", "test"])
def test_explorer_fails_visibly_and_its_plan_succeeds(split):
    env = WebShopEnv(split)
    wins, fixed, failures, kinds = 0, 0, 0, set()
    for i in range(len(env)):
        rng = random.Random(i)
        traj, ret, info = run(env, i, partial(env.explorer, rng))
        if info["success"]:
            wins += 1
            assert env.plan(traj) is None  # nothing to fix
            continue
        failures += 1
        assert 0 <= ret < 1 and "reward_breakdown" in info
        plan = env.plan(traj)
        bought = traj[-2][1] if traj[-1][1] == "click[Buy Now]" else None
        assert plan and "Next time: open " in plan and bought is not None
        trap = env.tasks[i]["trap"]  # the diagnosis names the near miss the trajectory shows
        if trap == "price":
            assert f"over {env.tasks[i]['budget']:.2f} dollars" in plan
        elif trap == "attribute":
            assert "lacked" in plan
        elif trap == "option":
            assert "had no" in plan
        kinds.add(plan.split(" ")[1] if trap is None else trap)
        traj2, ret2, info2 = run(env, i, partial(env.explorer, rng, plan=plan))
        fixed += info2["success"]
        assert len(render := env.render(traj2)) < 4000, render  # a trial stays near 1,000 tokens
    assert 0.2 <= wins / len(env) <= 0.6
    assert fixed / failures >= 0.95
    assert {"price", "attribute", "option"} <= kinds and "clicked" in kinds  # option slips fail too


def test_plan_for_an_option_slip_names_the_item_and_the_option(test_env):
    env = test_env
    i = next(j for j, t in enumerate(env.tasks) if t["trap"] is None)
    env.reset(i)
    goal, target = env.tasks[i], env.tasks[i]["target"]
    (t0, v0), *rest = goal["options"].items()
    wrong = next(v for v in env.tasks[i]["by_asin"][target]["options"][t0] if v != v0)
    traj = []
    for a in [f"search[{goal['phrase']}]", f"click[{target}]", f"click[{wrong}]",
              *(f"click[{v}]" for _, v in rest), "click[Buy Now]"]:
        obs, r, done, info = env.step(a)
        traj.append(("", a, obs))
    assert done and not info["success"] and info["reward_breakdown"]["options_matched"] == len(rest)
    plan = env.plan(traj)
    assert plan == f"I clicked {wrong}, not {v0}. Next time: open {target}{PLAN_END}"
    assert run(env, i, lambda: env.explorer(random.Random(0), plan=plan))[2]["success"]
    # a run that never buys: the plan says so and falls back to the instruction's constraints
    env.reset(i)
    traj = [("", "think[hmm]", env.step("think[hmm]")[0])]
    assert env.plan(traj).startswith("I did not click[Buy Now] within 15 steps. Next time:")
    assert env.plan([]) is None


def test_a_plan_is_followed_with_the_instructions_options_and_no_slips(test_env):
    # the plan names the item; the actor clicks the options the instruction asks for, with none of the
    # memoryless explorer's slips, even when its rng would make it slip on every option
    env = test_env
    i = next(j for j, t in enumerate(env.tasks) if t["trap"] is None)
    env.reset(i)
    goal, target = env.tasks[i], env.tasks[i]["target"]

    class Slippy(random.Random):
        def random(self):
            return 0.0  # < EXPLORER_SLIP: the memoryless explorer takes each option's first value

    asked = list(goal["options"].values())
    first = [vals[0] for vals in goal["by_asin"][target]["options"].values()]
    assert first != asked  # so the memoryless run slips
    assert not run(env, i, lambda: env.explorer(Slippy()))[2]["success"]
    plan = f"I clicked the wrong options. Next time: open {target}{PLAN_END}"
    traj, ret, info = run(env, i, lambda: env.explorer(Slippy(), plan=plan))
    actions = [a for _, a, _ in traj]
    assert info["success"] and actions == [f"search[{goal['phrase']}]", f"click[{target}]",
                                           *(f"click[{v}]" for v in asked), "click[Buy Now]"]  # fmt: skip


def test_reward_is_webshops_formula(test_env):
    env = test_env
    i = next(j for j, t in enumerate(env.tasks) if t["trap"] == "price")
    goal = env.tasks[i]
    n_att, n_opt = len(goal["attrs"]), len(goal["options"])

    def buy(asin, options):
        env.reset(i)
        obs = env.step(f"search[{goal['phrase']}]")[0]
        while f"[{asin}]" not in obs:
            obs = env.step("click[Next >]")[0]
        env.step(f"click[{asin}]")
        for v in options:
            env.step(f"click[{v}]")
        return env.step("click[Buy Now]")

    # the target without options: attributes + price only
    _, r, done, info = buy(goal["target"], [])
    assert done and r == pytest.approx((n_att + 1) / (n_att + n_opt + 1)) and not info["success"]
    assert info["reward_breakdown"] == {"r_type": 1.0, "attributes_matched": n_att, "attributes": n_att,
                                        "options_matched": 0, "options": n_opt, "price_ok": True}
    # the over-budget near miss (top result) with every asked option: only the price is missed
    decoy = env.tasks[i]["shop"][0]
    assert decoy["price"] > goal["budget"]
    _, r, _, info = buy(decoy["asin"], goal["options"].values())
    assert r == pytest.approx((n_att + n_opt) / (n_att + n_opt + 1))
    assert not info["reward_breakdown"]["price_ok"]
    # a product of another type: WebShop's type factor is 0 when no word of the type is in its title
    env.reset(i)
    results = shops.search(goal["shop"], goal["phrase"])
    stranger = next(p for p in goal["shop"] if not set(goal["type"].split()) & set(p["tf"]))
    assert shops.purchase_reward(stranger, goal, {})[0] == 0.0 and stranger["type"] != goal["type"]
    assert results[0] is decoy
    # success only at 1.0
    _, r, _, info = buy(goal["target"], goal["options"].values())
    assert r == 1.0 and info["success"]


def test_pages_and_navigation(test_env):
    env = test_env
    i = next(j for j, t in enumerate(env.tasks) if len(shops.search(t["shop"], t["phrase"])) > 6)
    env.reset(i)
    goal = env.tasks[i]
    obs = env.step(f"search[{goal['phrase']}]")[0]
    lines = obs.split("\n")
    assert lines[0] == "[Back to Search]" and lines[1].startswith("Page 1 (Total results: ")
    assert lines[2] == "[Next >]" and "[< Prev]" not in lines and len(lines) == 3 + 3 * 3
    obs2 = env.step("click[Next >]")[0]
    assert obs2.split("\n")[1].startswith("Page 2") and "[< Prev]" in obs2
    assert env.step("click[< Prev]")[0] == obs
    asin = lines[3][1:-1]
    item = env.step(f"click[{asin}]")[0]
    assert item.split("\n")[:2] == ["[Back to Search]", "[< Prev]"] and "Price: $" in item
    assert item.endswith("[Description]\n[Features]\n[Reviews]\n[Buy Now]")
    t0, vals = next(iter(env.task["by_asin"][asin]["options"].items()))
    assert env.step(f"click[{vals[1]}]")[0] == f"You have clicked {vals[1]}."
    assert env.step("click[Features]")[0].startswith("[Back to Search]\n[< Prev]\n- ")
    assert f"[[{vals[1]}]]" in env.step("click[< Prev]")[0]  # back on the item, selection kept
    assert "[[" not in env.step("click[< Prev]")[0]  # results again; the item's options are forgotten
    assert env.step("click[Back to Search]")[0] == env.reset(i)


@pytest.mark.parametrize("action", ["", "   ", "asdf", "buy it", "click", "search", "click[", "[Buy Now]",
                                    "click[Nonexistent]", "click[Buy Now]", "click[Next]", "search[]",
                                    "go[north]", "click[B0AAAAAAAA]", "click[< Prev]"])
def test_bad_actions_get_informative_observations(test_env, action):
    env = test_env
    env.reset(0)
    obs, r, done, info = env.step(action)
    assert obs.startswith("Invalid action!") and r == 0.0 and not done and info == {"success": False}
    env.step(f"search[{env.task['phrase']}]")
    obs, r, done, _ = env.step(action)
    assert obs.startswith("Invalid action!") and r == 0.0 and not done


def test_case_and_whitespace_variants_are_accepted(test_env):
    env = test_env
    env.reset(0)
    goal = env.task
    results = env.step(f"  SEARCH [ {goal['phrase'].upper()} ] ")[0]
    assert results.startswith("[Back to Search]\nPage 1")
    assert env.step("search[x]")[0].startswith("Invalid action! Search is on the search page only")
    asin = re.search(r"^\[(B0\w+)\]$", results, re.M)[1]  # the first result
    assert "Price: $" in env.step(f"Click[{asin.lower()}]")[0]
    v = next(iter(env.item["options"].values()))[0]
    assert env.step(f"click[  {v.upper()} ]")[0] == f"You have clicked {v}."
    assert env.step("think[I should buy]")[0] == "OK."
    obs, r, done, info = env.step("click[buy   now]")
    assert done and obs.startswith("Your score (min 0.0, max 1.0): ") and "reward_breakdown" in info


def test_errors_and_step_limit(test_env):
    with pytest.raises(RuntimeError, match="reset"):
        WebShopEnv(n_tasks=1).step("search[x]")
    env = test_env
    for bad in (100, -1):
        with pytest.raises(IndexError, match="out of range"):
            env.reset(bad)
    with pytest.raises(TypeError, match="int"):
        env.reset("0")
    env.reset(0)
    with pytest.raises(TypeError, match="str"):
        env.step(None)
    for k in range(1, 16):
        obs, r, done, info = env.step("think[wait]")
        assert r == 0.0 and done == (k == 15)
    assert info == {"success": False, "truncated": True}
    with pytest.raises(RuntimeError, match="over"):
        env.step("search[x]")
    with pytest.raises(RuntimeError):
        env.expert()
    with pytest.raises(ValueError, match="split"):
        WebShopEnv("dev")
    with pytest.raises(ValueError, match="difficulty"):
        WebShopEnv(difficulty=1.5)
    with pytest.raises(ValueError, match="n_tasks"):
        WebShopEnv(n_tasks=0)
    with pytest.raises(TypeError, match="colour"):
        envs.make("webshop", colour="red")
    env.reset(0)
    with pytest.raises(ValueError, match="cannot parse plan"):
        env.explorer(random.Random(0), plan="buy something nice")
    with pytest.raises(ValueError, match="trajectory step 1"):
        env.plan([("t", "search[x]", "obs"), ("only two", "items")])


def test_difficulty_sets_how_often_the_top_result_is_a_near_miss():
    for difficulty, lo, hi in ((0.0, 0.8, 1.0), (1.0, 0.0, 0.0)):
        env = WebShopEnv("test", n_tasks=30, difficulty=difficulty)
        assert sum(t["trap"] is not None for t in env.tasks) == round(30 * difficulty)
        wins = sum(run(env, i, partial(env.explorer, random.Random(i)))[2]["success"] for i in range(30))
        assert lo <= wins / len(env) <= hi


def test_render_shows_the_episode(test_env):
    env = test_env
    traj, _, _ = run(env, 0, env.expert)
    text = env.render(traj)
    assert text.startswith("WebShop\nInstruction:\n" + env.tasks[0]["text"])
    assert f"Thought {len(traj)}: " in text and f"Action {len(traj)}: click[Buy Now]" in text
    assert f"Observation {len(traj)}: Your score (min 0.0, max 1.0): 1.00" in text
    as_dicts = [{"thought": t, "action": a, "observation": o} for t, a, o in traj]
    assert env.render(as_dicts) == text and episode_steps(as_dicts) == traj


def test_titles_show_exactly_the_products_attributes(test_env):
    # the plan-follower and the reward read attributes off titles; no noise word may pose as one
    vocabulary = {a for c in shops.CATEGORIES for a in c[1]}
    for task in test_env.tasks:
        for p in task["shop"]:
            assert set(p["tf"]) & vocabulary == set(p["attrs"]), p["title"]
            assert set(shops.tokenize(p["type"])) <= set(p["tf"])
