"""actor.py: parsing, prompt building and elision, trajectories, run_trial / run_trials (fake env)."""

import json
import random
import re
import threading

import pytest

import actor
import envs
import pretrain
import train
from actor import (
    Trajectory,
    build_prompt,
    build_reflection_prompt,
    format_memory,
    parse_action,
    run_trial,
    run_trials,
)
from worlds import scripted, webshop
from worlds.scripted import ExpertLLM, ExplorerLLM, few_shot_examples


class FakeEnv:
    """Task i: find the secret word of room i (look, then answer[word]). Used by all actor tests."""

    name = "fake"
    max_steps = 6

    def __init__(self, n=12):
        self.n, self.i, self.done, self.looked, self.t = n, None, True, False, 0

    def __len__(self):
        return self.n

    def secret(self):
        return f"word{self.i * 7 % 11}"

    def reset(self, i):
        self.i, self.done, self.looked, self.t = i, False, False, 0
        return f"Task {i}: tell me the secret word of room {i}.\nYou are in room {i}."

    def step(self, action):
        if self.done:
            raise RuntimeError("step after done")
        self.t += 1
        reward, success = 0.0, False
        if action == "look":
            self.looked, obs = True, f"A note says: the secret word is {self.secret()}."
        elif action.startswith("answer[") and action.endswith("]"):
            success = action[7:-1] == self.secret()
            reward, obs, self.done = float(success), "Correct!" if success else "Wrong.", True
        else:
            obs = f"Unknown action {action!r}. Valid actions: look, answer[word]."
        self.done = self.done or self.t >= self.max_steps
        return obs, reward, self.done, {"success": success}

    def expert(self):
        if not self.looked:
            return "I should look for the word.", "look"
        return "The note gave the word.", f"answer[{self.secret()}]"


class ScriptedLLM:
    """A batched stand-in that replies from a fixed list per call and records every prompt batch."""

    def __init__(self, replies, batched=False, context_window=None):
        self.replies, self.batched, self.context_window, self.calls = replies, batched, context_window, []
        self.lock = threading.Lock()

    def complete(self, prompts, max_tokens=256, temperature=0.0, stop=actor.STOP):
        with self.lock:
            self.calls.append(list(prompts))
        return [self.replies(p) for p in prompts]


# ----------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    "completion, expected",
    [
        (" I need the word.\nAction: look", ("I need the word.", "look")),
        ("Thought: search first\nAction: Search[Apple Inc]", ("search first", "Search[Apple Inc]")),
        ("Thought 2: hmm\nAction 2: Lookup[founded]\n", ("hmm", "Lookup[founded]")),
        (" go\nAction: Search[x]\nObservation: made up\nThought: more", ("go", "Search[x]")),
        (" go\nAction: Search[x] to find the founder", ("go", "Search[x]")),
        (" The mug may be on the desk.\n> go to desk 1", ("The mug may be on the desk.", "go to desk 1")),
        ("> think: mug first\n> take mug 1 from desk 1.", ("mug first", "take mug 1 from desk 1")),
        ("Action: click[Buy Now]", ("", "click[Buy Now]")),
        ("search[red shoes size 9]", ("", "search[red shoes size 9]")),
        (" I know it.\nfinish[yes]\nmore text", ("I know it.", "finish[yes]")),
        (" I should open drawer 2.\nopen drawer 2", ("I should open drawer 2.", "open drawer 2")),
        ("**Thought:** ok\n**Action:** `answer[word3]`", ("ok", "answer[word3]")),
        (" I'll look. Action: look", ("I'll look.", "look")),
        ("Thought: then\nAction:\nSearch[x]\n", ("then", "Search[x]")),
        (" just thinking, no action", ("just thinking, no action", "")),
        ("", ("", "")),
    ],
)
def test_parse_action(completion, expected):
    assert parse_action(completion) == expected


# ----------------------------------------------------------------------------- prompts


