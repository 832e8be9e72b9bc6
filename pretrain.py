"""Pretrain the tiny actor and retrospector of the offline default, from scratch, on the train split.

    python pretrain.py                      # writes checkpoints/tiny/{actor,retrospector}/ (1 thread)
    python pretrain.py --role retrospector  # one of the two (two shells run both roles at once)
    python scripts/measure_tiny.py 30       # then: success on 30 test tasks per env (no/right/wrong memory)

1. A small byte-level BPE vocabulary (formats.bpe.train_bpe) built from the environments' train-split text,
   with a split pattern (SPLIT_PATTERN) that spells names and product ids with short, frequent pieces.
2. An induction warm-up: INDUCTION_STEPS steps on random token strings written twice (induction_sequences), so
   the model learns to copy from its prompt before it sees the scripted data. Without it the tiny
   model memorizes the train split's names and cannot write an unseen name or product id.
3. The actor: behaviour cloning of the environments' scripted explorers in exactly the prompt format
   actor.py uses at run time (actor.build_prompt with the reflections memory, no few-shot examples,
   old steps elided to fit the context window); the loss is on the completion tokens only
   (" thought\\nAction: action\\nObservation"). Without memory the actor explores imperfectly
   (env.explorer(rng)); with a memory it follows the last reflection's plan, right or wrong
   (env.explorer(rng, plan=...)), so that it obeys its memory.
4. The retrospector: (actor.build_reflection_prompt(failed trial) -> reflection) pairs where the
   reflection is the correct diagnosis and plan (env.plan, read off the trajectory text alone) with
   probability P_CORRECT, else a plausible but wrong one (an entity, place, item or option that
   appears in the trial but is the wrong one). The frozen retrospector is then a weak Reflexion
   baseline whose sampled reflections are right about P_CORRECT of the time; PPO can raise that.
   Its pairs include a name drill (N_NAMES_DRILL): HotPotQA tasks whose names come from an inventory
   neither split uses (worlds.hotpotqa.HotpotQAEnv names=1), so that it copies the names of its
   prompt rather than writing the ones it has learned.

Actor and retrospector are two tiny Llamas with one vocabulary, both from the same warm-up; the actor
stays frozen, the retrospector gets LoRA adapters. Nothing of the test split is read, nor the train
tasks that train.py's PPO samples (make_trials starts after them). Deterministic from --seed (and
the thread count).
"""

import argparse
import copy
import math
import os
import random
import re
import shutil
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

import actor
import envs
import model as modelpy
import train
from formats.bpe import train_bpe
from worlds import alfworld, scripted, webshop

ENVS = ("hotpotqa", "alfworld", "webshop")
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "checkpoints", "tiny")
# Run-time settings the checkpoints are trained for: one source of truth, train.Config's defaults
# (train.py imports pretrain only inside ensure_checkpoints, so there is no import cycle).
CFG = train.Config()
ACTOR_MAX_TOKENS = CFG.actor_max_tokens  # an actor completion's max tokens: prompts are cut to CONTEXT - it
REFLECT_MAX_TOKENS = CFG.reflection_max_tokens  # a reflection's max tokens: its prompt is cut to CONTEXT - it
MEMORY_K = CFG.memory_k  # reflections shown to the actor (actor.run_trials' k)
ENV_SEED = CFG.env_seed  # the generated world: WebShop's train/test split depends on it
ENV_OPTIONS = {name: train.env_options(CFG).get(name, {}) for name in ENVS}
# model.max_seq_len = LocalLLM.context_window: the actor's longest prompt must fit with its completion,
# header + memory of MEMORY_K full-length reflections + the longest instruction (ALFWorld, ~180 tokens)
# + ACTOR_MAX_TOKENS (tests/test_pretrain.py checks it), or actor.build_prompt raises.
CONTEXT = 768


def examples(env_name: str) -> tuple[str, ...]:
    """The actor's few-shot examples, as train.py / eval.py build them (none by default)."""
    return scripted.few_shot_examples(env_name, CFG.n_examples) if CFG.n_examples else ()


