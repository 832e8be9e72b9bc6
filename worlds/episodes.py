"""Episode helpers shared by the worlds: a trajectory's steps, its ReAct text, a scripted rollout."""


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


def check_step(started: bool, done: bool, action) -> None:
    """The errors of a step() called out of turn or with a non-string action."""
    if not started:
        raise RuntimeError("call reset(i) before step()")
    if done:
        raise RuntimeError("the episode is over (done=True): call reset(i) to start a new one")
    if not isinstance(action, str):
        raise TypeError(f"action must be a str, got {type(action).__name__}")


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
