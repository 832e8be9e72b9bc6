"""Retroformer: train the retrospector's LoRA by PPO on the change of return its reflections bring.

    python train.py                                      # offline default: scripted actor, tiny retrospector
    python train.py config/hotpotqa_http_llama3.py --updates=20
    torchrun --nproc_per_node=2 train.py --device=cpu     # rollouts sharded over ranks, DDP update

Per update (one epoch of the paper's algorithm box):
    sample training tasks; trial 0 of the frozen actor with an empty memory
    for k = 1 .. max_trials-1, on the tasks not solved yet:
        the retrospector samples a reflection on the failed trial k-1 (adapters on, temperature ~1)
        the actor retries with the reflection in its memory; reward(reflection) = G_k - G_{k-1}
    PPO update of the retrospector's LoRA (+ value head) on the (prompt, reflection, reward) records

One LoRA is trained over all environments of `envs`; eval.py reports each environment.
Files in out_dir: replay.jsonl (every reflection and its reward, appended as made), episodes.jsonl
(every trial), metrics.jsonl (one line per update), ckpt.pt (everything --resume needs) and
adapters.pt (what eval.py loads). With torchrun, ranks > 0 write replay.rank{r}.jsonl and
episodes.rank{r}.jsonl; rank 0 the rest.
"""

import contextlib
import json
import os
import random
import subprocess
import sys
import time
import uuid
import zlib
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

import envs
import model as modelpy
from actor import HTTPLLM, LLMError, LocalLLM, build_reflection_prompt, load_frozen, run_trials
from infra import config as configurator
from infra import ddp, runlog, runstate
from lora import apply_lora, disable_lora, lora_report
from ppo import PPOConfig, PPOTrainer, sample_responses
from worlds.scripted import ExpertLLM, ExplorerLLM, few_shot_examples

ROOT = os.path.dirname(os.path.abspath(__file__))

# ----------------------------------------------------------------------------- config


@dataclass
class Config:
    # run
    out_dir: str = "out"
    seed: int = 0
    resume: bool = False  # continue from out_dir/ckpt.pt
    device: str = "cpu"  # "cuda" on a GPU (torchrun: cuda:LOCAL_RANK)
    dtype: str = "float32"  # bfloat16 | float16 | float32: the frozen weights; LoRA stays float32
    quantize: str = ""  # "" | int8 | int4: weight-only quantized frozen projections (infra/quantize.py)
    progress: bool = True  # tqdm bars
    threads: int = 0  # torch CPU threads; 0 = torch's default (one per core)
    # environments
    envs: str = "hotpotqa,alfworld,webshop"
    env_seed: int = 0  # the generated world (train and test splits never overlap)
    env_options: str = '{"alfworld": {"max_steps": 25}}'  # JSON {env: {option: value}} for envs.make
    # actor (frozen)
    actor: str = "explorer"  # local (model.py) | http (OpenAI-compatible) | expert | explorer (scripted)
    actor_path: str = "checkpoints/tiny/actor"  # actor=local
    actor_adapter: str = ""  # actor=local: a LoRA file folded into the actor (scripts/bc_lora.py)
    actor_url: str = "http://127.0.0.1:8000/v1"  # actor=http
    actor_model: str = "default"  # actor=http: the model name the server knows
    actor_api: str = "completions"  # completions | chat
    actor_api_key_env: str = "OPENAI_API_KEY"  # the environment variable holding the key
    actor_context_window: int = 8192  # actor=http; a local actor reads max_seq_len
    actor_timeout: float = 120.0  # actor=http: seconds to wait for a reply before retrying
    actor_max_retries: int = 6  # actor=http: retries of a failed request, waits doubling from actor_backoff
    actor_backoff: float = 1.0  # seconds (at most 60; a server's Retry-After wins)
    actor_max_tokens: int = 64  # per ReAct step
    actor_temperature: float = 0.0
    concurrency: int = 16  # episodes in flight (one batch for a local actor)
    n_examples: int = 0  # few-shot examples in the actor's prompt
    memory_k: int = 3  # reflections shown to the actor
    # retrospector (LoRA-trained)
    retrospector_path: str = "checkpoints/tiny/retrospector"
    retrospector_adapter: str = ""  # a LoRA file folded into the frozen retrospector (scripts/bc_lora.py)
    chat_template: bool = False  # wrap the reflection prompt in the tokenizer's chat template
    reflection_max_tokens: int = 112
    reflection_temperature: float = 1.0
    reflection_top_p: float = 1.0
    reflection_batch_size: int = 16
    reflection_prompt_tokens: int = 0  # cap on a reflection prompt; 0: max_seq_len - reflection_max_tokens
    grad_checkpoint: bool = False  # recompute each block in PPO's backward: activations of one block
    adapt_prompt: bool = True  # False: the frozen model reads the trial, the adapters write the reflection
    lora_r: int = 8
    lora_alpha: float = 16.0
    lora_targets: str = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
    # loop
    updates: int = 15  # each: one rollout epoch, then one PPO update
    tasks_per_env: int = 48  # training tasks sampled per environment per update
    max_trials: int = 3  # trials per task: trial 0, then retries after reflections (as eval_trials)
    reward: str = "return"  # return: G(k+1) - G(k), the paper's | success: the change of success
    checkpoint_every: int = 1  # updates
    max_void_share: float = 0.25  # stop when more of an update's episodes fail in the actor or a data source
    # PPO (ppo.PPOConfig)
    lr: float = 5e-4
    ppo_epochs: int = 2  # passes over each update's reflections: fewer and fresher beats re-used
    minibatch_size: int = 8
    micro_batch_size: int = 4
    clip_eps: float = 0.2
    vf_coef: float = 0.5
    ent_coef: float = 0.0
    kl_coef: float = 0.02
    target_kl: float = 0.0  # > 0: adaptive KL coefficient (Ziegler et al.); 0: fixed
    max_grad_norm: float = 1.0
    # eval.py
    eval_tasks: int = 100  # the first N test tasks per env
    eval_split: str = "test"  # test | val: VAL_FIRST on of the train split, to choose settings on
    eval_trials: int = 3  # trials per task in eval.py
    eval_seeds: str = "0,1,2"
    eval_methods: str = "react,reflexion,retroformer"