P_CORRECT = 0.3  # share of correct reflections in the retrospector's training targets
MODEL = dict(dim=128, n_layers=4, n_heads=4, n_kv_heads=4, hidden_dim=384, max_seq_len=CONTEXT,
             tie_embeddings=True)  # fmt: skip
VOCAB = 1536
# The tokenizer's split pattern. A tiny model copies a name from its prompt only if every token of it
# was seen often in training: names of the test split are new, so a BPE over whole words would spell
# them with rare pieces whose embeddings never learned to be copied. So capitalized words (names) and
# upper-case runs (product ids) are cut into chunks of at most two letters and digits stand alone;
# the words of the ReAct format (KEEP) stay whole, and lower-case words (a closed vocabulary) too.
KEEP = ("Thought|Action|Observation|Question|Search|Lookup|Finish|Plan|Next|Previous|Reflections?|"
        "Instruction|WebShop|Page|Total|Price|Rating|Buy|Now|Back|Prev|Description|Features|Reviews|"
        "Your|You|The|Not|Another|Use|On|In|It|Could|Similar|Memory|Trial|Below|Looking")
SPLIT_PATTERN = (r"'s|'t|'re|'ve|'m|'ll|'d|(?:" + KEEP + r")(?!\p{L})|\p{Lu}\p{Ll}?|(?<=\p{L})\p{Ll}{1,2}"
                 r"| ?\p{Ll}+|\p{N}| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+")
# Steps of the induction warm-up (see induction_sequences) before the scripted data.
INDUCTION_STEPS = 1100

# ----------------------------------------------------------------------------- scripted trials


def scripted_trial(env, i: int, rng: random.Random, memory=()) -> actor.Trajectory:
    """One trial of env.explorer on task i; with a memory it follows the last reflection's plan (the
    rules are worlds.scripted.explorer_step's, shared with its ExplorerLLM)."""
    plan = memory[-1] if memory else None
    traj = actor.Trajectory(env.name, i, len(memory), env.reset(i), reflections=list(memory)[-MEMORY_K:])
    done, info = False, {}
    while not done:
        thought, action = scripted.explorer_step(env, rng, plan, [s[1] for s in traj.steps])
        obs, reward, done, info = env.step(action)
        traj.steps.append((thought, action, obs, float(reward)))
        traj.ret += float(reward)
    traj.success = bool(info["success"])
    return traj


def trial_steps(traj):
    return [s[:3] for s in traj.steps]


def correct_reflection(env, traj) -> str | None:
    """env.plan of a failed trial (the env must still be on that task: plan reads its question)."""
    return env.plan(trial_steps(traj))


def _swap(rng, options, right):
    wrong = [o for o in dict.fromkeys(options) if o != right]
    return rng.choice(wrong) if wrong else None


