"""The real ALFWorld: the `alfworld` package's TextWorld games (Shridhar et al., 2021), as Reflexion and
Retroformer ran them, behind the env contract of envs.py.

`envs.make("alfworld", split, source="alfworld", data=PATH)` plays the game.tw-pddl files under PATH
(what `alfworld-download` writes to $ALFWORLD_DATA) on TextWorld's PDDL engine: train is
json_2.1.1/train, test is json_2.1.1/valid_unseen (the 134 unseen games the papers report). The games
are chosen as alfworld's own AlfredTWEnv chooses them (the six task types, no movable or sliced
receptacles, solvable), then sorted by path, so that the task list never depends on the order in which
the file system lists folders; `task_list_sha256(ids)` hashes the games run, path and bytes.

What follows Reflexion's alfworld_runs harness: the TextWorld banner is cut from the first observation,
`think: ...` answers "OK." without reaching the engine, an episode ends after `max_steps` (50) actions,
and success is the engine's `won` only: an episode stopped by the step limit fails. alfworld 0.4 renamed
"put X in/on Y" to "move X to Y"; the ReAct prompts (and this project's generated world) use the old
words, so the adapter sends the new command when the old one is not admissible (sent unchanged, each
"put" answers "Nothing happens.").
"""

import functools
import hashlib
import importlib.metadata
import json
import os
import re
import threading

from worlds.episodes import check_step

ALFWORLD_VERSION = "0.4.2"  # requirements-alfworld.txt pins it; its games use the "move X to Y" grammar
SPLITS = {"train": "json_2.1.1/train", "test": "json_2.1.1/valid_unseen"}
TASK_TYPES = ("pick_and_place_simple", "look_at_obj_in_light", "pick_clean_then_place_in_recep",
              "pick_heat_then_place_in_recep", "pick_cool_then_place_in_recep", "pick_two_obj_and_place")
_PUT = re.compile(r"put (.+?) in/on (.+)")
# Each engine loads its own 33 MB copy of Fast Downward's library and never unloads it, so engines are
# pooled: an episode takes one at reset() and gives it back when it ends (or when its env is collected).
# TextWorld promises no thread safety: engine calls are serialised (~20 ms a step, ~0.3 s a game load).
_ENGINE_LOCK = threading.RLock()  # re-entrant: __del__ may run inside a locked call
_FREE_ENGINES = []


def check_alfworld() -> None:
    """Fail at start-up, naming the versions, when alfworld or TextWorld's PDDL engine is missing or not
    the pinned alfworld: another version plays other games or other command words."""
    fix = "pip install -r requirements-alfworld.txt"
    try:
        found = importlib.metadata.version("alfworld")
    except importlib.metadata.PackageNotFoundError:
        raise ImportError(f"source='alfworld' needs the alfworld package ({ALFWORLD_VERSION}): {fix}") \
            from None
    if found != ALFWORLD_VERSION:
        raise ImportError(f"source='alfworld' needs alfworld=={ALFWORLD_VERSION}, found {found} (another "
                          f"version has other games or command words): {fix}")
    try:
        import fast_downward  # noqa: F401  TextWorld's PDDL engine, from textworld[pddl]
    except ImportError:
        raise ImportError(f"source='alfworld' needs TextWorld's PDDL engine (fast_downward): {fix}") from None


@functools.lru_cache(maxsize=8)
def collect_games(data: str, split: str) -> tuple[str, ...]:
    """The game.tw-pddl paths (relative to `data`) of `split`, sorted, chosen as AlfredTWEnv does."""
    root = os.path.join(data, SPLITS[split])
    if not os.path.isdir(root):
        raise FileNotFoundError(f"ALFWorld data: {root} is not a folder (data={data!r}, split={split!r}); "
                                "fetch the games with `alfworld-download` (it writes to $ALFWORLD_DATA)")
    games = []
    for folder, _, files in os.walk(root):
        if "traj_data.json" not in files or "movable" in folder or "Sliced" in folder:
            continue
        game = os.path.join(folder, "game.tw-pddl")
        traj = _read_json(os.path.join(folder, "traj_data.json"))
        if traj.get("task_type") not in TASK_TYPES or not os.path.exists(game):
            continue
        if _read_json(game).get("solvable") is True:
            games.append(os.path.relpath(game, data))
    if not games:
        raise FileNotFoundError(f"ALFWorld data: no solvable game.tw-pddl under {root}")
    return tuple(sorted(games))


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"ALFWorld data: {path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"ALFWorld data: {path}: expected a JSON object, got {type(data).__name__}")
    return data


