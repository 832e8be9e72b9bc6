"""Lightweight offline text environments in the style of HotPotQA, ALFWorld and WebShop.

`make(name, split, seed, **options)` is the one entry point. By default it builds a generated world
(worlds/: one module per benchmark), which keeps its benchmark's interface, action language and scoring
and is generated from the seed, so that a run needs no download. HotPotQA can also read real data:
the official distractor-setting JSON or the live MediaWiki API; their adapters are at the end of
this file. ALFWorld can play the real games (source="alfworld": worlds/alfworld_real.py, an optional
extra), WebShop a running WebShop site (source=URL: worlds/webshop_real.py).
"""

import copy
import functools
import hashlib
import json
import random
import re
from typing import Protocol

import requests

from infra import http
from worlds.alfworld import ALFWorldEnv
from worlds.alfworld_real import RealALFWorldEnv  # needs the alfworld package only when it is built
from worlds.hotpotqa import HotpotQAEnv
from worlds.hotpotqa_world import QATask
from worlds.webshop import WebShopEnv
from worlds.webshop_real import RealWebShopEnv


class Env(Protocol):
    """What every environment offers: `len(env)` tasks, episodes of at most `max_steps` steps.

    reset(i) starts task i and returns the instruction and first observation; step(action) returns
    (observation, reward, done, info) with info["success"]. The return of an episode is the sum of its
    rewards.
    """

    name: str
    max_steps: int

    def __len__(self) -> int: ...

    def reset(self, i: int) -> str: ...

    def step(self, action: str) -> tuple[str, float, bool, dict]: ...


class ScriptedEnv(Env, Protocol):
    """What the generated worlds add: a scripted expert and explorer, plans, and episodes as text.

    expert() -> (thought, action) reads the hidden state and solves every task. explorer(rng, plan)
    -> (thought, action) is a memoryless agent that often fails its first trial for a reason visible
    in its trajectory, and follows `plan` when given one. plan(trajectory) is the plan that a good
    reflection on a failed trajectory states (None: nothing to fix), read from the trajectory's text and
    the current task's instruction. render(trajectory) is the episode as the actor's text. A trajectory
    is a list of (thought, action, observation) steps or of dicts with those keys. HotPotQA on real data
    (source=...) has no explorer() or plan(): they raise NotImplementedError.
    """

    def expert(self) -> tuple[str, str]: ...

    def explorer(self, rng: random.Random, plan: str | None = None) -> tuple[str, str]: ...

    def plan(self, trajectory) -> str | None: ...

    def render(self, trajectory) -> str: ...


_WORLDS = {"hotpotqa": HotpotQAEnv, "alfworld": ALFWorldEnv, "webshop": WebShopEnv}


def make(name: str, split: str = "train", seed: int = 0, **options) -> Env:
    """Build environment `name` ('hotpotqa', 'alfworld' or 'webshop') on the `split` tasks.

    `options` are the env class's (see its docstring); HotPotQA also takes the real-data options of
    `hotpotqa_options`; ALFWorld with source="alfworld" is RealALFWorldEnv's (data=PATH, the games of
    alfworld-download); WebShop with source=URL is RealWebShopEnv's.
    """
    if split not in ("train", "test"):
        raise ValueError(f"unknown split {split!r}: expected 'train' or 'test'")
    if name not in _WORLDS:
        raise ValueError(f"unknown environment {name!r}: expected one of {sorted(_WORLDS)}")
    if name == "hotpotqa":
        options = hotpotqa_options(**options)
    if name == "alfworld" and options.get("source") is not None:
        return RealALFWorldEnv(split=split, seed=seed, **options)
    if name == "webshop" and options.get("source") is not None:
        return RealWebShopEnv(split=split, seed=seed, **options)
    return _WORLDS[name](split=split, seed=seed, **options)


# --- the splits a run uses: train, test, and val (unseen train tasks to choose settings on) ---

# val: the train split's tasks from this id on. PPO samples the first len(train env) ids and pretrain.py
# the ones after those; tests/test_pretrain.py checks that both end before VAL_FIRST.
VAL_FIRST = 3000


def factory(name: str, split: str, seed: int = 0, n_val: int = 100, **options):
    """A factory of fresh `name` envs on `split`: train, test, or val (the train split grown to hold
    VAL_FIRST + n_val tasks; task_ids() gives the ids to run)."""
    if split == "val":
        if name == "hotpotqa" and "source" not in options:
            # names no model was trained on, as test's are: on the train split's names, which the
            # retrospector learned in pretraining, validation would overstate it
            options = {"names": 2, **options}
        template = _val_env(name, seed, json.dumps(options, sort_keys=True), VAL_FIRST + n_val)
        # an episode runner makes an env per concurrent episode: copies share the task list, read-only
        # (reset() rebinds every piece of episode state)
        return lambda: copy.copy(template)
    make(name, split, seed, **options)  # fail here, not in a worker thread, on a bad option
    return lambda: make(name, split, seed, **options)


