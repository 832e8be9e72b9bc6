"""The actor: a frozen LLM that solves tasks by ReAct steps (Thought / Action / Observation).

Trajectories, the actor's and the retrospector's prompts (with the reflection memory), parsing of the
actor's completions, episodes run many at a time and logged as JSON Lines, and two LLM backends with
one `complete()` method: an OpenAI-compatible HTTP endpoint, or a local model.py checkpoint, which
`python actor.py serve --model PATH` exposes over the OpenAI protocol (infra/server.py).
"""

from __future__ import annotations

import collections
import concurrent.futures
import copy
import json
import logging
import re
import threading
from dataclasses import asdict, dataclass, field

import torch

import model as modelpy
from infra import http, parallel, server
from infra import quantize as quant
from infra.prefix_cache import PrefixCache
from lora import fold_lora, load_lora

log = logging.getLogger("retroformer.actor")

STOP = ("\nObservation",)  # the actor writes Thought + Action; the environment writes the Observation


# ----------------------------------------------------------------------------- trajectories


def render_step(thought: str, action: str, observation: str) -> str:
    return f"Thought: {thought}\nAction: {action}\nObservation: {observation}\n"


LOG_TAGS = ("update", "rank", "attempt", "seed", "method")  # keys train.py / eval.py add to logged trials


@dataclass
class Trajectory:
    """One trial of the actor on one task."""

    env: str
    task: int
    trial: int
    instruction: str  # env.reset(task): instruction and first observation
    steps: list[tuple[str, str, str, float]] = field(default_factory=list)  # (thought, action, obs, reward)
    ret: float = 0.0  # the return: sum of rewards (written as "return" in JSON)
    success: bool = False
    reflections: list[str] = field(default_factory=list)  # the memory the actor saw in its prompt
    error: str | None = None  # the backend failed: the episode is void, not a task failure

    def text(self) -> str:
        """The episode as the actor sees it: instruction, then Thought / Action / Observation lines."""
        return self.instruction.rstrip("\n") + "\n" + "".join(render_step(*s[:3]) for s in self.steps)

    def to_json(self, **tags) -> str:
        """One JSON line; `tags` (LOG_TAGS: which run, update, seed or method made it) come first."""
        d = {**tags, **asdict(self)}
        d["return"] = d.pop("ret")
        return json.dumps(d)

    @classmethod
    def from_json(cls, line: str) -> Trajectory:
        d = json.loads(line)
        try:
            for key in LOG_TAGS:
                d.pop(key, None)
            d["ret"] = d.pop("return")
            d["steps"] = [tuple(s) for s in d["steps"]]
            return cls(**d)
        except (KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"not a Trajectory record ({type(e).__name__}: {e}): {line[:200]!r}") from None


# ----------------------------------------------------------------------------- prompts

HEADER = (
    "Solve the task by interleaving Thought, Action and Observation steps. A Thought reasons about the "
    "current situation; an Action is one command to the environment, written on the line after the "
    "Thought; the environment answers with an Observation."
)
ELIDED = "[{n} earlier steps elided to fit the context window]\n"
# A step whose action and observation repeat an earlier step's (a loop: ALFWorld's explorer touring the
# same places again) tells the retrospector nothing new, so a long reflection prompt drops those first.
REPEATS = "[{n} steps elided that repeat an earlier step's action and observation]\n"


def estimate_tokens(text: str) -> int:
    """Token count when no tokenizer is at hand: one token per 3 UTF-8 bytes. BPE vocabularies average
    about 4 bytes per token on English, so this errs long: a margin for numbers, code and chat templates."""
    return len(text.encode("utf-8")) // 3 + 1


def format_memory(reflections, k: int = 3) -> str:
    """The last k reflections under Reflexion's memory header ("" when there are none)."""
    if not reflections or k <= 0:
        return ""
    first = max(0, len(reflections) - k)
    lines = ["Your memory for the task below:"]
    for j in range(first, len(reflections)):
        lines += [f"Trial {j + 1}:", reflections[j].strip()]
    return "\n".join(lines) + "\n"


