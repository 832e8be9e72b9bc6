"""train.py: config parsing, reward bookkeeping, a tiny end-to-end run, checkpoint + resume.

The retrospector is a tiny random Llama with a BPE vocabulary trained on environment text (built once
per module); the actor is scripted, so rewards are known.
"""

import json
import os
import re
import zlib

import pytest
import torch

import envs
import model as M
from actor import HEADER, REFLECT_HEADER, STOP, LLMError, build_reflection_prompt, run_trial
from formats.bpe import train_bpe
from lora import lora_modules
from ppo import ValueHead, make_rollout
from train import Config, Retrospector, parse_config, ppo_config, rollout, success_counts, train
from worlds.scripted import ExpertLLM

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_tiny_retrospector(path, seed=0, max_seq_len=512):
    """A random-init tiny Llama + a small BPE tokenizer (eos only) saved in our HF layout."""
    env = envs.make("hotpotqa", "train", seed=0)
    texts = [REFLECT_HEADER, HEADER, "Plan: Trial Thought Action Observation"]
    for i in range(10):  # expert episodes: the words the prompts are made of
        texts.append(env.reset(i))
        done = False
        while not done:
            thought, action = env.expert()
            obs, _, done, _ = env.step(action)
            texts.append(f"{thought} {action} {obs}")
    tok = train_bpe(texts, 800)
    torch.manual_seed(seed)
    cfg = M.ModelConfig(arch="llama", vocab_size=800, dim=32, n_layers=2, n_heads=4, n_kv_heads=2,
                        hidden_dim=64, max_seq_len=max_seq_len, tie_embeddings=True)  # fmt: skip
    M.save_pretrained(M.Transformer(cfg), str(path))
    tok.save(str(path))
    return str(path)


@pytest.fixture(scope="module")
def retro_path(tmp_path_factory):
    return make_tiny_retrospector(tmp_path_factory.mktemp("retro"))


class ScriptedActor:
    """The expert on hotpotqa, except that task t fails (Finish[nobody], return 0) until its memory
    holds need(t) = crc32(instruction) % 3 reflections. crash_at: raise (a simulated kill) at the
    first prompt with that many reflections."""

    def __init__(self, crash_at=None):
        self.expert = ExpertLLM(lambda: envs.make("hotpotqa", "train", seed=0))
        self.crash_at = crash_at

    @staticmethod
    def need(instruction: str) -> int:
        return zlib.crc32(instruction.encode()) % 3

    def complete(self, prompts, max_tokens=256, temperature=0.0, stop=STOP):
        out = []
        for p in prompts:
            instruction = max((t for t in self.expert.tasks if t in p), key=len)
            n_memory = len(re.findall(r"^Trial \d+:$", p, re.M))
            if n_memory == self.crash_at:
                raise RuntimeError("simulated crash")
            ok = n_memory >= self.need(instruction)
            out.append(self.expert.answer(p) if ok else " I give up.\nAction: Finish[nobody]")
        return out


def tiny_config(tmp_path, retro_path, **kw) -> Config:
    base = dict(out_dir=str(tmp_path / "run"), envs="hotpotqa", retrospector_path=retro_path, updates=1,
                tasks_per_env=6, max_trials=3, reflection_max_tokens=8, ppo_epochs=2, minibatch_size=4,
                micro_batch_size=4, lr=1e-2, progress=False, lora_r=4,
                lora_targets="q_proj,v_proj")  # fmt: skip
    base.update(kw)
    return Config(**base)


# ----------------------------------------------------------------------------- config