def parse_config(argv) -> Config:
    """Config from defaults, then each argument in order: a config file or --key=value (infra/config.py)."""
    cfg = configurator.parse(Config, argv)
    positive = ("updates", "tasks_per_env", "max_trials", "checkpoint_every", "concurrency", "eval_tasks",
                "eval_trials")
    non_negative = ("threads", "reflection_prompt_tokens", "actor_max_retries", "actor_backoff")
    configurator.check(cfg, minimum={**dict.fromkeys(positive, 1), **dict.fromkeys(non_negative, 0)},
                       choices={"quantize": ("", "int8", "int4"), "eval_split": ("test", "val")})
    if cfg.actor_timeout <= 0:
        raise ValueError(f"config key 'actor_timeout' must be > 0, got {cfg.actor_timeout}")
    if not 0 <= cfg.max_void_share <= 1:
        raise ValueError(f"config key 'max_void_share' must be in [0, 1], got {cfg.max_void_share}")
    if cfg.actor_adapter and cfg.actor != "local":
        raise ValueError(f"config key 'actor_adapter' needs actor=local, got actor={cfg.actor!r}")
    for key in ("actor_adapter", "retrospector_adapter"):
        if getattr(cfg, key) and not os.path.isfile(getattr(cfg, key)):
            raise ValueError(f"config key {key!r}: no file {getattr(cfg, key)!r}")
    return cfg


def command_line_config(argv=None) -> Config:
    """parse_config on the command line (or argv); a config error exits with its message."""
    try:
        cfg = parse_config(sys.argv[1:] if argv is None else argv)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    return cfg


# ----------------------------------------------------------------------------- environments


def env_options(cfg: Config) -> dict:
    try:
        opts = json.loads(cfg.env_options) if cfg.env_options.strip() else {}
    except json.JSONDecodeError as e:
        raise ValueError(f"config key 'env_options' is not valid JSON ({e}): {cfg.env_options!r}") from None
    if not isinstance(opts, dict) or not all(isinstance(v, dict) for v in opts.values()):
        raise ValueError(f"config key 'env_options' must be a JSON object {{env: {{option: value}}}}, "
                         f"got {cfg.env_options!r}")  # fmt: skip
    return opts


def env_names(cfg: Config) -> list[str]:
    return [n.strip() for n in cfg.envs.split(",") if n.strip()]


def env_factory(cfg: Config, name: str, split: str):
    """A factory of `name`'s env on `split` (train, test or val) with the configured seed and options."""
    return envs.factory(name, split, cfg.env_seed, cfg.eval_tasks, **env_options(cfg).get(name, {}))