def parse_memory(text: str) -> list[str]:
    """The reflections of a memory block written by format_memory ([] when `text` holds none)."""
    head = "Your memory for the task below:\n"
    if head not in text:
        return []
    return [r.strip() for r in re.split(r"^Trial \d+:\n", text.rsplit(head, 1)[1], flags=re.M)[1:]]


def _fit(assemble, n_steps: int, n_examples: int, fits) -> str:
    """The first assemble(n_elided, n_ex) that fits, trying in order: elide the oldest steps down to
    the last one (binary search: fewer steps, shorter prompt), drop few-shot examples (last first),
    elide the last step."""
    if fits(text := assemble(0, n_examples)):
        return text
    if n_steps > 1 and fits(assemble(n_steps - 1, n_examples)):
        lo, hi = 1, n_steps - 1  # the fewest elided steps that fit lies in [lo, hi]
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if fits(assemble(mid, n_examples)) else (mid + 1, hi)
        return assemble(lo, n_examples)
    for n_elided, n_ex in [(max(n_steps - 1, 0), x) for x in reversed(range(n_examples))] + [(n_steps, 0)]:
        if fits(text := assemble(n_elided, n_ex)):
            return text
    raise ValueError("prompt does not fit the context window even with every step and example left out: "
                     "the instruction and memory alone are too long "
                     "(raise the context window or lower max_tokens)")


def build_prompt(instruction: str, steps, reflections=(), examples=(), k: int = 3, count_tokens=None,
                 max_prompt_tokens: int | None = None) -> str:  # fmt: skip
    """The actor's prompt: header, few-shot examples, the last k reflections, the task, the steps so far.

    When the prompt would have more than max_prompt_tokens (counted with count_tokens), the oldest
    steps are replaced by a marker line (then examples dropped); the instruction and memory always stay.
    """
    rendered = [render_step(*s[:3]) for s in steps]
    memory = format_memory(reflections, k)

    def assemble(n_elided, n_ex):
        parts = [HEADER + "\n\n"]
        if n_ex:
            parts.append("Here are some examples:\n" + "\n".join(examples[:n_ex]) + "(END OF EXAMPLES)\n\n")
        parts += [memory + "\n" if memory else "", instruction.rstrip("\n") + "\n"]
        parts += [ELIDED.format(n=n_elided) if n_elided else ""] + rendered[n_elided:] + ["Thought:"]
        return "".join(parts)

    if max_prompt_tokens is None:
        return assemble(0, len(examples))
    count = count_tokens or estimate_tokens
    return _fit(assemble, len(steps), len(examples), lambda t: count(t) <= max_prompt_tokens)


REFLECT_HEADER = (
    "You are an advanced reasoning agent that improves by self-reflection. Below is a previous trial in "
    "which you tried to complete a task and failed. In one short paragraph, state the root cause of the "
    "failure, then a concise plan for the next trial that avoids it, starting with 'Plan:'."
)