def test_config_defaults_file_and_flags(tmp_path):
    assert parse_config([]) == Config()
    f = tmp_path / "c.py"
    f.write_text("import os\n_scratch = 3\nupdates = 7\nlr = 1  # an int for a float key\nenvs = 'webshop'\n")
    cfg = parse_config([str(f), "--updates=9", "--resume", "--chat_template=0", "--target_kl=0.5"])
    assert (cfg.updates, cfg.lr, cfg.envs, cfg.resume, cfg.chat_template, cfg.target_kl) == (
        9, 1.0, "webshop", True, False, 0.5)  # fmt: skip
    assert isinstance(cfg.lr, float)
    shipped = [n for n in os.listdir(os.path.join(ROOT, "config")) if n.endswith(".py")]
    for name in shipped:  # the shipped configs are valid; an overlay (smollm2_alfworld.py) after its base
        base = [b for b in shipped if name.startswith(b[:-3] + "_")]
        parse_config([os.path.join(ROOT, "config", n) for n in base + [name]])


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--nope=1"], r"unknown config key 'nope'.*valid keys: out_dir, seed, .*lr"),
        (["--lr=fast"], r"'lr' .*must be float, got 'fast'"),
        (["--updates=2.5"], r"'updates' .*must be int"),
        (["--resume=maybe"], r"'resume' .*must be bool"),
        (["--lr"], r"'lr' needs a value"),
        (["--updates=0"], r"'updates' must be >= 1"),
        (["--eval_trials=0"], r"'eval_trials' must be >= 1"),
        (["--threads=-1"], r"'threads' must be >= 0"),
        (["--reflection_prompt_tokens=-5"], r"'reflection_prompt_tokens' must be >= 0, got -5"),
        (["--max_void_share=1.5"], r"'max_void_share' must be in \[0, 1\], got 1.5"),
        (["missing.py"], r"config file 'missing.py' not found"),
        (["--quantize=int3"], r"'quantize' must be one of \('', 'int8', 'int4'\), got 'int3'"),
        (["--eval_split=dev"], r"'eval_split' must be one of \('test', 'val'\), got 'dev'"),
        (["--retrospector_adapter=nope.pt"], r"'retrospector_adapter': no file 'nope.pt'"),
    ],
)
def test_config_errors(argv, message):
    with pytest.raises(ValueError, match=message):
        parse_config(argv)


def test_a_missing_checkpoint_is_named_and_a_gguf_file_counts(tmp_path):
    import train as trainpy

    gone = str(tmp_path / "smollm2" / "model.gguf")
    with pytest.raises(FileNotFoundError, match=f"no checkpoint '{re.escape(gone)}'.*fetch_smollm2.sh"):
        trainpy.ensure_checkpoints(parse_config([f"--retrospector_path={gone}"]))
    (tmp_path / "x.gguf").write_bytes(b"GGUF")  # one file is a checkpoint: nothing to build
    trainpy.ensure_checkpoints(parse_config([f"--retrospector_path={tmp_path / 'x.gguf'}"]))


def test_threads_key_sets_torch_threads():
    import train as trainpy

    before = torch.get_num_threads()
    try:
        assert trainpy.command_line_config(["--threads=2"]).threads == 2 and torch.get_num_threads() == 2
        trainpy.command_line_config(["--threads=0"])  # 0 leaves torch's setting alone
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    with pytest.raises(SystemExit, match="'threads' must be >= 0"):
        trainpy.command_line_config(["--threads=-3"])


def test_config_file_errors(tmp_path):
    bad_key, bad_type = tmp_path / "a.py", tmp_path / "b.py"
    bad_key.write_text("updatez = 3\n")
    bad_type.write_text("updates = '3'\n")
    with pytest.raises(ValueError, match=r"unknown config key 'updatez' \(in .*a.py\); valid keys"):
        parse_config([str(bad_key)])
    with pytest.raises(ValueError, match=r"'updates' \(in .*b.py\) must be int, got '3'"):
        parse_config([str(bad_type)])


# ----------------------------------------------------------------------------- reward bookkeeping


class FakeEnv:
    """One step: the action Answer[x] earns return x; success iff x >= 1."""

    name, max_steps = "fake", 1

    def __len__(self):
        return 5

    def reset(self, i):
        return f"Task {i}: answer with a number.\n"

    def step(self, action):
        x = float(re.fullmatch(r"Answer\[(.*)\]", action).group(1))
        return "Done.", x, True, {"success": x >= 1}


RETURNS = {0: [0.2, 0.5, 1.0], 1: [1.0], 2: [0.0, 0.0, 0.3], 3: [0.5, 0.1, 0.1], 4: [0.0, "error"]}


class FakeActor:
    """Answers RETURNS[task][number of reflections in its memory]; "error" is a backend failure."""

    def complete(self, prompts, max_tokens=256, temperature=0.0, stop=STOP):
        out = []
        for p in prompts:
            task = int(re.findall(r"^Task (\d+):", p, re.M)[-1])
            x = RETURNS[task][len(re.findall(r"^Trial \d+:$", p, re.M))]
            if x == "error":
                raise LLMError("server down")
            out.append(f" thinking\nAction: Answer[{x}]")
        return out