def derive_seed(*parts) -> int:
    """A seed from (seed, update, rank, purpose, ...): rollouts of an update do not depend on what ran
    before, so a resumed run regenerates exactly the episodes the crashed run would have made."""
    return zlib.crc32("/".join(map(str, parts)).encode())


# ----------------------------------------------------------------------------- actor and retrospector


def ensure_checkpoints(cfg: Config):
    """Build the tiny offline checkpoints with `python pretrain.py` when a default path is missing."""
    paths = [cfg.retrospector_path] + ([cfg.actor_path] if cfg.actor == "local" else [])
    missing = [p for p in paths if not os.path.exists(p)]  # a folder, or one file (GGUF)
    if not missing:
        return
    defaults = {Config.actor_path, Config.retrospector_path}
    if any(p not in defaults for p in missing):
        fetch = "; scripts/fetch_smollm2.sh fetches it" if "smollm2" in missing[0].lower() else ""
        raise FileNotFoundError(f"no checkpoint {missing[0]!r} (set actor_path / retrospector_path{fetch})")
    print(f"{missing} missing: running pretrain.py to build the tiny checkpoints first")
    subprocess.run([sys.executable, os.path.join(ROOT, "pretrain.py")], check=True)


def torch_dtype(cfg: Config):
    if cfg.dtype not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"config key 'dtype' must be float32, bfloat16 or float16, got {cfg.dtype!r}")
    return getattr(torch, cfg.dtype)


def build_actor(cfg: Config, device):
    if cfg.actor == "local":
        return LocalLLM.load(cfg.actor_path, device=device, dtype=torch_dtype(cfg), quantize=cfg.quantize,
                             adapter=cfg.actor_adapter, seed=cfg.seed)
    if cfg.actor == "http":
        llm = HTTPLLM(cfg.actor_url, cfg.actor_model, api=cfg.actor_api, api_key_env=cfg.actor_api_key_env,
                      context_window=cfg.actor_context_window, max_concurrency=cfg.concurrency,
                      timeout=(5.0, cfg.actor_timeout), max_retries=cfg.actor_max_retries,
                      backoff=cfg.actor_backoff)  # fmt: skip
        llm.check()
        return llm
    if cfg.actor in ("expert", "explorer"):  # scripted, over every env of cfg.envs, train and test split
        splits = ("train", "test") + (("val",) if cfg.eval_split == "val" else ())
        factories = [env_factory(cfg, name, split) for name in env_names(cfg) for split in splits]
        return ExpertLLM(*factories) if cfg.actor == "expert" else ExplorerLLM(*factories, seed=cfg.seed)
    raise ValueError(f"config key 'actor' must be local, http, expert or explorer, got {cfg.actor!r}")


def reseed_actor(actor_llm, seed: int):
    if isinstance(getattr(actor_llm, "generator", None), torch.Generator):  # LocalLLM's sampler
        actor_llm.generator.manual_seed(seed)
    if isinstance(actor_llm, ExplorerLLM):  # the scripted explorer's draws (WebShop's option slips)
        actor_llm.reseed(seed)


@dataclass
class Reflection:
    prompt: str
    prompt_ids: list[int]
    text: str
    ids: list[int]  # sampled tokens + the stop token when it stopped: what PPO trains on
    logprobs: list[float]  # of the sampled tokens (stop token excluded)
    finish_reason: str  # "stop", or "length": cut at max_tokens