def wrong_reflection(env, traj, right: str | None, rng: random.Random) -> str:
    """A plausible but wrong reflection: the right one's format, with an entity, place, item or option
    that appears in the trial swapped for a wrong one (or a generic plan when nothing can be swapped)."""
    text = traj.text()
    if env.name == "hotpotqa":
        seen = re.findall(r"Search\[([^\]]+)\]", text) + re.findall(r"'([A-Z][a-z]+ [A-Z][a-z]+[^']*)'", text)
        name = re.findall(r"the [a-z]+ ([A-Z][a-z]+ [A-Z][a-z]+)", traj.instruction)
        if right:
            titles = re.findall(r"Search\[([^\]]+)\]", right)
            # swap a title the failed trial did not search: that is where the right plan differs
            fresh = [j for j, t in enumerate(titles) if f"Search[{t}]" not in text] or range(len(titles))
            j = rng.choice(list(fresh))
            new = _swap(rng, seen + name, titles[j])
            if new:
                head, plan = right.split("Plan:", 1)
                plan = plan.replace(f"Search[{titles[j]}]", f"Search[{new}]", 1)
                return head + "Plan:" + plan
        cause = rng.choice(["I answered too quickly.", "I did not read the pages carefully."])
        return f"{cause} Plan: {', then '.join(f'Search[{n}]' for n in name or seen[:1])}, then answer."
    if env.name == "alfworld":
        recs = alfworld.receptacles(traj.instruction)
        if right:
            out = right
            for r in re.findall(r" is at (\w+ \d+)\.", right):
                out = out.replace(f" is at {r}.", f" is at {_swap(rng, recs, r) or r}.", 1)
            m = re.search(r"Search (.+?) first", right)
            if m:
                checked = re.findall(r"(?:go to|open) (\w+ \d+)", text)
                checked = [r for r in checked if r in recs]
                pick = rng.sample(checked, min(len(checked), rng.randint(1, 3))) if checked else recs[:2]
                ranges = alfworld.format_ranges(sorted(set(pick), key=recs.index))
                out = out.replace(m[0], f"Search {ranges} first")
            out = re.sub(r" ?Use an? \w+, not an? \w+\.", "", out) if rng.random() < 0.5 else out
            if out != right:
                return out.strip()
        r = rng.choice(recs)
        obj = re.search(r"Your task is to: \w+ (?:two |some |a |an )?(\w+)", traj.instruction)
        return f"The {obj[1] if obj else 'object'} is at {r}."
    # webshop: the plan's one decision is the item, so a wrong plan opens a wrong one
    target = env.tasks[traj.task]["target"]  # the item that fits: never "wrong" by chance (training data)
    asins = [a for a in dict.fromkeys(re.findall(r"^\[(B0[A-Z0-9]{8})\]$", text, re.M)) if a != target]
    m = webshop.PLAN_RE.search(right or "")
    if m and m["asin"]:  # only the options were wrong: leave the right item, or open another result
        other = _swap(rng, asins, m["asin"])
        wrong = f"open {other}" if other and rng.random() < 0.5 else \
            f"open the first result that fits the instruction, not {m['asin']}"
        return right[: m.start("open")] + wrong + right[m.end("open") :]
    if m:  # the item was wrong: open it again (the one bought last time), or another result
        other = m["skip"] if m["skip"] and rng.random() < 0.5 else _swap(rng, asins, m["skip"])
        if other:
            return right[: m.start("open")] + f"open {other}" + right[m.end("open") :]
    if not asins:
        return "I did not find the item. Next time: open the first result that fits the instruction" + \
            webshop.PLAN_END
    return f"I chose the wrong item. Next time: open {asins[0]}{webshop.PLAN_END}"


# ----------------------------------------------------------------------------- training data


def make_trials(seed: int, n_tasks: dict, p_correct: float = P_CORRECT, names: int = 0):
    """Scripted trials on the train split: (actor episodes, (failed trial, reflection) pairs).

    The tasks are the train split's after those train.py's PPO samples from (the first len(env) of
    the default train env), so that PPO, as in the paper, improves reflections on tasks the frozen
    retrospector has never seen, not ones whose right plan it may have memorized.
    Per task: a memoryless trial; if it fails, a trial following the right plan and one following a
    wrong plan; if that one fails too, a third trial whose memory adds a new (right or wrong) reflection.
    Each failed trial gives the retrospector one pair, the reflection right with probability p_correct.
    n_tasks: {env: count}, for the envs it names. names: HotPotQA's name inventory (HotpotQAEnv's).
    """
    rng = random.Random(f"{seed}/names{names}" if names else seed)
    episodes, pairs = [], []
    for name in (n for n in ENVS if n in n_tasks):
        opts = {**ENV_OPTIONS[name], **({"names": names} if names else {})}
        first = len(envs.make(name, "train", seed=ENV_SEED, **opts))  # PPO's tasks: skipped
        env = envs.make(name, "train", seed=ENV_SEED, n_tasks=first + n_tasks[name], **opts)
        for i in range(first, len(env)):
            t0 = scripted_trial(env, i, rng)
            episodes.append(t0)
            if t0.success:
                continue
            right = correct_reflection(env, t0)
            wrong = wrong_reflection(env, t0, right, rng)
            pairs.append((t0, right if right and rng.random() < p_correct else wrong))
            if right:
                episodes.append(scripted_trial(env, i, rng, [right]))
            t1 = scripted_trial(env, i, rng, [wrong])
            episodes.append(t1)
            if t1.success:
                continue
            right = correct_reflection(env, t1)
            wrong2 = wrong_reflection(env, t1, right, rng)
            pairs.append((t1, right if right and rng.random() < p_correct else wrong2))
            second = right if right and rng.random() < 0.5 else wrong2
            episodes.append(scripted_trial(env, i, rng, [wrong, second]))
    return episodes, pairs