def test_prompt_layout_memory_and_examples():
    steps = [("t1", "look", "obs one", 0.0), ("t2", "answer[x]", "Wrong.", 0.0)]
    refl = [f"reflection {j}. Plan: answer[word{j}]" for j in range(5)]
    p = build_prompt("Task 3: the task.\nYou are here.", steps, refl, ["EXAMPLE A\n", "EXAMPLE B\n"], k=3)
    # order: header, examples, memory (last 3 reflections, trial-numbered), task, steps, "Thought:"
    order = [
        actor.HEADER,
        "EXAMPLE A",
        "EXAMPLE B",
        "(END OF EXAMPLES)",
        "Your memory for the task below:",
        "Trial 3:\nreflection 2.",
        "Trial 5:\nreflection 4.",
        "Task 3: the task.\nYou are here.\n",
        "Thought: t1\nAction: look\nObservation: obs one\n",
        "Thought: t2\nAction: answer[x]\n",
    ]
    pos = [p.index(s) for s in order]
    assert pos == sorted(pos)
    assert p.endswith("Observation: Wrong.\nThought:")
    assert "reflection 1" not in p and "Trial 2:" not in p
    assert format_memory(refl, k=0) == "" and format_memory([], 3) == ""
    bare = build_prompt("Task 0.", [], (), ())
    assert "memory" not in bare and "EXAMPLES" not in bare and bare.endswith("Task 0.\nThought:")


def test_elision_keeps_instruction_and_memory_and_drops_oldest_steps():
    steps = [(f"thought {j}", f"act{j}", f"observation {j} " + "x" * 40, 0.0) for j in range(20)]
    instr, refl = "Task 9: INSTRUCTION TEXT.", ["MEMORY: last time I failed. Plan: act19."]
    count = lambda t: len(t)  # 1 token per char: easy to reason about
    full = build_prompt(instr, steps, refl, ["EX\n"], count_tokens=count, max_prompt_tokens=10**6)
    assert full == build_prompt(instr, steps, refl, ["EX\n"])
    budget = len(full) - 300
    p = build_prompt(instr, steps, refl, ["EX\n"], count_tokens=count, max_prompt_tokens=budget)
    assert len(p) <= budget and instr in p and refl[0] in p and "EX\n" in p
    n = int(p.split("[", 2)[-1].split(" earlier steps elided")[0]) if "elided" in p else 0
    assert n > 0, "the oldest steps must be elided"
    assert "act0\n" not in p and f"act{n - 1}\n" not in p and f"act{n}\n" in p and "act19\n" in p
    assert p.index(refl[0]) < p.index(instr) < p.index("elided") < p.index(f"act{n}\n")
    assert len(p) + len(actor.render_step(*steps[n - 1][:3])) - 1 > budget  # no more elided than needed
    assert build_prompt(instr, steps, refl, ["EX\n"], count_tokens=count, max_prompt_tokens=budget - 60) != p
    # tight budget: the examples go (last first) once only the last step is left; instruction, memory stay
    exs = ["A" * 100 + "\n", "B" * 100 + "\n"]
    one = build_prompt(instr, steps[-1:], refl, exs[:1], count_tokens=count, max_prompt_tokens=10**6)
    tight = build_prompt(instr, steps, refl, exs, count_tokens=count, max_prompt_tokens=len(one) + 60)
    assert "AAAA" in tight and "BBBB" not in tight and "act19" in tight and "act18\n" not in tight
    tighter = build_prompt(instr, steps, refl, exs, count_tokens=count, max_prompt_tokens=len(one) - 50)
    assert "AAAA" not in tighter and "act19" in tighter and instr in tighter and refl[0] in tighter
    with pytest.raises(ValueError, match="instruction and memory alone"):
        build_prompt(instr, steps, ["M" * 1000], (), count_tokens=count, max_prompt_tokens=500)


