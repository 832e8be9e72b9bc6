"""The HotPotQA world: HotPotQA (Yang et al. 2018) as ReAct's Wikipedia tool sees it (Yao et al. 2022,
wikienv.py). Search[entity] shows a page's first 5 sentences or "Could not find X. Similar: [...]",
Lookup[keyword] cycles through the page's sentences that contain the keyword, Finish[answer] ends the
episode with the normalised exact match as reward. The generated world (worlds/hotpotqa_world.py) gives
each task a small document store of fictional people, organisations and works with confusable names;
envs.make also loads real HotPotQA questions (a distractor-setting JSON, or the MediaWiki API) into the
same env.
"""

import difflib
import random
import re
import string
from collections import Counter

from worlds.episodes import render_trajectory
from worlds.hotpotqa_world import DIFFICULTY, NAME_STEMS, article, generate_task, similar_titles


def normalize_answer(s: str) -> str:
    """HotPotQA's answer normalisation: lowercase, no punctuation, no articles, single spaces."""
    s = "".join(ch for ch in s.lower() if ch not in set(string.punctuation))
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", s).split())


def answer_f1(prediction: str, gold: str) -> float:
    """HotPotQA's token F1; yes/no/noanswer only score when they match exactly."""
    pred, ref = normalize_answer(prediction), normalize_answer(gold)
    if (pred in ("yes", "no", "noanswer") or ref in ("yes", "no", "noanswer")) and pred != ref:
        return 0.0
    same = sum((Counter(pred.split()) & Counter(ref.split())).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred.split()), same / len(ref.split())
    return 2 * precision * recall / (precision + recall)


_ACTION = re.compile(r"^\s*(search|lookup|finish)\s*\[(.*)\]\s*$", re.IGNORECASE | re.DOTALL)
_INVALID = "Invalid action: {}. Valid actions are Search[<entity>], Lookup[<keyword>] and Finish[<answer>]."



def _parse_question(q: str):
    """(kind, attr, subject, people) read off a generated question; people: [(occupation, name)]."""
    people = re.findall(r"the ([a-z]+) ([A-Z][a-z]+ [A-Z][a-z]+)", q)
    if len(people) == 2:
        return ("country" if "country" in q else "first"), None, None, people
    m = re.search(r"'([^']+)'", q) or re.search(r"(?:founder of|founded) ([A-Z]\w+ [A-Z]\w+)", q)
    kind = "work" if m and m[0].startswith("'") else "org"
    return kind, ("city" if "city" in q or "birthplace" in q else "year"), m and m[1], []


def _searches(steps):
    """[(query, observation)] of the searches that reached a page, and all Similar-list titles seen."""
    pages, similar = [], []
    for action, obs in steps:
        m = _ACTION.match(action)
        if m and m[1].lower() == "search" and m[2].strip():
            if obs.startswith("Could not find"):
                similar += re.findall(r"'([^']*)'", obs.split("Similar:", 1)[-1])
            else:
                pages.append((m[2].strip(), obs))
    return pages, similar