def completion(thought: str, action: str) -> str:
    """What the actor writes after the prompt's "Thought:", up to the stop string."""
    return f" {thought}\nAction: {action}" + actor.STOP[0]


def actor_sequences(traj, tok, context: int = CONTEXT):
    """Token segments of one episode, (ids, loss mask), in exactly the run-time prompt format.

    Step k's prompt is actor.build_prompt(...) with the elision of a `context`-token window; consecutive
    prompts that extend one another share one segment, so each step's completion is one masked span in it.
    """
    count = lambda s: len(tok.encode(s))
    limit = context - ACTOR_MAX_TOKENS
    segments, ids, mask, prev = [], [], [], None
    for k, (thought, action, _obs, _) in enumerate(traj.steps):
        prompt = actor.build_prompt(traj.instruction, traj.steps[:k], traj.reflections, examples(traj.env),
                                    MEMORY_K,
                                    count, limit)  # fmt: skip
        if prev is not None and prompt.startswith(prev):
            new = tok.encode(prompt[len(prev) :])
        else:
            if ids:
                segments.append((ids, mask))
            ids, mask, new = [], [], tok.encode(prompt)
        out = tok.encode(completion(thought, action))
        ids, mask = ids + new + out, mask + [0] * len(new) + [1] * len(out)
        prev = prompt + completion(thought, action)
    segments.append((ids, mask))
    return segments


def reflection_sequence(traj, reflection: str, tok, max_prompt_tokens: int = CONTEXT - REFLECT_MAX_TOKENS):
    count = lambda s: len(tok.encode(s))
    prompt = tok.encode(actor.build_reflection_prompt(traj, (), count, max_prompt_tokens))
    out = tok.encode(" " + reflection.strip()) + [tok.eos_id]
    return prompt + out, [0] * len(prompt) + [1] * len(out)


def build_tokenizer(episodes, pairs, vocab_size: int = VOCAB):
    texts = [actor.HEADER, actor.REFLECT_HEADER]
    for t in episodes:
        texts += [actor.format_memory(t.reflections, MEMORY_K), t.instruction]
        texts += [actor.render_step(*s[:3]) for s in t.steps]
    texts += [r for _, r in pairs]
    return train_bpe(texts, vocab_size, pat_str=SPLIT_PATTERN)


def batches(seqs, max_tokens: int, rng: random.Random):
    """Similar-length sequences together, at most max_tokens (padded) per batch, in shuffled order."""
    order = sorted(range(len(seqs)), key=lambda j: (len(seqs[j][0]), j))
    out, cur = [], []
    for j in order:
        if cur and (len(cur) + 1) * len(seqs[j][0]) > max_tokens:
            out.append(cur)
            cur = []
        cur.append(j)
    out.append(cur)
    rng.shuffle(out)
    return out


def collate(seqs, idx):
    T = max(len(seqs[j][0]) for j in idx)
    x = torch.zeros(len(idx), T, dtype=torch.long)  # (B, T)
    m = torch.zeros(len(idx), T, dtype=torch.bool)  # (B, T) loss on this position's token
    for b, j in enumerate(idx):
        ids, mask = seqs[j]
        x[b, : len(ids)] = torch.tensor(ids)
        m[b, : len(ids)] = torch.tensor(mask, dtype=torch.bool)
    return x, m