def test_episode_elides_with_the_backend_tokenizer_count():
    env = FakeEnv()
    seen = []

    def reply(p):
        seen.append(p)
        return " try\nAction: wait"  # unknown action: the episode runs to max_steps

    llm = ScriptedLLM(reply, context_window=None)
    llm.count_tokens = lambda t: len(t.split())  # whitespace "tokenizer"
    llm.context_window = 100 + 16
    traj = run_trial(env, 2, llm, ["Plan: look first."], examples=[], max_tokens=16)
    assert len(traj.steps) == env.max_steps and not traj.success
    assert all(len(p.split()) <= 100 for p in seen)
    assert any("earlier steps elided" in p for p in seen)
    assert all("Task 2: tell me" in p and "Plan: look first." in p for p in seen)


# ----------------------------------------------------------------------------- trajectories


def test_run_trial_solves_with_expert_replies_and_json_roundtrip():
    env = FakeEnv()
    traj = run_trial(env, 5, ExpertLLM(FakeEnv), reflections=["r1", "r2", "r3", "r4"], trial=2, examples=[])
    assert traj.success and traj.ret == 1.0 and traj.error is None
    assert [s[1] for s in traj.steps] == ["look", f"answer[{env.secret()}]"]
    assert (
        traj.reflections == ["r2", "r3", "r4"] and traj.trial == 2 and traj.task == 5 and traj.env == "fake"
    )
    assert (
        traj.text().startswith("Task 5: tell me") and "Action: look\nObservation: A note says" in traj.text()
    )
    line = traj.to_json()
    assert json.loads(line)["return"] == 1.0
    assert Trajectory.from_json(line) == traj
    tagged = traj.to_json(seed=2, method="reflexion")  # eval.py's log tags: read back, not in the record
    assert json.loads(tagged)["method"] == "reflexion" and Trajectory.from_json(tagged) == traj
    with pytest.raises(ValueError, match="not a Trajectory record"):
        Trajectory.from_json(json.dumps({"env": "fake"}))
    with pytest.raises(ValueError, match="not a Trajectory record"):  # an unknown key is not a tag
        Trajectory.from_json(json.dumps({**json.loads(line), "methd": "react"}))


def test_reflection_prompt_holds_task_trajectory_and_instruction():
    env = FakeEnv()
    wrong = ScriptedLLM(lambda p: " guess\nAction: answer[nope]")
    traj = run_trial(env, 1, wrong, examples=[])
    assert not traj.success and traj.ret == 0.0
    p = build_reflection_prompt(traj)
    assert p.startswith(actor.REFLECT_HEADER) and p.endswith("Reflection:")
    assert "root cause" in p and "Plan:" in p
    assert traj.text() in p and "Action: answer[nope]\nObservation: Wrong." in p
    count = lambda t: len(t)
    assert build_reflection_prompt(traj, ["EXAMPLE"], count_tokens=count, max_prompt_tokens=len(p)) == p
    long = run_trial(env, 1, ScriptedLLM(lambda p: " wait\nAction: wait"), examples=[])
    full = build_reflection_prompt(long)
    short = build_reflection_prompt(long, count_tokens=count, max_prompt_tokens=len(full) - 100)
    # six identical steps: the five repeats go, the first stays, nothing else is elided
    assert "[5 steps elided that repeat an earlier step's action and observation]\n" in short
    assert short.count("Action: wait\n") == 1 and "earlier steps elided" not in short
    assert long.instruction in short and len(short) <= len(full) - 100


def test_reflection_prompt_drops_repeated_steps_before_the_oldest():
    # a tour of four places, then the same tour again (ALFWorld's explorer when it finds nothing)
    tour = [("", f"go to shelf {j}", f"On the shelf {j}, you see a mug {j}.", 0.0) for j in range(1, 5)]
    traj = Trajectory("fake", 0, 0, "Find a mug.", tour + tour[:3] + [("", "look", "You see a room.", 0.0)])
    count = lambda t: len(t)
    full = build_reflection_prompt(traj)
    assert build_reflection_prompt(traj, count_tokens=count, max_prompt_tokens=len(full)) == full  # fits: all
    short = build_reflection_prompt(traj, count_tokens=count, max_prompt_tokens=len(full) - 1)
    steps = short.split("Find a mug.\n", 1)[1]
    assert steps.startswith("[3 steps elided that repeat an earlier step's action and observation]\n")
    assert [int(n) for n in re.findall(r"Action: go to shelf (\d)", steps)] == [1, 2, 3, 4]  # first sightings
    assert "Action: look\n" in steps and "earlier steps elided" not in steps
    # still too long: then the oldest of the remaining steps go, as before
    shorter = build_reflection_prompt(traj, count_tokens=count, max_prompt_tokens=len(short) - 40)
    n = int(re.search(r"\[(\d+) earlier steps elided", shorter)[1])
    kept = [int(j) for j in re.findall(r"Action: go to shelf (\d)", shorter)]
    assert "[3 steps elided that repeat" in shorter and n >= 1 and kept == list(range(1 + n, 5))
    assert "Action: look\n" in shorter and len(shorter) <= len(short) - 40