def build_reflection_prompt(traj: Trajectory, examples=(), count_tokens=None,
                            max_prompt_tokens: int | None = None) -> str:  # fmt: skip
    """The retrospector's prompt: the task and the failed trajectory; the answer is the reflection.

    When the prompt would have more than max_prompt_tokens, the steps that repeat an earlier step's
    action and observation are left out first (what was seen where stays readable: the eliding that
    follows, of the oldest steps, would drop first sightings), then the oldest steps, then examples.
    """
    rendered = [render_step(*s[:3]) for s in traj.steps]
    outcome = f"(The trial ended {'with' if traj.success else 'without'} success; return {traj.ret:g}.)\n\n"
    note = ""  # the repeats marker, once they are left out

    def assemble(n_elided, n_ex):  # reads `rendered` and `note` as they are when called
        parts = [REFLECT_HEADER + "\n\n"]
        if n_ex:
            shots = "\n\n".join(examples[:n_ex])
            parts.append(f"Here are some examples:\n{shots}\n(END OF EXAMPLES)\n\n")
        parts += ["Previous trial:\n", traj.instruction.rstrip("\n") + "\n", note]
        parts += [ELIDED.format(n=n_elided) if n_elided else ""] + rendered[n_elided:]
        return "".join(parts + [outcome, "Reflection:"])

    if max_prompt_tokens is None:
        return assemble(0, len(examples))
    count = count_tokens or estimate_tokens
    fits = lambda t: count(t) <= max_prompt_tokens
    fresh, seen = [], set()  # the steps whose (action, observation) no earlier step had
    for step, text in zip(traj.steps, rendered, strict=True):
        if step[1:3] not in seen:
            fresh.append(text)
        seen.add(step[1:3])
    if len(fresh) < len(rendered) and not fits(assemble(0, len(examples))):
        rendered, note = fresh, REPEATS.format(n=len(rendered) - len(fresh))
    return _fit(assemble, len(rendered), len(examples), fits)


_OBS_RE = re.compile(r"^\s*observation\s*\d*\s*:", re.I | re.M)
_ACTION_RE = re.compile(r"(?:^|\s)\**action\s*\d*\s*\**\s*:\s*\**\s*(.*)$", re.I)
_THOUGHT_RE = re.compile(r"^\**thought\s*\d*\s*\**\s*:\s*\**\s*", re.I)
_COMMAND_RE = re.compile(r"^[A-Za-z][\w ]*\[[^\]\n]*\]")  # Search[x], click[Buy Now], finish[...]


def _clean_action(a: str) -> str:
    a = a.strip().strip("`*\"'").strip()
    m = _COMMAND_RE.match(a)
    return m.group(0) if m else a.rstrip(".").strip()  # "Search[x] to find y" -> "Search[x]"


def parse_action(completion: str) -> tuple[str, str]:
    """(thought, action) from one completion of the prompt (which ends with "Thought:").

    Accepts "Thought: t\\nAction: a", numbered "Action 2: a", ALFWorld-style "> go to desk 1"
    ("> think: ..." is a thought), a bare "Search[x]", a missing Thought, and extra text after the
    action or a hallucinated Observation (cut). The action is "" when none is found; the
    environment then answers with an informative observation.
    """
    m = _OBS_RE.search(completion)
    text = completion[: m.start()] if m else completion
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    thoughts = []
    for j, line in enumerate(lines):
        if line.startswith(">"):
            cmd = line[1:].strip()
            if cmd.lower().startswith("think:"):
                thoughts.append(cmd[len("think:") :].strip())
                continue
            return " ".join(thoughts), _clean_action(cmd)
        m = _ACTION_RE.search(line)
        if m:
            before = _THOUGHT_RE.sub("", line[: m.start()].strip())
            action = m.group(1) or (lines[j + 1] if j + 1 < len(lines) else "")  # "Action:\nSearch[x]"
            return " ".join(thoughts + ([before] if before else [])), _clean_action(action)
        thoughts.append(_THOUGHT_RE.sub("", line))
    # no marked action: a bracket command on a line of its own, else the line after the thought
    for j, t in enumerate(thoughts):
        if _COMMAND_RE.fullmatch(t.rstrip(".")):
            return " ".join(thoughts[:j]), _clean_action(t)
    if len(thoughts) >= 2:
        return " ".join(thoughts[:-1]), _clean_action(thoughts[-1])
    return " ".join(thoughts), ""


# ----------------------------------------------------------------------------- episodes