@functools.lru_cache(maxsize=4)
def _val_env(name: str, seed: int, opts_json: str, n_tasks: int):
    """One generated val env per (env, seed, options, size): generating 3,000+ tasks takes seconds, and
    the scripted actor and eval.py both need them. Callers copy it, never step it."""
    return make(name, "train", seed, **{**json.loads(opts_json), "n_tasks": n_tasks})


def task_ids(split: str, n_env: int, n: int) -> list[int]:
    """The ids of the tasks to evaluate on `split` in an env of n_env tasks built by factory(): the first
    n on test (or train), those from VAL_FIRST on for val."""
    if split != "val":
        return list(range(min(n, n_env)))
    if n_env <= VAL_FIRST:
        raise ValueError(f"eval_split=val: the train split has {n_env} tasks, none from "
                         f"VAL_FIRST={VAL_FIRST} on (a data file too small for a validation slice?); "
                         "use eval_split=test")
    return list(range(VAL_FIRST, n_env))


def tasks_sha256(env, ids) -> str:
    """sha256 of the tasks `ids` of `env`, printed and recorded by eval.py so that two users can see
    that they ran the same tasks: the env's own task_list_sha256 (the real ALFWorld hashes its game
    files), else the hash of the tasks' instructions and first observations."""
    if hasattr(env, "task_list_sha256"):
        return env.task_list_sha256(ids)
    h = hashlib.sha256()
    for i in ids:
        h.update(env.reset(i).encode() + b"\0")
    return h.hexdigest()


# a plan's keys: an action with its argument (Search[X], click[Buy Now]), a product id with the verb
# that decides it (open B0.., not B0..), a numbered place not part of a price (drawer 2, cabinet 1-4),
# a look-alike warning (Use a mug, not a cup)
_PLAN_KEYS = re.compile(r"\w+\[[^\]]*\]|(?:\b(?:open|not) )?\bB0[A-Z0-9]{8}\b"
                        r"|\b[a-z]+ \d+(?:-\d+)?(?![\d.])|\bUse an? \w+, not an? \w+")


def plan_keys(plan: str) -> list[str]:
    """The parts of an env's plan a reflection must state to carry it, in order (see _PLAN_KEYS)."""
    return _PLAN_KEYS.findall(plan)


def right_plan(env, trajectory, reflection: str) -> bool | None:
    """Whether `reflection` states the plan the env reads off the failed `trajectory` (an
    actor.Trajectory on the task env is on): every key of env.plan, verbatim but for case. None when the
    env has no plans (real data) or its plan for this trajectory is None (nothing it can name to fix).
    A learning signal for PPO's reflections that needs no reward model: the generated worlds know the
    cause of each failure; it is logged, never trained on (the reward stays the change of return)."""
    if not hasattr(env, "plan"):
        return None
    try:
        plan = env.plan([s[:3] for s in trajectory.steps])
    except NotImplementedError:  # HotPotQA on real data
        return None
    if plan is None:
        return None
    text, keys = " ".join(reflection.split()).lower(), plan_keys(plan) or [" ".join(plan.split())]
    return all(k.lower() in text for k in keys)


def right_plans(make_env, trajectories, reflections) -> list:
    """right_plan of each (failed trajectory, reflection text or None) pair, on one env of make_env()
    reset to each trajectory's task; None for the pairs without a reflection, or all when the env has
    no plans (the real ALFWorld and WebShop: no env is reset, so no game is loaded, no page fetched)."""
    if all(r is None for r in reflections):
        return [None] * len(reflections)
    env = make_env()
    if not hasattr(env, "plan"):
        return [None] * len(reflections)
    out = []
    for t, r in zip(trajectories, reflections, strict=True):
        if r is None:
            out.append(None)
        else:
            env.reset(t.task)
            out.append(right_plan(env, t, r))
    return out


# --- HotPotQA's real data: the distractor-setting JSON and the MediaWiki API ---

WIKI_URL = "https://en.wikipedia.org/w/api.php"


def hotpotqa_options(source=None, questions=None, wiki_url=WIKI_URL, wiki_timeout=10.0, wiki_retries=3,
                     wiki_backoff=0.5, **options) -> dict:
    """HotpotQAEnv's options, with the real-data ones turned into its `load_source`.

    source: None (the generated world), a path to a HotPotQA distractor-setting JSON (each question
    searches its own context paragraphs), or 'wikipedia': questions from the JSON at `questions`,
    searched on the MediaWiki API at `wiki_url` (requests time out after `wiki_timeout` seconds; 429,
    5xx and connection errors are retried `wiki_retries` times as infra/http.py does, backing off from
    `wiki_backoff` seconds). The data is loaded only after HotpotQAEnv has checked its other options.
    """

    def load_source(n_tasks):
        if source == "wikipedia":
            if questions is None:
                raise ValueError("source='wikipedia' needs questions=<path to a HotPotQA-format JSON>")
            tasks = _load_hotpot_json(questions, n_tasks, with_context=False)
            return tasks, _MediaWiki(wiki_url, wiki_timeout, wiki_retries, wiki_backoff)
        return _load_hotpot_json(source, n_tasks, with_context=True), None

    if source is not None:
        options["load_source"] = load_source
    return {"source": source, **options}


