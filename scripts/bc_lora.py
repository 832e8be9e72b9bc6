"""Fine-tune a small pretrained model (SmolLM2-135M-Instruct) into this project's formats with a LoRA, on the
scripted data of pretrain.py: the actor by behaviour cloning of the explorers, the retrospector on
(failed trial -> reflection) pairs. The LoRA is folded into the frozen weights at run time
(actor_adapter / retrospector_adapter); PPO trains its own LoRA on top of the retrospector's.

    python scripts/bc_lora.py --role actor                    # checkpoints/adapters/smollm2_actor_hotpotqa.pt
    python scripts/bc_lora.py --role retrospector --steps 100 # checkpoints/adapters/smollm2_retrospector_...
    python scripts/bc_lora.py --role actor --measure 20       # does the actor follow plans? with, without it

Why: plain SmolLM2 with few-shot examples solves few HotPotQA tasks and mostly ignores a right plan in
its memory, and its reflections never name a page to search (docs/smollm2.md): reflections could not
change the actor's return, and PPO would have nothing to learn from. The data are the tiny models'
(pretrain.py steps 3 and 4): pretrain.make_trials on train tasks only, after the ones train.py's PPO
samples. Actor: per task the explorer's memoryless trial and trials that follow a right and a wrong plan,
in exactly the prompt actor.build_prompt makes at run time (no few-shot examples, the checkpoint's own
window); the retrospector: the reflection prompt capped at --prompt-tokens (train.py's
reflection_prompt_tokens), then a reflection that is right with probability pretrain.P_CORRECT, so that
the fine-tuned retrospector is a weak Reflexion that PPO can improve on. The loss is on the completion
tokens only. Deterministic from --seed with one thread. Adapters are saved in bfloat16 (small enough to
commit).
"""

import argparse
import os
import random
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import actor  # noqa: E402
import envs  # noqa: E402
import lora  # noqa: E402
import model as modelpy  # noqa: E402
import pretrain  # noqa: E402
from worlds import scripted  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ADAPTERS = os.path.join(ROOT, "checkpoints", "adapters")


def sequences(args, tok, context: int):
    """(train, held-out) (ids, mask) segments; held out: the last --holdout share of each env's tasks."""
    episodes, pairs = pretrain.make_trials(args.seed, {e: args.tasks for e in args.envs.split(",")})
    if args.role == "actor":
        items = [(e, pretrain.actor_sequences(e, tok, context)) for e in episodes]
    else:
        items = [(t, [pretrain.reflection_sequence(t, r, tok, args.prompt_tokens)]) for t, r in pairs]
    tasks = {}
    for e in episodes:
        tasks.setdefault(e.env, set()).add(e.task)
    held = {(env, t) for env, ts in tasks.items() for t in sorted(ts)[int(len(ts) * (1 - args.holdout)) :]}
    train, val = [], []
    for e, segs in items:
        (val if (e.env, e.task) in held else train).extend(segs)
    return train, val


@torch.no_grad()
def held_out_loss(model, seqs, batch_tokens: int) -> float:
    """Mean loss per completion token over `seqs`."""
    total, n = 0.0, 0
    for idx in pretrain.batches(seqs, batch_tokens, random.Random(0)):
        x, m = pretrain.collate(seqs, idx)
        k = int(m[:, 1:].sum())
        total, n = total + pretrain.loss_fn(model, x, m).item() * k, n + k
    return total / max(n, 1)