def loss_fn(model, x, m):
    """Mean cross-entropy of the masked tokens given the ones before them."""
    _, h = model(x[:, :-1], return_hidden=True)  # (B, T-1, C)
    sel = m[:, 1:]  # (B, T-1)
    logits = model.lm_head(h[sel])  # (N, V): only where there is a loss
    return F.cross_entropy(logits.float(), x[:, 1:][sel])


def induction_sequences(n: int, vocab_size: int, rng: random.Random):
    """n random token strings, each written twice, the loss on the repeat: copying is the only way to
    predict it. A tiny Llama trained on the scripted data alone never learns to copy (it memorizes the
    train split's names instead, and a test name then gets ~10 nats per token); ~1000 steps of this at
    a constant learning rate first build the attention heads that copy (induction heads)."""
    seqs = []
    for _ in range(n):
        k = rng.randint(10, 60)
        xs = [rng.randrange(vocab_size - 1) for _ in range(k)]  # any token but the last (end of text)
        seqs.append((xs + xs, [0] * k + [1] * k))
    return seqs


def train(seqs, vocab_size: int, steps: int, seed: int = 0, lr: float = 2e-3, batch_tokens: int = 8192,
          model_kw=None, log_every: int = 50, model=None, constant_lr: bool = False,
          desc: str = "pretrain"):  # fmt: skip
    """Train a tiny Llama (fresh, or `model` further) on (ids, mask) sequences -> (model, [(step, loss)]).
    The learning rate warms up, then follows a cosine to lr/10 (or stays at lr: constant_lr)."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    if model is None:
        cfg = modelpy.ModelConfig(arch="llama", vocab_size=vocab_size, **(model_kw or MODEL))
        model = modelpy.Transformer(cfg)
    wd = [p for n, p in model.named_parameters() if p.dim() >= 2]
    rest = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": wd, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.95))  # fmt: skip
    warmup = max(1, steps // 20)
    decay = lambda s: 1.0 if constant_lr else 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * s / steps))
    sched = lambda s: min(1.0, (s + 1) / warmup) * decay(s)
    queue, curve, avg = [], [], None
    bar = tqdm(range(steps), desc=desc, dynamic_ncols=True)
    model.train()
    for step in bar:
        if not queue:
            queue = batches(seqs, batch_tokens, rng)
        x, m = collate(seqs, queue.pop())
        for g in opt.param_groups:
            g["lr"] = lr * sched(step)
        loss = loss_fn(model, x, m)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        avg = loss.item() if avg is None else 0.95 * avg + 0.05 * loss.item()
        bar.set_postfix(loss=f"{avg:.3f}")
        if (step + 1) % log_every == 0 or step == steps - 1:
            curve.append((step + 1, avg))
    model.eval()
    return model, curve


# ----------------------------------------------------------------------------- main


def save(model, tok, path):
    """One checkpoint (model + tokenizer) into `path` atomically: written to a temp dir next to it,
    then renamed over it."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    modelpy.save_pretrained(model, tmp)
    tok.save(tmp)
    old = f"{path}.old-{os.getpid()}"
    if os.path.exists(path):
        os.rename(path, old)
    os.rename(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


N_TASKS = {"hotpotqa": 2400, "alfworld": 1500, "webshop": 1800}
# HotPotQA tasks whose names come from the extra inventory 1, for the retrospector only (a name-copy
# drill): trained on the train split's names alone, it writes new names with the endings it learned
# ('Ginono' -> 'Ginona') instead of copying them (docs/results.md). The actor's data and the tokenizer
# do not use them.
N_NAMES_DRILL = 1200
# A long ALFWorld episode gives one segment per step once old steps are elided (each with one
# short completion): keep only this share of those to spend the CPU budget on more episodes.
KEEP_ELIDED = 0.25


def main(argv=None, out: str = OUT):
    p = argparse.ArgumentParser(description="Pretrain the tiny actor and retrospector (offline default).")
    p.add_argument("--out", default=out, help="output folder (default: checkpoints/tiny)")
    p.add_argument("--role", default="both", choices=("both", "actor", "retrospector"),
                   help="train only one model (two shells can then run both roles at once)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=3500, help="optimizer steps of the actor")
    p.add_argument("--retro-steps", type=int, default=6000, help="optimizer steps of the retrospector")
    p.add_argument("--induction-steps", type=int, default=INDUCTION_STEPS, help="copy warm-up steps (each)")
    p.add_argument("--batch-tokens", type=int, default=4096, help="padded tokens per batch")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--tasks", type=float, default=1.0, help="scale of the number of train tasks per env")
    # 1 thread: results depend on the thread count, and on a CPU shared with other jobs more threads
    # run slower, not faster: OpenMP threads wait on each other
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--vocab", type=int, default=VOCAB, help="BPE vocabulary size")
    p.add_argument("--dim", type=int, default=MODEL["dim"], help="model width (heads of 32)")
    p.add_argument("--layers", type=int, default=MODEL["n_layers"])
    p.add_argument("--init", default=None, help="continue training the checkpoints in this folder")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t0 = time.time()
    n_tasks = {k: max(4, int(v * args.tasks)) for k, v in N_TASKS.items()}
    episodes, pairs = make_trials(args.seed, n_tasks)
    drill = make_trials(args.seed, {"hotpotqa": max(4, int(N_NAMES_DRILL * args.tasks))}, names=1)[1]
    roles = ("actor", "retrospector") if args.role == "both" else (args.role,)
    init = lambda role: os.path.join(args.init, role)
    if args.init:
        tok = modelpy.load_tokenizer(init(roles[0]))
    else:
        tok = build_tokenizer(episodes, pairs, args.vocab)
    print(f"{len(episodes)} actor episodes, {len(pairs)} + {len(drill)} (names drill) reflection pairs, "
          f"vocab {tok.vocab_size} "
          f"({time.time() - t0:.0f} s)")
    heads = max(1, args.dim // 32)
    model_kw = {**MODEL, "dim": args.dim, "n_layers": args.layers, "n_heads": heads, "n_kv_heads": heads,
                "hidden_dim": 3 * args.dim}
    warm = None
    if not args.init:  # the same warm-up for both roles: made once
        rng = random.Random(args.seed)
        copies = induction_sequences(20 * max(1, args.induction_steps), tok.vocab_size, rng)
        warm, curve = train(copies, tok.vocab_size, args.induction_steps, args.seed, args.lr,
                            args.batch_tokens, model_kw, constant_lr=True, desc="induction warm-up")
        print("induction warm-up loss (step: loss): " + ", ".join(f"{s}: {v:.3f}" for s, v in curve[::4]))
    curves = {}
    for role in roles:
        rng = random.Random(args.seed)
        if role == "actor":
            seqs = [s for e in episodes for j, s in enumerate(actor_sequences(e, tok))
                    if j == 0 or rng.random() < KEEP_ELIDED]
        else:
            seqs = [reflection_sequence(t, r, tok) for t, r in pairs + drill]
        start = modelpy.from_pretrained(init(role)) if args.init else copy.deepcopy(warm)
        steps = args.steps if role == "actor" else args.retro_steps
        print(f"{role}: {len(seqs)} sequences, {sum(len(ids) for ids, _ in seqs)} tokens, {steps} steps")
        model, curves[role] = train(seqs, tok.vocab_size, steps, args.seed, args.lr, args.batch_tokens,
                                    model_kw, model=start, desc=role)
        print(f"{role} loss curve (step: loss): " + ", ".join(f"{s}: {v:.3f}" for s, v in curves[role]))
        save(model, tok, os.path.join(args.out, role))
        print(f"wrote {args.out}/{role} ({time.time() - t0:.0f} s)")
    return model, tok, curves


if __name__ == "__main__":
    main()