def test_example_of_the_same_task_is_left_out():
    env = FakeEnv()
    own = "Task 3: tell me the secret word of room 3.\nYou are in room 3.\nThought: a\n"
    llm = ScriptedLLM(
        lambda p: " x\nAction: look" if "Observation" not in p.split("(END")[-1] else " y\nAction: answer[w]"
    )
    run_trial(env, 3, llm, examples=[own, "OTHER EXAMPLE\n"])
    assert all("OTHER EXAMPLE" in p and own not in p for [p] in llm.calls)


# ----------------------------------------------------------------------------- run_trials


@pytest.mark.parametrize("batched", [False, True])
def test_run_trials_order_log_and_memories(tmp_path, batched):
    tasks = [4, 0, 7, 2, 9, 1, 3]
    memories = [[f"memory of task {t}"] for t in tasks]
    expert = ExpertLLM(FakeEnv)
    llm = ScriptedLLM(expert.answer, batched=batched)
    log = tmp_path / "episodes.jsonl"
    log.write_text('{"earlier": "run"}\n')  # append-only: an existing log is kept
    trajs = run_trials(FakeEnv, tasks, llm, memories, trial=1, log_path=log, concurrency=3, examples=[])
    assert [t.task for t in trajs] == tasks and all(t.success and t.trial == 1 for t in trajs)
    assert [t.reflections for t in trajs] == memories
    lines = log.read_text().splitlines()
    assert lines[0] == '{"earlier": "run"}' and len(lines) == 1 + len(tasks)
    logged = sorted((Trajectory.from_json(x) for x in lines[1:]), key=lambda t: tasks.index(t.task))
    assert logged == trajs
    for batch in llm.calls:  # the memory given for a task is in that task's prompts
        for p in batch:
            t = (
                int(p.split("(END OF EXAMPLES)")[-1].split("Task ")[1].split(":")[0])
                if "Task " in p
                else None
            )
            assert f"memory of task {t}" in p
    if batched:  # step-synchronous: up to `concurrency` episodes per complete() call
        assert max(len(b) for b in llm.calls) == 3 and len(llm.calls) < sum(len(t.steps) for t in trajs)
    else:
        assert all(len(b) == 1 for b in llm.calls)


def test_run_trials_gives_each_concurrent_episode_its_own_env():
    made = []

    def make_env():
        made.append(FakeEnv())
        return made[-1]

    trajs = run_trials(make_env, list(range(12)), ExpertLLM(FakeEnv), concurrency=4, examples=[])
    assert all(t.success for t in trajs) and 1 <= len(made) <= 4 + 1
    # a plain env is deep-copied per concurrent episode and left untouched
    env = FakeEnv()
    trajs = run_trials(env, [1, 2, 3], ExpertLLM(FakeEnv), concurrency=2, examples=[])
    assert all(t.success for t in trajs) and env.i is None


def test_run_trials_rejects_bad_arguments():
    with pytest.raises(ValueError, match="2 memories for 3 tasks"):
        run_trials(FakeEnv, [0, 1, 2], ExpertLLM(FakeEnv), memories=[[], []], examples=[])
    with pytest.raises(ValueError, match="concurrency"):
        run_trials(FakeEnv, [0], ExpertLLM(FakeEnv), concurrency=0, examples=[])


