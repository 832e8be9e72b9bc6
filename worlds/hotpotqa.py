"""The HotPotQA world: HotPotQA (Yang et al. 2018) as ReAct's Wikipedia tool sees it (Yao et al. 2022,
wikienv.py). Search[entity] shows a page's first 5 sentences or "Could not find X. Similar: [...]",
Lookup[keyword] cycles through the page's sentences that contain the keyword, Finish[answer] ends the
episode with the normalised exact match as reward. The generated world gives each task a small document
store of fictional people, organisations and works with confusable names; envs.make also loads real
HotPotQA questions (a distractor-setting JSON, or the MediaWiki API) into the same env.
"""

import difflib
import random
import re
import string
from collections import Counter
from dataclasses import dataclass

from worlds.episodes import render_trajectory


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
NAME_STEMS = {0: _STEMS, 1: _stems("h j w sk st pl fl sn".split()), 2: _stems("kl gl sp cr".split())}
_SURNAME_ENDS = ["na", "n", "ll", "ra", "no", "ni", "s", "nto"]
_CITY_ENDS = ["burg", "ford", "vik", "stad", "mont", "ssa"]
ALIASES = [("Teodor", "Teo"), ("Alberta", "Alba"), ("Konstantin", "Kosta"), ("Magdalena", "Magda"),
            ("Valentin", "Vali"), ("Leopoldine", "Poldi"), ("Maximilian", "Max"), ("Friederike", "Frida")]
# short forms are also real first names, so a short name in a question does not give a trap away
FIRST_NAMES = "Ivo Lena Oskar Mira Tomas Edda Nils Vera Anton Ilse Pavel Greta".split()
FIRST_NAMES += [s for _, s in ALIASES]
COUNTRIES = "Estoria Valdoria Korland Merovia Tarsia Ulmark Brevonia Casimar".split()
ORG_KINDS = {"chemist": ("chemical company", "Works"), "engineer": ("engineering firm", "Engineering"),
              "physician": ("clinic", "Clinic"), "architect": ("architecture studio", "Studio"),
              "botanist": ("botanical garden", "Gardens"), "astronomer": ("observatory", "Observatory")}