def test_reward_is_change_of_return_and_void_episodes_are_excluded(tmp_path, retro_path):
    cfg = tiny_config(tmp_path, retro_path, concurrency=2)
    retro = Retrospector.load(cfg, "cpu")
    replay, log = tmp_path / "replay.jsonl", tmp_path / "episodes.jsonl"
    records, history = rollout(FakeEnv, range(5), FakeActor(), retro, cfg, "retroformer",
                               generator=torch.Generator().manual_seed(0), log_path=str(log),
                               replay_path=str(replay), tag={"update": 7})  # fmt: skip
    got = [(r["task"], r["trial"], r["reward"]) for r in records]
    want = [(0, 0, 0.3), (2, 0, 0.0), (3, 0, -0.4), (4, 0, None), (0, 1, 0.5), (2, 1, 0.3), (3, 1, 0.0)]
    assert [(t, k) for t, k, _ in got] == [(t, k) for t, k, _ in want]
    for (_, _, r), (_, _, w) in zip(got, want, strict=True):
        assert r == (None if w is None else pytest.approx(w))
    void = records[3]
    assert void["error"] == "server down" and void["return_after"] is None
    assert all(r["right_plan"] is None for r in records)  # FakeEnv has no plans to judge them by
    for r in records:  # PPO trains on the sampled tokens, ended by the stop token when it stopped
        assert r["prompt_ids"] == retro.encode(r["prompt"]) and 1 <= len(r["reflection_ids"]) <= 9
        assert r["reflection_ids"][: len(r["logprobs"])] == r["reflection_ids"][: len(r["logprobs"])]
    lines = [json.loads(x) for x in replay.read_text().splitlines()]
    assert [(x["task"], x["trial"], x["update"]) for x in lines] == [(t, k, 7) for t, k, _ in want]
    assert len(log.read_text().splitlines()) == 5 + 4 + 3  # every trial of every task is logged
    # task 4's retry failed in the backend: left out of the counts, not a failure
    assert success_counts(history, 3) == ([1, 1, 2], 4, 1)
    # the memory of the retry holds the reflection the record carries
    assert history[0][1].reflections == [records[0]["reflection"]]


def test_reward_success_is_the_change_of_success(tmp_path, retro_path):
    # WebShop's return is a partial score: reward="success" rewards a reflection only for a solve
    cfg = tiny_config(tmp_path, retro_path, concurrency=2, reward="success")
    records, _ = rollout(FakeEnv, range(5), FakeActor(), Retrospector.load(cfg, "cpu"), cfg, "retroformer",
                         generator=torch.Generator().manual_seed(0))  # fmt: skip
    got = [(r["task"], r["trial"], r["reward"]) for r in records]
    assert got == [(0, 0, 0.0), (2, 0, 0.0), (3, 0, 0.0), (4, 0, None), (0, 1, 1.0), (2, 1, 0.0), (3, 1, 0.0)]
    returns = [(r["return_before"], r["return_after"]) for r in records[:3]]
    assert returns == [(0.2, 0.5), (0.0, 0.0), (0.5, 0.1)]  # the partial returns are still logged
    bad = tiny_config(tmp_path, retro_path, reward="score")
    with pytest.raises(ValueError, match="config key 'reward' must be return or success, got 'score'"):
        rollout(FakeEnv, range(5), FakeActor(), None, bad, "react")


def test_react_retries_without_memory(tmp_path, retro_path):
    cfg = tiny_config(tmp_path, retro_path)
    records, history = rollout(FakeEnv, range(4), FakeActor(), None, cfg, "react")
    assert records == []
    assert [t.ret for t in history[0]] == [0.2, 0.2, 0.2] and history[0][2].reflections == []
    assert success_counts(history, 3) == ([1, 1, 1], 4, 0)
    with pytest.raises(ValueError, match="unknown method 'ppo'"):
        rollout(FakeEnv, range(4), FakeActor(), None, cfg, "ppo")


# ----------------------------------------------------------------------------- training runs


def adapters(retro):
    return {n: p.detach().clone() for n, p in retro.model.named_parameters() if p.requires_grad}