def _load_hotpot_json(path: str, n_tasks: int | None, with_context: bool) -> list[QATask]:
    """HotPotQA records (distractor setting) -> tasks; a malformed record names file, index, _id, key."""
    with open(path, encoding="utf-8") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON: {e}") from e
    if not isinstance(data, list) or not data:
        raise ValueError(f"{path}: expected a non-empty JSON list of HotPotQA records")
    tasks = []
    for k, r in enumerate(data[:n_tasks]):
        where = f"{path}: record {k}" + (f" (_id {r['_id']!r})" if isinstance(r, dict) and "_id" in r else "")
        if not isinstance(r, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(r).__name__}")
        for key in ("_id", "question", "answer", "context")[: 4 if with_context else 3]:
            if key not in r:
                raise ValueError(f"{where}: missing key {key!r}")
        if not isinstance(r["question"], str) or not isinstance(r["answer"], str):
            raise ValueError(f"{where}: 'question' and 'answer' must be strings")
        pages = {} if with_context else None
        for j, para in enumerate(r.get("context", []) if with_context else []):
            if not (isinstance(para, list) and len(para) == 2 and isinstance(para[0], str)
                    and isinstance(para[1], list) and all(isinstance(s, str) for s in para[1])):
                raise ValueError(f"{where}: context[{j}] must be [title, [sentence, ...]]")
            pages.setdefault(para[0], [s.strip() for s in para[1] if s.strip()])
        gold = []
        for j, fact in enumerate(r.get("supporting_facts", [])):
            if not (isinstance(fact, list) and len(fact) == 2 and isinstance(fact[0], str)):
                raise ValueError(f"{where}: supporting_facts[{j}] must be [title, sentence index]")
            gold += [fact[0]] if fact[0] not in gold else []
        tasks.append(QATask(str(r["_id"]), r["question"], r["answer"], pages, gold))
    return tasks


class _MediaWiki:
    """ReAct's search over the live MediaWiki API: exact page extract, else the search hits."""

    HEADERS = {"User-Agent": "retroformer/0.1 (research code; https://arxiv.org/abs/2308.02151)"}

    def __init__(self, url: str, timeout: float, retries: int, backoff: float, max_backoff: float = 60.0):
        self.url, self.timeout, self.retries, self.cache = url, timeout, retries, {}
        self.backoff, self.max_backoff = backoff, max_backoff

    def _get(self, params: dict) -> dict:
        params = {**params, "format": "json"}
        send = lambda: requests.get(self.url, params=params, timeout=self.timeout, headers=self.HEADERS)
        return http.request(send, lambda r: r.json(), self._fatal, f"MediaWiki API {self.url} for {params}",
                            self.retries, self.backoff, self.max_backoff)

    def _fatal(self, r) -> http.ServiceError:
        hint = " (Wikipedia refuses clients it cannot identify by their User-Agent)" * (r.status_code == 403)
        return http.ServiceError(f"MediaWiki API {self.url} answered HTTP {r.status_code}{hint}: "
                                 f"{http.error_message(r)}")

    def search(self, entity: str):
        """(sentences of the page titled `entity` or None, up to 5 similar titles)."""
        if entity not in self.cache:
            params = {"action": "query", "prop": "extracts", "explaintext": 1, "redirects": 1}
            params["titles"] = entity
            found = self._get(params)
            if "query" not in found:
                raise http.ServiceError(f"MediaWiki API {self.url}: answer without 'query' for {params}: "
                                        f"{found}")
            text = "".join(p.get("extract", "") for p in found["query"].get("pages", {}).values()
                           if "missing" not in p and "invalid" not in p)
            if text.strip() and "may refer to:" not in text:  # a disambiguation page is a miss, as in ReAct
                self.cache[entity] = split_sentences(text), []
            else:
                hits = self._get({"action": "query", "list": "search", "srsearch": entity, "srlimit": 5})
                self.cache[entity] = None, [h["title"] for h in hits.get("query", {}).get("search", [])]
        return self.cache[entity]


def split_sentences(text: str) -> list[str]:
    """ReAct's sentence splitter: paragraphs on newlines, sentences on '. '."""
    out = []
    for para in (p.strip() for p in text.split("\n")):
        out += [s.strip().rstrip(".") + "." for s in para.split(". ") if s.strip()]
    return out