class Retrospector:
    """The retrospective model: a causal LM with LoRA adapters that writes reflections."""

    def __init__(self, model, tokenizer, chat_template=False, max_tokens=96, temperature=1.0, top_p=1.0,
                 batch_size=16, max_prompt_tokens=0, adapt_prompt=True):  # fmt: skip
        self.model, self.tokenizer, self.chat_template = model.eval(), tokenizer, chat_template
        self.max_tokens, self.temperature, self.top_p = max_tokens, temperature, top_p
        self.batch_size, self.adapt_prompt = batch_size, adapt_prompt  # ppo.PPOConfig.adapt_prompt
        # a long trial is elided to fit this budget: PPO's memory grows with prompt length, and a model's
        # max_seq_len (131k for Llama 3.x) is no budget for that
        window = model.config.max_seq_len - max_tokens
        self.max_prompt_tokens = min(window, max_prompt_tokens) if max_prompt_tokens else window
        eot = tokenizer.special_tokens.get("<|eot_id|>")
        self.stop_id = eot if chat_template and eot is not None else tokenizer.eos_id
        if self.stop_id is None:
            raise ValueError("the retrospector's tokenizer has no eos token: a reflection could never end")

    @classmethod
    def load(cls, cfg: Config, device, lora=True):
        # the fine-tuning adapter is part of the frozen model, what Reflexion (adapters off) uses too;
        # quantized before PPO's LoRA (float32)
        model = load_frozen(cfg.retrospector_path, device, torch_dtype(cfg), cfg.quantize,
                            cfg.retrospector_adapter)
        if lora:
            apply_lora(model, r=cfg.lora_r, alpha=cfg.lora_alpha, targets=cfg.lora_targets.split(","))
        model.grad_checkpoint = cfg.grad_checkpoint
        return cls(model, modelpy.load_tokenizer(cfg.retrospector_path), cfg.chat_template,
                   cfg.reflection_max_tokens, cfg.reflection_temperature, cfg.reflection_top_p,
                   cfg.reflection_batch_size, cfg.reflection_prompt_tokens, cfg.adapt_prompt)  # fmt: skip

    def encode(self, text: str) -> list[int]:
        if self.chat_template:  # raises a clear error when the tokenizer has no chat specials
            return self.tokenizer.encode_chat([{"role": "user", "content": text}])
        bos = self.tokenizer.bos_id
        return ([bos] if bos is not None else []) + self.tokenizer.encode(text)

    def reflect(self, trajs, generator=None, adapters=True) -> list[Reflection]:
        """One sampled reflection per failed trajectory; adapters=False is the frozen base (Reflexion)."""
        prompts = [build_reflection_prompt(t, count_tokens=lambda s: len(self.encode(s)),
                                           max_prompt_tokens=self.max_prompt_tokens) for t in trajs]
        out = []
        with contextlib.nullcontext() if adapters else disable_lora(self.model):
            for s in range(0, len(prompts), self.batch_size):
                chunk = prompts[s : s + self.batch_size]
                ids = [self.encode(p) for p in chunk]
                gens = sample_responses(self.model, ids, self.max_tokens, self.adapt_prompt or not adapters,
                                        temperature=self.temperature, top_p=self.top_p, generator=generator,
                                        stop_ids=(self.stop_id,), tokenizer=self.tokenizer)  # fmt: skip
                for p, i, g in zip(chunk, ids, gens, strict=True):
                    stop = [self.stop_id] if g.finish_reason == "stop" else []
                    text = g.text.strip()
                    # the actor's context is sized for reflections of <= max_tokens tokens; an undecodable
                    # byte comes back as U+FFFD (3 bytes) and would re-encode longer
                    while len(self.tokenizer.encode(text)) > self.max_tokens:
                        text = text[:-1]
                    out.append(Reflection(p, i, text, g.tokens + stop, g.logprobs, g.finish_reason))
        return out


# ----------------------------------------------------------------------------- rollouts


def actor_trials(make_env, tasks, actor_llm, cfg: Config, memories=None, trial=0, examples=(), log_path=None,
                 tag=None):  # fmt: skip
    """Trial `trial` of the actor on each of `tasks`; backend failures come back as void trajectories."""
    return run_trials(make_env, tasks, actor_llm, memories, trial=trial, log_path=log_path,
                      concurrency=cfg.concurrency, examples=examples, k=cfg.memory_k,
                      max_tokens=cfg.actor_max_tokens, temperature=cfg.actor_temperature, strict=False,
                      log_tags=tag)  # fmt: skip