class HotpotQAEnv:
    """HotPotQA with ReAct's Search/Lookup/Finish actions; reward = exact match of Finish[answer].

    Options: n_tasks (default 200 for train, 100 for test); difficulty 'easy' | 'medium' | 'hard':
    the share of generated tasks (0.2 / 0.6 / 1.0) holding a trap for a hasty agent: a namesake
    ranked above the right person, a nickname whose top search hit is another person, or an
    answer-shaped decoy in the first page of a bridge question. source: None (generated world), or
    the real-data source that `load_source` reads (envs.make builds it: a path to a HotPotQA
    distractor-setting JSON, or 'wikipedia'; split and seed are ignored, the data is used as given).
    load_source: n_tasks -> (tasks, search backend or None: None searches each task's own pages).
    n_sentences: sentences a search shows (ReAct: 5). max_steps: 6, as Reflexion's HotPotQA
    ReactAgent (hotpotqa_runs/agents.py). names (generated world): 0, the split's half of the name
    stems; 1 or 2, an extra inventory of names that neither split holds (tasks drawn from their own
    seeds, so not renamed copies of the split's).
    """

    name = "hotpotqa"

    def __init__(self, split="train", seed=0, n_tasks=None, difficulty="medium", source=None,
                 load_source=None, n_sentences=5, max_steps=6, names=0):
        if split not in ("train", "test"):
            raise ValueError(f"unknown split {split!r}: expected 'train' or 'test'")
        if difficulty not in DIFFICULTY:
            raise ValueError(f"unknown difficulty {difficulty!r}: expected one of {list(DIFFICULTY)}")
        if n_tasks is not None and n_tasks < 1:
            raise ValueError(f"n_tasks must be >= 1, got {n_tasks}")
        if isinstance(names, bool) or not isinstance(names, int) or names not in NAME_STEMS:
            raise ValueError(f"unknown names {names!r}: expected one of {list(NAME_STEMS)}")
        if names and source is not None:
            raise ValueError(f"names={names} picks names of the generated world; "
                             f"source={source!r} has its own")
        self.source, self.n_sentences, self.max_steps, self.wiki = source, n_sentences, max_steps, None
        if source is None:
            n = n_tasks or (200 if split == "train" else 100)
            p_trap, parity = DIFFICULTY[difficulty], int(split == "test")
            # task i depends only on (seed, split, i): n_tasks does not change the first tasks
            tag = f"/names{names}" if names else ""
            rngs = [random.Random(f"hotpotqa/{seed}/{split}/{i}{tag}") for i in range(n)]
            self.tasks = [generate_task(r, parity, p_trap, f"{split}{tag}-{i}", names)
                          for i, r in enumerate(rngs)]  # fmt: skip
        elif load_source is None:
            raise ValueError(f"source={source!r} needs load_source: build it with envs.make('hotpotqa', "
                             "source=...)")
        else:
            self.tasks, self.wiki = load_source(n_tasks)
        self.task, self.question, self.done, self.history, self.misses = None, None, True, [], {}

    def __len__(self) -> int:
        return len(self.tasks)

    def reset(self, i: int) -> str:
        if not 0 <= i < len(self.tasks):
            raise IndexError(f"hotpotqa task index {i} out of range: this split has {len(self.tasks)} tasks")
        self.task, self.index = self.tasks[i], i
        self.question, self.done, self.history, self.steps = self.task.question, False, [], 0
        self.page, self.lookup = None, None  # current page's sentences; [keyword, hits, next hit]
        return f"Answer with Search[entity], Lookup[keyword] and Finish[answer].\nQuestion: {self.question}"

    def step(self, action: str):
        if self.task is None or self.done:
            raise RuntimeError("hotpotqa episode is over (or never started): call reset(i) before step()")
        self.steps += 1
        m = _ACTION.match(action) if isinstance(action, str) else None
        reward, info = 0.0, {"success": False}
        if not m or not m[2].strip():
            obs = _INVALID.format(repr(action) if not m else f"{m[1]}[] needs an argument")
        elif m[1].lower() == "search":
            obs = self._search(m[2].strip())
        elif m[1].lower() == "lookup":
            obs = self._lookup(m[2].strip())
        else:
            prediction, gold = m[2].strip(), self.task.answer
            reward = float(normalize_answer(prediction) == normalize_answer(gold))
            obs = "Answer is CORRECT" if reward else "Answer is INCORRECT"
            self.done = True
            info.update(success=bool(reward), em=reward, f1=answer_f1(prediction, gold), answer=gold)
        if not self.done and self.steps >= self.max_steps:
            self.done = True
            info.update(em=0.0, f1=0.0, answer=self.task.answer, truncated=True)
        self.history.append((action, obs))
        info["steps"] = self.steps
        return obs, reward, self.done, info

    def _search(self, entity: str) -> str:
        self.lookup = None
        if self.wiki is not None:
            self.page, similar = self.wiki.search(entity)
        else:
            key = " ".join(entity.lower().split())
            title = next((t for t in self.task.pages if t.lower() == key), None)
            self.page = self.task.pages[title] if title else None
            if not title and (self.index, entity) not in self.misses:  # the same misses recur every trial
                self.misses[self.index, entity] = similar_titles(entity, self.task.pages)
            similar = self.misses.get((self.index, entity))
        if self.page is None:
            return f"Could not find {entity}. Similar: {similar}."
        return " ".join(self.page[: self.n_sentences])

    def _lookup(self, keyword: str) -> str:
        if self.page is None:
            return ("The last page Searched was not found, so you cannot Lookup a keyword in it. "
                    "Please try one of the similar pages given.")
        if self.lookup is None or self.lookup[0] != keyword:
            self.lookup = [keyword, [s for s in self.page if keyword.lower() in s.lower()], 0]
        _, hits, k = self.lookup
        if k >= len(hits):
            return "No more results."
        self.lookup[2] += 1
        return f"(Result {k + 1} / {len(hits)}) {hits[k]}"

    def expert(self):
        """Search the gold pages (hidden state), then Finish with the gold answer."""
        if self.task is None:
            raise RuntimeError("hotpotqa expert() needs a task: call reset(i) first")
        searched = {a for a, o in self.history if not o.startswith("Could not find")}
        todo = [t for t in self.task.gold_titles if f"Search[{t}]" not in searched]
        if todo and self.steps < self.max_steps - 1:
            return f"I need the page {todo[0]}.", f"Search[{todo[0]}]"
        return f"The pages I read say the answer is {self.task.answer}.", f"Finish[{self.task.answer}]"

    def _generated_only(self, what: str):
        if self.task is None:
            raise RuntimeError(f"hotpotqa {what}() needs a task: call reset(i) first")
        if self.source is not None:
            raise NotImplementedError(f"hotpotqa {what}() reads generated questions only (source=None), "
                                      f"not source={self.source!r}")

    def explorer(self, rng: random.Random, plan: str | None = None):
        """A hasty, memoryless agent: searches the names as written, takes the top hit, answers as soon as
        a value of the asked type shows. With a plan it searches the plan's Search[...] titles in order
        first (that is how a plan is followed), then answers from the pages it found."""
        self._generated_only("explorer")
        kind, attr, subject, people = _parse_question(self.question)
        pages, _ = _searches(self.history)
        planned = re.findall(r"Search\[([^\]]+)\]", plan or "")
        last_action, last_obs = self.history[-1] if self.history else ("", "")
        if last_obs.startswith("Could not find"):  # follow the top search hit
            hits = re.findall(r"'([^']*)'", last_obs.split("Similar:", 1)[-1])
            if hits:
                return f"There is no such page; the top hit is {hits[0]}.", f"Search[{hits[0]}]"
        targets = [subject] if subject else [name for _, name in people]
        if subject and pages:
            m = re.search(r"by the ([a-z]+) ([A-Z][a-z]+ [A-Z][a-z]+)", pages[0][1])
            targets += [m[2]] if m else []
            lead = pages[0][1].split(". ")[0]
            early = re.search(r"\b(?:in|from) ([A-Z][a-z]+)" if attr == "city" else r"\b(\d{4})\b", lead)
            if len(pages) == 1 and early and len(planned) < 2:  # the first page seems to answer it already
                return f"The {subject} page says {early[1]}, so that is the answer.", f"Finish[{early[1]}]"
        targets = planned + targets[len(planned):]
        if len(pages) < len(targets):
            t = targets[len(pages)]
            why = "Following my plan, I" if planned else rng.choice(["I need to", "Next I"])
            return f"{why} search {t}.", f"Search[{t}]"
        texts = [obs for _, obs in pages]
        if subject:
            m = re.search(r"born in ([A-Z][a-z]+) in (\d{4})", texts[-1]) if texts else None
            value = (m[1] if attr == "city" else m[2]) if m else "unknown"
            return f"The page says born in {value}, so the answer is {value}.", f"Finish[{value}]"
        (a, b), pat = [n for _, n in people], r"from ([A-Z][a-z]+)\." if kind == "country" else r"\((\d{4})-"
        va, vb = [(re.search(pat, t) or [None, "?"])[1] for t in texts[:2]]
        answer = ("yes" if va == vb else "no") if kind == "country" else (a if va < vb else b)
        return f"{a}: {va}; {b}: {vb}. So the answer is {answer}.", f"Finish[{answer}]"

    def plan(self, trajectory) -> str | None:
        """Diagnosis + plan for the next trial, read off a failed trajectory's text; None if it shows no
        wrong or missing page. Format: '<cause> Plan: Search[A], then Search[B], then answer.'"""
        self._generated_only("plan")
        steps = [(s["action"], s.get("observation", s.get("obs", ""))) if isinstance(s, dict) else s[-2:]
                 for s in trajectory]
        _, _, subject, people = _parse_question(self.question)
        pages, similar = _searches(steps)
        text, searches, causes = " ".join(o for _, o in steps), [], []
        if subject:
            lead = next((o for q, o in pages if q.lower() == subject.lower()), "")
            m = re.search(r"by the ([a-z]+) ([A-Z][a-z]+ [A-Z][a-z]+)", lead)
            if not m:
                return None
            people, searches = [(m[1], m[2])], [subject]
            pages = [(q, o) for q, o in pages if q.lower() != subject.lower()]
        base = lambda t: re.sub(r" \(.*\)$", "", t)
        # each page reached belongs to the asked person whose name is closest to its title
        near = lambda q, k: difflib.SequenceMatcher(None, base(q), people[k][1]).ratio()
        mine = lambda q: max(range(len(people)), key=lambda k: near(q, k))
        for k, (occ, name) in enumerate(people):
            visited = [(q, o) for q, o in pages if mine(q) == k]
            right = [q for q, o in visited if re.search(rf"was an? {occ} from", o)]
            hat = re.search(rf"Not to be confused with the {occ} ([A-Z][a-z]+ [A-Z][a-z]+)\.", text)
            title = right[0] if right else hat[1] if hat else f"{name} ({occ})"
            title = title if right or hat or title in similar else name
            if not visited:
                causes.append(f"I answered from the {subject} page without searching {name}." if subject
                              else f"I answered without searching {name}.")
            elif not right:
                wrong = visited[-1]
                occ2 = re.search(r"was an? ([a-z]+) from", wrong[1])
                is_a = article(occ2[1]) if occ2 else "another person"
                causes.append(f"{wrong[0]} is {is_a}, not the {occ} {name}.")
            searches.append(title)
        if not causes:
            return None
        return f"{' '.join(causes)} Plan: {', then '.join(f'Search[{s}]' for s in searches)}, then answer."

    def render(self, trajectory) -> str:
        return render_trajectory(f"Question: {self.question}", trajectory)