def test_expert_llm_rejects_prompt_without_task():
    with pytest.raises(ValueError, match="no task instruction"):
        ExpertLLM(FakeEnv).answer("Thought:")


# ----------------------------------------------------------------------------- scripted explorer actor


def _train_env(name):
    return lambda: envs.make(name, "train", seed=pretrain.ENV_SEED, **pretrain.ENV_OPTIONS[name])


def test_explorer_llm_equals_scripted_trial_and_reseeds():
    make_env, env, tasks = _train_env("hotpotqa"), _train_env("hotpotqa")(), list(range(30))
    llm = ExplorerLLM(make_env)
    trajs = run_trials(make_env, tasks, llm, concurrency=4, examples=few_shot_examples("hotpotqa", 1))
    # the same episode as pretrain.scripted_trial with the rng of that task, thoughts included
    for t in trajs:
        ref = pretrain.scripted_trial(env, t.task, llm.episode_rng("hotpotqa", t.task, []))
        assert (t.steps, t.success) == (ref.steps, ref.success)
    assert 0.2 <= sum(t.success for t in trajs) / len(tasks) <= 0.6  # the explorer's known range
    assert run_trials(make_env, tasks, llm, concurrency=2, examples=()) == trajs  # deterministic
    llm.reseed(1)
    other = run_trials(make_env, tasks, llm, concurrency=4, examples=())
    assert any(a.steps != b.steps for a, b in zip(trajs, other, strict=True))
    assert run_trials(make_env, tasks, ExplorerLLM(make_env, seed=1), examples=()) == other


def test_webshop_explorer_drops_a_plan_whose_search_found_nothing_that_fits():
    # a plan that excludes the one item that fits: the actor pages through the results (and, on a task
    # whose last page holds nothing new to try, goes back to search), then shops as it would without
    # memory (and buys) instead of searching the same words until its steps run out (a trial that buys
    # nothing scores 0, which made any parseable wrong plan costly)
    env = _train_env("webshop")()
    plan_of = lambda j: (f"Nothing fit. Next time: open the first result that fits the instruction, "
                         f"not {env.tasks[j]['target']}{webshop.PLAN_END}")  # fmt: skip
    trials = ((j, pretrain.scripted_trial(env, j, random.Random(0), [plan_of(j)])) for j in range(len(env))
              if pretrain.scripted_trial(env, j, random.Random(0)).success)  # fmt: skip
    i, traj = next((j, t) for j, t in trials if "click[Back to Search]" in [s[1] for s in t.steps])
    env.reset(i)
    goal, plan = env.tasks[i], plan_of(i)
    assert webshop.PLAN_RE.search(plan)
    actions = [s[1] for s in traj.steps]
    back = actions.index("click[Back to Search]")
    plan_moves = ("search[", "click[Next >]", "click[< Prev]", "click[B0")
    assert all(a.startswith(plan_moves) for a in actions[:back])
    assert actions[back + 1] == f"search[{goal['phrase']}]" and actions[-1] == "click[Buy Now]"
    assert traj.success  # the memoryless shopping of this task succeeds (with this rng)
    env.reset(i)
    for j, a in enumerate(actions):  # each step after the drop is the memoryless explorer's
        if j > back:
            assert scripted.explorer_step(env, random.Random(1), plan, actions[:j])[1] == \
                env.explorer(random.Random(1))[1]
        env.step(a)