class RealALFWorldEnv:
    """ALFWorld's games on the TextWorld engine. Options: `data` (the alfworld-download folder; default
    $ALFWORLD_DATA, else ~/.cache/alfworld, as alfworld's own), `n_tasks` (the first n games of the sorted
    list; default all), `max_steps` (50)."""

    name = "alfworld"

    def __init__(self, split="train", seed=0, data=None, n_tasks=None, max_steps=50, source="alfworld"):
        if source != "alfworld":
            raise ValueError(f"alfworld source must be None (generated) or 'alfworld', got {source!r}")
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}: expected 'train' or 'test'")
        if not (isinstance(max_steps, int) and max_steps > 0):
            raise ValueError(f"max_steps must be a positive int, got {max_steps!r}")
        if n_tasks is not None and not (isinstance(n_tasks, int) and n_tasks > 0):
            raise ValueError(f"n_tasks must be a positive int or None, got {n_tasks!r}")
        data = data or os.environ.get("ALFWORLD_DATA") or "~/.cache/alfworld"  # alfworld-download's default
        check_alfworld()
        self.data, self.split, self.max_steps = os.path.abspath(os.path.expanduser(data)), split, max_steps
        self.games = collect_games(self.data, split)[:n_tasks]  # seed: the games are fixed, not drawn
        self._game = self._engine = None
        self._done = False

    def __copy__(self):  # copies share the game list, never an engine (a copy runs its own episodes)
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__, _game=None, _engine=None, _done=False)
        return new

    def __deepcopy__(self, memo):
        return self.__copy__()

    def __del__(self):
        if _FREE_ENGINES is not None:  # None at interpreter shutdown, when the pool is gone already
            self._give_back()

    def _give_back(self):
        if getattr(self, "_engine", None) is not None:
            with _ENGINE_LOCK:
                _FREE_ENGINES.append(self._engine)
            self._engine = None

    def __len__(self):
        return len(self.games)

    def task_list_sha256(self, ids) -> str:
        """sha256 over the games `ids` (path and file bytes): equal hashes, equal tasks."""
        h = hashlib.sha256()
        for i in ids:
            with open(os.path.join(self.data, self.games[i]), "rb") as f:
                h.update(f"{self.games[i]}\0{hashlib.sha256(f.read()).hexdigest()}\n".encode())
        return h.hexdigest()

    def reset(self, i):
        if not (isinstance(i, int) and 0 <= i < len(self.games)):
            raise IndexError(f"task index {i!r} out of range for the {len(self.games)} {self.split} games")
        path = os.path.join(self.data, self.games[i])
        with _ENGINE_LOCK:
            if self._engine is None:
                self._engine = _FREE_ENGINES.pop() if _FREE_ENGINES else _engine()
            try:
                self._engine.load(path)
                state = self._engine.reset()
            except Exception as e:  # the engine's parse errors name neither the file nor the game
                raise ValueError(f"ALFWorld game {path} does not load: {type(e).__name__}: {e}") from e
        self._game, self._steps, self._done = i, 0, False
        self._admissible = list(state["admissible_commands"])
        # Reflexion: '\n'.join(ob.split('\n\n')[1:]) drops "-= Welcome to TextWorld, ALFRED! =-"
        return "\n".join(state["feedback"].strip().split("\n\n")[1:])

    def step(self, action):
        check_step(self._game is not None, self._done, action)
        self._steps += 1
        action = " ".join(action.strip().split()).rstrip(".")
        won = False
        if action.lower().startswith("think:"):
            obs = "OK."
        else:
            with _ENGINE_LOCK:
                state, _, _ = self._engine.step(self.command(action))
            obs, won = state["feedback"].strip(), bool(state["won"])
            self._admissible = list(state["admissible_commands"])
        self._done = won or self._steps >= self.max_steps
        if self._done:
            self._give_back()
        return obs, float(won), self._done, {"success": won, "steps": self._steps,
                                             "admissible_commands": list(self._admissible)}

    def command(self, action: str) -> str:
        """The engine's words for `action`: 'put X in/on Y' becomes 'move X to Y' when only that is
        admissible (alfworld 0.4's grammar)."""
        m = _PUT.fullmatch(action)
        if m and action not in self._admissible and f"move {m[1]} to {m[2]}" in self._admissible:
            return f"move {m[1]} to {m[2]}"
        return action

    def admissible_commands(self) -> list[str]:
        """What the engine accepts now (the 'admissible commands' of ALFWorld's info dict)."""
        return list(self._admissible)

    def _scripted(self, *args, **kwargs):
        raise NotImplementedError("alfworld expert(), explorer() and plan() need the generated world "
                                  "(source=None): the real games have no script; PPO's reward needs none")

    expert = explorer = plan = _scripted


def _engine():
    """TextWorld's PDDL engine, with alfworld's names for the games' objects ("mug 1")."""
    from alfworld.agents.environment.alfred_tw_env import AlfredDemangler
    from textworld import EnvInfos
    from textworld.envs.pddl.pddl import PddlEnv

    return AlfredDemangler(PddlEnv(EnvInfos(won=True, admissible_commands=True)), shuffle=False)
