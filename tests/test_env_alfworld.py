"""ALFWorld-style environment (worlds.alfworld.ALFWorldEnv): dynamics, splits, expert, explorer and plans."""

import random
import re

import pytest

import envs
from worlds import alfworld
from worlds.alfworld import ALFWorldEnv
from worlds.episodes import rollout


def run(env, i, policy, plan=None, seed=0):
    """One episode of task i with 'expert' or 'explorer' (optionally following `plan`)."""
    rng = random.Random(seed)
    act = env.expert if policy == "expert" else lambda: env.explorer(rng, plan=plan)
    traj, ret, info = rollout(env, i, act)
    return info["success"], ret, traj


@pytest.fixture(scope="module")
def splits():
    return {s: ALFWorldEnv(split=s, seed=0) for s in ("train", "test")}


MUG_IN_CABINET = {"cabinet 1": ["mug 1"], "coffeemachine 1": [], "countertop 1": ["cup 1"], "sinkbasin 1": []}


def tiny_env(contents=MUG_IN_CABINET, **options):
    """An env whose task 0 is a hand-made kitchen: put a clean mug in coffeemachine."""
    env = ALFWorldEnv(n_tasks=1, **options)
    recs = ["cabinet 1", "coffeemachine 1", "countertop 1", "sinkbasin 1"]
    text = ("You are in the middle of a room. Looking quickly around you, you see a cabinet 1, "
            "a coffeemachine 1, a countertop 1, and a sinkbasin 1.\nYour task is to: put a clean mug in "
            "coffeemachine.")
    env.tasks[0] = {"text": text, "recs": recs, "closed": frozenset({"cabinet 1"}),
                    "contents": {r: list(objs) for r, objs in contents.items()},
                    "task": ("clean", "mug", "coffeemachine")}
    return env


def test_action_language_and_replies():
    env = tiny_env()
    assert env.reset(0).endswith("Your task is to: put a clean mug in coffeemachine.")
    steps = [
        ("take mug 1 from cabinet 1", "Nothing happens."),  # not there yet
        ("go to cabinet 1", "The cabinet 1 is closed."),
        ("take mug 1 from cabinet 1", "Nothing happens."),  # closed
        ("open cabinet 1", "You open the cabinet 1. The cabinet 1 is open. In it, you see a mug 1."),
        ("think: the mug is here", "OK."),
        ("take mug 1 from cabinet 1", "You pick up the mug 1 from the cabinet 1."),
        ("inventory", "You are carrying: a mug 1."),
        ("go to countertop 1", "On the countertop 1, you see a cup 1."),
        ("take cup 1 from countertop 1", "Nothing happens."),  # hands full
        ("clean mug 1 with countertop 1", "Nothing happens."),  # wrong appliance
        ("go to sinkbasin 1", "On the sinkbasin 1, you see nothing."),
        ("examine mug 1", "This is a normal mug 1."),
        ("clean mug 1 with sinkbasin 1", "You clean the mug 1 using the sinkbasin 1."),
        ("examine mug 1", "This is a clean mug 1."),
        ("go to coffeemachine 1", "On the coffeemachine 1, you see nothing."),
    ]
    for action, expected in steps:
        obs, reward, done, info = env.step(action)
        assert obs == expected, action
        assert (reward, done, info["success"]) == (0.0, False, False)
    obs, reward, done, info = env.step("put mug 1 in/on coffeemachine 1")
    assert obs == "You put the mug 1 in/on the coffeemachine 1."
    assert (reward, done, info["success"]) == (1.0, True, True)
    with pytest.raises(RuntimeError, match="episode is over"):
        env.step("look")


def test_goal_needs_the_state_and_the_right_type():
    env = tiny_env()
    env.reset(0)
    for a in ["go to countertop 1", "take cup 1 from countertop 1", "go to sinkbasin 1",
              "clean cup 1 with sinkbasin 1", "go to coffeemachine 1", "put cup 1 on coffeemachine 1",
              "go to cabinet 1", "open cabinet 1", "take mug 1 from cabinet 1", "go to coffeemachine 1"]:
        assert env.step(a)[2] is False
    obs, reward, done, _ = env.step("put mug 1 in coffeemachine 1")  # a cup does not count, nor a dirty mug
    assert (obs, reward, done) == ("You put the mug 1 in/on the coffeemachine 1.", 0.0, False)


@pytest.mark.parametrize("action", ["", "   ", "fly to the moon", "asdf qwer", "go to", "go to mug 99",
                                    "take", "put mug 1", "open cabinet 7", "use cabinet 1", "🙂", "go to  "])
def test_bad_actions_answer_never_raise(action):
    env = tiny_env()
    env.reset(0)
    obs, reward, done, info = env.step(action)
    assert obs.startswith("Nothing happens.") and (reward, done, info["success"]) == (0.0, False, False)
    if not re.match(r"(go to|take|put|open|use)\b", action.strip()):
        assert "Valid actions: go to <recep>" in obs  # unknown verbs are told the action language


@pytest.mark.parametrize("action", ["Go To Cabinet 1", "  go   to cabinet 1  ", "GO TO CABINET 1.",
                                    "> go to cabinet 1"])
def test_case_and_whitespace_variants(action):
    env = tiny_env()
    env.reset(0)
    assert env.step(action)[0] == "The cabinet 1 is closed."


