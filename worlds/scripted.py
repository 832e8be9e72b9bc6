"""Scripted stand-ins for the actor: the environments' expert and explorer behind the LLM interface.

`ExpertLLM` answers what `env.expert()` would do in the state a prompt describes; `ExplorerLLM` what
the memoryless explorer does, or, with a reflection in the prompt's memory, how it follows that
reflection's plan (`explorer_step`). The offline default trains against `ExplorerLLM`: a retry
succeeds when the reflection states a right plan, which makes the reward of a reflection meaningful
without a language model as the actor.
"""

import collections
import functools
import json
import random
import re
import threading

import envs
from actor import STOP, Trajectory, parse_memory
from worlds import alfworld, webshop


@functools.cache
def few_shot_examples(env_name: str, n: int = 2, seed: int = 0) -> tuple[str, ...]:
    """The actor's few-shot examples: texts of the first n successful expert episodes on the train
    split of `env_name` (cached)."""
    env = envs.make(env_name, split="train", seed=seed)
    out = []
    for i in range(len(env)):
        if len(out) == n:
            break
        traj, done, info = Trajectory(env_name, i, 0, env.reset(i)), False, {}
        while not done:
            thought, action = env.expert()
            obs, reward, done, info = env.step(action)
            traj.steps.append((thought, action, obs, float(reward)))
        if info.get("success"):
            out.append(traj.text())
    if len(out) < n:
        raise RuntimeError(f"few_shot_examples: the {env_name} expert solved only {len(out)} train tasks")
    return tuple(out)



def explorer_step(env, rng: random.Random, plan: str | None, actions=()) -> tuple[str, str]:
    """env.explorer's next (thought, action) for an actor that follows `plan` (the last reflection in
    its memory; None: no memory) after taking `actions` in this episode. The rules of the scripted
    explorer actor, shared by pretrain.scripted_trial and ExplorerLLM:
    - WebShop: a plan its explorer cannot parse is followed like no plan at all, and so is one whose
      search found nothing that fits it (the actor went back to search): it then shops as it would
      without memory, rather than searching the same words until its steps run out;
    - ALFWorld: once every place the plan names that the room has (its first observation lists them)
      was visited (`go to X`), the actor falls back to its memoryless habits, and so it does at once
      when the plan names none: env.explorer's plan mode would tour every receptacle, so any plan,
      even a wrong one or one naming a 'drawer 11' the room lacks, would end in success."""
    if plan is not None and env.name == "webshop" and (
            webshop.PLAN_RE.search(plan) is None or "click[Back to Search]" in actions):
        plan = None
    if plan is not None and env.name == "alfworld":
        at, first = alfworld.parse_plan(plan)
        room = set(alfworld.receptacles(env.render([])))
        places = ({r for rs in at.values() for r in rs} | set(alfworld.parse_ranges(first))) & room
        visited = {m for a in actions for m in re.findall(r"^go to (\w+ \d+)$", a)}
        if places <= visited:
            plan = None
    return env.explorer(rng, plan=plan)


