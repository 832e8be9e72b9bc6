"""PrefixCache (infra/): generate() with reused prompt keys/values equals generate() without them."""

import random

import pytest
import torch
from conftest import random_model
from test_actor import FakeEnv

import model as M
from actor import LocalLLM, run_trials
from formats.bpe import train_bpe
from infra.prefix_cache import PrefixCache


def block_widths(m):
    """Record the number of columns of every forward call (the first of a generate is the prefill)."""
    widths = []
    return widths, m.register_forward_pre_hook(lambda mod, args, kw: widths.append(args[0].shape[1]),
                                                with_kwargs=True)  # fmt: skip


def assert_same(got, want):
    for g, w in zip(got, want, strict=True):
        assert g.tokens == w.tokens and g.finish_reason == w.finish_reason
        assert g.logprobs == pytest.approx(w.logprobs, abs=1e-4)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_episodes_with_cache_equal_without(arch):
    """Batches of growing prompts (prompt + completion + observation), episodes of different lengths
    that start and end at different steps, all sharing a few-shot prefix."""
    m, rng = random_model(arch), random.Random(0)
    shared = [rng.randrange(64) for _ in range(6)]
    starts = {0: 0, 1: 0, 2: 0, 3: 2}  # episode -> first step
    prompts = {e: shared + [rng.randrange(64) for _ in range(4 + 7 * e)] for e in starts}
    pc, widths, saved = PrefixCache(), *block_widths(m)
    for step in range(5):
        live = [e for e in starts if starts[e] <= step and not (e == 1 and step > 2)]  # episode 1 ends early
        batch = [prompts[e] for e in live]
        widths.clear()
        got = M.generate(m, batch, 8, temperature=0, prefix_cache=pc)
        prefill = widths[0]
        want = M.generate(m, batch, 8, temperature=0)
        assert_same(got, want)
        assert len({len(p) for p in batch}) > 1  # left padding is exercised
        if step in (1, 3, 4):  # only the new tokens ran (4 generated + 3 observed), not the whole prompt
            assert prefill == 7
        elif step == 2:  # episode 3 starts: it shares only the 6 few-shot tokens
            assert prefill <= len(prompts[3]) - 6
        for e, g in zip(live, got, strict=True):  # next prompt: part of the completion + an observation
            prompts[e] = prompts[e] + g.tokens[:4] + [rng.randrange(64) for _ in range(3)]
    saved.remove()
    assert len(pc) == len(starts)  # each episode's entry replaced the one it extends


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_partial_no_and_full_match(arch):
    m, rng = random_model(arch), random.Random(1)
    a = [rng.randrange(64) for _ in range(30)]
    cases = {  # name: (prompt, columns the prefill must run with an entry for `a`)
        "elided middle": (a[:10] + a[20:], 10),
        "no match": ([(a[0] + 1) % 64] + a[1:], 30),
        "equal": (list(a), 1),
        "prefix of the entry": (a[:15], 1),
        "longer": (a + [3, 4, 5], 3),
    }
    widths, hook = block_widths(m)
    for name, (p, width) in cases.items():
        pc = PrefixCache()
        M.generate(m, [a], 4, temperature=0, prefix_cache=pc)
        widths.clear()
        got = M.generate(m, [p], 10, temperature=0, prefix_cache=pc)
        assert widths[0] == width, name
        assert_same(got, M.generate(m, [p], 10, temperature=0))
    hook.remove()
    prompts = [p for p, _ in cases.values()]  # all at once, left-padded, with and without the widest row
    for batch in (prompts, [p for name, (p, _) in cases.items() if name != "no match"]):
        pc = PrefixCache()
        M.generate(m, [a], 4, temperature=0, prefix_cache=pc)
        assert_same(M.generate(m, batch, 10, temperature=0, prefix_cache=pc),
                    M.generate(m, batch, 10, temperature=0))  # fmt: skip


def test_pad_slots_are_cleared(monkeypatch):
    """KVCache is torch.empty: a pad slot the prefill does not write may hold NaN (masked, but NaN * 0)."""
    init = M.KVCache.__init__

    def nan_init(self, *args, **kw):
        init(self, *args, **kw)
        self.k.fill_(float("nan"))
        self.v.fill_(float("nan"))

    monkeypatch.setattr(M.KVCache, "__init__", nan_init)
    m, a = random_model("llama"), list(range(3, 33))
    pc = PrefixCache()
    M.generate(m, [a], 4, temperature=0, prefix_cache=pc)
    batch = [a + [3, 4, 5], a[:12]]  # row 1: 21 pad slots before the 3-column block
    got = M.generate(m, batch, 6, temperature=0, prefix_cache=pc)
    assert_same(got, M.generate(m, batch, 6, temperature=0))


def test_sampling_and_stops_with_cache():
    """Sampling draws the same tokens; rows that stop early leave the batch after the entries are stored."""
    m = random_model("llama")
    batch = [[5, 9, 2, 7, 1], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], [33]]
    pc = PrefixCache()
    M.generate(m, [p[:-1] for p in batch[:2]], 3, temperature=0, prefix_cache=pc)
    kw = dict(temperature=0.8, stop_ids=[3, 17])
    got = M.generate(m, batch, 12, generator=torch.Generator().manual_seed(0), prefix_cache=pc, **kw)
    want = M.generate(m, batch, 12, generator=torch.Generator().manual_seed(0), **kw)
    assert_same(got, want)
    assert {tuple(p) for p in batch} <= set(pc.entries)


