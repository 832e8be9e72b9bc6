"""End-to-end on the real environments: expert few-shot examples, parsing of every environment's
action language, and a scripted-expert LLM stand-in solving tasks through the full actor path
(in-process and over HTTP with injected faults)."""

import pytest
from test_actor_http import client, serve  # noqa: F401 - the `serve` fixture

import envs
from actor import Trajectory, build_prompt, parse_action, run_trials
from worlds.scripted import ExpertLLM, few_shot_examples

NAMES = ["hotpotqa", "alfworld", "webshop"]


def make_test_env(name):
    return lambda: envs.make(name, split="test", seed=0)


@pytest.mark.parametrize("name", NAMES)
def test_few_shot_examples_are_expert_episodes(name):
    examples = few_shot_examples(name, n=2)
    assert few_shot_examples(name, n=2) is examples  # cached
    train = envs.make(name, split="train", seed=0)
    firsts = {train.reset(i).rstrip("\n") for i in range(len(train))}
    for ex in examples:
        assert any(ex.startswith(f) for f in firsts) and "\nAction: " in ex and "\nObservation: " in ex
    # every expert action survives rendering and parsing, in our format and ALFWorld's "> action"
    for ex in examples:
        for block in ex.split("\nThought: ")[1:]:
            thought, rest = block.split("\nAction: ", 1)
            action = rest.split("\nObservation: ", 1)[0]
            assert parse_action(f" {thought}\nAction: {action}") == (thought, action)
            assert parse_action(f" {thought}\n> {action}\n")[1] == action or action.endswith(".")


@pytest.mark.parametrize("name", NAMES)
def test_expert_stand_in_solves_tasks_through_the_actor(name, tmp_path):
    make_env = make_test_env(name)
    examples = few_shot_examples(name, n=1)
    tasks = list(range(min(6, len(make_env()))))
    log = tmp_path / "log.jsonl"
    trajs = run_trials(make_env, tasks, ExpertLLM(make_env), trial=0, log_path=log, concurrency=3,
                       examples=examples)  # fmt: skip
    assert [t.task for t in trajs] == tasks and all(t.env == name and t.error is None for t in trajs)
    assert sum(t.success for t in trajs) >= len(tasks) - 1, [t.text()[-300:] for t in trajs if not t.success]
    assert all(t.ret > 0 for t in trajs if t.success)
    assert sorted(Trajectory.from_json(x).task for x in log.read_text().splitlines()) == tasks
    # the prompt the actor saw for the last step holds example, instruction and trajectory
    t = trajs[0]
    p = build_prompt(t.instruction, t.steps[:-1], ["Plan: do it right."], examples)
    assert examples[0] in p and t.instruction.rstrip("\n") in p and "Plan: do it right." in p


def test_expert_stand_in_over_flaky_http(serve):  # noqa: F811
    make_env = make_test_env("hotpotqa")
    srv = serve(
        lambda prompt, attempt: ["500", "garbage"][attempt] if attempt < 2 else None, ExpertLLM(make_env)
    )
    trajs = run_trials(
        make_env, [0, 1, 2, 3], client(srv), concurrency=4, examples=few_shot_examples("hotpotqa", 1)
    )
    assert sum(t.success for t in trajs) >= 3 and all(t.error is None for t in trajs)