def test_tiny_end_to_end_run(tmp_path, retro_path):
    cfg = tiny_config(tmp_path, retro_path)
    retro = train(cfg, actor_llm=ScriptedActor())
    out = tmp_path / "run"
    files = {"ckpt.pt", "adapters.pt", "replay.jsonl", "episodes.jsonl", "metrics.jsonl"}
    assert files <= set(os.listdir(out))
    replay = [json.loads(x) for x in (out / "replay.jsonl").read_text().splitlines()]
    assert replay and all(r["reward"] in (0.0, 1.0) and r["update"] == 1 for r in replay)
    (row,) = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert row["n_reflections"] == len(replay) and row["reward_mean"] == pytest.approx(
        sum(r["reward"] for r in replay) / len(replay))  # fmt: skip
    s = row["hotpotqa/success_by_trial"]
    assert len(s) == 3 and s[0] <= s[1] <= s[2] == 1.0  # every task is solved by its third trial
    for key in ("policy_loss", "value_loss", "kl_ref", "approx_kl", "tokens_per_s", "rollout_s"):
        assert key in row
    # reflections cut at reflection_max_tokens (8 here) are counted; the scripted actor is never cut
    assert row["actor_truncated"] == 0
    assert row["reflections_truncated"] == sum(r["finish_reason"] == "length" for r in replay) > 0
    # the update moved the adapters (B starts at zero) and the checkpoint holds them
    assert any(m.lora_B.abs().sum() > 0 for m in lora_modules(retro.model).values())
    ckpt = torch.load(out / "ckpt.pt", weights_only=True)
    assert ckpt["update"] == 1
    for n, p in adapters(retro).items():
        assert torch.equal(ckpt["lora"][n], p)
    with pytest.raises(SystemExit, match="exists: pass --resume"):
        train(cfg, actor_llm=ScriptedActor())


class HugeTrainSplit:
    """A train split of 10 * VAL_FIRST tasks, as a real data set has (HotPotQA's 90k questions):
    task i plays the generated task i % n."""

    def __init__(self):
        self.base = envs.make("hotpotqa", "train", seed=0)
        self.name, self.max_steps = self.base.name, self.base.max_steps

    def __len__(self):
        return 10 * envs.VAL_FIRST

    def reset(self, i):
        return self.base.reset(i % len(self.base))

    def step(self, action):
        return self.base.step(action)


def test_ppo_tasks_stay_before_the_val_slice_of_a_big_train_split(tmp_path, retro_path):
    cfg = tiny_config(tmp_path, retro_path, tasks_per_env=12)
    train(cfg, actor_llm=ScriptedActor(), make_env=lambda name, split: HugeTrainSplit)
    lines = (tmp_path / "run" / "episodes.jsonl").read_text().splitlines()
    tasks = {json.loads(x)["task"] for x in lines}
    assert len(tasks) == 12 and max(tasks) < envs.VAL_FIRST  # drawn from 30,000 ids, all before VAL_FIRST


def test_resume_after_crash_gives_the_same_adapters(tmp_path, retro_path):
    whole = train(tiny_config(tmp_path / "a", retro_path, updates=2), actor_llm=ScriptedActor())
    cfg = tiny_config(tmp_path / "b", retro_path, updates=1)
    train(cfg, actor_llm=ScriptedActor())  # stops after update 1
    cfg.updates, cfg.resume = 2, True
    with pytest.raises(RuntimeError, match="simulated crash"):  # killed in the middle of update 2
        train(cfg, actor_llm=ScriptedActor(crash_at=2))  # after trial 1's records are written
    resumed = train(cfg, actor_llm=ScriptedActor())
    a, b = adapters(whole), adapters(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)
    ckpt_a = torch.load(tmp_path / "a/run/ckpt.pt", weights_only=True)
    ckpt_b = torch.load(tmp_path / "b/run/ckpt.pt", weights_only=True)
    assert ckpt_a["update"] == ckpt_b["update"] == 2
    for k, v in ckpt_a["value_head"].items():
        assert torch.equal(v, ckpt_b["value_head"][k])
    # replay is appended, never rewritten: the crashed attempt's records stay, the last attempt
    # of each update equals the uninterrupted run's records
    strip = lambda r: {k: v for k, v in r.items() if k != "attempt"}
    ra = [json.loads(x) for x in (tmp_path / "a/run/replay.jsonl").read_text().splitlines()]
    rb = [json.loads(x) for x in (tmp_path / "b/run/replay.jsonl").read_text().splitlines()]
    attempts = list(dict.fromkeys(r["attempt"] for r in rb))
    assert len(attempts) == 3
    last = {r["update"]: r["attempt"] for r in rb}
    assert [strip(r) for r in rb if r["attempt"] == last[r["update"]]] == [strip(r) for r in ra]
    assert len(rb) > len(ra)  # the crashed attempt's reflections are kept
    metrics = [json.loads(x)["update"] for x in (tmp_path / "b/run/metrics.jsonl").read_text().splitlines()]
    assert metrics == [1, 2]


class VoidActor(ScriptedActor):
    """The scripted actor behind a server that fails every `every`-th prompt (retries exhausted)."""

    def __init__(self, every):
        super().__init__()
        self.every, self.n = every, 0

    def complete(self, prompts, max_tokens=256, temperature=0.0, stop=STOP):
        self.n += 1
        if self.n % self.every == 0:
            raise LLMError("POST http://x/v1/completions failed after 7 attempts; last error: HTTP 503: busy")
        return super().complete(prompts, max_tokens, temperature, stop)