def measure(args):
    """Solved of N test tasks with an empty memory; of the failed ones, solved with the right plan
    (env.plan of the failed trial) and with a plausible wrong one in memory: does the actor obey it?"""
    rows = {}
    actors = (("plain", "", args.examples), ("adapter", args.out, 0))
    for label, adapter, n_ex in [a for a in actors if args.actors in ("both", a[0])]:
        llm = actor.LocalLLM.load(args.model, adapter=adapter)
        for name in args.envs.split(","):
            make_env = lambda name=name: envs.make(name, "test", **pretrain.ENV_OPTIONS[name])
            ex = scripted.few_shot_examples(name, n_ex) if n_ex else ()

            def solved(tasks, memories, make_env=make_env, ex=ex, llm=llm):
                trajs = actor.run_trials(make_env, tasks, llm, memories, examples=ex, k=pretrain.MEMORY_K,
                                         max_tokens=pretrain.ACTOR_MAX_TOKENS, concurrency=16)  # fmt: skip
                return trajs, sum(t.success for t in trajs)

            t0 = time.time()
            first, ok = solved(list(range(args.measure)), None)
            env, rng = make_env(), random.Random(args.seed)
            failed, right, wrong = [t for t in first if not t.success], [], []
            for t in failed:
                env.reset(t.task)
                right.append(env.plan(pretrain.trial_steps(t)))
                wrong.append(pretrain.wrong_reflection(env, t, right[-1], rng))
            fix = [(t.task, [r]) for t, r in zip(failed, right, strict=True) if r]
            right_ok = solved([task for task, _ in fix], [mem for _, mem in fix])[1] if fix else 0
            wrong_ok = solved([t.task for t in failed], [[w] for w in wrong])[1] if failed else 0
            rows[label, name] = dict(solved=ok, right_plan=right_ok, right_of=len(fix), wrong_plan=wrong_ok,
                                     wrong_of=len(failed), seconds=round(time.time() - t0))
            print(f"{label} ({n_ex} examples) {name}: empty memory {ok}/{args.measure}; right plan fixes "
                  f"{right_ok}/{len(fix)}, wrong plan {wrong_ok}/{len(failed)} ({time.time() - t0:.0f} s)",
                  flush=True)  # fmt: skip
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--role", default="actor", choices=("actor", "retrospector"))
    p.add_argument("--model", default="checkpoints/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    p.add_argument("--envs", default="hotpotqa")
    p.add_argument("--tasks", type=int, default=300, help="train tasks per env")
    p.add_argument("--holdout", type=float, default=0.05, help="share of the tasks whose loss is reported")
    p.add_argument("--prompt-tokens", type=int, default=1024, help="retrospector: reflection prompt cap")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--r", type=int, default=8)
    p.add_argument("--alpha", type=float, default=16.0)
    p.add_argument("--targets", default="q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--batch-tokens", type=int, default=2048, help="padded tokens per optimizer step")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (results depend on it)")
    p.add_argument("--out", default=None, help="default: checkpoints/adapters/smollm2_{role}_{envs}.pt")
    p.add_argument("--measure", type=int, default=0, metavar="N",
                   help="instead of training: plan following of the actor with --out folded in, and without "
                        "it (with --examples few-shot examples), on the first N test tasks of each env")
    p.add_argument("--examples", type=int, default=2, help="--measure: few-shot examples of the plain actor")
    p.add_argument("--actors", default="both", choices=("both", "plain", "adapter"), help="--measure: which")
    args = p.parse_args(argv)
    args.out = args.out or os.path.join(ADAPTERS, f"smollm2_{args.role}_{args.envs.replace(',', '_')}.pt")
    torch.set_num_threads(args.threads)
    if args.measure:
        return measure(args)
    torch.manual_seed(args.seed)
    t0 = time.time()
    tok = modelpy.load_tokenizer(args.model)
    model = modelpy.from_pretrained(args.model)
    train, val = sequences(args, tok, model.config.max_seq_len)
    if not train or not val:
        raise SystemExit(f"{args.role}: {len(train)} train and {len(val)} held-out sequences: raise --tasks "
                         "or change --holdout")
    n_tokens = sum(len(ids) for ids, _ in train)
    print(f"{args.role}: {len(train)} train segments ({n_tokens} tokens), {len(val)} held out "
          f"({time.time() - t0:.0f} s)", flush=True)
    lora.apply_lora(model, r=args.r, alpha=args.alpha, targets=args.targets.split(","))
    print(lora.lora_report(model), flush=True)
    before = held_out_loss(model, val, 4 * args.batch_tokens)
    model, curve = pretrain.train(train, tok.vocab_size, args.steps, args.seed, args.lr, args.batch_tokens,
                                  model=model, log_every=10, desc=f"{args.role} LoRA")
    after = held_out_loss(model, val, 4 * args.batch_tokens)
    print("loss curve (step: loss): " + ", ".join(f"{s}: {v:.3f}" for s, v in curve))
    print(f"held-out loss per completion token: {before:.3f} -> {after:.3f}; "
          f"{args.steps * args.batch_tokens / n_tokens:.2f} epochs; {(time.time() - t0) / 60:.1f} min")
    for m in lora.lora_modules(model).values():  # bfloat16 on disk: half the bytes, load_lora casts back
        m.lora_A.data, m.lora_B.data = m.lora_A.data.bfloat16(), m.lora_B.data.bfloat16()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    lora.save_lora(model, args.out)
    print(f"wrote {args.out} ({os.path.getsize(args.out) / 2**20:.1f} MiB)")
    return dict(held_out_before=before, held_out_after=after, curve=curve)


if __name__ == "__main__":
    main()
