"""The real ALFWorld adapter (worlds/alfworld_real.py) on the real engine: alfworld 0.4.2's domain and
grammar on TextWorld's PDDL engine (Fast Downward), with tiny games built here in alfworld-download's
layout (json_2.1.1/<split>/<task>/<trial>/{traj_data.json, game.tw-pddl}). Nothing is downloaded."""

import copy
import importlib.metadata
import json
import os

import alfworld.info
import pytest

import actor
import envs
import eval as evaluation
import train
from worlds import alfworld_real

MUG = "Mug_bar__minus_01_dot_00_bar__plus_00_dot_90_bar__plus_00_dot_30"
CABINET = "Cabinet_bar__minus_01_dot_50_bar__plus_00_dot_40_bar__plus_00_dot_20"
COUNTER = "CounterTop_bar__plus_00_dot_50_bar__plus_00_dot_95_bar__minus_01_dot_00"
SOLUTION = ["go to cabinet 1", "open cabinet 1", "take mug 1 from cabinet 1", "go to countertop 1",
            "put mug 1 in/on countertop 1"]  # the generated world's (and ReAct prompts') words


def problem(start=CABINET, goal_type="CounterTopType"):
    """A kitchen: a closed cabinet 1, a countertop 1 and mug 1 in receptacle `start`; the goal: a mug in
    a receptacle of `goal_type`."""
    loc = 2 if start == CABINET else 3
    dist = " ".join(f"(= (distance loc{a} loc{b}) {int(a != b)})" for a in (1, 2, 3) for b in (1, 2, 3))
    return f"""(define (problem plan_trial_tiny)
(:domain alfred)
(:objects agent1 - agent MugType - otype CabinetType - rtype CounterTopType - rtype
 {MUG} - object {CABINET} - receptacle {COUNTER} - receptacle loc1 - location loc2 - location loc3 - location)
(:init (= (total-cost) 0) {dist}
 (receptacleType {CABINET} CabinetType) (receptacleType {COUNTER} CounterTopType) (objectType {MUG} MugType)
 (canContain CabinetType MugType) (canContain CounterTopType MugType) (pickupable {MUG}) (openable {CABINET})
 (atLocation agent1 loc1) (inReceptacle {MUG} {start})
 (receptacleAtLocation {CABINET} loc2) (receptacleAtLocation {COUNTER} loc3)
 (objectAtLocation {MUG} loc{loc}))
(:goal (and (exists (?r - receptacle) (exists (?o - object) (and (inReceptacle ?o ?r) (objectType ?o MugType)
 (receptacleType ?r {goal_type})))))))
"""


def write_game(data, relfolder, task="put some mug on countertop", task_type="pick_and_place_simple",
               solvable=True, pddl=None, game=True):
    """One game in alfworld-download's layout, its grammar with the task as alfworld-generate writes it."""
    folder = os.path.join(data, relfolder)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "traj_data.json"), "w") as f:
        json.dump({"task_type": task_type}, f)
    if game:
        with open(alfworld.info.ALFRED_PDDL_PATH) as f, open(alfworld.info.ALFRED_TWL2_PATH) as g:
            domain, grammar = f.read(), g.read().replace("UNKNOWN GOAL", task)
        with open(os.path.join(folder, "game.tw-pddl"), "w") as f:
            json.dump({"pddl_domain": domain, "grammar": grammar, "pddl_problem": pddl or problem(),
                       "solvable": solvable}, f)  # fmt: skip
    return os.path.join(relfolder, "game.tw-pddl")


@pytest.fixture
def data(tmp_path):
    """valid_unseen with two playable games (written out of order) and one of each kind that alfworld
    leaves out; train with one game."""
    d = str(tmp_path / "alfworld")
    unseen = "json_2.1.1/valid_unseen"
    write_game(d, f"{unseen}/pick_and_place_simple-Mug-None-CounterTop-1/trial_1")  # game 1 once sorted
    write_game(d, f"{unseen}/pick_and_place_simple-Mug-None-Cabinet-1/trial_2",
               task="put some mug in cabinet", pddl=problem(COUNTER, "CabinetType"))  # game 0
    write_game(d, f"{unseen}/pick_and_place_simple-Mug-None-CounterTop-1/trial_0_unsolvable", solvable=False)
    write_game(d, f"{unseen}/pick_and_place_simple-Mug-None-CounterTop-movable-1/trial_0")
    write_game(d, f"{unseen}/pick_and_place_simple-Mug-Sliced-CounterTop-1/trial_0")
    write_game(d, f"{unseen}/pick_and_place_simple-Mug-None-CounterTop-2/trial_0", game=False)
    write_game(d, f"{unseen}/other_task-Mug-None-CounterTop-1/trial_0", task_type="other_task")
    write_game(d, "json_2.1.1/train/pick_and_place_simple-Mug-None-CounterTop-9/trial_0")
    return d