class Episode:
    """One trial of the actor on task i, advanced one completion at a time, so that a driver can
    put the next prompts of many episodes into one batch."""

    def __init__(self, env, i: int, llm, reflections=(), trial: int = 0, examples=(), k: int = 3,
                 max_tokens: int = 256):  # fmt: skip
        self.env, self.llm, self.k, self.done = env, llm, k, False
        instruction = env.reset(i)
        # an example of this very task would hand the actor its solution
        self.examples = [e for e in examples if not e.startswith(instruction.rstrip("\n"))]
        used = list(reflections)[-k:] if k > 0 else []
        self.traj = Trajectory(env.name, i, trial, instruction, reflections=used)
        window = getattr(llm, "context_window", None)
        self.max_prompt_tokens = None if window is None else window - max_tokens

    def prompt(self) -> str:
        t, count = self.traj, getattr(self.llm, "count_tokens", None)
        return build_prompt(t.instruction, t.steps, t.reflections, self.examples, self.k, count,
                            self.max_prompt_tokens)  # fmt: skip

    def advance(self, completion: str):
        thought, action = parse_action(completion)
        obs, reward, done, info = self.env.step(action)
        t = self.traj
        t.steps.append((thought, action, obs, float(reward)))
        t.ret += float(reward)
        if done:
            if "success" not in info:
                raise KeyError(f"{t.env}: step() returned done=True without info['success']")
            t.success, self.done = bool(info["success"]), True
        elif len(t.steps) >= self.env.max_steps:  # the env should end it; never loop past the limit
            self.done = True


def run_trial(env, i: int, llm, reflections=(), trial: int = 0, examples=(), k: int = 3,
              max_tokens: int = 256, temperature: float = 0.0) -> Trajectory:  # fmt: skip
    """Run one trial of the actor on task i of env; raises LLMError if the backend fails."""
    ep = Episode(env, i, llm, reflections, trial, examples, k, max_tokens)
    while not ep.done:
        ep.advance(llm.complete([ep.prompt()], max_tokens, temperature, STOP)[0])
    return ep.traj


class LLMError(http.ServiceError):
    """The backend could not complete a prompt (retries exhausted, or an error retrying cannot fix)."""


class RolloutError(RuntimeError):
    """Some episodes of run_trials() failed in the backend; .trajectories holds all results."""

    def __init__(self, message: str, trajectories: list[Trajectory]):
        super().__init__(message)
        self.trajectories = trajectories


def run_trials(make_env, tasks, llm, memories=None, trial: int = 0, log_path=None, concurrency: int = 8,
               examples=(), k: int = 3, max_tokens: int = 256, temperature: float = 0.0,
               strict: bool = True, max_consecutive_errors: int = 3,
               log_tags: dict | None = None) -> list[Trajectory]:  # fmt: skip
    """Run one trial on each of `tasks` (task indices), `concurrency` episodes at a time.

    make_env: a factory returning a fresh env (or an env, which is deep-copied: envs are not
    thread-safe, so each live episode gets its own instance). memories: one list of reflections per
    task. Backends with `batched = True` (LocalLLM) step all live episodes together, one complete()
    call per step; others (HTTPLLM) run one episode per thread. Each finished episode is appended to
    the JSON Lines file log_path at once, with the keys of log_tags (a dict of LOG_TAGS) first. An
    episode whose backend failed gets `error` set; after max_consecutive_errors such episodes in a row
    the rest are not started (recorded as errors too).
    Returns trajectories in task order; if any episode errored and strict, raises RolloutError.
    """
    if hasattr(make_env, "reset") and not isinstance(make_env, type):  # an env, not a factory
        template = make_env
        make_env = lambda: copy.deepcopy(template)
    tasks = list(tasks)
    if set(log_tags or ()) - set(LOG_TAGS):
        raise ValueError(f"run_trials: log_tags keys must be among {LOG_TAGS}, got {sorted(log_tags)}")
    memories = [[] for _ in tasks] if memories is None else list(memories)
    if len(memories) != len(tasks):
        raise ValueError(f"run_trials: {len(memories)} memories for {len(tasks)} tasks")
    if concurrency < 1:
        raise ValueError(f"run_trials: concurrency must be >= 1, got {concurrency}")
    book = parallel.Book(make_env, len(tasks), log_path, log_tags, max_consecutive_errors)
    shown = lambda j: list(memories[j])[-k:] if k > 0 else []
    start = lambda j: Episode(book.take_env(), tasks[j], llm, memories[j], trial, examples, k, max_tokens)
    void = lambda j: Trajectory(book.env_name, tasks[j], trial, "", reflections=shown(j), error=book.abort)
    step = lambda eps: llm.complete([ep.prompt() for ep in eps], max_tokens, temperature, STOP)
    run = parallel.run_batched if getattr(llm, "batched", False) else parallel.run_threaded
    with book:
        run(book, range(len(tasks)), start, void, step, concurrency, errors=(http.ServiceError,))
    errors = [t for t in book.results if t.error]
    if errors:
        reasons = collections.Counter(t.error for t in errors).most_common(3)
        summary = (f"{len(errors)} of {len(tasks)} episodes failed in the backend (not task failures): "
                   + "; ".join(f"{n}x {r}" for r, n in reasons))  # fmt: skip
        log.error(summary)
        if strict:
            raise RolloutError(summary, book.results)
    return book.results