def test_errors_and_options():
    env = tiny_env()
    with pytest.raises(RuntimeError, match="reset"):
        env.step("look")
    for bad in (-1, 1, "0", None):
        with pytest.raises(IndexError, match="out of range"):
            env.reset(bad)
    env.reset(0)
    with pytest.raises(TypeError, match="action must be a str"):
        env.step(None)
    for bad in ({"n_tasks": 0}, {"difficulty": 1.5}, {"max_steps": 0}, {"split": "dev"}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            ALFWorldEnv(**bad)
    env = tiny_env(max_steps=3)
    env.reset(0)
    assert [env.step("look")[2] for _ in range(3)] == [False, False, True]  # the step limit ends it
    env = envs.make("alfworld", split="test", seed=3, n_tasks=5)
    assert env.name == "alfworld" and len(env) == 5 and env.max_steps == 50


def test_deterministic_and_disjoint_splits(splits):
    def sig(env):
        return [t["text"] + repr(sorted(t["contents"].items())) for t in env.tasks]

    train, test = sig(splits["train"]), sig(splits["test"])
    assert len(train) == len(test) == 134
    assert sig(ALFWorldEnv(split="test", seed=0)) == test
    assert not set(train) & set(test)
    assert len(set(test)) > 120  # varied tasks
    assert sig(ALFWorldEnv(split="test", seed=1, n_tasks=20)) != test[:20]
    kinds = {t["task"][0] for t in splits["test"].tasks}
    assert kinds == {"pick", "look", "clean", "heat", "cool", "two"}


@pytest.mark.parametrize("split", ["train", "test"])
def test_expert_solves_every_task(splits, split):
    env = splits[split]
    results = [run(env, i, "expert") for i in range(len(env))]
    assert all(s for s, _, _ in results)
    assert max(len(t) for _, _, t in results) <= 20


@pytest.mark.parametrize("split", ["train", "test"])
def test_explorer_fails_visibly_and_the_plan_fixes_it(splits, split):
    env = splits[split]
    wins, fixed, failures = 0, 0, 0
    for i in range(len(env)):
        success, _, traj = run(env, i, "explorer")
        wins += success
        if success:
            continue
        failures += 1
        text = env.render(traj)
        plan = env.plan(traj)
        assert plan is not None and plan == env.plan(text)  # read from the text alone
        def seen(rec, text=text):
            return f"On the {rec}, you see" in text or f"The {rec} is open. In it, you see" in text

        for otype, rec in re.findall(r"(\w+) is at (\w+ \d+)", plan):  # every named place is right and seen
            assert any(o.split()[0] == otype for o in env.tasks[i]["contents"][rec]) and seen(rec)
        for places in re.findall(r"Search (.+) first", plan):  # places to search were never looked into
            assert not any(seen(r) for r in alfworld.parse_ranges(places))
        ok, _, traj2 = run(env, i, "explorer", plan=plan)
        fixed += ok
    assert 0.2 <= wins / len(env) <= 0.6, wins
    assert fixed >= 0.95 * failures, (fixed, failures)


def test_explorer_tours_elsewhere_when_the_target_is_the_only_likely_place():
    # pillows are likely only on beds; "put a pillow on bed" once crashed the explorer (empty tour)
    env = ALFWorldEnv(n_tasks=1)
    text = ("You are in the middle of a room. Looking quickly around you, you see a bed 1, a drawer 1, "
            "and a shelf 1.\nYour task is to: put a pillow on bed.")
    env.tasks[0] = {"text": text, "recs": ["bed 1", "drawer 1", "shelf 1"], "closed": frozenset({"drawer 1"}),
                    "contents": {"bed 1": [], "drawer 1": [], "shelf 1": ["pillow 1"]},
                    "task": ("put", "pillow", "bed")}
    success, _, traj = run(env, 0, "explorer")
    assert success and "go to shelf 1" in [a for _, a, _ in traj], traj


def test_difficulty_option_moves_the_explorer():
    rates = []
    for d in (0.0, 0.5, 1.0):
        env = ALFWorldEnv(split="test", n_tasks=40, difficulty=d)
        rates.append(sum(run(env, i, "explorer")[0] for i in range(len(env))) / len(env))
    assert rates[0] >= 0.9 and rates[0] > rates[1] > rates[2], rates


def test_render_shows_the_episode():
    # the cup waits in the cabinet, the explorer's first guess; the mug lies in the sink, an odd place
    env = tiny_env({"cabinet 1": ["cup 1"], "coffeemachine 1": [], "countertop 1": [],
                    "sinkbasin 1": ["mug 1"]})
    success, _, traj = run(env, 0, "explorer")
    text = env.render(traj)
    assert not success and len(traj) == env.max_steps
    assert text.startswith("You are in the middle of a room.")
    assert "> think: I need a mug.\nOK.\n> go to cabinet 1\nThe cabinet 1 is closed." in text or \
        "> think: First I look for a mug.\nOK.\n> go to cabinet 1\nThe cabinet 1 is closed." in text
    assert env.render([{"thought": "", "action": "look", "obs": "x"}], first_obs="F") == "F\n> look\nx"
    # the explorer took the cup for the mug and saw the mug while cleaning it: the plan says both
    assert "take cup 1 from cabinet 1" in text and "On the sinkbasin 1, you see a mug 1." in text
    plan = env.plan(traj)
    assert plan == "The mug is at sinkbasin 1. Use a mug, not a cup."
    success, _, traj = run(env, 0, "explorer", plan=plan)
    assert success and [a for _, a, _ in traj][:2] == ["go to sinkbasin 1", "take mug 1 from sinkbasin 1"]