def test_alfworld_explorer_ignores_places_the_room_lacks():
    # a plan's places the room does not have (a garbled 'drawer 11') give nothing to follow: the actor
    # keeps its memoryless habits, as with no plan at all. In plan mode it would tour every receptacle,
    # and PPO learned to write such plans for that exhaustive search instead of right ones.
    env = _train_env("alfworld")()
    failed = [i for i in range(40) if not pretrain.scripted_trial(env, i, random.Random(i)).success]
    assert len(failed) >= 10
    for i in failed:
        obj = env.tasks[i]["task"][1]
        for plan in (f"The {obj} is at drawer 11.", "Search shelf 9-12 first.", "1 first.", "Use a."):
            traj = pretrain.scripted_trial(env, i, random.Random(i), [plan])
            assert traj.steps == pretrain.scripted_trial(env, i, random.Random(i)).steps, plan
        # one real place among missing ones: followed until it was visited, then the habits again
        home = next(r for r in env.tasks[i]["recs"] if r.split()[0] != env.tasks[i]["task"][2])
        traj = pretrain.scripted_trial(env, i, random.Random(i), [f"Search {home}, drawer 11 first."])
        assert traj.steps[0][1] == f"go to {home}"
        env.reset(i)
        plan, actions = f"Search {home}, drawer 11 first.", [s[1] for s in traj.steps]
        for j, a in enumerate(actions):
            if j > 0:  # past the plan's one real place: the memoryless explorer's moves
                assert scripted.explorer_step(env, random.Random(1), plan, actions[:j])[1] == \
                    env.explorer(random.Random(1))[1]
            env.step(a)


@pytest.mark.parametrize("name", ["hotpotqa", "alfworld", "webshop"])
def test_explorer_llm_follows_right_plans_not_wrong_ones(name):
    make_env, env = _train_env(name), _train_env(name)()
    llm = ExplorerLLM(make_env)
    failed = [t for t in run_trials(make_env, range(40), llm, concurrency=4, examples=()) if not t.success]
    rng, right, wrong = random.Random(0), [], []
    for t in failed:
        env.reset(t.task)
        right.append(pretrain.correct_reflection(env, t))
        wrong.append(pretrain.wrong_reflection(env, t, right[-1], rng))
    assert len(failed) >= 10 and all(right), "env.plan gives a plan for every failed explorer trial"
    tasks = [t.task for t in failed]
    fixed = run_trials(make_env, tasks, llm, [[r] for r in right], trial=1, concurrency=4, examples=())
    misled = run_trials(make_env, tasks, llm, [[w] for w in wrong], trial=1, concurrency=4, examples=())
    n_fixed, n_misled = sum(t.success for t in fixed), sum(t.success for t in misled)
    assert n_fixed >= 0.9 * len(failed), (n_fixed, len(failed))
    assert n_misled <= 0.5 * n_fixed, (n_misled, n_fixed)
    # the plan is the memory's last reflection: an older wrong one before it does not matter
    both = run_trials(make_env, tasks, llm, [[w, r] for w, r in zip(wrong, right, strict=True)], trial=2,
                      concurrency=4, examples=())  # fmt: skip
    assert sum(t.success for t in both) >= 0.9 * len(failed)


def test_scripted_actors_serve_several_envs_and_build_actor():
    names = ["hotpotqa", "webshop"]
    factories = [lambda n=n: envs.make(n, "test", seed=0) for n in names]
    expert, explorer = ExpertLLM(*factories), ExplorerLLM(*factories)
    for make_env in factories:  # each prompt is answered on the env whose task it shows
        assert all(t.success for t in run_trials(make_env, range(5), expert, concurrency=2, examples=()))
        alone = run_trials(make_env, range(5), ExplorerLLM(make_env), examples=())
        assert run_trials(make_env, range(5), explorer, concurrency=2, examples=()) == alone
    with pytest.raises(ValueError, match="at least one env factory"):
        ExpertLLM()
    cfg = train.Config(actor="explorer", envs="hotpotqa,alfworld", seed=3)
    llm = train.build_actor(cfg, "cpu")
    assert type(llm) is ExplorerLLM and llm.seed == 3
    train.reseed_actor(llm, 11)
    assert llm.seed == 11
    for split in ("train", "test"):  # train.py rolls out on train tasks, eval.py on test tasks
        make_env = train.env_factory(cfg, "alfworld", split)
        [t] = run_trials(make_env, [2], llm, examples=())
        assert t.steps == pretrain.scripted_trial(make_env(), 2, llm.episode_rng("alfworld", 2)).steps
    assert type(train.build_actor(train.Config(actor="expert", envs="webshop"), "cpu")) is ExpertLLM
    with pytest.raises(ValueError, match="local, http, expert or explorer"):
        train.build_actor(train.Config(actor="oracle"), "cpu")