# ----------------------------------------------------------------------------- backends


class HTTPLLM:
    """An OpenAI-compatible endpoint (OpenAI, vLLM, llama.cpp server, Ollama, `actor.py serve`).

    api: "completions" (the prompt as is) or "chat" (the prompt as one user message). The key is read
    from the environment variable api_key_env (none is sent when it is unset) and never printed or
    logged. infra/http.py speaks the protocol and retries what can be retried; other errors raise
    LLMError at once with what to fix. Tokens are counted with `tokenizer` (a model.py Tokenizer) when
    given, else with estimate_tokens()."""

    batched = False

    def __init__(self, base_url: str = "http://127.0.0.1:8000/v1", model: str = "default",
                 api: str = "completions", api_key_env: str = "OPENAI_API_KEY", tokenizer=None,
                 context_window: int = 8192, max_concurrency: int = 8, timeout=(5.0, 120.0),
                 max_retries: int = 6, backoff: float = 1.0, max_backoff: float = 60.0,
                 top_p: float = 1.0):  # fmt: skip
        if max_concurrency < 1:
            raise ValueError(f"HTTPLLM: need max_concurrency >= 1, got {max_concurrency}")
        self.client = http.OpenAIClient(base_url, model, api, api_key_env, max_concurrency, timeout,
                                        max_retries, backoff, max_backoff, top_p, error=LLMError)  # fmt: skip
        self.api, self.tokenizer, self.context_window = api, tokenizer, context_window
        self._pool = concurrent.futures.ThreadPoolExecutor(max_concurrency)
        self.finish_reasons = collections.Counter()  # "length": a completion cut at max_tokens
        self._count = threading.Lock()

    def __repr__(self):
        c = self.client
        return f"HTTPLLM(url={c.url!r}, model={c.model!r}, api_key_env={c.api_key_env!r})"

    def check(self):
        """One tiny request before a run: a wrong URL, model name or key, or a server that is not up, fails
        here with what to fix, not later as a run of void episodes."""
        self.client.check()

    def count_tokens(self, text: str) -> int:
        n = len(self.tokenizer.encode(text)) if self.tokenizer is not None else estimate_tokens(text)
        return n + (16 if self.api == "chat" else 1)  # chat template / BOS overhead

    def complete(self, prompts: list[str], max_tokens: int = 256, temperature: float = 0.0,
                 stop=STOP) -> list[str]:  # fmt: skip
        def one(prompt):
            text, reason = self.client.complete(prompt, max_tokens, temperature, stop)
            with self._count:
                self.finish_reasons[reason] += 1
            return text

        return [one(prompts[0])] if len(prompts) == 1 else list(self._pool.map(one, prompts))


