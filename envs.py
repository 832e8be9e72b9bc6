"""Lightweight offline text environments in the style of HotPotQA, ALFWorld and WebShop.

Each keeps its benchmark's interface, action language and scoring, and is generated from a seed,
so that a run needs no download. `make(name, split, seed, **options)` is the one entry point.
"""

import difflib
import json
import random
import re
import string
import time
import zlib
from collections import Counter
from dataclasses import dataclass

import requests

# === hotpotqa ===
# HotPotQA (Yang et al. 2018) as ReAct's Wikipedia tool sees it (Yao et al. 2022, wikienv.py):
# Search[entity] shows a page's first 5 sentences or "Could not find X. Similar: [...]",
# Lookup[keyword] cycles through the page's sentences that contain the keyword, Finish[answer] ends
# the episode with the normalised exact match as reward. The default world is generated: each task
# is a small document store of fictional people, organisations and works with confusable names.


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


def split_sentences(text: str) -> list[str]:
    """ReAct's sentence splitter: paragraphs on newlines, sentences on '. '."""
    out = []
    for para in (p.strip() for p in text.split("\n")):
        out += [s.strip().rstrip(".") + "." for s in para.split(". ") if s.strip()]
    return out


def render_trajectory(header: str, trajectory) -> str:
    """ReAct-style text of an episode: steps are (thought, action, obs), (action, obs) or dicts."""
    lines = [header]
    for k, step in enumerate(trajectory, 1):
        if isinstance(step, dict):
            step = (step.get("thought"), step["action"], step.get("observation", step.get("obs")))
        thought, action, obs = step if len(step) == 3 else (None, *step)
        if thought:
            lines.append(f"Thought {k}: {thought}")
        lines += [f"Action {k}: {action}", f"Observation {k}: {obs}"]
    return "\n".join(lines)


def rollout(env, i: int, policy):
    """Run task i with policy() -> (thought, action) until done; returns (trajectory, return, info)."""
    env.reset(i)
    trajectory, ret, done, info = [], 0.0, False, {}
    while not done:
        thought, action = policy()
        obs, reward, done, info = env.step(action)
        trajectory.append((thought, action, obs))
        ret += reward
    return trajectory, ret, info


# The generated world. Names are built from syllables; surname/city/org stems with an even index in
# the fixed enumeration belong to `train`, odd ones to `test`, so the splits share no entity.
_ONSETS = "b c d f g k l m n p r s t v z br dr gr tr".split()
_MIDS = "l r n m v d s t lv rv nd rl".split()
_stems = lambda onsets: [o + v + m + w for o in onsets for v in "aeiou" for m in _MIDS for w in "aeio"]
_STEMS = _stems(_ONSETS)
# Two more name inventories, from onsets the stems above never start with, so no name of either is a
# train or test name, and none of one is a name of the other. HotpotQAEnv(names=1 | 2) draws every
# stem from one of them, whole (not split by parity: a split never uses them by default).
# pretrain.py trains the retrospector on names=1 tasks too, so that it learns to copy names it has not
# seen (as test's) rather than recall the train split's; train.py validates on names=2 for the same reason.
_NAME_STEMS = {0: _STEMS, 1: _stems("h j w sk st pl fl sn".split()), 2: _stems("kl gl sp cr".split())}
_SURNAME_ENDS = ["na", "n", "ll", "ra", "no", "ni", "s", "nto"]
_CITY_ENDS = ["burg", "ford", "vik", "stad", "mont", "ssa"]
_ALIASES = [("Teodor", "Teo"), ("Alberta", "Alba"), ("Konstantin", "Kosta"), ("Magdalena", "Magda"),
            ("Valentin", "Vali"), ("Leopoldine", "Poldi"), ("Maximilian", "Max"), ("Friederike", "Frida")]
# short forms are also real first names, so a short name in a question does not give a trap away
_FIRST = "Ivo Lena Oskar Mira Tomas Edda Nils Vera Anton Ilse Pavel Greta".split() + [s for _, s in _ALIASES]
_COUNTRIES = "Estoria Valdoria Korland Merovia Tarsia Ulmark Brevonia Casimar".split()
_ORG_KINDS = {"chemist": ("chemical company", "Works"), "engineer": ("engineering firm", "Engineering"),
              "physician": ("clinic", "Clinic"), "architect": ("architecture studio", "Studio"),
              "botanist": ("botanical garden", "Gardens"), "astronomer": ("observatory", "Observatory")}
_WORK_KINDS = {"novelist": "novel", "poet": "poetry collection", "composer": "opera", "painter": "painting"}
_OCCUPATIONS = [*_ORG_KINDS, *_WORK_KINDS, "footballer", "sculptor", "diplomat", "jurist"]
_ADJ = "Glass Silent Iron Winter Hollow Amber Distant Crimson Sleeping Broken Golden Quiet".split()
_NOUN = "Orchard Harbour Lantern Garden Mirror River Tower Meadow Bridge Letter Station Forest".split()
_WORKS = [f"The {a} {n}" for a in _ADJ for n in _NOUN]
_DIFFICULTY = {"easy": 0.2, "medium": 0.6, "hard": 1.0}  # probability that a task holds a trap
_ACTION = re.compile(r"^\s*(search|lookup|finish)\s*\[(.*)\]\s*$", re.IGNORECASE | re.DOTALL)
_INVALID = "Invalid action: {}. Valid actions are Search[<entity>], Lookup[<keyword>] and Finish[<answer>]."


@dataclass
class QATask:
    """One question with its own document store (title -> sentences; None: ask Wikipedia)."""

    id: str
    question: str
    answer: str
    pages: dict | None
    gold_titles: list  # the pages the expert searches, in order
    trap: str = ""  # generated tasks: '', 'namesake', 'alias' or 'onehop'


def _similar(query: str, titles) -> list[str]:
    """Titles ranked like a search engine: string similarity (ignoring '(...)'), then store order."""
    q = " ".join(query.lower().split())
    score = lambda t: difflib.SequenceMatcher(None, q, re.sub(r" \(.*\)$", "", t.lower())).ratio()
    return sorted(titles, key=lambda t: -round(score(t), 3))[:5]


class _World:
    """Draws the fictional entities of one task from its split's half of the name stems (or an extra
    inventory of names: HotpotQAEnv's names option)."""

    def __init__(self, rng: random.Random, parity: int, names: int = 0):
        # the split's half of the built-in stems, or a whole extra inventory
        self.stems = _STEMS[parity::2] if names == 0 else _NAME_STEMS[names]
        self.rng, self.used = rng, set()

    def stem(self) -> str:
        while True:
            s = self.rng.choice(self.stems).capitalize()
            if s not in self.used:
                self.used.add(s)
                return s

    def person(self, occ: str, first: str | None = None, surname: str | None = None) -> dict:
        r = self.rng
        y0 = r.randrange(1800, 1940)
        return dict(first=first or r.choice(_FIRST), surname=surname or self.stem() + r.choice(_SURNAME_ENDS),
                    occ=occ, country=r.choice(_COUNTRIES), city=self.stem() + r.choice(_CITY_ENDS),
                    y0=y0, y1=y0 + r.randrange(45, 90), died=self.stem() + r.choice(_CITY_ENDS))


def _variant(rng: random.Random, surname: str) -> str:
    """A confusable surname: the last letter changed ('Corvina' -> 'Corvine')."""
    return surname[:-1] + rng.choice([c for c in "aeiouy" if c != surname[-1]])