_WORK_KINDS = {"novelist": "novel", "poet": "poetry collection", "composer": "opera", "painter": "painting"}
_OCCUPATIONS = [*ORG_KINDS, *_WORK_KINDS, "footballer", "sculptor", "diplomat", "jurist"]
WORK_ADJECTIVES = "Glass Silent Iron Winter Hollow Amber Distant Crimson Sleeping Broken Golden Quiet".split()
WORK_NOUNS = "Orchard Harbour Lantern Garden Mirror River Tower Meadow Bridge Letter Station Forest".split()
_WORKS = [f"The {a} {n}" for a in WORK_ADJECTIVES for n in WORK_NOUNS]
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
        self.stems = _STEMS[parity::2] if names == 0 else NAME_STEMS[names]
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
        return dict(first=first or r.choice(FIRST_NAMES),
                    surname=surname or self.stem() + r.choice(_SURNAME_ENDS),
                    occ=occ, country=r.choice(COUNTRIES), city=self.stem() + r.choice(_CITY_ENDS),
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
    kind, trap = _draw_kind_and_trap(rng, p_trap)
    people = _draw_people(w, rng, kind)
    t = rng.randrange(len(people))  # the person the trap is about
    short, d_title = None, None
    if trap == "alias":
        people[t]["first"], short = rng.choice(ALIASES)
    full_names = [f"{p['first']} {p['surname']}" for p in people]
    titles, mentions, pages = list(full_names), list(full_names), {}  # mentions: how the text names them
    if trap in ("namesake", "alias"):
        d_title = _plant_decoy(w, rng, kind, trap, people, t, short, titles, mentions, pages)
    _add_distractors(w, rng, people, pages)
    if kind in ("org", "work"):
        question, answer, gold_titles = _bridge_question(w, rng, kind, trap, parity, people[0], titles[0],
                                                         mentions[0], pages)
    else:
        question, answer, gold_titles = _comparison_question(rng, kind, people, titles, mentions, pages)
    pages = _sharpen_trap(pages, trap, titles, mentions, t, d_title, task_id)
    return QATask(task_id, question, answer, pages, gold_titles, trap)


def _draw_kind_and_trap(rng: random.Random, p_trap: float) -> tuple[str, str]:
    """The question kind (bridge: 'org', 'work'; comparison: 'first', 'country') and its trap ('' if none)."""
    kind = rng.choices(["org", "work", "first", "country"], weights=[3, 2, 3, 2])[0]
    trap = ""
    if rng.random() < p_trap:
        # a one-hop decoy needs the bridge page that comparisons do not have
        trap = rng.choice(["namesake", "alias"] + ["onehop"] * (kind in ("org", "work")))
    return kind, trap


def _draw_people(w: _World, rng: random.Random, kind: str) -> list[dict]:
    """The asked person (two for a comparison, born in different years)."""
    occs = list(ORG_KINDS if kind == "org" else _WORK_KINDS if kind == "work" else _OCCUPATIONS)
    people = [w.person(rng.choice(occs))]
    if kind in ("first", "country"):
        people.append(w.person(rng.choice(_OCCUPATIONS)))
        while people[1]["y0"] == people[0]["y0"]:
            people[1]["y0"] += 1
        if kind == "country" and rng.random() < 0.5:
            people[1]["country"] = people[0]["country"]
    return people


def _decoy(w: _World, rng: random.Random, kind: str, people: list[dict], t: int) -> dict:
    """A person of another occupation whose facts give the other answer about people[t]."""
    p = people[t]
    d = w.person(rng.choice([o for o in _OCCUPATIONS if o != p["occ"]]))
    other = people[1 - t] if len(people) == 2 else None
    d["y0"] = p["y0"] + rng.choice([-1, 1]) * rng.randrange(3, 30)
    if kind == "first":
        older = p["y0"] < other["y0"]
        d["y0"] = other["y0"] + (rng.randrange(1, 30) if older else -rng.randrange(1, 30))
    if kind == "country":
        same = p["country"] == other["country"]
        d["country"] = other["country"]
        while same and d["country"] == other["country"]:
            d["country"] = rng.choice(COUNTRIES)
    d["y1"] = d["y0"] + rng.randrange(45, 90)
    return d


def _plant_decoy(w: _World, rng: random.Random, kind: str, trap: str, people: list[dict], t: int,
                 short: str | None, titles: list, mentions: list, pages: dict) -> str:
    """Add the page of a 'namesake' or 'alias' trap's decoy (renaming people[t]'s title or mention as
    the trap needs); returns the decoy's title."""
    d, p, name = _decoy(w, rng, kind, people, t), people[t], titles[t]
    if trap == "namesake":  # 'Alba Corvina' hits two pages; the more popular namesake ranks first
        d["first"], d["surname"] = p["first"], p["surname"]
        titles[t] = f"{name} ({p['occ']})"
        d_title = f"{name} ({d['occ']})"
        pages[d_title] = _person_page(d)
    else:  # the text says 'Teo Mirela'; 'Teo Mireli' ranks above 'Teodor Mirela'
        mentions[t] = f"{short} {p['surname']}"
        # one changed letter costs less similarity than the 3+ letters a nickname drops
        d["first"], d["surname"] = short, _variant(rng, p["surname"])
        d_title = f"{short} {d['surname']}"
        pages[d_title] = _person_page(d, hatnote=f"Not to be confused with the {p['occ']} {name}.")
    return d_title


def _add_distractors(w: _World, rng: random.Random, people: list[dict], pages: dict) -> None:
    """Confusable distractors: same surname stem with another ending, same surname with another first name."""
    for p in people:
        q = w.person(rng.choice(_OCCUPATIONS), first=p["first"])
        q["surname"] = _variant(rng, p["surname"])
        pages.setdefault(f"{q['first']} {q['surname']}", _person_page(q))
        q = w.person(rng.choice(_OCCUPATIONS), surname=p["surname"])
        pages.setdefault(f"{q['first']} {q['surname']}", _person_page(q))


def _who(p: dict, mention: str) -> str:
    return f"the {p['occ']} {mention}"


def _bridge_question(w: _World, rng: random.Random, kind: str, trap: str, parity: int, p: dict, title: str,
                     mention: str, pages: dict) -> tuple[str, str, list]:
    """Ask p's birth city or year through an organisation p founded ('org') or a work p made ('work');
    adds the subject's page and p's page. Returns (question, answer, gold titles)."""
    attr = rng.choice(["city", "year"])
    # the value a hasty reader takes from the first page of an 'onehop' task
    decoy_value = str(p["y0"] + rng.randrange(9, 40)) if attr == "year" else w.stem() + _CITY_ENDS[0]
    year = p["y0"] + rng.randrange(25, 45)
    make = _org_subject if kind == "org" else _work_subject
    subject, lead, rest, link, rel = make(w, rng, parity, p, _who(p, mention), decoy_value, year, pages)
    pages[subject] = [lead[attr if trap == "onehop" else ""], *rest]
    pages[title] = _person_page(p, link=link)
    asks = {"city": ["In which city was {} born?", "What is the birthplace of {}?"],
            "year": ["In what year was {} born?", "When was {} born?"]}
    question = rng.choice(asks[attr]).format(rel)
    answer = p["city"] if attr == "city" else str(p["y0"])
    return question, answer, [subject, title]


def _org_subject(w: _World, rng: random.Random, parity: int, p: dict, who: str, decoy_value: str, year: int,
                 pages: dict):
    """The organisation p founded, in `year` in the city p died in: (its name, its lead sentence per
    asked attribute, its other sentences, the link sentence of p's page, how the question names p);
    adds a same-stem company as a distractor."""
    kind_name, suffix = ORG_KINDS[p["occ"]]
    place = p["died"]
    subject = f"{w.stem()}{rng.choice(['x', 'ro', 'tal', 'co'])} {suffix}"
    lead = {"": f"{subject} is {_article(kind_name)} founded by {who}.",
            "city": f"{subject} is {_article(kind_name)} founded in {decoy_value} by {who}.",
            "year": f"{subject} is {_article(kind_name)} founded in {decoy_value} by {who}."}
    rest = [f"It was established in {year} in {place}.", f"It has {rng.randrange(2, 90) * 10} staff."]
    link = f"{p['surname']} founded {subject} in {year}."
    rel = rng.choice([f"the founder of {subject}", f"the person who founded {subject}"])
    other = rng.choice([x for _, x in ORG_KINDS.values() if x != suffix])
    twin = f"{subject.split()[0]} {other}"
    pages[twin] = [f"{twin} is a company in {place}."]
    return subject, lead, rest, link, rel


def _work_subject(w: _World, rng: random.Random, parity: int, p: dict, who: str, decoy_value: str, year: int,
                  pages: dict):
    """The work p made, as `_org_subject`; its distractor is a work whose title starts the same."""
    kind_name, place = _WORK_KINDS[p["occ"]], p["died"]
    subject = _WORKS[2 * rng.randrange(len(_WORKS) // 2) + parity]
    twin = rng.choice([x for x in _WORKS[parity::2] if x[:9] == subject[:9] and x != subject])
    pages[twin] = [f"'{twin}' is a {rng.choice(list(_WORK_KINDS.values()))} from {w.stem()}stad."]
    lead = {"": f"'{subject}' is {_article(kind_name)} by {who}.",
            "city": f"'{subject}' is {_article(kind_name)} written in {decoy_value} by {who}.",
            "year": f"'{subject}' is a {decoy_value} {kind_name} by {who}."}
    rest = [f"It was first shown in {year} in {place}.", f"It is held in {w.stem()}ford."]
    link = f"{p['surname']} is best known for the {kind_name} '{subject}'."
    rel = rng.choice([f"the creator of the {kind_name} '{subject}'", f"the maker of '{subject}'"])
    return subject, lead, rest, link, rel


def _comparison_question(rng: random.Random, kind: str, people: list[dict], titles: list, mentions: list,
                         pages: dict) -> tuple[str, str, list]:
    """Compare two people's birth years ('first') or countries ('country'); adds both pages."""
    for k in range(2):
        pages[titles[k]] = _person_page(people[k])
    who, who2 = _who(people[0], mentions[0]), _who(people[1], mentions[1])
    if kind == "first":
        question = rng.choice([f"Who was born first, {who} or {who2}?",
                               f"Which person was born earlier, {who} or {who2}?"])
        answer = mentions[0] if people[0]["y0"] < people[1]["y0"] else mentions[1]
    else:
        question = rng.choice([f"Were {who} and {who2} from the same country?",
                               f"Did {who} and {who2} come from the same country?"])
        answer = "yes" if people[0]["country"] == people[1]["country"] else "no"
    return question, answer, titles


def _sharpen_trap(pages: dict, trap: str, titles: list, mentions: list, t: int, d_title: str | None,
                  task_id: str) -> dict:
    """Keep the trap sharp: the decoy is the top hit for the mention, no distractor is titled like a
    mention."""
    for m, title in zip(mentions, titles, strict=True):
        pages = {k: v for k, v in pages.items() if k == title or k.lower() != m.lower()}
        while trap in ("namesake", "alias") and m == mentions[t] and _similar(m, pages)[0] != d_title:
            assert _similar(m, pages)[0] != title, f"{task_id}: the decoy does not outrank {title}"
            del pages[_similar(m, pages)[0]]
    return pages


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
        if difficulty not in _DIFFICULTY:
            raise ValueError(f"unknown difficulty {difficulty!r}: expected one of {list(_DIFFICULTY)}")
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
            p_trap, parity = _DIFFICULTY[difficulty], int(split == "test")
            # task i depends only on (seed, split, i): n_tasks does not change the first tasks
            tag = f"/names{names}" if names else ""
            rngs = [random.Random(f"hotpotqa/{seed}/{split}/{i}{tag}") for i in range(n)]
            self.tasks = [_generate_task(r, parity, p_trap, f"{split}{tag}-{i}", names)
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