def test_a_run_with_too_many_void_episodes_stops_naming_the_cause(tmp_path, retro_path):
    cfg = tiny_config(tmp_path, retro_path, concurrency=1, max_void_share=0.2)
    void = r"update 1: \d+ of \d+ episodes are void \(more than max_void_share=0.2\)"
    with pytest.raises(SystemExit, match=void + r".*cause \(\d+x\): POST .*HTTP 503: busy"):
        train(cfg, actor_llm=VoidActor(every=2))
    assert not (tmp_path / "run" / "ckpt.pt").exists()  # no update was made from void rewards
    cfg = tiny_config(tmp_path, retro_path, concurrency=1, out_dir=str(tmp_path / "run2"), max_void_share=1.0)
    train(cfg, actor_llm=VoidActor(every=2))  # the same run, allowed: it trains on what is left
    (row,) = [json.loads(x) for x in (tmp_path / "run2" / "metrics.jsonl").read_text().splitlines()]
    assert row["hotpotqa/n_void"] > 0


def test_reflection_prompts_are_capped(tmp_path, retro_path):
    make_env = lambda: envs.make("hotpotqa", "train")
    traj = run_trial(make_env(), 0, ExpertLLM(make_env), examples=())
    traj.success, traj.steps = False, []
    full = Retrospector.load(tiny_config(tmp_path, retro_path), "cpu")
    cap = len(full.encode(build_reflection_prompt(traj))) + 90  # room for the marker and a step or two
    traj.steps = [(f"thought {j}", f"Search[page {j}]", "Nothing.", 0.0) for j in range(5)]
    capped = Retrospector.load(tiny_config(tmp_path, retro_path, reflection_prompt_tokens=cap), "cpu")
    assert full.max_prompt_tokens == 512 - 8 and capped.max_prompt_tokens == cap
    (r_full,), (r_cap,) = full.reflect([traj]), capped.reflect([traj])
    assert len(r_cap.prompt_ids) <= cap < len(r_full.prompt_ids) <= 504
    assert "earlier steps elided" in r_cap.prompt and "elided" not in r_full.prompt


def test_gradient_checkpointing_gives_the_same_gradients(tmp_path, retro_path):
    grads = []
    for on in (False, True):
        torch.manual_seed(0)  # the same adapters' init
        retro = Retrospector.load(tiny_config(tmp_path, retro_path, grad_checkpoint=on), "cpu")
        assert retro.model.grad_checkpoint is on
        for m in lora_modules(retro.model).values():  # B != 0, so that A gets a gradient too
            torch.nn.init.normal_(m.lora_B, std=0.02)
        retro.model.train()
        ids = torch.randint(0, 800, (2, 40))
        retro.model(ids).logsumexp(-1).mean().backward()
        grads.append({n: p.grad.clone() for n, p in retro.model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-5, atol=1e-7)


def test_adapt_prompt_off_trains_and_reflections_are_scored_as_sampled(tmp_path, retro_path):
    """--adapt_prompt=False: the retrospector samples as PPO scores (adapters from the prompt's last token
    on), and a run trains the adapters."""
    cfg = tiny_config(tmp_path, retro_path, adapt_prompt=False)
    retro = train(cfg, actor_llm=ScriptedActor())
    assert retro.adapt_prompt is False and ppo_config(cfg).adapt_prompt is False
    assert any(m.lora_B.abs().sum() > 0 for m in lora_modules(retro.model).values())
    for m in lora_modules(retro.model).values():  # large adapters: the prompt's keys would differ with them
        torch.nn.init.normal_(m.lora_B, std=0.05)
    make_env = lambda: envs.make("hotpotqa", "train")
    traj = run_trial(make_env(), 0, ExpertLLM(make_env), examples=())
    traj.success = False
    (r,) = retro.reflect([traj], generator=torch.Generator().manual_seed(0))
    head = ValueHead(retro.model.config.dim)
    n = len(r.logprobs)
    score = lambda a: make_rollout(retro.model, head, [r.prompt_ids], [r.ids], [0.0], adapt_prompt=a).logprobs
    scored = {a: score(a)[0, :n] for a in (False, True)}
    torch.testing.assert_close(scored[False], torch.tensor(r.logprobs), atol=1e-4, rtol=0)
    assert (scored[True] - torch.tensor(r.logprobs)).abs().max() > 1e-3
