"""The ALFWorld world: ALFWorld (Shridhar et al., 2021) as plain text, a room of numbered receptacles
("cabinet 3"), objects with ids ("mug 1"), the six task types, and ALFWorld's TextWorld action language
and replies. Each task is a generated household.
"""

import random
import re
import zlib

from worlds.episodes import check_step, episode_steps

_ROOMS = {  # receptacle type:min-max count; "*" = openable, starts closed
    "kitchen": "cabinet*:4-9 coffeemachine:1 countertop:1-3 diningtable:0-1 drawer*:3-6 fridge*:1 "
    "garbagecan:1 microwave*:1 shelf:0-3 sinkbasin:1 stoveburner:2-4 toaster:1",
    "livingroom": "armchair:0-2 cabinet*:0-4 coffeetable:1 drawer*:2-5 dresser:0-1 garbagecan:1 "
    "shelf:1-5 sidetable:1-2 sofa:1 tvstand:0-1",
    "bedroom": "armchair:0-1 bed:1 desk:1-2 drawer*:3-6 dresser:0-1 garbagecan:1 laundryhamper:0-1 "
    "safe*:0-1 shelf:1-5 sidetable:1-2",
    "bathroom": "bathtubbasin:1 cabinet*:2-5 countertop:1 drawer*:2-6 garbagecan:1 handtowelholder:0-1 "
    "shelf:0-3 sinkbasin:1-2 toilet:1 toiletpaperhanger:0-1 towelholder:0-1",
}
_OBJECTS = {
    "kitchen": "mug cup apple tomato potato egg bread lettuce knife butterknife fork spoon spatula ladle "
    "pan pot plate bowl saltshaker peppershaker dishsponge winebottle",
    "livingroom": "remotecontrol keychain creditcard newspaper pillow box statue vase watch laptop cellphone",
    "bedroom": "book pen pencil cellphone creditcard keychain alarmclock cd laptop pillow mug bowl",
    "bathroom": "soapbar soapbottle spraybottle toiletpaper candle cloth handtowel dishsponge tissuebox",
}
_LIKELY = {  # where one looks first for an object type, most likely first (the explorer's prior)
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
_LIKELY = {t: v.split() for k, v in _LIKELY.items() for t in k.split()}
_LOOKALIKE = {}  # similar types a careless agent takes for one another (the explorer does)
for _a, _b in (p.split(":") for p in "mug:cup knife:butterknife fork:spoon pan:pot plate:bowl "
               "saltshaker:peppershaker pen:pencil soapbar:soapbottle cloth:handtowel".split()):
    _LOOKALIKE[_a], _LOOKALIKE[_b] = _b, _a
_APPLIANCE = {"clean": "sinkbasin", "heat": "microwave", "cool": "fridge"}
_STATE = {"clean": "clean", "heat": "hot", "cool": "cool"}
_KINDS = {  # task type: (rooms, object types allowed; None = any of the room's)
    "pick": ("kitchen livingroom bedroom bathroom", None),
    "look": ("livingroom bedroom", None),
    "clean": ("kitchen bathroom", "mug cup apple tomato potato egg lettuce knife butterknife fork spoon "
              "spatula ladle pan pot plate bowl cloth soapbar"),
    "heat": ("kitchen", "mug cup apple tomato potato egg bread plate bowl"),
    "cool": ("kitchen", "mug cup apple tomato potato egg bread lettuce pan pot plate bowl winebottle"),
    "two": ("kitchen livingroom bedroom bathroom", None),
}
_TARGETS = ("cabinet countertop diningtable drawer shelf garbagecan fridge microwave coffeemachine sofa "
            "armchair coffeetable sidetable dresser desk bed safe toilet bathtubbasin sinkbasin").split()
_PUT_IN = set("cabinet drawer fridge microwave safe garbagecan sinkbasin bathtubbasin coffeemachine".split())
_ACTIONS = ("go to <recep>, open <recep>, close <recep>, take <obj> from <recep>, put <obj> in/on "
            "<recep>, clean/heat/cool <obj> with <recep>, use <lamp>, examine <obj>, inventory, look, "
            "think: <thought>")
_TASK_RE = re.compile(
    r"Your task is to: (?:put (?:a (?:(clean|hot|cool) )?|(two) )(\w+) (?:in|on) (\w+)"
    r"|look at (\w+) under the desklamp)\."
)


def _type_of(word):
    return word.split()[0]  # "mug 1" -> "mug"


def _listing(items):
    """ALFWorld's listing: 'a mug 1, a cup 2, and a apple 1' ('a' even before a vowel, as ALFWorld)."""
    if not items:
        return "nothing"
    items = [f"a {x}" for x in items]
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + ", and " + items[-1]


def _generate_world(rng, difficulty):
    """One task: room, receptacles, placed objects and the goal. `difficulty` = chance that each needed
    object (and the desklamp) sits in an unlikely place, and that a look-alike decoy sits in a likely one."""
    room = rng.choice(list(_ROOMS))
    recs, closed = _draw_receptacles(rng, room)
    kind, obj, objs, target = _draw_task(rng, room, recs)
    contents = _place_objects(rng, room, recs, closed, (kind, obj, target), objs, difficulty)
    text = (f"You are in the middle of a room. Looking quickly around you, you see {_listing(recs)}.\n"
            f"Your task is to: {_goal_text(kind, obj, target)}.")
    return {"text": text, "recs": recs, "closed": frozenset(closed), "contents": contents,
            "task": (kind, obj, target)}


def _draw_receptacles(rng, room):
    """The room's numbered receptacles, and the openable ones (they start closed)."""
    recs, closed = [], []
    for spec in _ROOMS[room].split():
        rtype, rng_ = spec.split(":")
        lo, hi = map(int, rng_.split("-")) if "-" in rng_ else (int(rng_), int(rng_))
        for n in range(1, rng.randint(lo, hi) + 1):
            recs.append(f"{rtype.rstrip('*')} {n}")
            if rtype.endswith("*"):
                closed.append(recs[-1])
    return recs, closed


def _draw_task(rng, room, recs):
    """(kind, object type, the room's object types the kind allows, target receptacle type or None)."""
    rtypes = {_type_of(r) for r in recs}
    kind = rng.choice([k for k, (rooms, _) in _KINDS.items() if room in rooms.split()])
    allowed = _KINDS[kind][1]
    objs = [o for o in _OBJECTS[room].split() if allowed is None or o in allowed.split()]
    obj = rng.choice(objs)
    banned = {_APPLIANCE.get(kind)} | set(_LIKELY[obj][:1])  # not the appliance / its first place
    goals = [t for t in _TARGETS if t in rtypes and t not in banned]
    target = None if kind == "look" else rng.choice(goals)
    return kind, obj, objs, target


def _place_objects(rng, room, recs, closed, task, objs, difficulty):
    """{receptacle: shuffled objects}: the needed object(s), maybe a look-alike decoy, the desklamp of a
    'look' task, and 5-9 other objects."""
    kind, obj, target = task
    places = [r for r in recs if _type_of(r) != target]  # never pre-place anything in the goal
    likely = [r for r in places if _type_of(r) in _LIKELY[obj]] or places
    unlikely = [r for r in places if r not in likely] or places
    contents = {r: [] for r in recs}
    counts = {}

    def place(otype, where):
        counts[otype] = counts.get(otype, 0) + 1
        contents[rng.choice(where)].append(f"{otype} {counts[otype]}")

    for _ in range(2 if kind == "two" else 1):
        place(obj, unlikely if rng.random() < difficulty else likely)
    decoy = _LOOKALIKE.get(obj)
    if decoy and decoy in objs and rng.random() < difficulty:
        place(decoy, likely)
    if kind == "look":
        lamp_likely = [r for r in places if _type_of(r) in _LIKELY["desklamp"]]
        lamp_other = [r for r in places if r not in lamp_likely and r not in closed]
        place("desklamp", lamp_other if rng.random() < difficulty else lamp_likely)
    others = [o for o in _OBJECTS[room].split() if o not in (obj, decoy)]
    for _ in range(rng.randint(5, 9)):
        place(rng.choice(others), [r for r in recs if _type_of(r) not in ("coffeemachine", "toaster")])
    for r in recs:
        rng.shuffle(contents[r])
    return contents


def _goal_text(kind, obj, target):
    prep = "in" if target in _PUT_IN else "on"
    goal = {"pick": f"put a {obj} {prep} {target}", "look": f"look at {obj} under the desklamp",
            "two": f"put two {obj} {prep} {target}"}
    return goal.get(kind, f"put a {_STATE.get(kind)} {obj} {prep} {target}")


def format_ranges(recs):
    """['drawer 1', 'drawer 2', 'drawer 3', 'shelf 2'] -> 'drawer 1-3, shelf 2' (ReAct: 'drawer (1-3)')."""
    out = []
    for r in recs:
        t, n = r.split()
        if out and out[-1][0] == t and out[-1][2] == int(n) - 1:
            out[-1][2] = int(n)
        else:
            out.append([t, int(n), int(n)])
    return ", ".join(f"{t} {a}" if a == b else f"{t} {a}-{b}" for t, a, b in out)


def parse_ranges(text):
    """Inverse of `format_ranges`."""
    return [f"{t} {n}" for t, a, b in re.findall(r"(\w+) (\d+)(?:-(\d+))?", text)
            for n in range(int(a), int(b or a) + 1)]


def receptacles(text):
    """The receptacles that a task's first observation (the first line of `text`) lists."""
    return re.findall(r"a (\w+ \d+)", text.split("\n", 1)[0])


def parse_plan(plan):
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
        # one seeded stream; the CRC parity of a world sets its split, so splits never overlap
        while len(self.tasks) < n_tasks:
            world = _generate_world(random.Random(f"alfworld/{seed}/{k}"), difficulty)
            k += 1
            if zlib.crc32(repr(sorted(world["contents"].items())).encode() + world["text"].encode()) % 2 == (
                split == "test"
            ):
                self.tasks.append(world)
        self._task, self._done = None, False

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
            return f"The {rec} is open. In it, you see {_listing(self._contents[rec])}."
        return f"On the {rec}, you see {_listing(self._contents[rec])}."

    def _act(self, a):
        """The reply to a normalised action, changing the world as it does."""
        if a.startswith("think:"):
            return "OK."
        if a == "inventory":
            return f"You are carrying: a {self._held}." if self._held else "You are not carrying anything."
        if a == "look":
            return f"You are facing the {self._loc}." if self._loc else self._first_obs.split("\n")[0]
        m = re.fullmatch(r"(go to|open|close|use|examine) (\w+ \d+)", a)
        if m and m[2] in self._world["recs"]:
            return self._act_on_receptacle(m[1], m[2])
        if m and (m[2] == self._held or self._within_reach(m[2])):
            return self._act_on_object(m[1], m[2])
        if m := re.fullmatch(r"take (\w+ \d+) from (\w+ \d+)", a):
            return self._take(m[1], m[2])
        if m := re.fullmatch(r"put (\w+ \d+) (?:in/on|in|on) (\w+ \d+)", a):
            return self._put(m[1], m[2])
        if m := re.fullmatch(r"(clean|heat|cool) (\w+ \d+) with (\w+ \d+)", a):
            return self._apply(m[1], m[2], m[3])
        # a known verb whose arguments fit nothing here gets ALFWorld's bare reply; only an unknown
        # command is told the action language
        if re.fullmatch(r"(go to|open|close|use|examine|take|put|clean|heat|cool) .*", a):
            return "Nothing happens."
        return f"Nothing happens. Valid actions: {_ACTIONS}."

    def _within_reach(self, obj):
        here = self._loc
        return here and self._visible(here) and obj in self._contents[here]

    def _act_on_receptacle(self, verb, rec):
        if verb == "go to":
            self._loc = rec
            if rec not in self._closed:
                self._searched.add(rec)
            return self._describe(rec)  # as Reflexion shows it: "You arrive at loc 5. " is cut
        here = self._loc
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

    def _act_on_object(self, verb, obj):
        """go to / open / close / use / examine an object that is held or in sight."""
        if verb == "use" and _type_of(obj) == "desklamp":
            self._lamps_on.add(obj)
            self._used.add(obj)
            self._new_subgoal = True
            return f"You turn on the {obj}."
        if verb == "examine":
            state = " ".join(sorted(self._objstate.get(obj, ()))) or "normal"
            return f"This is a {state} {obj}."
        return "Nothing happens."

    def _take(self, obj, rec):
        if (self._held or not self._visible(rec) or obj not in self._contents[rec]
                or obj.startswith("desklamp")):
            return "Nothing happens."
        self._contents[rec].remove(obj)
        self._held, self._new_subgoal = obj, True
        self._searched.clear()
        return f"You pick up the {obj} from the {rec}."

    def _put(self, obj, rec):
        if obj != self._held or not self._visible(rec):
            return "Nothing happens."
        self._contents[rec].append(obj)
        self._held, self._new_subgoal = None, True
        self._used.add(obj)
        self._searched.clear()
        return f"You put the {obj} in/on the {rec}."

    def _apply(self, verb, obj, rec):
        """clean / heat / cool the held object with the appliance here."""
        if obj != self._held or rec != self._loc or _type_of(rec) != _APPLIANCE[verb]:
            return "Nothing happens."
        states = self._objstate.setdefault(obj, set())
        states -= {"hot", "cool"}  # heating undoes cooling and vice versa
        states.add(_STATE[verb])
        self._new_subgoal = True
        return f"You {verb} the {obj} using the {rec}."

    def _goal_met(self):
        kind, obj, target = self._task
        if kind == "look":
            lit = self._loc is not None and any(o in self._lamps_on for o in self._contents[self._loc])
            return lit and self._held is not None and _type_of(self._held) == obj
        state = _STATE.get(kind)
        n = sum(_type_of(o) == obj and (state is None or state in self._objstate.get(o, ()))
                for r in self._world["recs"] if _type_of(r) == target for o in self._contents[r])
        return n >= (2 if kind == "two" else 1)

    def step(self, action):
        check_step(self._task is not None, self._done, action)
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
        if kind in _APPLIANCE and _STATE[kind] not in self._objstate.get(held, ()):
            app = next(r for r in self._world["recs"] if _type_of(r) == _APPLIANCE[kind])
            thought = self._thought(f"Now I {kind} the {held} with the {app}.")
            return thought, (f"go to {app}" if here != app else f"{kind} {held} with {app}")
        dest = next(r for r in self._world["recs"] if _type_of(r) == target)
        thought = self._thought(f"Now I put the {held} in/on the {dest}.")
        if here != dest:
            return thought, f"go to {dest}"
        return thought, (f"open {dest}" if dest in self._closed else f"put {held} in/on {dest}")

    def expert(self):
        """Scripted expert: goes straight to the needed object (hidden state) and finishes the task."""
        kind, obj, target = self._task
        here, held = self._loc, self._held
        if held and _type_of(held) != obj:  # recover from another policy's wrong pick: put it down
            spot = here if here and self._visible(here) and _type_of(here) != target else next(
                r for r in self._world["recs"] if r not in self._world["closed"] and _type_of(r) != target)
            return "", (f"put {held} in/on {spot}" if spot == here else f"go to {spot}")
        want = "desklamp" if kind == "look" and held else obj
        if held and want != "desklamp":
            return self._finish()
        rec = next(r for r in self._world["recs"] if _type_of(r) != target
                   for o in self._contents[r] if _type_of(o) == want)
        thought = self._thought(f"The {want} is at {rec}.")
        if self._loc != rec:
            return thought, f"go to {rec}"
        if rec in self._closed:
            return thought, f"open {rec}"
        o = next(o for o in self._contents[rec] if _type_of(o) == want)
        return thought, (f"use {o}" if want == "desklamp" else f"take {o} from {rec}")

    def explorer(self, rng, plan=None):
        """Memoryless heuristic: tours receptacles, likely places for the object type first (fixed order),
        opening closed ones; takes the first object of the wanted type - or of a look-alike (a cup for a
        mug) - that it sees; forgets sightings of other things. With `plan` (from `plan()`), it follows the
        plan instead: planned places first, 'Search ... first' places next, and only the exact type."""
        kind, obj, target = self._task
        at, first = parse_plan(plan) if plan else ({}, "")
        lamp = kind == "look" and self._held is not None
        if self._held and not lamp:
            return self._finish()
        want = "desklamp" if lamp else obj
        accept = {want} if plan or lamp or kind == "look" else {want, _LOOKALIKE.get(want, want)}
        if lamp:
            thought = self._thought("Now I look for a desklamp.")
        elif not self._used:
            thought = self._thought(rng.choice(["I need a {}.", "First I look for a {}."]).format(obj))
        else:
            thought = self._thought(f"The task is not complete yet. I need another {obj}.")
        here, recs = self._loc, self._world["recs"]
        if here and _type_of(here) != target and self._visible(here):
            for o in self._contents[here]:
                if _type_of(o) in accept and o not in self._used:
                    return thought, (f"use {o}" if lamp else f"take {o} from {here}")
        if here in self._closed and here not in self._searched and _type_of(here) != target:
            return thought, f"open {here}"
        prior = [t for t in _LIKELY[want] if any(_type_of(r) == t for r in recs)]
        # never the target itself (a pillow's only likely place, bed, is also where it must go)
        likely = sorted((r for r in recs if _type_of(r) in prior and _type_of(r) != target),
                        key=lambda r: prior.index(_type_of(r)))  # fmt: skip
        if plan:
            tour = at.get(want, []) + parse_ranges(first) + likely + recs
        else:  # only where it believes the thing is; once all are checked it goes round them again
            tour = likely or recs
        tour = [r for r in dict.fromkeys(tour) if r in recs and _type_of(r) != target]
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
        task = _TASK_RE.search(text)
        if task is None:
            return None
        two, obj, target = task[2] is not None, task[3] or task[5], task[4]
        seen, checked = {}, set()
        sightings = r"(?:On the (\w+ \d+), you see|The (\w+ \d+) is open\. In it, you see) ([^.]*)\."
        for m in re.finditer(sightings, text):
            checked.add(m[1] or m[2])
            for o in re.findall(r"a (\w+ \d+)", m[3]):
                seen.setdefault(o, m[1] or m[2])
        found = [r for o, r in seen.items() if _type_of(o) == obj and _type_of(r) != target]
        clauses = [f"{'A' if i == 0 else 'Another'} {obj} is at {r}." if two else f"The {obj} is at {r}."
                   for i, r in enumerate(found[: 2 if two else 1])]
        missing = len(found) < (2 if two else 1)
        if task[5]:
            lamps = [r for o, r in seen.items() if _type_of(o) == "desklamp"]
            clauses += [f"The desklamp is at {lamps[0]}."] if lamps else []
            missing = missing or not lamps
        decoy = _LOOKALIKE.get(obj)
        if decoy and re.search(rf"You pick up the {decoy} \d+", text):
            clauses.append(f"Use a {obj}, not a {decoy}.")
        if missing:
            recs = receptacles(text)
            unchecked = [r for r in recs if r not in checked and _type_of(r) != target]
            clauses += [f"Search {format_ranges(unchecked)} first."] if unchecked else []
        return " ".join(clauses) or None

    def render(self, trajectory, first_obs=None):
        """An episode as ALFWorld's ReAct text: first observation (default: the current task's), then
        '> action' / observation lines; a thought shows as ReAct's '> think: ...' / 'OK.'."""
        lines = [self._first_obs if first_obs is None else first_obs]
        for thought, action, obs in episode_steps(trajectory):
            lines += [f"> think: {thought}\nOK."] if thought else []
            lines.append(f"> {action}\n{obs}")
        return "\n".join(lines)
