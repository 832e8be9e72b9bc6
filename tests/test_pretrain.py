"""pretrain.py: scripted training data in the run-time prompt format, a tiny training run, the cache."""

import os
import random
import re

import pytest
import torch

import actor
import envs
import model as M
import pretrain as P
import train
from worlds import hotpotqa_world, scripted

TINY = {"hotpotqa": 6, "alfworld": 4, "webshop": 6}


def tiny_args(out):
    """`python pretrain.py` at a tiny size."""
    return ["--out", str(out), "--steps", "2", "--retro-steps", "2", "--induction-steps", "2", "--tasks",
            "0.005", "--vocab", "1000", "--dim", "32", "--layers", "1", "--batch-tokens", "1024"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """checkpoints from a two-step `python pretrain.py` run: the real command at a tiny size."""
    out = tmp_path_factory.mktemp("pretrain") / "tiny"
    P.main(tiny_args(out))
    return out


@pytest.fixture(scope="module")
def data():
    episodes, pairs = P.make_trials(0, TINY)
    tok = P.build_tokenizer(episodes, pairs, vocab_size=1000)
    return episodes, pairs, tok


def test_make_trials_is_deterministic_and_train_split_only(data):
    episodes, pairs, _ = data
    again, again_pairs = P.make_trials(0, TINY)
    assert [e.to_json() for e in episodes] == [e.to_json() for e in again]
    assert [r for _, r in pairs] == [r for _, r in again_pairs]
    assert {e.env for e in episodes} == set(P.ENVS) and pairs
    assert all(not t.success for t, _ in pairs)  # reflections are written on failed trials only
    test_questions = {envs.make("hotpotqa", "test").reset(i) for i in range(100)}
    assert not any(e.instruction in test_questions for e in episodes)
    # nor the tasks train.py's PPO samples: the frozen retrospector has not seen their reflections
    for name in P.ENVS:
        ppo_env = envs.make(name, "train", seed=P.ENV_SEED, **P.ENV_OPTIONS[name])
        ppo_instructions = {ppo_env.reset(i) for i in range(len(ppo_env))}
        mine = [e for e in episodes if e.env == name]
        assert mine and all(e.task >= len(ppo_env) for e in mine)
        # and the full pretraining set ends before eval.py's validation slice (--eval_split=val)
        assert len(ppo_env) + P.N_TASKS[name] <= envs.VAL_FIRST
        assert not any(e.instruction in ppo_instructions for e in mine)


def test_names_drill_pairs_are_hotpotqa_failures_on_names_no_split_holds():
    """pretrain.py's name drill: (failed trial, reflection) pairs on HotPotQA tasks of envs' name
    inventory 1, right and wrong reflections among them."""
    episodes, pairs = P.make_trials(0, {"hotpotqa": 20}, names=1)
    assert {e.env for e in episodes} == {"hotpotqa"} and len(pairs) >= 10
    stems = tuple(s.capitalize() for s in hotpotqa_world.NAME_STEMS[1])
    env = envs.make("hotpotqa", "train", n_tasks=300, names=1)
    right = 0
    for t, reflection in pairs:
        assert not t.success
        people = re.findall(r"the [a-z]+ [A-Z][a-z]+ ([A-Z][a-z]+)", t.instruction)
        assert all(p.startswith(stems) for p in people)
        env.reset(t.task)
        assert t.instruction.endswith(env.question)
        right += reflection == env.plan(P.trial_steps(t))
    assert 0 < right < len(pairs)


def test_actor_sequences_are_the_run_time_prompts(data):
    """Every completion span is preceded by exactly the tokens of actor.build_prompt at that step."""
    episodes, _, tok = data
    count = lambda s: len(tok.encode(s))
    long = max((e for e in episodes if e.env == "alfworld"), key=lambda e: len(e.steps))
    for traj in [episodes[0], long, *[e for e in episodes if e.reflections][:2]]:
        segments = P.actor_sequences(traj, tok)
        k = 0
        for ids, mask in segments:
            assert len(ids) <= P.CONTEXT
            starts = [j for j in range(len(mask)) if mask[j] and (j == 0 or not mask[j - 1])]
            for j in starts:
                prompt = actor.build_prompt(traj.instruction, traj.steps[:k], traj.reflections,
                                            P.examples(traj.env), P.MEMORY_K, count,
                                            P.CONTEXT - P.ACTOR_MAX_TOKENS)  # fmt: skip
                if j == starts[0]:  # a segment starts with the prompt, tokenized as the run time does
                    assert ids[:j] == tok.encode(prompt)
                assert tok.decode(ids[:j]) == prompt
                end = next((e for e in range(j, len(mask)) if not mask[e]), len(mask))
                thought, action = traj.steps[k][:2]
                assert actor.parse_action(tok.decode(ids[j:end])) == (thought.strip(), action)
                k += 1
        assert k == len(traj.steps)
    assert len(P.actor_sequences(long, tok)) > 1 or len(long.steps) < 10  # long episodes get elided


def test_reflection_sequence_ends_with_eos(data):
    _, pairs, tok = data
    traj, reflection = pairs[0]
    ids, mask = P.reflection_sequence(traj, reflection, tok)
    start = mask.index(1)
    assert tok.decode(ids[:start]).endswith("Reflection:") and ids[-1] == tok.eos_id
    assert tok.decode(ids[start:-1]) == " " + reflection.strip() and all(mask[start:])


@pytest.mark.parametrize("name", P.ENVS)
def test_right_reflections_fix_failures_wrong_ones_do_not(name):
    env = envs.make(name, "train", **P.ENV_OPTIONS[name])
    rng = random.Random(1)
    right_ok = wrong_ok = n = 0
    for i in range(40):
        t0 = P.scripted_trial(env, i, rng)
        if t0.success:
            continue
        right = P.correct_reflection(env, t0)
        wrong = P.wrong_reflection(env, t0, right, rng)
        assert right and wrong != right
        n += 1
        right_ok += P.scripted_trial(env, i, rng, [right]).success
        wrong_ok += P.scripted_trial(env, i, rng, [wrong]).success
    assert n >= 10
    assert right_ok >= 0.8 * n and wrong_ok <= 0.35 * n, (name, n, right_ok, wrong_ok)


def test_tiny_pretraining_lowers_the_loss(data):
    episodes, pairs, tok = data
    seqs = [s for e in episodes for s in P.actor_sequences(e, tok)][:40]
    seqs += [P.reflection_sequence(t, r, tok) for t, r in pairs][:10]
    kw = dict(dim=32, n_layers=1, n_heads=2, n_kv_heads=2, hidden_dim=64, max_seq_len=P.CONTEXT,
              tie_embeddings=True)  # fmt: skip
    model, curve = P.train(seqs, tok.vocab_size, steps=30, seed=0, lr=1e-2, batch_tokens=2048, model_kw=kw,
                           log_every=5)  # fmt: skip
    assert curve[0][1] > 5.0 and curve[-1][1] < curve[0][1] - 1.0, curve


def test_main_writes_loadable_checkpoints_atomically(tiny_run):
    out = tiny_run
    os.makedirs(out / "actor", exist_ok=True)
    (out / "actor" / "stale.txt").write_text("x")
    # an old cache is replaced as a whole
    P.main(tiny_args(out))
    assert sorted(os.listdir(out.parent)) == ["tiny"]  # no temp folder left behind
    for role in ("actor", "retrospector"):
        assert not (out / role / "stale.txt").exists()
        m = M.from_pretrained(out / role)
        assert m.config.max_seq_len == P.CONTEXT and m.config.dim == 32
        assert M.load_tokenizer(out / role).vocab_size == 1000


def test_role_trains_one_model_and_both_roles_share_the_warm_up(tmp_path, tiny_run):
    P.main(tiny_args(tmp_path / "tiny") + ["--role", "retrospector"])
    assert sorted(os.listdir(tmp_path / "tiny")) == ["retrospector"]
    alone = M.from_pretrained(tmp_path / "tiny" / "retrospector")
    both = M.from_pretrained(tiny_run / "retrospector")  # made after the actor, in the same run
    pairs = zip(alone.state_dict().values(), both.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
    actor_model = M.from_pretrained(tiny_run / "actor")
    assert not torch.equal(actor_model.tok_emb.weight, both.tok_emb.weight)  # two models


def test_pretrain_takes_the_run_time_settings_from_train_config():
    cfg = train.Config()
    assert (P.ACTOR_MAX_TOKENS, P.REFLECT_MAX_TOKENS, P.MEMORY_K, P.ENV_SEED) == (
        cfg.actor_max_tokens, cfg.reflection_max_tokens, cfg.memory_k, cfg.env_seed)  # fmt: skip
    assert P.ENV_OPTIONS == {n: train.env_options(cfg).get(n, {}) for n in P.ENVS}
    n = cfg.n_examples
    assert P.examples("hotpotqa") == (scripted.few_shot_examples("hotpotqa", n) if n else ())


def test_default_actor_prompt_always_fits_the_context():
    """The longest instruction of every env and split + MEMORY_K reflections of REFLECT_MAX_TOKENS tokens
    + a long trial + ACTOR_MAX_TOKENS fit CONTEXT: actor.build_prompt / LocalLLM never raise."""
    tok = M.load_tokenizer(os.path.join(P.OUT, "actor"))
    count = lambda s: len(tok.encode(s))
    limit = P.CONTEXT - P.ACTOR_MAX_TOKENS
    rng = random.Random(0)
    # worst-case reflections: random tokens, cut to REFLECT_MAX_TOKENS as train.Retrospector cuts them
    memory = []
    for _ in range(P.MEMORY_K):
        text = tok.decode(rng.choices(range(tok.vocab_size - 1), k=P.REFLECT_MAX_TOKENS)).strip()
        while count(text) > P.REFLECT_MAX_TOKENS:
            text = text[:-1]
        memory.append(text)
    longest = {}
    for name in P.ENVS:
        for split in ("train", "test"):
            env = envs.make(name, split, seed=P.ENV_SEED, **P.ENV_OPTIONS[name])
            i = max(range(len(env)), key=lambda i: count(env.reset(i)))
            traj = P.scripted_trial(env, i, rng)
            prompt = actor.build_prompt(traj.instruction, traj.steps, memory, P.examples(name), P.MEMORY_K,
                                        count, limit)  # fmt: skip
            assert count(prompt) <= limit and all(r in prompt for r in memory)
            full = actor.build_prompt(traj.instruction, traj.steps, memory, P.examples(name), P.MEMORY_K)
            longest[name] = max(longest.get(name, 0), count(full))
    assert longest["alfworld"] > limit  # not vacuous: ALFWorld trials are elided to fit


def test_retrospector_reflections_reencode_within_their_budget(tiny_run):
    """Near-uniform sampling emits stray bytes (U+FFFD when decoded): the reflection train.py puts in the
    actor's memory still re-encodes to <= reflection_max_tokens tokens, as the context budget assumes."""
    path = os.path.join(tiny_run, "retrospector")
    tok = M.load_tokenizer(path)
    retro = train.Retrospector(M.from_pretrained(path), tok, max_tokens=P.REFLECT_MAX_TOKENS,
                               temperature=20.0)  # fmt: skip
    env = envs.make("hotpotqa", "train", seed=P.ENV_SEED)
    trajs = [P.scripted_trial(env, i, random.Random(i)) for i in range(4)]
    refl = retro.reflect(trajs, generator=torch.Generator().manual_seed(0))
    assert any("\ufffd" in tok.decode(r.ids) for r in refl)  # the case the cut is for does occur
    assert all(len(tok.encode(r.text)) <= P.REFLECT_MAX_TOKENS for r in refl)


def test_cached_checkpoints_load_and_act_on_a_test_prompt():
    """checkpoints/tiny (committed; remade by `python pretrain.py`) gives a parseable action."""
    for role in ("actor", "retrospector"):
        path = os.path.join(P.OUT, role)
        assert os.path.isfile(os.path.join(path, "model.safetensors")), f"{path}: run python pretrain.py"
    llm = actor.LocalLLM.load(os.path.join(P.OUT, "actor"))
    assert llm.context_window == P.CONTEXT
    env = envs.make("hotpotqa", "test")
    prompt = actor.build_prompt(env.reset(0), [], count_tokens=llm.count_tokens,
                                max_prompt_tokens=P.CONTEXT - P.ACTOR_MAX_TOKENS)
    (out,) = llm.complete([prompt], P.ACTOR_MAX_TOKENS, 0.0)
    thought, action = actor.parse_action(out)
    assert action.startswith("Search[") and action.endswith("]"), out
    retro_tok = M.load_tokenizer(os.path.join(P.OUT, "retrospector"))
    assert retro_tok.mergeable_ranks == llm.tokenizer.mergeable_ranks  # two models, one vocabulary
    assert retro_tok.pat_str == P.SPLIT_PATTERN  # the checkpoints are what pretrain.py makes now


def test_test_split_names_are_spelled_with_tokens_seen_in_training():
    """The split pattern cuts names and product ids into pieces: a test-split name or ASIN (never seen
    in training) is spelled with tokens that the train-split text uses too, so a model can copy it."""
    tok = M.load_tokenizer(os.path.join(P.OUT, "retrospector"))
    episodes, _ = P.make_trials(0, {"hotpotqa": 300, "alfworld": 4, "webshop": 100})
    seen = {t for e in episodes for t in tok.encode(e.text())}
    env = envs.make("hotpotqa", "test")
    names = {n for i in range(20) for n in re.findall(r"[A-Z][a-z]+ [A-Z][a-z]+", env.reset(i))}
    shop = envs.make("webshop", "test")
    for i in range(5):
        shop.reset(i)
        obs, *_ = shop.step("search[" + shop.task["phrase"] + "]")
        names |= set(re.findall(r"B0[A-Z0-9]{8}", obs))
    assert len(names) > 20
    for name in names:
        ids = tok.encode(" " + name)
        assert set(ids) <= seen, (name, [tok.decode([t]) for t in ids if t not in seen])
    # the Llama 3 pattern would glue '[' to the name: here a name has the same tokens everywhere
    assert tok.encode("Search[Fidoll Works]")[2:-1] == tok.encode(" Fidoll Works")[1:]


def test_induction_sequences_repeat_with_the_loss_on_the_repeat():
    seqs = P.induction_sequences(50, 1000, random.Random(0))
    for ids, mask in seqs:
        k = mask.index(1)
        assert ids[:k] == ids[k:] and mask == [0] * k + [1] * k and 10 <= k <= 60
        assert all(0 <= t < 999 for t in ids)  # 999: end of text
    assert len({tuple(ids) for ids, _ in seqs}) == 50


def load_script(name):
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.abspath(P.__file__)), "scripts", name)
    spec = importlib.util.spec_from_file_location(name[:-3], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def bc_run(tiny_run, role, out):
    """scripts/bc_lora.py at a tiny size, on the tiny_run checkpoint of `role`."""
    base = os.path.join(tiny_run, role)
    args = ["--role", role, "--model", base, "--tasks", "12", "--holdout", "0.5", "--steps", "8",
            "--lr", "1e-2", "--batch-tokens", "1024", "--prompt-tokens", "600", "--out", str(out)]
    res = load_script("bc_lora.py").main(args)
    assert res["held_out_after"] < res["held_out_before"]
    state = torch.load(out, weights_only=True)["state"]
    assert {t.dtype for t in state.values()} == {torch.bfloat16}  # half the bytes on disk
    return base


def test_bc_actor_lowers_the_loss_and_its_adapter_folds_into_the_actor(tiny_run, tmp_path):
    out = tmp_path / "adapter.pt"
    base = bc_run(tiny_run, "actor", out)
    cfg = train.parse_config(["--actor=local", f"--actor_path={base}", f"--actor_adapter={out}"])
    llm = train.build_actor(cfg, "cpu")
    plain = actor.LocalLLM.load(base)
    assert not any("lora" in n for n, _ in llm.model.named_parameters())  # folded: a plain model
    ids = torch.tensor([plain.encode("Question: who wrote it?")])
    assert not torch.allclose(llm.model(ids), plain.model(ids), atol=1e-4)  # the adapter's change is in
    with pytest.raises(ValueError, match="actor_adapter"):
        train.parse_config(["--actor=explorer", f"--actor_adapter={out}"])
    with pytest.raises(ValueError, match="no file"):
        train.parse_config(["--actor=local", f"--actor_adapter={tmp_path / 'missing.pt'}"])


def test_bc_retrospector_adapter_is_the_frozen_model_that_ppo_adapts(tiny_run, tmp_path):
    from lora import disable_lora, load_lora, lora_modules

    out = tmp_path / "adapter.pt"
    base = bc_run(tiny_run, "retrospector", out)
    cfg = train.parse_config([f"--retrospector_path={base}", f"--retrospector_adapter={out}"])
    retro = train.Retrospector.load(cfg, "cpu")
    ids = torch.tensor([retro.encode("Reflection:")])
    tuned = M.from_pretrained(base)
    load_lora(tuned, out)
    with torch.no_grad(), disable_lora(retro.model):  # adapters off (Reflexion): the fine-tuned model
        assert torch.allclose(retro.model(ids), tuned(ids), atol=1e-4)
        assert not torch.allclose(retro.model(ids), M.from_pretrained(base)(ids), atol=1e-4)
    fresh = lora_modules(retro.model).values()  # PPO's own adapters on top, a no-op until trained
    assert fresh and all(m.lora_B.abs().sum() == 0 for m in fresh)