class ExpertLLM:
    """A scripted stand-in for the actor that answers what env.expert() would do in the state the
    prompt describes (it replays the prompt's actions on its own env). For plumbing tests and
    benchmarks: it proves that instruction, steps and parsing survive the whole actor path.

    make_envs: one or more env factories (e.g. each env's train and test split); a prompt is matched
    to the task whose instruction it holds and whose observations its replayed actions reproduce."""

    def __init__(self, *make_envs):
        if not make_envs:
            raise ValueError(f"{type(self).__name__}: give at least one env factory")
        self.make_envs = make_envs
        self.tasks = collections.defaultdict(list)  # first text -> (factory, task) pairs (texts can repeat)
        self._free, self._lock = {}, threading.Lock()  # factory -> envs reused by any thread
        for k, make_env in enumerate(make_envs):
            env = make_env()
            for i in range(len(env)):
                self.tasks[env.reset(i).rstrip("\n")].append((k, i))
            self._free[k] = [env]
        # last line of a first text -> those texts: finds the prompt's instruction in one pass over its
        # lines, not one search per task (thousands with eval.py's validation slice)
        self._by_last_line = collections.defaultdict(list)
        for text in self.tasks:
            self._by_last_line[text.rsplit("\n", 1)[-1]].append(text)

    def complete(self, prompts: list[str], max_tokens: int = 256, temperature: float = 0.0, stop=STOP):
        return [self.answer(p) for p in prompts]

    def answer(self, prompt: str) -> str:
        name = type(self).__name__
        tail = prompt.rsplit("(END OF EXAMPLES)", 1)[-1]
        pos, text, end = -1, "", 0  # the last instruction in the prompt (build_prompt ends it with "\n")
        for line in tail.split("\n"):
            end += len(line)
            for t in self._by_last_line.get(line, ()):
                at = end - len(t)
                if at >= 0 and tail.startswith(t, at) and (at, len(t)) > (pos, len(text)):
                    pos, text = at, t
            end += 1
        if pos < 0:
            raise ValueError(f"{name}: no task instruction of this env found in the prompt")
        trajectory = tail[pos + len(text) :]
        if re.search(r"^\[\d+ earlier steps elided", trajectory, re.M):
            raise ValueError(f"{name}: the prompt has elided steps; cannot replay the episode")
        actions = re.findall(r"^Action: (.*)$", trajectory, re.M)
        candidates = self.tasks[text]
        for n, (k, i) in enumerate(candidates):  # the task whose replayed observations are in the prompt
            with self._lock:
                env = self._free[k].pop() if self._free[k] else None
            try:
                env = env or self.make_envs[k]()
                env.reset(i)
                at = 0
                for a in actions:
                    at = trajectory.find(f"Action: {a}\nObservation: {env.step(a)[0]}\n", at)
                    if at < 0:
                        break
                if at >= 0 or n == len(candidates) - 1:
                    thought, action = self.next_step(env, i, actions, parse_memory(tail[:pos]))
                    return f" {thought}\nAction: {action}"
            finally:
                with self._lock:
                    self._free[k].append(env)

    def next_step(self, env, i: int, actions: list[str], reflections: list[str]) -> tuple[str, str]:
        """(thought, action) on task i, env in the state after `actions`, the prompt's memory shown."""
        return env.expert()


class ExplorerLLM(ExpertLLM):
    """A scripted stand-in that answers what the environments' explorer does when it obeys its memory:
    explorer_step with the last reflection of the prompt's memory as its plan (None: no memory), the
    rules of pretrain.scripted_trial. A trial after a reflection succeeds when the reflection is a good
    plan (and sometimes by luck): a baseline actor and the reward oracle of tests.

    Each episode draws from its own random.Random, seeded by (seed, env, task, the memory shown) and
    replayed with the prompt's actions, so that an episode equals scripted_trial(env, i,
    self.episode_rng(env.name, i, memory), memory) and answers do not depend on threads or call order.
    `reseed(seed)` (train.reseed_actor) gives other runs."""

    def __init__(self, *make_envs, seed: int = 0):
        super().__init__(*make_envs)
        self.seed = seed

    def reseed(self, seed: int):
        self.seed = seed

    def episode_rng(self, env_name: str, i: int, reflections=()) -> random.Random:
        return random.Random(f"explorer/{self.seed}/{env_name}/{i}/{json.dumps(list(reflections))}")

    def next_step(self, env, i, actions, reflections):
        rng, plan = self.episode_rng(env.name, i, reflections), (reflections[-1] if reflections else None)
        env.reset(i)
        for j, a in enumerate(actions):  # replay, drawing from rng as the explorer did at each step
            explorer_step(env, rng, plan, actions[:j])
            env.step(a)
        return explorer_step(env, rng, plan, actions)