def test_eviction_keeps_the_most_recent():
    m = random_model("llama")
    pc = PrefixCache(max_entries=3)
    prompts = [[i, i + 1, i + 2] for i in range(5)]
    for p in prompts:
        M.generate(m, [p], 2, temperature=0, prefix_cache=pc)
        assert len(pc) <= 3
    assert list(pc.entries) == [tuple(p) for p in prompts[2:]]
    M.generate(m, [prompts[2] + [9]], 2, temperature=0, prefix_cache=pc)  # replaces the entry it extends
    assert list(pc.entries) == [tuple(prompts[3]), tuple(prompts[4]), tuple(prompts[2] + [9])]
    M.generate(m, [[3, 4, 40]], 2, temperature=0, prefix_cache=pc)  # uses [3, 4, 5]: most recent now
    assert list(pc.entries) == [tuple(prompts[2] + [9]), tuple(prompts[3]), (3, 4, 40)]
    k, v = pc.entries[(3, 4, 40)][1:]
    assert k.shape == v.shape == (2, 2, 3, 8)  # (n_layers, n_kv, T, hd)
    assert pc.nbytes == sum(k.nbytes + v.nbytes for _, k, v in pc.entries.values())
    pc = PrefixCache(max_bytes=2 * 2 * k.nbytes)  # room for two 3-token entries
    for p in prompts:
        M.generate(m, [p], 2, temperature=0, prefix_cache=pc)
    assert list(pc.entries) == [tuple(p) for p in prompts[3:]] and pc.nbytes == 2 * 2 * k.nbytes
    M.generate(m, [list(range(20))], 2, temperature=0, prefix_cache=pc)  # alone over the budget
    assert len(pc) == 0 and pc.nbytes == 0
    with pytest.raises(ValueError):
        PrefixCache(0)


def test_local_llm_rollouts_same_with_and_without_cache():
    """A batched run_trials (episodes start and end at different steps, old steps get elided to fit
    the 512-token window) gives the same trajectories with the prefix cache as without."""
    env = FakeEnv()
    corpus = [env.reset(i) + "\nThought: look\nAction: look\nObservation: " + env.step("look")[0]
              for i in range(12)]  # fmt: skip
    tok = train_bpe(corpus * 2, 300)
    m = random_model("llama", vocab_size=tok.vocab_size, max_seq_len=512)
    examples = [corpus[0] + "\nThought: I know it.\nAction: answer[word0]\nObservation: Correct!\n"]
    llms, trajs, prefill = {}, {}, {}
    for on in (True, False):
        llms[on] = LocalLLM(m, tok, prefix_cache=on)
        assert (llms[on].prefix_cache is not None) == on
        widths, hook = block_widths(m)
        trajs[on] = run_trials(FakeEnv(), range(5), llms[on], concurrency=3, examples=examples, max_tokens=16)
        hook.remove()
        prefill[on] = sum(w for w in widths if w > 1)  # the prefills: forwards wider than one column
    assert [t.steps for t in trajs[True]] == [t.steps for t in trajs[False]]
    assert any("elided" in tok.decode(list(k)) for k in llms[True].prefix_cache.entries)  # partial matches
    assert prefill[True] < 0.75 * prefill[False]


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_new_episodes_run_their_shared_prefix_once(arch):
    """16 episodes start at once with no entry stored: the few-shot prefix they share (and the longer one
    that half of them share) is run once, not by every row; the results equal generate() without a cache."""
    m, rng = random_model(arch), random.Random(2)
    fewshot = [rng.randrange(64) for _ in range(40)]
    task_a = [rng.randrange(64) for _ in range(20)]  # 8 episodes of the same task, 8 of others
    tail = lambda i: [rng.randrange(64) for _ in range(3 + i)]
    batch = [fewshot + (task_a if i < 8 else []) + tail(i) for i in range(16)]
    widths, hook = block_widths(m)
    pc = PrefixCache()
    got = M.generate(m, batch, 6, temperature=0, prefix_cache=pc)
    hook.remove()
    assert_same(got, M.generate(m, batch, 6, temperature=0))
    # the 40 shared tokens, then the 20 more that rows 0-7 share, then one block as wide as the longest tail
    assert widths[:3] == [40, 20, max(len(p) - (60 if i < 8 else 40) for i, p in enumerate(batch))]
    assert len(pc) == 16 and {tuple(p) for p in batch} == set(pc.entries)  # the prefix entries were replaced
    assert pc.shared(batch) == []  # stored now: nothing more to share
    widths, hook = block_widths(m)
    M.generate(m, [fewshot + [1, 2], fewshot + [1, 3]], 2, temperature=0, prefix_cache=pc)  # 1 new shared
    hook.remove()
    assert widths[0] == 2  # shares one token beyond the stored 40: below min_tokens, no extra forward
    assert PrefixCache().shared([fewshot[:15] + [1], fewshot[:15] + [2]]) == []  # 15 < min_tokens
    assert PrefixCache().shared([fewshot]) == []