def test_a_game_is_played_on_the_engine_and_won_with_the_old_put_words(data):
    env = envs.make("alfworld", "test", source="alfworld", data=data)
    assert len(env) == 2 and env.max_steps == 50
    with pytest.raises(RuntimeError, match=r"call reset\(i\) before step"):
        env.step("look")
    first = env.reset(1)
    assert "Welcome to TextWorld" not in first  # Reflexion cuts the banner
    assert first.startswith("You are in the middle of a room. Looking quickly around you, you see a "
                            "cabinet 1, and a countertop 1.")  # fmt: skip
    assert first.endswith("Your task is to: put some mug on countertop.")
    assert "go to cabinet 1" in env.admissible_commands()
    obs = []
    for action in SOLUTION:
        o, reward, done, info = env.step(action)
        obs.append(o)
    assert obs[1] == "You open the cabinet 1. The cabinet 1 is open. In it, you see a mug 1."
    assert obs[-1] == "You move the mug 1 to the countertop 1."  # 0.4's reply to the translated command
    assert (reward, done, info["success"], info["steps"]) == (1.0, True, True, 5)
    with pytest.raises(RuntimeError, match="episode is over"):
        env.step("look")


def test_think_answers_ok_invalid_commands_nothing_happens_and_the_step_limit_is_a_failure(data):
    env = envs.make("alfworld", "test", source="alfworld", data=data, max_steps=3)
    env.reset(1)
    assert env.step("think: the mug is likely in the cabinet.") == ("OK.", 0.0, False, {
        "success": False, "steps": 1, "admissible_commands": env.admissible_commands()})  # fmt: skip
    assert env.step("take mug 1 from cabinet 1")[0] == "Nothing happens."  # the cabinet is closed
    obs, reward, done, info = env.step("go to cabinet 1")
    assert obs == "You arrive at cabinet 1. The cabinet 1 is closed."
    assert (reward, done, info["success"]) == (0.0, True, False)  # stopped by the limit, not won


def test_putting_the_mug_in_the_wrong_receptacle_is_no_win(data):
    env = envs.make("alfworld", "test", source="alfworld", data=data)
    env.reset(0)  # the mug starts on the countertop, and the task is to put it in the cabinet
    for action in SOLUTION:
        _, _, done, info = env.step(action)
    assert not done and not info["success"]


def test_the_task_list_is_chosen_as_alfworld_does_sorted_and_hashed(data, tmp_path):
    env = envs.make("alfworld", "test", source="alfworld", data=data)
    unseen = "json_2.1.1/valid_unseen/pick_and_place_simple-Mug-None"
    assert env.games == (f"{unseen}-Cabinet-1/trial_2/game.tw-pddl",
                         f"{unseen}-CounterTop-1/trial_1/game.tw-pddl")
    assert len(envs.make("alfworld", "train", source="alfworld", data=data)) == 1
    assert len(envs.make("alfworld", "test", source="alfworld", data=data, n_tasks=1)) == 1
    digest = envs.tasks_sha256(env, [0, 1])
    assert digest == envs.tasks_sha256(envs.make("alfworld", "test", source="alfworld", data=data), [0, 1])
    assert digest != envs.tasks_sha256(env, [0])
    with open(os.path.join(data, env.games[1]), "a") as f:
        f.write(" ")  # the same games list, one file's bytes changed
    assert envs.tasks_sha256(env, [0, 1]) != digest


def test_eval_prints_and_records_the_task_hash(data, capsys):
    cfg = train.Config(envs="alfworld", eval_split="test", eval_tasks=5,
                       env_options=json.dumps({"alfworld": {"source": "alfworld", "data": data}}))
    lists = evaluation.task_lists(cfg)
    env = envs.make("alfworld", "test", source="alfworld", data=data)
    assert lists == {"alfworld": {"split": "test", "n": 2, "sha256": env.task_list_sha256([0, 1])}}