def load_frozen(path, device="cpu", dtype=None, quantize="", adapter=""):
    """A checkpoint's model for frozen use (the actor; the retrospector before its PPO adapters).
    adapter: a lora.save_lora file folded into the weights first (scripts/bc_lora.py makes one).
    quantize: "" | "int8" | "int4" weight-only (infra/quantize.py), layer by layer onto `device`."""
    model = modelpy.from_pretrained(path, device="cpu" if quantize or adapter else device, dtype=dtype)
    if adapter:
        fold_lora(load_lora(model, adapter))
    return quant.quantize(model, quantize, device=device)


class LocalLLM:
    """A model.py checkpoint in this process; complete() runs all prompts as one generate() call.

    prefix_cache: keep the keys/values of recent prompts (infra/prefix_cache.py), so that an episode's next
    step encodes only its new tokens, not the whole prompt again. The model's weights must not change
    while it is on (else call `self.prefix_cache.clear()`).
    """

    batched = True

    def __init__(self, model, tokenizer, top_p: float = 1.0, seed: int = 0, prefix_cache: bool = True):
        self.model, self.tokenizer, self.top_p = model.eval(), tokenizer, top_p
        # room for the last step of every episode of a few batches; the keys/values capped at 2 GiB
        self.prefix_cache = PrefixCache(64, max_bytes=2 << 30) if prefix_cache else None
        self.context_window = model.config.max_seq_len
        device = next(model.parameters()).device
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.stop_ids = tuple(tokenizer.stop_ids)  # eos, <|eot_id|>, ...
        self._lock = threading.Lock()  # one generate() at a time: the sampler's generator is shared
        self.finish_reasons = collections.Counter()  # "length": a completion cut at max_tokens

    @classmethod
    def load(cls, path, device="cpu", dtype=None, quantize="", adapter="", **kw) -> LocalLLM:
        return cls(load_frozen(path, device, dtype, quantize, adapter), modelpy.load_tokenizer(path), **kw)

    def encode(self, text: str) -> list[int]:
        bos = self.tokenizer.bos_id
        return ([bos] if bos is not None else []) + self.tokenizer.encode(text)

    def encode_chat(self, messages: list[dict]) -> list[int]:
        # encode_chat keeps control-token text typed inside a message as plain text (no injection)
        return self.tokenizer.encode_chat(messages)

    def count_tokens(self, text: str) -> int:
        return len(self.encode(text))

    def generate(self, prompts: list[list[int]], max_tokens: int, temperature: float = 0.0,
                 top_p: float | None = None, stop=()):  # fmt: skip
        """model.generate on token-id prompts -> list of model.Generation (text, tokens, finish_reason)."""
        for j, p in enumerate(prompts):
            if len(p) + max_tokens > self.context_window:
                raise ValueError(f"prompt {j}: {len(p)} tokens + max_tokens {max_tokens} exceed the "
                                 f"context window of {self.context_window} tokens")
        with self._lock:
            gens = modelpy.generate(self.model, prompts, max_tokens, temperature=temperature,
                                   top_p=self.top_p if top_p is None else top_p, stop_ids=self.stop_ids,
                                   stop_strings=tuple(stop), tokenizer=self.tokenizer,
                                   generator=self.generator, prefix_cache=self.prefix_cache)  # fmt: skip
            self.finish_reasons.update(g.finish_reason for g in gens)
        return gens

    def complete(self, prompts: list[str], max_tokens: int = 256, temperature: float = 0.0,
                 stop=STOP) -> list[str]:  # fmt: skip
        gens = self.generate([self.encode(p) for p in prompts], max_tokens, temperature, stop=stop)
        return [g.text for g in gens]


if __name__ == "__main__":  # python actor.py serve --model PATH: this checkpoint over the OpenAI protocol
    server.main(LocalLLM.load)