def rollout(make_env, tasks, actor_llm, retrospector, cfg: Config, method="retroformer", examples=(),
            generator=None, log_path=None, replay_path=None, tag=None, first=None):  # fmt: skip
    """Trials 0..max_trials-1 of the actor on `tasks` (indices into one env); after each failed trial
    the retrospector writes a reflection that joins the task's memory for the next trial.

    method: 'retroformer' (adapters on), 'reflexion' (adapters off) or 'react' (retry, no memory).
    first: trial-0 trajectories to start from (eval.py shares them between methods).
    Returns (records, history): one record per reflection with reward G_{k+1} - G_k (cfg.reward
    "success": the change of success; None when the retry failed in the backend: such episodes are
    void, not task failures), and task -> trials; right_plan: envs.right_plan, logged, not trained on.
    Each record is appended to replay_path (JSON Lines, with `tag`) when made, each trial to log_path.
    """
    if method not in ("react", "reflexion", "retroformer"):
        raise ValueError(f"rollout: unknown method {method!r}: expected react, reflexion or retroformer")
    if cfg.reward not in ("return", "success"):
        raise ValueError(f"config key 'reward' must be return or success, got {cfg.reward!r}")
    gain = (lambda b, a: float(a.success) - float(b.success)) if cfg.reward == "success" else \
        (lambda b, a: a.ret - b.ret)
    trials = lambda task_ids, memories, k: actor_trials(make_env, task_ids, actor_llm, cfg, memories, k,
                                                        examples, log_path, tag)  # fmt: skip
    trajs = list(first) if first is not None else trials(list(tasks), None, 0)
    history = {t.task: [t] for t in trajs}
    memory = {t.task: [] for t in trajs}
    records = []
    for k in range(1, cfg.max_trials):
        failed = [t for t in trajs if not t.success and not t.error]
        if not failed:
            break
        if method == "react":
            reflections = [None] * len(failed)
        else:
            reflections = retrospector.reflect(failed, generator, adapters=method == "retroformer")
        for t, r in zip(failed, reflections, strict=True):
            if r is not None:
                memory[t.task].append(r.text)
        trajs = trials([t.task for t in failed], [memory[t.task] for t in failed], k)
        rights = envs.right_plans(make_env, failed, [r and r.text for r in reflections])  # logged only
        for before, r, after, right in zip(failed, reflections, trajs, rights, strict=True):
            history[after.task].append(after)
            if r is None:
                continue
            void = after.error is not None
            rec = dict(env=before.env, task=before.task, trial=before.trial, prompt=r.prompt,
                       reflection=r.text, reflection_ids=r.ids, logprobs=r.logprobs,
                       finish_reason=r.finish_reason, right_plan=right, return_before=before.ret,
                       return_after=None if void else after.ret, reward=None if void else gain(before, after),
                       error=after.error)  # fmt: skip
            if replay_path:
                with open(replay_path, "a", encoding="utf-8") as f:
                    f.write(json.dumps({**(tag or {}), **rec}) + "\n")
            records.append({**rec, "prompt_ids": r.prompt_ids})
    return records, history


def success_counts(history: dict, max_trials: int) -> tuple[list[int], int, int]:
    """(solved[k] = tasks solved in any of trials 0..k, n_tasks, n_void); a task with a void
    (backend-failed) trial is left out of the counts."""
    solved, n, void = [0] * max_trials, 0, 0
    for ts in history.values():
        if any(t.error for t in ts):
            void += 1
            continue
        n += 1
        first = next((t.trial for t in ts if t.success), None)
        for k in range(max_trials):
            solved[k] += first is not None and first <= k
    return solved, n, void


# ----------------------------------------------------------------------------- training


def ppo_config(cfg: Config) -> PPOConfig:
    return PPOConfig(lr=cfg.lr, epochs=cfg.ppo_epochs, minibatch_size=cfg.minibatch_size,
                     micro_batch_size=cfg.micro_batch_size, clip_eps=cfg.clip_eps, vf_coef=cfg.vf_coef,
                     ent_coef=cfg.ent_coef, kl_coef=cfg.kl_coef, target_kl=cfg.target_kl or None,
                     max_grad_norm=cfg.max_grad_norm, adapt_prompt=cfg.adapt_prompt)  # fmt: skip