def _article(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _person_page(p: dict, link: str = "", hatnote: str = "") -> list[str]:
    name, sur = f"{p['first']} {p['surname']}", p["surname"]
    page = [hatnote] if hatnote else []
    page += [f"{name} ({p['y0']}-{p['y1']}) was {_article(p['occ'])} from {p['country']}.",
             f"{sur} was born in {p['city']} in {p['y0']}.", link or f"{sur} studied in {p['died']}.",
             f"{sur} died in {p['died']} in {p['y1']}.", f"A street in {p['city']} is named after {sur}."]
    return page


def _generate_task(rng: random.Random, parity: int, p_trap: float, task_id: str, names: int = 0) -> QATask:
    """One two-hop question; with probability p_trap a trap that fools the memoryless explorer."""
    w = _World(rng, parity, names)
    kind = rng.choices(["org", "work", "first", "country"], weights=[3, 2, 3, 2])[0]
    trap = ""
    if rng.random() < p_trap:
        trap = rng.choice(["namesake", "alias"] + ["onehop"] * (kind in ("org", "work")))
    occs = list(_ORG_KINDS if kind == "org" else _WORK_KINDS if kind == "work" else _OCCUPATIONS)
    people = [w.person(rng.choice(occs))]
    if kind in ("first", "country"):
        people.append(w.person(rng.choice(_OCCUPATIONS)))
        while people[1]["y0"] == people[0]["y0"]:
            people[1]["y0"] += 1
        if kind == "country" and rng.random() < 0.5:
            people[1]["country"] = people[0]["country"]
    t = rng.randrange(len(people))  # the person the trap is about
    if trap == "alias":
        people[t]["first"], short = rng.choice(_ALIASES)
    names = [f"{p['first']} {p['surname']}" for p in people]
    titles, mentions, pages = list(names), list(names), {}  # mentions: how the text names them
    if trap in ("namesake", "alias"):
        decoy = w.person(rng.choice([o for o in _OCCUPATIONS if o != people[t]["occ"]]))
        p, d = people[t], decoy
        other = people[1 - t] if len(people) == 2 else None
        # the decoy's fact flips the answer the explorer will give
        d["y0"] = p["y0"] + rng.choice([-1, 1]) * rng.randrange(3, 30)
        if kind == "first":
            older = p["y0"] < other["y0"]
            d["y0"] = other["y0"] + (rng.randrange(1, 30) if older else -rng.randrange(1, 30))
        if kind == "country":
            same = p["country"] == other["country"]
            d["country"] = other["country"]
            while same and d["country"] == other["country"]:
                d["country"] = rng.choice(_COUNTRIES)
        d["y1"] = d["y0"] + rng.randrange(45, 90)
    if trap == "namesake":  # 'Alba Corvina' hits two pages; the more popular namesake ranks first
        d["first"], d["surname"] = p["first"], p["surname"]
        titles[t] = f"{names[t]} ({p['occ']})"
        d_title = f"{names[t]} ({d['occ']})"
        pages[d_title] = _person_page(d)
    elif trap == "alias":  # the text says 'Teo Mirela'; 'Teo Mireli' ranks above 'Teodor Mirela'
        mentions[t] = f"{short} {p['surname']}"
        # one changed letter costs less similarity than the 3+ letters a nickname drops
        d["first"], d["surname"] = short, _variant(rng, p["surname"])
        d_title = f"{short} {d['surname']}"
        pages[d_title] = _person_page(d, hatnote=f"Not to be confused with the {p['occ']} {names[t]}.")
    # confusable distractors: same surname stem with another ending, same surname with another first name
    for p in people:
        q = w.person(rng.choice(_OCCUPATIONS), first=p["first"])
        q["surname"] = _variant(rng, p["surname"])
        pages.setdefault(f"{q['first']} {q['surname']}", _person_page(q))
        q = w.person(rng.choice(_OCCUPATIONS), surname=p["surname"])
        pages.setdefault(f"{q['first']} {q['surname']}", _person_page(q))
    who = f"the {people[0]['occ']} {mentions[0]}"
    if kind in ("org", "work"):
        p, attr = people[0], rng.choice(["city", "year"])
        # the value a hasty reader takes from the first page of an 'onehop' task
        decoy_value = str(p["y0"] + rng.randrange(9, 40)) if attr == "year" else w.stem() + _CITY_ENDS[0]
        year, place = p["y0"] + rng.randrange(25, 45), p["died"]
        if kind == "org":
            kind_name, suffix = _ORG_KINDS[p["occ"]]
            subject = f"{w.stem()}{rng.choice(['x', 'ro', 'tal', 'co'])} {suffix}"
            lead = {"": f"{subject} is {_article(kind_name)} founded by {who}.",
                    "city": f"{subject} is {_article(kind_name)} founded in {decoy_value} by {who}.",
                    "year": f"{subject} is {_article(kind_name)} founded in {decoy_value} by {who}."}
            rest = [f"It was established in {year} in {place}.", f"It has {rng.randrange(2, 90) * 10} staff."]
            link = f"{p['surname']} founded {subject} in {year}."
            rel = rng.choice([f"the founder of {subject}", f"the person who founded {subject}"])
            other = rng.choice([x for _, x in _ORG_KINDS.values() if x != suffix])
            twin = f"{subject.split()[0]} {other}"
            pages[twin] = [f"{twin} is a company in {place}."]
        else:
            kind_name = _WORK_KINDS[p["occ"]]
            subject = _WORKS[2 * rng.randrange(len(_WORKS) // 2) + parity]
            twin = rng.choice([x for x in _WORKS[parity::2] if x[:9] == subject[:9] and x != subject])
            pages[twin] = [f"'{twin}' is a {rng.choice(list(_WORK_KINDS.values()))} from {w.stem()}stad."]
            lead = {"": f"'{subject}' is {_article(kind_name)} by {who}.",
                    "city": f"'{subject}' is {_article(kind_name)} written in {decoy_value} by {who}.",
                    "year": f"'{subject}' is a {decoy_value} {kind_name} by {who}."}
            rest = [f"It was first shown in {year} in {place}.", f"It is held in {w.stem()}ford."]
            link = f"{p['surname']} is best known for the {kind_name} '{subject}'."
            rel = rng.choice([f"the creator of the {kind_name} '{subject}'", f"the maker of '{subject}'"])
        pages[subject] = [lead[attr if trap == "onehop" else ""], *rest]
        pages[titles[0]] = _person_page(p, link=link)
        asks = {"city": ["In which city was {} born?", "What is the birthplace of {}?"],
                "year": ["In what year was {} born?", "When was {} born?"]}
        question = rng.choice(asks[attr]).format(rel)
        answer, gold_titles = p["city"] if attr == "city" else str(p["y0"]), [subject, titles[0]]
    else:
        for k in range(2):
            pages[titles[k]] = _person_page(people[k])
        who2 = f"the {people[1]['occ']} {mentions[1]}"
        if kind == "first":
            question = rng.choice([f"Who was born first, {who} or {who2}?",
                                   f"Which person was born earlier, {who} or {who2}?"])
            answer = mentions[0] if people[0]["y0"] < people[1]["y0"] else mentions[1]
        else:
            question = rng.choice([f"Were {who} and {who2} from the same country?",
                                   f"Did {who} and {who2} come from the same country?"])
            answer = "yes" if people[0]["country"] == people[1]["country"] else "no"
        gold_titles = titles
    # keep the trap sharp: the decoy is the top hit for the mention, no distractor is titled like a mention
    for m, title in zip(mentions, titles, strict=True):
        pages = {k: v for k, v in pages.items() if k == title or k.lower() != m.lower()}
        while trap in ("namesake", "alias") and m == mentions[t] and _similar(m, pages)[0] != d_title:
            assert _similar(m, pages)[0] != title, f"{task_id}: the decoy does not outrank {title}"
            del pages[_similar(m, pages)[0]]
    return QATask(task_id, question, answer, pages, gold_titles, trap)


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


_WIKI_URL = "https://en.wikipedia.org/w/api.php"


class _MediaWiki:
    """ReAct's search over the live MediaWiki API: exact page extract, else the search hits."""

    def __init__(self, url: str, timeout: float, retries: int, backoff: float):
        self.url, self.timeout, self.retries, self.backoff, self.cache = url, timeout, retries, backoff, {}

    def _get(self, params: dict) -> dict:
        err = None
        for attempt in range(self.retries + 1):
            if attempt:  # back off 1x, 2x, 4x ... on connection errors and 5xx answers
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                r = requests.get(self.url, params={**params, "format": "json"}, timeout=self.timeout,
                                 headers={"User-Agent": "retroformer/0.1 (research code)"})
            except (requests.ConnectionError, requests.Timeout) as e:
                err = repr(e)
                continue
            if r.status_code >= 500:
                err = f"HTTP {r.status_code}"
                continue
            if r.status_code != 200:
                raise RuntimeError(f"MediaWiki API {self.url} answered HTTP {r.status_code} for {params}")
            try:
                return r.json()
            except ValueError as e:
                msg = f"MediaWiki API {self.url} sent no JSON for {params}: {r.text[:80]}"
                raise RuntimeError(msg) from e
        raise RuntimeError(f"MediaWiki API {self.url} failed {self.retries + 1} times for {params}: {err}")

    def search(self, entity: str):
        """(sentences of the page titled `entity` or None, up to 5 similar titles)."""
        if entity not in self.cache:
            params = {"action": "query", "prop": "extracts", "explaintext": 1, "redirects": 1}
            params["titles"] = entity
            found = self._get(params)
            if "query" not in found:
                raise RuntimeError(f"MediaWiki API {self.url}: answer without 'query' for {params}: {found}")
            text = "".join(p.get("extract", "") for p in found["query"].get("pages", {}).values()
                           if "missing" not in p and "invalid" not in p)
            if text.strip() and "may refer to:" not in text:  # a disambiguation page is a miss, as in ReAct
                self.cache[entity] = split_sentences(text), []
            else:
                hits = self._get({"action": "query", "list": "search", "srsearch": entity, "srlimit": 5})
                self.cache[entity] = None, [h["title"] for h in hits.get("query", {}).get("search", [])]
        return self.cache[entity]


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


class HotpotQAEnv:
    """HotPotQA with ReAct's Search/Lookup/Finish actions; reward = exact match of Finish[answer].

    Options: n_tasks (default 200 for train, 100 for test); difficulty 'easy' | 'medium' | 'hard':
    the share of generated tasks (0.2 / 0.6 / 1.0) holding a trap for a hasty agent: a namesake
    ranked above the right person, a nickname whose top search hit is another person, or an
    answer-shaped decoy in the first page of a bridge question. source: None (generated world),
    a path to a HotPotQA distractor-setting JSON (each question searches its own context
    paragraphs; split and seed are ignored, the file is used as given), or 'wikipedia' (the live
    MediaWiki API at wiki_url, questions from the JSON at `questions`). n_sentences: sentences a
    search shows (ReAct: 5). max_steps: 6, as Reflexion's HotPotQA ReactAgent (hotpotqa_runs/agents.py).
    names (generated world): 0, the split's half of the name stems; 1 or 2, an extra inventory of names
    that neither split holds (tasks drawn from their own seeds, so not renamed copies of the split's).
    """

    name = "hotpotqa"

    def __init__(self, split="train", seed=0, n_tasks=None, difficulty="medium", source=None, questions=None,
                 wiki_url=_WIKI_URL, n_sentences=5, max_steps=6, wiki_timeout=10.0, wiki_retries=3,
                 wiki_backoff=0.5, names=0):
        if split not in ("train", "test"):
            raise ValueError(f"unknown split {split!r}: expected 'train' or 'test'")
        if difficulty not in _DIFFICULTY:
            raise ValueError(f"unknown difficulty {difficulty!r}: expected one of {list(_DIFFICULTY)}")
        if n_tasks is not None and n_tasks < 1:
            raise ValueError(f"n_tasks must be >= 1, got {n_tasks}")
        if isinstance(names, bool) or not isinstance(names, int) or names not in _NAME_STEMS:
            raise ValueError(f"unknown names {names!r}: expected one of {list(_NAME_STEMS)}")
        if names and source is not None:
            raise ValueError(f"names={names} picks names of the generated world; "
                             f"source={source!r} has its own")
        self.source, self.n_sentences, self.max_steps, self.wiki = source, n_sentences, max_steps, None
        if source is None:
            n = n_tasks or (200 if split == "train" else 100)
            p_trap, parity = _DIFFICULTY[difficulty], int(split == "test")
            # task i depends only on (seed, split, i): n_tasks does not change the first tasks
            tag = f"/names{names}" if names else ""
            rngs = [random.Random(f"hotpotqa/{seed}/{split}/{i}{tag}") for i in range(n)]
            self.tasks = [_generate_task(r, parity, p_trap, f"{split}{tag}-{i}", names)
                          for i, r in enumerate(rngs)]  # fmt: skip
        elif source == "wikipedia":
            if questions is None:
                raise ValueError("source='wikipedia' needs questions=<path to a HotPotQA-format JSON>")
            self.tasks = _load_hotpot_json(questions, n_tasks, with_context=False)
            self.wiki = _MediaWiki(wiki_url, wiki_timeout, wiki_retries, wiki_backoff)
        else:
            self.tasks = _load_hotpot_json(source, n_tasks, with_context=True)
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
                self.misses[self.index, entity] = _similar(entity, self.task.pages)
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
                is_a = _article(occ2[1]) if occ2 else "another person"
                causes.append(f"{wrong[0]} is {is_a}, not the {occ} {name}.")
            searches.append(title)
        if not causes:
            return None
        return f"{' '.join(causes)} Plan: {', then '.join(f'Search[{s}]' for s in searches)}, then answer."

    def render(self, trajectory) -> str:
        return render_trajectory(f"Question: {self.question}", trajectory)
# === end hotpotqa ===

# === alfworld ===
# ALFWorld (Shridhar et al., 2021) as plain text: a room of numbered receptacles ("cabinet 3"), objects
# with ids ("mug 1"), the six task types, and ALFWorld's TextWorld action language and replies.
_ALF_ROOMS = {  # receptacle type:min-max count; "*" = openable, starts closed
    "kitchen": "cabinet*:4-9 coffeemachine:1 countertop:1-3 diningtable:0-1 drawer*:3-6 fridge*:1 "
    "garbagecan:1 microwave*:1 shelf:0-3 sinkbasin:1 stoveburner:2-4 toaster:1",
    "livingroom": "armchair:0-2 cabinet*:0-4 coffeetable:1 drawer*:2-5 dresser:0-1 garbagecan:1 "
    "shelf:1-5 sidetable:1-2 sofa:1 tvstand:0-1",
    "bedroom": "armchair:0-1 bed:1 desk:1-2 drawer*:3-6 dresser:0-1 garbagecan:1 laundryhamper:0-1 "
    "safe*:0-1 shelf:1-5 sidetable:1-2",
    "bathroom": "bathtubbasin:1 cabinet*:2-5 countertop:1 drawer*:2-6 garbagecan:1 handtowelholder:0-1 "
    "shelf:0-3 sinkbasin:1-2 toilet:1 toiletpaperhanger:0-1 towelholder:0-1",
}
_ALF_OBJECTS = {
    "kitchen": "mug cup apple tomato potato egg bread lettuce knife butterknife fork spoon spatula ladle "
    "pan pot plate bowl saltshaker peppershaker dishsponge winebottle",
    "livingroom": "remotecontrol keychain creditcard newspaper pillow box statue vase watch laptop cellphone",
    "bedroom": "book pen pencil cellphone creditcard keychain alarmclock cd laptop pillow mug bowl",
    "bathroom": "soapbar soapbottle spraybottle toiletpaper candle cloth handtowel dishsponge tissuebox",
}
_ALF_LIKELY = {  # where one looks first for an object type, most likely first (the explorer's prior)
    "mug cup bowl plate": "cabinet countertop shelf diningtable coffeemachine desk",
    "apple tomato potato egg bread lettuce winebottle": "fridge countertop diningtable",
    "knife butterknife fork spoon spatula ladle": "drawer countertop diningtable",
    "pan pot": "stoveburner cabinet countertop",
    "saltshaker peppershaker dishsponge soapbottle spraybottle": "countertop cabinet shelf",
    "remotecontrol keychain creditcard watch cellphone": "coffeetable sidetable sofa desk dresser",
    "newspaper book pen pencil cd alarmclock laptop": "desk sidetable coffeetable bed dresser",
    "pillow": "sofa bed armchair",
    "box statue vase": "shelf coffeetable tvstand",
    "soapbar toiletpaper candle cloth handtowel tissuebox": "countertop cabinet toilet towelholder",
    "desklamp": "desk sidetable dresser",
}
_ALF_LIKELY = {t: v.split() for k, v in _ALF_LIKELY.items() for t in k.split()}
_ALF_LOOKALIKE = {}  # similar types a careless agent takes for one another (the explorer does)
for _a, _b in (p.split(":") for p in "mug:cup knife:butterknife fork:spoon pan:pot plate:bowl "
               "saltshaker:peppershaker pen:pencil soapbar:soapbottle cloth:handtowel".split()):
    _ALF_LOOKALIKE[_a], _ALF_LOOKALIKE[_b] = _b, _a
_ALF_APPLIANCE = {"clean": "sinkbasin", "heat": "microwave", "cool": "fridge"}
_ALF_STATE = {"clean": "clean", "heat": "hot", "cool": "cool"}
_ALF_KINDS = {  # task type: (rooms, object types allowed; None = any of the room's)
    "pick": ("kitchen livingroom bedroom bathroom", None),
    "look": ("livingroom bedroom", None),
    "clean": ("kitchen bathroom", "mug cup apple tomato potato egg lettuce knife butterknife fork spoon "
              "spatula ladle pan pot plate bowl cloth soapbar"),
    "heat": ("kitchen", "mug cup apple tomato potato egg bread plate bowl"),
    "cool": ("kitchen", "mug cup apple tomato potato egg bread lettuce pan pot plate bowl winebottle"),
    "two": ("kitchen livingroom bedroom bathroom", None),
}
_ALF_TARGETS = ("cabinet countertop diningtable drawer shelf garbagecan fridge microwave coffeemachine sofa "
                "armchair coffeetable sidetable dresser desk bed safe toilet bathtubbasin sinkbasin").split()
_ALF_IN = set("cabinet drawer fridge microwave safe garbagecan sinkbasin bathtubbasin coffeemachine".split())
_ALF_ACTIONS = ("go to <recep>, open <recep>, close <recep>, take <obj> from <recep>, put <obj> in/on "
                "<recep>, clean/heat/cool <obj> with <recep>, use <lamp>, examine <obj>, inventory, look, "
                "think: <thought>")
_ALF_TASK_RE = re.compile(
    r"Your task is to: (?:put (?:a (?:(clean|hot|cool) )?|(two) )(\w+) (?:in|on) (\w+)"
    r"|look at (\w+) under the desklamp)\."
)


def _alf_kind(word):
    return word.split()[0]  # "mug 1" -> "mug"


def _alf_list(items):
    """ALFWorld's listing: 'a mug 1, a cup 2, and a apple 1' ('a' even before a vowel, as ALFWorld)."""
    if not items:
        return "nothing"
    items = [f"a {x}" for x in items]
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + ", and " + items[-1]


def _alf_world(rng, difficulty):
    """One task: room, receptacles, placed objects and the goal. `difficulty` = chance that each needed
    object (and the desklamp) sits in an unlikely place, and that a look-alike decoy sits in a likely one."""
    room = rng.choice(list(_ALF_ROOMS))
    recs, closed = [], []
    for spec in _ALF_ROOMS[room].split():
        rtype, rng_ = spec.split(":")
        lo, hi = map(int, rng_.split("-")) if "-" in rng_ else (int(rng_), int(rng_))
        for n in range(1, rng.randint(lo, hi) + 1):
            recs.append(f"{rtype.rstrip('*')} {n}")
            if rtype.endswith("*"):
                closed.append(recs[-1])
    rtypes = {_alf_kind(r) for r in recs}
    kind = rng.choice([k for k, (rooms, _) in _ALF_KINDS.items() if room in rooms.split()])
    allowed = _ALF_KINDS[kind][1]
    objs = [o for o in _ALF_OBJECTS[room].split() if allowed is None or o in allowed.split()]
    obj = rng.choice(objs)
    banned = {_ALF_APPLIANCE.get(kind)} | set(_ALF_LIKELY[obj][:1])  # not the appliance / its first place
    goals = [t for t in _ALF_TARGETS if t in rtypes and t not in banned]
    target = None if kind == "look" else rng.choice(goals)
    places = [r for r in recs if _alf_kind(r) != target]  # never pre-place anything in the goal
    likely = [r for r in places if _alf_kind(r) in _ALF_LIKELY[obj]] or places
    unlikely = [r for r in places if r not in likely] or places
    contents = {r: [] for r in recs}
    counts = {}

    def place(otype, where):
        counts[otype] = counts.get(otype, 0) + 1
        contents[rng.choice(where)].append(f"{otype} {counts[otype]}")

    for _ in range(2 if kind == "two" else 1):
        place(obj, unlikely if rng.random() < difficulty else likely)
    decoy = _ALF_LOOKALIKE.get(obj)
    if decoy and decoy in objs and rng.random() < difficulty:
        place(decoy, likely)
    if kind == "look":
        lamp_likely = [r for r in places if _alf_kind(r) in _ALF_LIKELY["desklamp"]]
        lamp_other = [r for r in places if r not in lamp_likely and r not in closed]
        place("desklamp", lamp_other if rng.random() < difficulty else lamp_likely)
    others = [o for o in _ALF_OBJECTS[room].split() if o not in (obj, decoy)]
    for _ in range(rng.randint(5, 9)):
        place(rng.choice(others), [r for r in recs if _alf_kind(r) not in ("coffeemachine", "toaster")])
    for r in recs:
        rng.shuffle(contents[r])
    prep = "in" if target in _ALF_IN else "on"
    goal = {"pick": f"put a {obj} {prep} {target}", "look": f"look at {obj} under the desklamp",
            "two": f"put two {obj} {prep} {target}"}
    goal = goal.get(kind, f"put a {_ALF_STATE.get(kind)} {obj} {prep} {target}")
    text = (f"You are in the middle of a room. Looking quickly around you, you see {_alf_list(recs)}.\n"
            f"Your task is to: {goal}.")
    return {"text": text, "recs": recs, "closed": frozenset(closed), "contents": contents,
            "task": (kind, obj, target)}


def _alf_ranges(recs):
    """['drawer 1', 'drawer 2', 'drawer 3', 'shelf 2'] -> 'drawer 1-3, shelf 2' (ReAct: 'drawer (1-3)')."""
    out = []
    for r in recs:
        t, n = r.split()
        if out and out[-1][0] == t and out[-1][2] == int(n) - 1:
            out[-1][2] = int(n)
        else:
            out.append([t, int(n), int(n)])
    return ", ".join(f"{t} {a}" if a == b else f"{t} {a}-{b}" for t, a, b in out)


def _alf_unrange(text):
    """Inverse of `_alf_ranges`."""
    return [f"{t} {n}" for t, a, b in re.findall(r"(\w+) (\d+)(?:-(\d+))?", text)
            for n in range(int(a), int(b or a) + 1)]


def _alf_recs(text):
    """The receptacles that a task's first observation (the first line of `text`) lists."""
    return re.findall(r"a (\w+ \d+)", text.split("\n", 1)[0])


def _alf_parse_plan(plan):
    """A plan's facts: {type: [recs]} from 'The mug is at drawer 2.' and the 'Search a, b first.' list."""
    at = {}
    for otype, rec in re.findall(r"(?:The|A|Another) (\w+) is at (\w+ \d+)", plan):
        at.setdefault(otype, []).append(rec)
    m = re.search(r"Search (.+?) first", plan)
    return at, (m[1] if m else "")


class ALFWorldEnv:
    """Generated ALFWorld households. Options: `n_tasks` (134, the size of ALFWorld's unseen split that
    Reflexion and Retroformer evaluate on), `difficulty` in [0, 1] (0.5: chance that each needed object
    or the desklamp is hidden in an unlikely place, and that a look-alike decoy such as a cup for a mug
    lies in a likely one), `max_steps` (50 as in Reflexion's ALFWorld runs; lower it for tiny models)."""

    name = "alfworld"

    def __init__(self, split="train", seed=0, n_tasks=134, difficulty=0.5, max_steps=50):
        if split not in ("train", "test"):
            raise ValueError(f"unknown split {split!r}: expected 'train' or 'test'")
        if not (isinstance(n_tasks, int) and n_tasks > 0):
            raise ValueError(f"n_tasks must be a positive int, got {n_tasks!r}")
        if not (isinstance(difficulty, (int, float)) and 0 <= difficulty <= 1):
            raise ValueError(f"difficulty must be a number in [0, 1], got {difficulty!r}")
        if not (isinstance(max_steps, int) and max_steps > 0):
            raise ValueError(f"max_steps must be a positive int, got {max_steps!r}")
        # Reflexion's alfworld_runs/alfworld_trial.py stops an episode after ~50 actions (`cur_step < 49`).
        self.max_steps, self.split = max_steps, split
        self.tasks, k = [], 0
        while len(self.tasks) < n_tasks:  # one seeded stream; the CRC parity of a world sets its split,
            world = _alf_world(random.Random(f"alfworld/{seed}/{k}"), difficulty)  # so splits never overlap
            k += 1
            if zlib.crc32(repr(sorted(world["contents"].items())).encode() + world["text"].encode()) % 2 == (
                split == "test"
            ):
                self.tasks.append(world)
        self._task = None

    def __len__(self):
        return len(self.tasks)

    def reset(self, i):
        if not (isinstance(i, int) and 0 <= i < len(self.tasks)):
            raise IndexError(f"task index {i!r} out of range for the {len(self.tasks)} {self.split} tasks")
        w = self.tasks[i]
        self._world, self._task, self._first_obs = w, w["task"], w["text"]
        self._contents = {r: list(objs) for r, objs in w["contents"].items()}
        self._closed = set(w["closed"])
        self._loc = self._held = None
        self._objstate, self._lamps_on = {}, set()
        self._steps, self._done = 0, False
        self._searched, self._used, self._new_subgoal = set(), set(), True  # what the explorer remembers
        return self._first_obs

    # --- dynamics ---
    def _visible(self, rec):
        return rec == self._loc and rec not in self._closed

    def _describe(self, rec):
        if rec in self._closed:
            return f"The {rec} is closed."
        if rec in self._world["closed"]:
            return f"The {rec} is open. In it, you see {_alf_list(self._contents[rec])}."
        return f"On the {rec}, you see {_alf_list(self._contents[rec])}."

    def _act(self, a):
        recs, here, held = self._world["recs"], self._loc, self._held
        if a.startswith("think:"):
            return "OK."
        if a == "inventory":
            return f"You are carrying: a {held}." if held else "You are not carrying anything."
        if a == "look":
            return f"You are facing the {here}." if here else self._first_obs.split("\n")[0]
        m = re.fullmatch(r"(go to|open|close|use|examine) (\w+ \d+)", a)
        if m and m[2] in recs:
            verb, rec = m[1], m[2]
            if verb == "go to":
                self._loc = rec
                if rec not in self._closed:
                    self._searched.add(rec)
                return self._describe(rec)  # as Reflexion shows it: "You arrive at loc 5. " is cut
            if verb == "open" and rec == here and rec in self._closed:
                self._closed.discard(rec)
                self._searched.add(rec)
                return f"You open the {rec}. {self._describe(rec)}"
            if verb == "close" and rec == here and rec in self._world["closed"] and rec not in self._closed:
                self._closed.add(rec)
                return f"You close the {rec}."
            if verb == "examine" and rec == here:
                return self._describe(rec)
            return "Nothing happens."
        if m and (m[2] == held or (here and self._visible(here) and m[2] in self._contents[here])):
            obj = m[2]
            if m[1] == "use" and _alf_kind(obj) == "desklamp":
                self._lamps_on.add(obj)
                self._used.add(obj)
                self._new_subgoal = True
                return f"You turn on the {obj}."
            if m[1] == "examine":
                state = " ".join(sorted(self._objstate.get(obj, ()))) or "normal"
                return f"This is a {state} {obj}."
            return "Nothing happens."
        m = re.fullmatch(r"take (\w+ \d+) from (\w+ \d+)", a)
        if m:
            obj, rec = m[1], m[2]
            if held or not self._visible(rec) or obj not in self._contents[rec] or obj.startswith("desklamp"):
                return "Nothing happens."
            self._contents[rec].remove(obj)
            self._held, self._new_subgoal = obj, True
            self._searched.clear()
            return f"You pick up the {obj} from the {rec}."
        m = re.fullmatch(r"put (\w+ \d+) (?:in/on|in|on) (\w+ \d+)", a)
        if m:
            obj, rec = m[1], m[2]
            if obj != held or not self._visible(rec):
                return "Nothing happens."
            self._contents[rec].append(obj)
            self._held, self._new_subgoal = None, True
            self._used.add(obj)
            self._searched.clear()
            return f"You put the {obj} in/on the {rec}."
        m = re.fullmatch(r"(clean|heat|cool) (\w+ \d+) with (\w+ \d+)", a)
        if m:
            verb, obj, rec = m[1], m[2], m[3]
            if obj != held or rec != here or _alf_kind(rec) != _ALF_APPLIANCE[verb]:
                return "Nothing happens."
            states = self._objstate.setdefault(obj, set())
            states -= {"hot", "cool"}  # heating undoes cooling and vice versa
            states.add(_ALF_STATE[verb])
            self._new_subgoal = True
            return f"You {verb} the {obj} using the {rec}."
        if m is None and re.fullmatch(r"(go to|open|close|use|examine|take|put|clean|heat|cool) .*", a):
            return "Nothing happens."
        return f"Nothing happens. Valid actions: {_ALF_ACTIONS}."

    def _goal_met(self):
        kind, obj, target = self._task
        if kind == "look":
            lit = self._loc is not None and any(o in self._lamps_on for o in self._contents[self._loc])
            return lit and self._held is not None and _alf_kind(self._held) == obj
        state = _ALF_STATE.get(kind)
        n = sum(_alf_kind(o) == obj and (state is None or state in self._objstate.get(o, ()))
                for r in self._world["recs"] if _alf_kind(r) == target for o in self._contents[r])
        return n >= (2 if kind == "two" else 1)

    def step(self, action):
        if self._task is None:
            raise RuntimeError("call reset(i) before step()")
        if self._done:
            raise RuntimeError("the episode is over (done=True): call reset(i) to start a new one")
        if not isinstance(action, str):
            raise TypeError(f"action must be a str, got {type(action).__name__}")
        self._steps += 1
        self._new_subgoal = False
        obs = self._act(" ".join(action.lower().split()).strip(">. "))
        success = self._goal_met()
        self._done = success or self._steps >= self.max_steps
        return obs, float(success), self._done, {"success": success, "steps": self._steps}

    # --- policies ---
    def _thought(self, text):
        return text if self._new_subgoal else ""

    def _finish(self):
        """Shared last leg once the right object is held: clean/heat/cool it, then put it in the target."""
        kind, _, target = self._task
        held, here = self._held, self._loc
        if kind in _ALF_APPLIANCE and _ALF_STATE[kind] not in self._objstate.get(held, ()):
            app = next(r for r in self._world["recs"] if _alf_kind(r) == _ALF_APPLIANCE[kind])
            thought = self._thought(f"Now I {kind} the {held} with the {app}.")
            return thought, (f"go to {app}" if here != app else f"{kind} {held} with {app}")
        dest = next(r for r in self._world["recs"] if _alf_kind(r) == target)
        thought = self._thought(f"Now I put the {held} in/on the {dest}.")
        if here != dest:
            return thought, f"go to {dest}"
        return thought, (f"open {dest}" if dest in self._closed else f"put {held} in/on {dest}")

    def expert(self):
        """Scripted expert: goes straight to the needed object (hidden state) and finishes the task."""
        kind, obj, target = self._task
        here, held = self._loc, self._held
        if held and _alf_kind(held) != obj:  # recover from another policy's wrong pick: put it down
            spot = here if here and self._visible(here) and _alf_kind(here) != target else next(
                r for r in self._world["recs"] if r not in self._world["closed"] and _alf_kind(r) != target)
            return "", (f"put {held} in/on {spot}" if spot == here else f"go to {spot}")
        want = "desklamp" if kind == "look" and held else obj
        if held and want != "desklamp":
            return self._finish()
        rec = next(r for r in self._world["recs"] if _alf_kind(r) != target
                   for o in self._contents[r] if _alf_kind(o) == want)
        thought = self._thought(f"The {want} is at {rec}.")
        if self._loc != rec:
            return thought, f"go to {rec}"
        if rec in self._closed:
            return thought, f"open {rec}"
        o = next(o for o in self._contents[rec] if _alf_kind(o) == want)
        return thought, (f"use {o}" if want == "desklamp" else f"take {o} from {rec}")

    def explorer(self, rng, plan=None):
        """Memoryless heuristic: tours receptacles, likely places for the object type first (fixed order),
        opening closed ones; takes the first object of the wanted type - or of a look-alike (a cup for a
        mug) - that it sees; forgets sightings of other things. With `plan` (from `plan()`), it follows the
        plan instead: planned places first, 'Search ... first' places next, and only the exact type."""
        kind, obj, target = self._task
        at, first = _alf_parse_plan(plan) if plan else ({}, "")
        lamp = kind == "look" and self._held is not None
        if self._held and not lamp:
            return self._finish()
        want = "desklamp" if lamp else obj
        accept = {want} if plan or lamp or kind == "look" else {want, _ALF_LOOKALIKE.get(want, want)}
        if lamp:
            thought = self._thought("Now I look for a desklamp.")
        elif not self._used:
            thought = self._thought(rng.choice(["I need a {}.", "First I look for a {}."]).format(obj))
        else:
            thought = self._thought(f"The task is not complete yet. I need another {obj}.")
        here, recs = self._loc, self._world["recs"]
        if here and _alf_kind(here) != target and self._visible(here):
            for o in self._contents[here]:
                if _alf_kind(o) in accept and o not in self._used:
                    return thought, (f"use {o}" if lamp else f"take {o} from {here}")
        if here in self._closed and here not in self._searched and _alf_kind(here) != target:
            return thought, f"open {here}"
        prior = [t for t in _ALF_LIKELY[want] if any(_alf_kind(r) == t for r in recs)]
        # never the target itself (a pillow's only likely place, bed, is also where it must go)
        likely = sorted((r for r in recs if _alf_kind(r) in prior and _alf_kind(r) != target),
                        key=lambda r: prior.index(_alf_kind(r)))  # fmt: skip
        if plan:
            tour = at.get(want, []) + _alf_unrange(first) + likely + recs
        else:  # only where it believes the thing is; once all are checked it goes round them again
            tour = likely or recs
        tour = [r for r in dict.fromkeys(tour) if r in recs and _alf_kind(r) != target]
        todo = [r for r in tour if r not in self._searched and r != here]
        if not todo and here in tour:
            todo = tour[tour.index(here) + 1 :] + tour[: tour.index(here)]
        if not todo:
            return thought, ("look" if here in tour else f"go to {tour[0]}")
        return thought, f"go to {todo[0]}"

    def plan(self, trajectory):
        """The plan for the next trial, read from the trajectory's text only (what was seen where):
        'The mug is at drawer 2.' / 'A mug is at ... Another mug is at ...' / 'The desklamp is at desk 1.',
        'Use a mug, not a cup.' if a look-alike was taken, 'Search x 1, y 2 first.' for places never
        checked when a needed object was not seen; None if the text reveals nothing."""
        text = trajectory if isinstance(trajectory, str) else self.render(trajectory)
        task = _ALF_TASK_RE.search(text)
        if task is None:
            return None
        two, obj, target = task[2] is not None, task[3] or task[5], task[4]
        seen, checked = {}, set()
        sightings = r"(?:On the (\w+ \d+), you see|The (\w+ \d+) is open\. In it, you see) ([^.]*)\."
        for m in re.finditer(sightings, text):
            checked.add(m[1] or m[2])
            for o in re.findall(r"a (\w+ \d+)", m[3]):
                seen.setdefault(o, m[1] or m[2])
        found = [r for o, r in seen.items() if _alf_kind(o) == obj and _alf_kind(r) != target]
        clauses = [f"{'A' if i == 0 else 'Another'} {obj} is at {r}." if two else f"The {obj} is at {r}."
                   for i, r in enumerate(found[: 2 if two else 1])]
        missing = len(found) < (2 if two else 1)
        if task[5]:
            lamps = [r for o, r in seen.items() if _alf_kind(o) == "desklamp"]
            clauses += [f"The desklamp is at {lamps[0]}."] if lamps else []
            missing = missing or not lamps
        decoy = _ALF_LOOKALIKE.get(obj)
        if decoy and re.search(rf"You pick up the {decoy} \d+", text):
            clauses.append(f"Use a {obj}, not a {decoy}.")
        if missing:
            recs = _alf_recs(text)
            unchecked = [r for r in recs if r not in checked and _alf_kind(r) != target]
            clauses += [f"Search {_alf_ranges(unchecked)} first."] if unchecked else []
        return " ".join(clauses) or None

    def render(self, trajectory, first_obs=None):
        """An episode as ALFWorld's ReAct text: first observation (default: the current task's), then
        '> action' / observation lines; a thought shows as ReAct's '> think: ...' / 'OK.'."""
        lines = [self._first_obs if first_obs is None else first_obs]
        for thought, action, obs in episode_steps(trajectory):  # episode_steps: webshop section
            lines += [f"> think: {thought}\nOK."] if thought else []
            lines.append(f"> {action}\n{obs}")
        return "\n".join(lines)
# === end alfworld ===

# === webshop ===
# WebShop (Yao et al., 2022) in the text mode that ReAct, Reflexion and Retroformer drive: read the
# instruction, search[...], click[...] a result, its options and Buy Now; scored by WebShop's get_reward.
# Each task has its own small generated shop (one category's products and a few from other categories),
# so whether the top search result satisfies the instruction is set by construction (`difficulty`).

WEBSHOP_MAX_STEPS = 15  # Reflexion's webshop_trial.py runs `for i in range(15)`; Retroformer reuses it
WEBSHOP_PAGE_SIZE = 3  # ReAct's/Reflexion's text env shows only the first 3 products of a results page
WEBSHOP_EXPLORER_SLIP = 0.1  # chance the memoryless explorer takes an option's first value, not the asked one

_WS_COLORS = ("black", "white", "navy", "red", "grey", "pink", "green", "beige", "blue", "purple")
_WS_SIZES = ("small", "medium", "large", "x-large", "xx-large")
_WS_OUNCES = ("8 ounce", "12 ounce", "16 ounce", "24 ounce", "32 ounce")
# (product type, 6 attributes, option type -> values, price range in dollars)
_WS_CATEGORIES = (
    ("shower cap", ("waterproof", "reusable", "clear", "long", "elastic", "quick-dry"),
     {"color": _WS_COLORS}, (5, 25)),
    ("deodorant", ("aluminum-free", "natural", "unscented", "vegan", "sensitive", "travel-size"),
     {"scent": ("citrus", "lavender", "ginger", "coconut", "vanilla"),
      "size": ("2 ounce", "3 ounce", "2 pack")}, (6, 30)),
    ("shampoo", ("sulfate-free", "organic", "paraben-free", "moisturizing", "volumizing", "vegan"),
     {"size": _WS_OUNCES}, (8, 40)),
    ("hair dryer", ("ionic", "lightweight", "foldable", "quiet", "ceramic", "fast-drying"),
     {"color": _WS_COLORS}, (20, 90)),
    ("running shoes", ("lightweight", "breathable", "non-slip", "cushioned", "waterproof", "wide"),
     {"size": ("7", "7.5", "8", "8.5", "9", "9.5", "10", "11"), "color": _WS_COLORS}, (30, 120)),
    ("t-shirt", ("cotton", "slim-fit", "short-sleeve", "v-neck", "moisture-wicking", "crew-neck"),
     {"size": _WS_SIZES, "color": _WS_COLORS}, (8, 35)),
    ("hoodie", ("fleece", "zip-up", "oversized", "pullover", "cotton", "lightweight"),
     {"size": _WS_SIZES, "color": _WS_COLORS}, (20, 60)),
    ("socks", ("cotton", "cushioned", "moisture-wicking", "no-show", "athletic", "compression"),
     {"size": ("small", "medium", "large"), "color": _WS_COLORS}, (8, 30)),
    ("coffee mug", ("ceramic", "insulated", "dishwasher-safe", "microwave-safe", "stainless", "leak-proof"),
     {"size": _WS_OUNCES[:3], "color": _WS_COLORS}, (8, 35)),
    ("water bottle", ("bpa-free", "insulated", "stainless", "leak-proof", "lightweight", "collapsible"),
     {"size": _WS_OUNCES[2:], "color": _WS_COLORS}, (10, 45)),
    ("desk lamp", ("dimmable", "led", "usb", "rechargeable", "touch-control", "eye-caring"),
     {"color": _WS_COLORS}, (15, 70)),
    ("bed sheets", ("microfiber", "deep-pocket", "cooling", "breathable", "wrinkle-free", "cotton"),
     {"size": ("twin", "full", "queen", "king"), "color": _WS_COLORS}, (20, 90)),
    ("candle", ("soy", "scented", "long-lasting", "natural", "lead-free", "handmade"),
     {"scent": ("citrus", "lavender", "vanilla", "cedar", "rose")}, (8, 40)),
    ("phone case", ("shockproof", "slim", "clear", "magnetic", "glitter", "rugged"),
     {"model": ("iphone 13", "iphone 14", "iphone 15", "galaxy s23", "pixel 8"), "color": _WS_COLORS},
     (6, 30)),
    ("wireless earbuds", ("noise-cancelling", "waterproof", "bluetooth", "rechargeable", "sports", "compact"),
     {"color": _WS_COLORS}, (20, 150)),
    ("backpack", ("waterproof", "lightweight", "anti-theft", "laptop", "usb", "travel"),
     {"color": _WS_COLORS}, (20, 80)),
    ("yoga mat", ("non-slip", "thick", "eco-friendly", "foldable", "extra-large", "lightweight"),
     {"size": ("4mm", "6mm", "8mm"), "color": _WS_COLORS}, (15, 60)),
    ("dog leash", ("reflective", "retractable", "padded", "heavy-duty", "nylon", "hands-free"),
     {"size": ("small", "medium", "large"), "color": _WS_COLORS}, (8, 40)),
)
_WS_TAILS = ("for Women", "for Men", "Unisex", "Premium Quality", "Gift Idea", "New Version", "Everyday Use",
             "Classic Edition", "Deluxe", "Original")
_WS_SYLLABLES = ("ka", "lo", "mi", "zen", "vo", "ra", "tu", "be", "qui", "no", "sa", "fi", "dor", "pex")
_WS_LEADS = ("i need", "i am looking for", "i want to buy", "find me", "get me")
_WS_REVIEWS = ("works as described", "good value for the price", "arrived quickly", "would buy again")


def _ws_tokens(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+(?:[-.][a-z0-9]+)*", text.lower())


def _ws_product(rng, category, attrs, options, price, boost, used) -> dict:
    """A product of `category`; `boost` repeats the type in the title (keyword stuffing ranks it higher)."""
    ctype = category[0]
    asin = None
    while asin is None or asin in used:  # a fresh id, unique within the shop
        asin = "B0" + "".join(rng.choices("ABCDEFGHJKLMNPQRSTUVWXYZ0123456789", k=8))
    used.add(asin)
    brand = (rng.choice(_WS_SYLLABLES) + rng.choice(_WS_SYLLABLES)).title()
    words = " ".join(a.title() for a in rng.sample(list(attrs), len(attrs)))
    tail = f", {ctype.title()} {rng.choice(_WS_TAILS)}" if boost else f" {rng.choice(_WS_TAILS)}"
    title = f"{brand} {words} {ctype.title()}{tail}"
    tf = {}
    for t in _ws_tokens(title):
        tf[t] = tf.get(t, 0) + 1
    return {"asin": asin, "type": ctype, "brand": brand, "attrs": tuple(attrs), "options": options,
            "price": round(price, 2), "title": title, "tf": tf, "rating": rng.choice(("N.A.", "4.0", "4.5")),
            "review": rng.choice(_WS_REVIEWS)}


def _ws_search(shop: list, query: str) -> list:
    """Rank by term overlap, each query term counting up to twice per title; ties keep listing order."""
    q = set(_ws_tokens(query))
    scored = [(-sum(min(p["tf"].get(t, 0), 2) for t in q), j, p) for j, p in enumerate(shop)]
    return [p for s, _, p in sorted(scored, key=lambda x: x[:2]) if s < 0]


def _ws_reward(product: dict, goal: dict, chosen: dict) -> tuple[float, dict]:
    """WebShop's get_reward (princeton-nlp/WebShop, web_agent_site/engine/goal.py): r = r_type *
    (|attributes matched| + |options matched| + [price <= budget]) / (|attributes| + |options| + 1)."""
    # r_type: WebShop matches the query / >= 2 category levels, else the share of the goal name's nouns
    # (spaCy) in the bought name (> 0.2 -> 1, else 0.5; < 0.1 -> 0.1; 0 -> 0). Our products carry their
    # type phrase, so "same type" stands for the query match and its words for the nouns.
    want = _ws_tokens(goal["type"])
    title_score = sum(t in product["tf"] for t in want) / len(want)
    r_type = 1.0 if product["type"] == goal["type"] or title_score > 0.2 else 0.5
    r_type = 0.0 if title_score == 0 else 0.1 if title_score < 0.1 else r_type
    # Attributes: WebShop fuzzy-matches the attribute list, then looks in title/features/description; ours
    # are exact single words, so an exact test on the attribute list and the title does the same.
    n_att = sum(a in product["attrs"] or a in product["tf"] for a in goal["attrs"])
    # Options: WebShop counts bought option values found among the goal's (exact for size, fuzzy token-set
    # ratio > 85 otherwise); no two of our option values are near-duplicates, so we match exactly.
    n_opt = sum(v in goal["options"].values() for v in chosen.values())
    price_ok = product["price"] <= goal["budget"]
    r = r_type * (n_att + n_opt + price_ok) / (len(goal["attrs"]) + len(goal["options"]) + 1)
    return r, {"r_type": r_type, "attributes_matched": n_att, "attributes": len(goal["attrs"]),
               "options_matched": n_opt, "options": len(goal["options"]), "price_ok": price_ok}


def _ws_satisfies(product: dict, goal: dict) -> bool:
    """Buying `product` with the goal's options (where offered) scores 1.0."""
    chosen = {t: v for t, v in goal["options"].items() if v in product["options"].get(t, ())}
    return _ws_reward(product, goal, chosen)[0] == 1.0


def _ws_unoffered(product: dict, values) -> str | None:
    """The first of `values` that `product` offers under no option type, or None if it offers them all."""
    offered = {v for vals in product["options"].values() for v in vals}
    return next((v for v in values if v not in offered), None)


def _ws_make_task(rng, category, want, trap) -> dict:
    """One instruction and its shop: the target, three near misses, same-type fillers and strangers.

    `trap` (None, "attribute", "price" or "option") names the near miss that tops the search results for
    the instruction's product phrase; with None the target tops them.
    """
    ctype, attrs, opt_pools, (lo, hi) = category
    want = rng.sample(want, len(want))
    others = [a for a in attrs if a not in want]
    goal_opts = {t: rng.choice(vals) for t, vals in opt_pools.items()}
    price = rng.randint(lo, hi) - 0.01
    # WebShop's get_human_goals: budget = larger of 2 draws from the 4 multiples of 10 above the price
    budget = float(max(rng.sample([p for p in range(10, 1000, 10) if p > price][:4], 2)))
    phrase = " ".join(want + [ctype])
    opts_text = ", and ".join(f"{t}: {v}" for t, v in goal_opts.items())
    text = f"{rng.choice(_WS_LEADS)} {phrase} with {opts_text}, and price lower than {budget:.2f} dollars"
    goal = {"type": ctype, "attrs": tuple(want), "options": goal_opts, "budget": budget, "phrase": phrase,
            "text": text, "trap": trap}

    def options(missing=None):  # offered values per option type, the wanted one among them but for `missing`
        out = {}
        for t, vals in opt_pools.items():
            rest = [v for v in vals if v != goal_opts[t]]
            k = rng.randint(2, min(4, len(rest)))
            out[t] = rng.sample(rest, k) if t == missing else rng.sample(rest, k - 1)
            if t != missing:
                out[t].insert(rng.randrange(k), goal_opts[t])
        return out

    def cheap():
        return rng.randint(lo, int(budget) - 1) + 0.99

    for _ in range(50):  # the construction below meets the checks; retry defends against a bad draw
        used = set()
        target = _ws_product(rng, category, want + [rng.choice(others)], options(), price, trap is None, used)
        decoys = {
            "attribute": _ws_product(rng, category, [rng.choice(want)] + rng.sample(others, 2), options(),
                                     cheap(), trap == "attribute", used),
            "price": _ws_product(rng, category, want + [rng.choice(others)], options(),
                                 budget + rng.randint(0, 14) + 0.99, trap == "price", used),
            "option": _ws_product(rng, category, want + [rng.choice(others)],
                                  options(rng.choice(list(opt_pools))), cheap(), trap == "option", used),
        }
        fillers = []
        for _ in range(rng.randint(3, 5)):
            a = rng.sample(others, 3) if rng.random() < 0.5 else rng.sample(others, 2) + [rng.choice(want)]
            opts = {t: rng.sample(v, rng.randint(2, min(4, len(v)))) for t, v in opt_pools.items()}
            fillers.append(_ws_product(rng, category, a, opts, rng.randint(lo, hi) - 0.01, rng.random() < 0.3,
                                       used))
        for cat in rng.sample([c for c in _WS_CATEGORIES if c[0] != ctype], rng.randint(2, 3)):
            opts = {t: rng.sample(v, rng.randint(2, min(4, len(v)))) for t, v in cat[2].items()}
            fillers.append(_ws_product(rng, cat, rng.sample(cat[1], 3), opts, rng.randint(*cat[3]) - 0.01,
                                       False, used))
        top = decoys[trap] if trap else target
        rest = [target, *decoys.values(), *fillers]
        rest.remove(top)
        shop = [top] + rng.sample(rest, len(rest))
        ranked = _ws_search(shop, phrase)
        if (ranked[0] is top and _ws_satisfies(top, goal) == (trap is None)
                and ranked.index(target) < 4 * WEBSHOP_PAGE_SIZE and _ws_satisfies(target, goal)):
            return {**goal, "target": target["asin"], "shop": shop, "by_asin": {p["asin"]: p for p in shop}}
    raise RuntimeError(f"webshop: could not build a shop for {text!r}")


def _ws_make_tasks(split: str, seed: int, n_tasks: int, difficulty: float) -> list:
    # Disjoint by construction: each (type, pair of wanted attributes) belongs to one split only, so no
    # test instruction's product phrase occurs in training.
    combos = [(c, (a, b)) for c in range(len(_WS_CATEGORIES)) for a in range(6) for b in range(a + 1, 6)]
    random.Random(f"webshop/{seed}/combos").shuffle(combos)
    pool = combos[: len(combos) // 2] if split == "train" else combos[len(combos) // 2:]
    rng = random.Random(f"webshop/{seed}/{split}")
    rng.shuffle(pool)
    n_trap = round(difficulty * n_tasks)
    traps = [("attribute", "price", "option")[j % 3] for j in range(n_trap)] + [None] * (n_tasks - n_trap)
    rng.shuffle(traps)
    tasks = []
    for i in range(n_tasks):
        c, (a, b) = pool[i % len(pool)]
        cat = _WS_CATEGORIES[c]
        tasks.append(_ws_make_task(random.Random(f"webshop/{seed}/{split}/{i}"), cat, [cat[1][a], cat[1][b]],
                                   traps[i]))
    return tasks


def _ws_parse_item(obs: str) -> dict | None:
    """Title, price and options of an item page observation; None for any other page."""
    lines = obs.split("\n")
    if lines[:2] != ["[Back to Search]", "[< Prev]"] or "[Buy Now]" not in lines:
        return None
    options, j = {}, 2
    while m := re.fullmatch(r"(\w+) ((?:\[\[?[^\]]+\]\]?)+)", lines[j]):
        options[m.group(1)] = re.findall(r"\[\[?([^\]]+)\]?\]", m.group(2))
        j += 1
    price = re.fullmatch(r"Price: \$([\d.]+)", lines[j + 1])
    return {"title": lines[j], "price": float(price.group(1)) if price else None, "options": options}


# A plan names the item to open; the options to click and the budget are the instruction's (the actor
# reads those itself), so the plan's one decision is the retrospector's: the same item again (only its
# options were wrong) or another one (the item itself was wrong).
WS_PLAN_END = ", click the instruction's options, click[Buy Now]."
_WS_PLAN = re.compile(
    r"Next time: (?P<open>open (?:(?P<asin>B0[A-Z0-9]{8})|the first result that fits the instruction"
    r"(?:, not (?P<skip>B0[A-Z0-9]{8}))?))[,.]")


def episode_steps(trajectory) -> list[tuple[str, str, str]]:
    """(thought, action, observation) triples of a trajectory: a list of 3-tuples or of dicts with keys
    thought, action and obs (or observation), or an object with such a `steps` list."""
    steps = []
    for j, s in enumerate(getattr(trajectory, "steps", trajectory)):
        if isinstance(s, dict) and "action" in s and ("obs" in s or "observation" in s):
            s = (s.get("thought", ""), s["action"], s["obs"] if "obs" in s else s["observation"])
        if not isinstance(s, (tuple, list)) or len(s) != 3 or not all(isinstance(x, str) for x in s):
            raise ValueError(f"trajectory step {j}: expected (thought, action, observation) strings, "
                             f"got {s!r:.80}")
        steps.append(tuple(s))
    return steps


class WebShopEnv:
    """WebShop-style shopping: generated shops, WebShop's text pages, action language and reward.

    Options: `n_tasks` per split (default 100); `difficulty` in [0, 1] (default 0.5): the share of tasks
    whose top search result for the instruction's product phrase is a near miss (lacks a wanted attribute,
    costs more than the budget, or does not offer a wanted option), so buying it as is fails.
    """

    name = "webshop"
    max_steps = WEBSHOP_MAX_STEPS

    def __init__(self, split: str = "train", seed: int = 0, n_tasks: int = 100, difficulty: float = 0.5):
        if split not in ("train", "test"):
            raise ValueError(f"webshop: unknown split {split!r}: expected 'train' or 'test'")
        if not isinstance(n_tasks, int) or n_tasks < 1:
            raise ValueError(f"webshop: n_tasks must be a positive int, got {n_tasks!r}")
        if not isinstance(difficulty, (int, float)) or not 0 <= difficulty <= 1:
            raise ValueError(f"webshop: difficulty must be a number in [0, 1], got {difficulty!r}")
        self.split, self.seed, self.difficulty = split, seed, float(difficulty)
        self.tasks = _ws_make_tasks(split, seed, n_tasks, float(difficulty))
        self.task = None
        self.done = True

    def __len__(self) -> int:
        return len(self.tasks)

    def reset(self, i: int) -> str:
        if not isinstance(i, int):
            raise TypeError(f"webshop: task index must be an int, got {type(i).__name__}")
        if not 0 <= i < len(self.tasks):
            raise IndexError(f"webshop: task index {i!r} out of range: the {self.split} split has "
                             f"{len(self.tasks)} tasks")
        self.task, self.done, self.steps = self.tasks[i], False, 0
        self.page, self.page_num, self.results, self.item, self.sub = "search", 1, [], None, None
        self.chosen, self.visited = {}, set()  # options clicked on the open item; items opened this trial
        return self._page_text()

    # --- pages, in the text mode of WebShop's ReAct / Reflexion harness ---
    def _page_text(self) -> str:
        if self.page == "search":
            return f"WebShop\nInstruction:\n{self.task['text']}\n[Search]"
        lines = ["[Back to Search]"]
        if self.page == "results":
            lo = (self.page_num - 1) * WEBSHOP_PAGE_SIZE
            lines.append(f"Page {self.page_num} (Total results: {len(self.results)})")
            more = lo + WEBSHOP_PAGE_SIZE < len(self.results)
            lines += ["[< Prev]"] * (self.page_num > 1) + ["[Next >]"] * more
            for p in self.results[lo: lo + WEBSHOP_PAGE_SIZE]:
                lines += [f"[{p['asin']}]", p["title"], f"${p['price']:.2f}"]
            return "\n".join(lines)
        p = self.item
        lines.append("[< Prev]")
        if self.page == "item":
            for t, vals in p["options"].items():
                shown = (f"[[{v}]]" if self.chosen.get(t) == v else f"[{v}]" for v in vals)  # [[v]]: selected
                lines.append(f"{t} {''.join(shown)}")
            lines += [p["title"], f"Price: ${p['price']:.2f}", f"Rating: {p['rating']}",
                      "[Description]", "[Features]", "[Reviews]", "[Buy Now]"]
        elif self.sub == "Description":
            a = p["attrs"]
            lines.append(f"This {p['type']} by {p['brand']} is {', '.join(a[:-1])} and {a[-1]}.")
        elif self.sub == "Features":
            lines += [f"- {a}" for a in p["attrs"]]
        else:
            lines.append(f"Rating: {p['rating']}. \"{p['review'].capitalize()}.\"")
        return "\n".join(lines)

    def _clickables(self) -> dict:
        """Lower-cased name -> button of everything clickable on the current page."""
        if self.page == "search":
            names = ["Search"]
        elif self.page == "results":
            lo = (self.page_num - 1) * WEBSHOP_PAGE_SIZE
            names = ["Back to Search"] + ["< Prev"] * (self.page_num > 1)
            names += ["Next >"] * (lo + WEBSHOP_PAGE_SIZE < len(self.results))
            names += [p["asin"] for p in self.results[lo: lo + WEBSHOP_PAGE_SIZE]]
        elif self.page == "item":
            names = ["Back to Search", "< Prev", *(v for vals in self.item["options"].values() for v in vals),
                     "Description", "Features", "Reviews", "Buy Now"]
        else:
            names = ["Back to Search", "< Prev"]
        return {n.lower(): n for n in names}

    def step(self, action: str):
        if self.task is None:
            raise RuntimeError("webshop: call reset(i) before step()")
        if self.done:
            raise RuntimeError("webshop: the episode is over (Buy Now or step limit); call reset(i) first")
        if not isinstance(action, str):
            raise TypeError(f"webshop: action must be a str, got {type(action).__name__}")
        self.steps += 1
        obs, reward, info = self._act(action)
        info.setdefault("success", False)
        self.done = "reward_breakdown" in info or self.steps >= self.max_steps
        if self.done and "reward_breakdown" not in info:
            info["truncated"] = True  # step limit without Buy Now: reward 0
        return obs, reward, self.done, info

    def _act(self, action: str) -> tuple[str, float, dict]:
        m = re.fullmatch(r"\s*(search|click|think)\s*\[(.*)\]\s*", action, re.IGNORECASE | re.DOTALL)
        if not m:
            return f"Invalid action! Use search[query] or click[button], not {action.strip()[:50]!r}", 0.0, {}
        verb, arg = m.group(1).lower(), " ".join(m.group(2).split())
        if verb == "think":
            return "OK.", 0.0, {}
        if verb == "search":
            if self.page != "search":
                return "Invalid action! Search is on the search page only; click[Back to Search].", 0.0, {}
            if not arg:
                return "Invalid action! search[] needs a query, e.g. search[red t-shirt].", 0.0, {}
            self.results, self.page, self.page_num = _ws_search(self.task["shop"], arg), "results", 1
            return self._page_text(), 0.0, {}
        buttons = self._clickables()
        if self.page == "search":
            return "Invalid action! There is nothing to click here; use search[query].", 0.0, {}
        if arg.lower() not in buttons:
            names = " ".join(f"[{b}]" for b in buttons.values())
            return f"Invalid action! [{arg}] is not on this page. Clickable: {names}", 0.0, {}
        b = buttons[arg.lower()]
        if b == "Back to Search":
            self.page, self.chosen = "search", {}
        elif b == "Next >":
            self.page_num += 1
        elif b == "< Prev" and self.page == "results":
            self.page_num -= 1
        elif b == "< Prev":  # item -> results (forgetting its options), sub page -> item
            self.page, self.chosen = ("results", {}) if self.page == "item" else ("item", self.chosen)
        elif self.page == "results":
            self.page, self.item, self.chosen = "item", self.task["by_asin"][b], {}
            self.visited.add(b)
        elif b in ("Description", "Features", "Reviews"):
            self.page, self.sub = "sub", b
        elif b == "Buy Now":
            r, parts = _ws_reward(self.item, self.task, self.chosen)
            info = {"success": r == 1.0, "reward_breakdown": parts, "asin": self.item["asin"]}
            return f"Your score (min 0.0, max 1.0): {r:.2f}", r, info
        else:  # an option value
            self.chosen[next(t for t, vals in self.item["options"].items() if b in vals)] = b
            return f"You have clicked {b}.", 0.0, {}
        return self._page_text(), 0.0, {}

    # --- scripted policies ---
    def _on_page(self) -> list:
        lo = (self.page_num - 1) * WEBSHOP_PAGE_SIZE
        return self.results[lo: lo + WEBSHOP_PAGE_SIZE]

    def _check_live(self):
        if self.task is None or self.done:
            raise RuntimeError("webshop: no episode in progress; call reset(i) first")

    def expert(self) -> tuple[str, str]:
        """Scripted expert: searches the product phrase, pages to the target, sets its options, buys."""
        self._check_live()
        goal, target = self.task, self.task["target"]
        if self.page == "search":
            return f"I need {goal['phrase']}; I will search for it.", f"search[{goal['phrase']}]"
        if self.page == "sub" or (self.page == "item" and self.item["asin"] != target):
            return "This is not the item I want; I go back.", "click[< Prev]"
        if self.page == "results":
            if any(p["asin"] == target for p in self._on_page()):
                return f"{target} matches every requirement; I open it.", f"click[{target}]"
            ranked = [p["asin"] for p in self.results]
            if target not in ranked:
                return "The item I want is not among these results; I search again.", "click[Back to Search]"
            if ranked.index(target) >= self.page_num * WEBSHOP_PAGE_SIZE:
                return "The item I want is further down; next page.", "click[Next >]"
            return "The item I want is on an earlier page.", "click[< Prev]"
        for t, v in goal["options"].items():
            if self.chosen.get(t) != v:
                return f"The instruction asks for {t}: {v}.", f"click[{v}]"
        return "All options are set and the item matches; I buy it.", "click[Buy Now]"

    def explorer(self, rng: random.Random, plan: str | None = None) -> tuple[str, str]:
        """Memoryless policy: search the instruction's product phrase, open the top result, click the asked
        options (slipping to an option's first value with prob. WEBSHOP_EXPLORER_SLIP, or when the asked one
        is not offered) and buy. With `plan` (from `plan()`), follow it: search the product phrase, open its
        item or the first result that fits the instruction (its words in the title, its budget; skipping
        the plan's excluded item and items seen this trial to lack an asked option), click the asked
        options (no slips: the plan says to), then Buy Now."""
        self._check_live()
        if plan is not None:
            return self._follow(plan)
        goal = self.task
        if self.page == "search":
            return f"I need {goal['phrase']}; I will search for it.", f"search[{goal['phrase']}]"
        if self.page == "results":
            top = self._on_page()[0]["asin"] if self.results else None
            if top is None:
                return "Nothing found; I go back.", "click[Back to Search]"
            return f"{top} is the top result; I open it.", f"click[{top}]"
        if self.page == "sub":
            return "Back to the item.", "click[< Prev]"
        for t, v in goal["options"].items():
            vals = self.item["options"].get(t)
            if vals and t not in self.chosen:
                if v not in vals:
                    return f"{v} is not offered; I take {vals[0]}.", f"click[{vals[0]}]"
                pick = vals[0] if rng.random() < WEBSHOP_EXPLORER_SLIP else v
                return f"I choose {pick} for {t}.", f"click[{pick}]"
        return "The item looks right; I buy it.", "click[Buy Now]"

    def _follow(self, plan: str) -> tuple[str, str]:
        m = _WS_PLAN.search(plan)
        if not m:
            raise ValueError(f"webshop: cannot parse plan {plan!r}: want 'Next time: open ...'")
        goal = self.task
        asked = list(goal["options"].values())
        if self.page == "search":
            return f"I search for {goal['phrase']} and follow my plan.", f"search[{goal['phrase']}]"
        if self.page == "sub":
            return "Back to the item.", "click[< Prev]"
        if self.page == "results":
            words = set(_ws_tokens(" ".join([*goal["attrs"], goal["type"]])))
            for p in self._on_page():
                lacks = p["asin"] in self.visited and _ws_unoffered(p, asked) is not None
                if m.group("asin") == p["asin"] or not m.group("asin") and not lacks and (
                        p["asin"] != m.group("skip") and words <= set(p["tf"])
                        and p["price"] <= goal["budget"]):
                    return f"{p['asin']} fits my plan; I open it.", f"click[{p['asin']}]"
            if "next >" in self._clickables():
                return "Nothing on this page fits my plan; next page.", "click[Next >]"
            fresh = [p["asin"] for p in self._on_page() if p["asin"] not in self.visited]
            if not fresh:
                return "Nothing here fits my plan; I search again.", "click[Back to Search]"
            return f"Nothing fits my plan; I try {fresh[0]}.", f"click[{fresh[0]}]"
        missing = _ws_unoffered(self.item, asked)
        if not m.group("asin") and missing is not None:
            return f"{self.item['asin']} has no {missing}; I go back.", "click[< Prev]"
        for t, v in goal["options"].items():  # the asked value of each option type this item offers
            if v in self.item["options"].get(t, ()) and self.chosen.get(t) != v:
                return f"The instruction asks for {t}: {v}.", f"click[{v}]"
        return "Everything in my plan is set; I buy it.", "click[Buy Now]"

    def plan(self, trajectory) -> str | None:
        """Short templated plan for the next trial of the current task, inferred from the failed trajectory's
        observations (the bought item's title, price and options) and the instruction; None if it succeeded
        or is empty."""
        if self.task is None:
            raise RuntimeError("webshop: call reset(i) before plan()")
        goal, page, asin, chosen, bought = self.task, None, None, {}, False
        steps = episode_steps(trajectory)
        for _, action, obs in steps:
            m = re.fullmatch(r"\s*click\s*\[\s*(.*?)\s*\]\s*", action, re.IGNORECASE | re.DOTALL)
            if obs.startswith("Your score (min 0.0, max 1.0): "):
                if float(obs.split(": ")[1]) == 1.0:
                    return None
                bought = True
            elif m and (parsed := _ws_parse_item(obs)) and m.group(1).lower() != "< prev":
                page, asin, chosen = parsed, m.group(1).upper(), {}
            elif m and page and obs.startswith("You have clicked "):
                v = obs[len("You have clicked "): -1]
                chosen.update({t: v for t, vals in page["options"].items() if v in vals})
        if not steps:
            return None
        reasons, product_ok = [], True
        if not bought or page is None:  # no purchase (or its item page is missing from the trajectory)
            reasons.append(f"I did not click[Buy Now] within {self.max_steps} steps")
        else:
            title = set(_ws_tokens(page["title"]))
            lacking = [w for w in goal["attrs"] + tuple(goal["type"].split()) if w not in title]
            unoffered = [v for t, v in goal["options"].items() if v not in page["options"].get(t, ())]
            if lacking:
                reasons.append(f"{asin} lacked {' and '.join(lacking)}")
            if page["price"] is not None and page["price"] > goal["budget"]:
                reasons.append(f"{asin} cost ${page['price']:.2f}, over {goal['budget']:.2f} dollars")
            if unoffered:
                reasons.append(f"{asin} had no {' or '.join(unoffered)}")
            product_ok = not reasons
            for t, v in goal["options"].items():
                if v not in unoffered and chosen.get(t) != v:
                    reasons.append(f"I clicked {chosen[t]}, not {v}" if t in chosen else f"I skipped {v}")
            if not reasons:
                reasons.append(f"{asin} scored below 1")
        # The plan names only what the next trial must do differently, the item: the search (the
        # instruction's phrase), the item's words, budget and options (the instruction's) are the
        # actor's anyway, and a plan with no values to copy is one a small retrospector writes without slips.
        if bought and page is not None and product_ok:
            select = f"open {asin}"
        else:
            select = "open the first result that fits the instruction"
            select += f", not {asin}" if bought and asin else ""
        diagnosis = "; ".join(reasons)
        diagnosis = diagnosis[0].upper() + diagnosis[1:]
        return f"{diagnosis}. Next time: {select}{WS_PLAN_END}"

    def render(self, trajectory, first_obs: str | None = None) -> str:
        """Readable episode: the instruction page (default: the current task's), then each step."""
        if first_obs is None:
            first_obs = f"WebShop\nInstruction:\n{self.task['text']}\n[Search]" if self.task else ""
        return render_trajectory(first_obs, episode_steps(trajectory))  # hotpotqa section's renderer


# === end webshop ===


def make(name: str, split: str = "train", seed: int = 0, **options):
    """Build environment `name` ('hotpotqa', 'alfworld' or 'webshop') on the `split` tasks."""
    if split not in ("train", "test"):
        raise ValueError(f"unknown split {split!r}: expected 'train' or 'test'")
    envs = {"hotpotqa": HotpotQAEnv, "alfworld": ALFWorldEnv, "webshop": WebShopEnv}
    if name not in envs:
        raise ValueError(f"unknown environment {name!r}: expected one of {sorted(envs)}")
    return envs[name](split=split, seed=seed, **options)