def test_copies_play_their_own_games_at_once_and_engines_are_reused(data):
    template = envs.make("alfworld", "test", source="alfworld", data=data)
    a, b = copy.copy(template), copy.deepcopy(template)
    a.reset(1)
    b.reset(0)  # interleaved: one engine for both would show a's room to b
    arrive = "You arrive at countertop 1. On the countertop 1, you see "
    assert a.step("go to countertop 1")[0] == arrive + "nothing."
    assert b.step("go to countertop 1")[0] == arrive + "a mug 1."
    for action in SOLUTION:
        *_, info = a.step(action)
    assert info["success"] and a._engine is None  # given back when the episode ended
    free = len(alfworld_real._FREE_ENGINES)
    c = copy.copy(template)
    c.reset(0)
    assert len(alfworld_real._FREE_ENGINES) == free - 1  # c took a's engine instead of loading another
    del b  # an episode left unfinished gives its engine back when its env goes
    assert len(alfworld_real._FREE_ENGINES) == free


def test_the_actor_solves_a_real_game_through_run_trials(data, tmp_path):
    def replies(prompt):  # one scripted step per Observation already in the prompt
        k = prompt.count("\nObservation:")
        return f" Next I do step {k}.\nAction: {SOLUTION[k]}"

    llm = type("Scripted", (), {"complete": lambda self, ps, *a, **k: [replies(p) for p in ps]})()
    factory = envs.factory("alfworld", "test", source="alfworld", data=data)
    trajs = actor.run_trials(factory, [1, 1], llm, concurrency=2, log_path=str(tmp_path / "ep.jsonl"))
    assert [t.success for t in trajs] == [True, True]
    assert [s[1] for s in trajs[0].steps] == SOLUTION


def test_bad_input_fails_at_start_up_naming_the_problem(data, tmp_path, monkeypatch):
    monkeypatch.delenv("ALFWORLD_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no data= and no $ALFWORLD_DATA: alfworld's default folder
    with pytest.raises(FileNotFoundError, match=f"{tmp_path}/.cache/alfworld/json_2.1.1/valid_unseen is not"):
        envs.make("alfworld", "test", source="alfworld")
    missing = str(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=f"{missing}/json_2.1.1/valid_unseen is not a.*download"):
        envs.make("alfworld", "test", source="alfworld", data=missing)
    with pytest.raises(ValueError, match="source must be None"):
        envs.make("alfworld", "test", source="alfworld-0.3", data=data)
    monkeypatch.setenv("ALFWORLD_DATA", data)
    assert len(envs.make("alfworld", "test", source="alfworld")) == 2

    broken = str(tmp_path / "broken")
    game = write_game(broken, "json_2.1.1/valid_unseen/pick_and_place_simple-X-None-Y-1/trial_0")
    with open(os.path.join(broken, game), "w") as f:
        f.write('{"solvable": true, "pddl_domain": ')
    with pytest.raises(ValueError, match=f"{os.path.join(broken, game)} is not valid JSON"):
        envs.make("alfworld", "test", source="alfworld", data=broken)

    bad_pddl = str(tmp_path / "bad_pddl")
    game = write_game(bad_pddl, "json_2.1.1/valid_unseen/pick_and_place_simple-X-None-Y-1/trial_0",
                      pddl="(define (problem p) (:domain alfred) (:objects")  # fmt: skip
    env = envs.make("alfworld", "test", source="alfworld", data=bad_pddl)
    with pytest.raises(ValueError, match=f"ALFWorld game {os.path.join(bad_pddl, game)} does not load"):
        env.reset(0)

    real_version = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version",
                        lambda name: "0.3.5" if name == "alfworld" else real_version(name))
    with pytest.raises(ImportError, match=r"alfworld==0\.4\.2, found 0\.3\.5.*requirements-alfworld\.txt"):
        envs.make("alfworld", "test", source="alfworld", data=data)

    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    with pytest.raises(ImportError, match=r"needs the alfworld package \(0\.4\.2\).*requirements-alfworld"):
        envs.make("alfworld", "test", source="alfworld", data=data)


def test_the_scripted_parts_of_the_generated_world_say_they_need_it(data):
    env = envs.make("alfworld", "test", source="alfworld", data=data)
    env.reset(0)
    for method in (env.expert, env.explorer, env.plan):
        with pytest.raises(NotImplementedError, match="source=None"):
            method()