def train(cfg: Config, actor_llm=None, make_env=None):
    """The Retroformer loop. actor_llm / make_env(name, split) override the configured actor and envs
    (tests). Returns the trained Retrospector."""
    rank, world, device = ddp.init(cfg.device)
    ckpt_path = os.path.join(cfg.out_dir, "ckpt.pt")
    if rank == 0:
        os.makedirs(cfg.out_dir, exist_ok=True)
        if os.path.exists(ckpt_path) and not cfg.resume:
            raise SystemExit(f"{ckpt_path} exists: pass --resume to continue it, or pick another out_dir")
        if actor_llm is None:
            ensure_checkpoints(cfg)
    if world > 1:
        dist.barrier()
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)

    names = env_names(cfg)
    make_env = make_env or (lambda name, split: env_factory(cfg, name, split))
    factories = {name: make_env(name, "train") for name in names}
    n_train = {name: min(len(factories[name]()), envs.VAL_FIRST) for name in names}  # real data: val unseen
    examples = {name: few_shot_examples(name, cfg.n_examples) if cfg.n_examples else () for name in names}
    actor_llm = actor_llm if actor_llm is not None else build_actor(cfg, device)
    retrospector = Retrospector.load(cfg, device)
    trainer = PPOTrainer(retrospector.model, ppo_config(cfg), seed=cfg.seed)
    if world > 1:
        trainer.distribute()
    start = resume(cfg, ckpt_path, retrospector, trainer, rank)

    suffix = f".rank{rank}" if rank else ""
    replay_path = os.path.join(cfg.out_dir, f"replay{suffix}.jsonl")
    episodes_path = os.path.join(cfg.out_dir, f"episodes{suffix}.jsonl")
    # a resumed run redoes the updates after its checkpoint: readers keep each update's last attempt
    tag = {"rank": rank, "attempt": uuid.uuid4().hex[:8]}
    show = cfg.progress and rank == 0
    for update in tqdm(range(start + 1, cfg.updates + 1), initial=start, total=cfg.updates, desc="updates",
                       disable=not show):  # fmt: skip
        t0 = time.perf_counter()
        # 1. rollouts: trial 0, then reflect on each failure and retry; the same task sample on every
        #    rank, each rank runs its share
        records, counts, trials = [], {}, []
        generator = torch.Generator(device=device).manual_seed(derive_seed(cfg.seed, update, rank, "reflect"))
        reseed_actor(actor_llm, derive_seed(cfg.seed, update, rank, "actor"))
        cut_before = runlog.n_cut(actor_llm)
        for name in tqdm(names, desc=f"rollouts {update}", leave=False, disable=not show):
            rng = random.Random(derive_seed(cfg.seed, update, name, "tasks"))
            tasks = rng.sample(range(n_train[name]), min(cfg.tasks_per_env, n_train[name]))[rank::world]
            if tasks:
                recs, history = rollout(factories[name], tasks, actor_llm, retrospector, cfg, "retroformer",
                                        examples[name], generator, episodes_path, replay_path,
                                        {"update": update, **tag})  # fmt: skip
                records += recs
                trials += [t for ts in history.values() for t in ts]
                solved, n, void = success_counts(history, cfg.max_trials)
                counts[name] = [n, void, *solved]
        t_rollout = time.perf_counter() - t0
        runlog.stop_if_void(ddp.all_gather(([t.error for t in trials if t.error], len(trials)), world),
                            cfg.max_void_share, f"update {update}")  # fmt: skip
        # completions cut at max_tokens: the actor's steps, the reflections
        cut = [runlog.n_cut(actor_llm) - cut_before, sum(r["finish_reason"] == "length" for r in records)]

        # 2. PPO on every reflection with a reward, gathered from all ranks
        scored = [r for part in ddp.all_gather([r for r in records if r["reward"] is not None], world)
                  for r in part]  # fmt: skip
        metrics = {}
        if scored:
            mine = ddp.shard_for_rank(scored, rank, world)
            metrics = trainer.step([r["prompt_ids"] for r in mine], [r["reflection_ids"] for r in mine],
                                   [r["reward"] for r in mine])  # fmt: skip
        elif rank == 0:
            tqdm.write(f"update {update}: no failed trial got a reflection with a reward; PPO skipped")

        # 3. metrics and checkpoint (rank 0)
        counts = ddp.sum_counts(ddp.all_gather({**counts, "cut": cut}, world))
        if rank == 0:
            runlog.log_update(cfg.out_dir, update, scored, counts, metrics, t_rollout,
                              time.perf_counter() - t0 - t_rollout, cfg.actor_max_tokens)
            if update % cfg.checkpoint_every == 0 or update == cfg.updates:
                runstate.save_checkpoint(cfg.out_dir, update, asdict(cfg), retrospector.model, trainer)
    if world > 1:
        dist.barrier()
    return retrospector


def resume(cfg: Config, ckpt_path: str, retrospector, trainer, rank: int) -> int:
    """The last finished update: that of ckpt_path with --resume, else 0."""
    start = 0
    if cfg.resume and os.path.exists(ckpt_path):
        start = runstate.load_checkpoint(ckpt_path, retrospector.model, trainer)
        if rank == 0:
            print(f"resumed from {ckpt_path} after update {start}")
    elif cfg.resume and rank == 0:
        print(f"--resume: no {ckpt_path} yet, starting from update 1")
    if rank == 0:
        print(lora_report(retrospector.model))
    return start


def main(argv=None):
    cfg = command_line_config(argv)
    try:
        train(cfg)
    except LLMError as e:  # the actor's start-up check: a wrong URL, model name or key
        raise SystemExit(f"error: {e}") from None
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
