"""The generated HotPotQA world (worlds/hotpotqa.py is its environment): each task is a two-hop question
over a small document store of fictional people, organisations and works with confusable names, and
with a set probability a trap for a hasty agent (a namesake, a nickname, an answer-shaped decoy).
A task depends only on its random.Random: the env seeds one per (seed, split, index).
"""

import difflib
import random
import re
from dataclasses import dataclass

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
DIFFICULTY = {"easy": 0.2, "medium": 0.6, "hard": 1.0}  # probability that a task holds a trap


@dataclass
class QATask:
    """One question with its own document store (title -> sentences; None: ask Wikipedia)."""

    id: str
    question: str
    answer: str
    pages: dict | None
    gold_titles: list  # the pages the expert searches, in order
    trap: str = ""  # generated tasks: '', 'namesake', 'alias' or 'onehop'


def similar_titles(query: str, titles) -> list[str]:
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


def article(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _person_page(p: dict, link: str = "", hatnote: str = "") -> list[str]:
    name, sur = f"{p['first']} {p['surname']}", p["surname"]
    page = [hatnote] if hatnote else []
    page += [f"{name} ({p['y0']}-{p['y1']}) was {article(p['occ'])} from {p['country']}.",
             f"{sur} was born in {p['city']} in {p['y0']}.", link or f"{sur} studied in {p['died']}.",
             f"{sur} died in {p['died']} in {p['y1']}.", f"A street in {p['city']} is named after {sur}."]
    return page


def generate_task(rng: random.Random, parity: int, p_trap: float, task_id: str, names: int = 0) -> QATask:
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
    lead = {"": f"{subject} is {article(kind_name)} founded by {who}.",
            "city": f"{subject} is {article(kind_name)} founded in {decoy_value} by {who}.",
            "year": f"{subject} is {article(kind_name)} founded in {decoy_value} by {who}."}
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
    lead = {"": f"'{subject}' is {article(kind_name)} by {who}.",
            "city": f"'{subject}' is {article(kind_name)} written in {decoy_value} by {who}.",
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
        while trap in ("namesake", "alias") and m == mentions[t] and similar_titles(m, pages)[0] != d_title:
            assert similar_titles(m, pages)[0] != title, f"{task_id}: the decoy does not outrank {title}"
            del pages[similar_titles(m, pages)[0]]
    return pages

