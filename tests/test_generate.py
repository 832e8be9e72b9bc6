"""model.generate: KV cache, left-padded batches, log-probs, stops, sampling."""

import pytest
import torch
from conftest import CharTokenizer, hf_llama, random_model

import model as M

PROMPTS = [[5, 9, 2], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], [33], [7, 7, 40, 41, 12, 3]]


def greedy_no_cache(model, prompt, n):
    """Reference: full forward over the whole sequence each step, argmax of the last position."""
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            seq.append(model(torch.tensor([seq]))[0, -1].argmax().item())
    return seq[len(prompt) :]


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_cache_greedy_matches_full_forward(arch):
    m = random_model(arch)
    for p in PROMPTS[:2]:
        g = M.generate(m, [p], 20, temperature=0)[0]
        assert g.tokens == greedy_no_cache(m, p, 20)
        assert g.finish_reason == "length" and g.text is None
        assert len(set(g.tokens)) > 3  # the test model must not just repeat one token


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_mixed_length_batch_equals_single(arch):
    m = random_model(arch)
    batch = M.generate(m, PROMPTS, 16, temperature=0)
    for p, b in zip(PROMPTS, batch, strict=True):
        alone = M.generate(m, [p], 16, temperature=0)[0]
        assert b.tokens == alone.tokens
        assert max(abs(x - y) for x, y in zip(b.logprobs, alone.logprobs, strict=True)) < 1e-4


def test_logprobs_match_full_forward_of_raw_logits():
    m = random_model("llama")
    g = torch.Generator().manual_seed(3)
    # sampled with temperature and top-p: the returned log-probs must still be the raw model's
    gens = M.generate(m, PROMPTS, 12, temperature=0.7, top_p=0.9, generator=g)
    for p, gen in zip(PROMPTS, gens, strict=True):
        seq = torch.tensor([p + gen.tokens])
        with torch.no_grad():
            logp = torch.log_softmax(m(seq)[0].float(), -1)  # (T, V)
        want = logp[len(p) - 1 : -1].gather(-1, torch.tensor(gen.tokens)[:, None])[:, 0]
        assert torch.allclose(torch.tensor(gen.logprobs), want, atol=1e-4)


@pytest.mark.parametrize("n_prompts", [2, 4])
def test_stop_token_excluded_and_rows_independent(n_prompts):
    """Rows that stop leave the batch (it is compacted); the others must go on exactly as before."""
    m = random_model("llama")
    free = M.generate(m, PROMPTS[:n_prompts], 20, temperature=0)
    stop = free[0].tokens[5]
    k = free[0].tokens.index(stop)
    out = M.generate(m, PROMPTS[:n_prompts], 20, temperature=0, stop_ids=[stop])
    assert out[0].tokens == free[0].tokens[:k] and out[0].finish_reason == "stop"
    assert len(out[0].logprobs) == k
    assert any(g.finish_reason == "length" for g in out)  # some row outlived the stopped one
    for f, o in zip(free[1:], out[1:], strict=True):
        n = f.tokens.index(stop) if stop in f.tokens else len(f.tokens)
        assert o.tokens == f.tokens[:n]
        assert o.logprobs == pytest.approx(f.logprobs[:n], abs=1e-4)
        assert o.finish_reason == ("stop" if stop in f.tokens else "length")


def test_loop_ends_when_all_rows_stop():
    m = random_model("llama")
    first = [g.tokens[0] for g in M.generate(m, PROMPTS, 1, temperature=0)]
    calls = []
    hook = m.register_forward_hook(lambda *a: calls.append(1))
    out = M.generate(m, PROMPTS, 50, temperature=0, stop_ids=first)
    hook.remove()
    assert len(calls) == 1
    assert all(g.tokens == [] and g.finish_reason == "stop" for g in out)


def test_stop_strings(char_tokenizer):
    m = random_model("llama")
    tok = CharTokenizer()
    free = M.generate(m, [PROMPTS[1]], 30, temperature=0, tokenizer=tok)[0]
    assert free.text == tok.decode(free.tokens)
    # a stop string made from the middle of the generated text (spanning token boundaries)
    full = free.text
    start = len(tok.decode(free.tokens[:6])) - 1
    stop_str = full[start : start + 3]
    cut = full.find(stop_str)
    out = M.generate(m, [PROMPTS[1]], 30, temperature=0, tokenizer=tok,
                     stop_strings=["<never>", stop_str])[0]  # fmt: skip
    assert out.finish_reason == "stop"
    assert out.text == full[:cut]
    # tokens: the shortest prefix of the free run whose text covers the kept text
    n = len(out.tokens)
    assert out.tokens == free.tokens[:n] and out.logprobs == pytest.approx(free.logprobs[:n])
    assert len(tok.decode(out.tokens)) >= cut > len(tok.decode(out.tokens[:-1]))
    with pytest.raises(ValueError, match="tokenizer"):
        M.generate(m, [PROMPTS[1]], 5, stop_strings=["x"])


def test_top_p_tiny_is_greedy_and_seeded_sampling_reproducible():
    m = random_model("llama")
    greedy = M.generate(m, PROMPTS, 16, temperature=0)
    g = torch.Generator().manual_seed(0)
    nucleus = M.generate(m, PROMPTS, 16, temperature=1.0, top_p=1e-6, generator=g)
    assert [x.tokens for x in nucleus] == [x.tokens for x in greedy]

    def sample(seed):
        return [x.tokens for x in M.generate(m, PROMPTS, 16, temperature=1.0,
                                             generator=torch.Generator().manual_seed(seed))]  # fmt: skip

    assert sample(1) == sample(1)
    assert sample(1) != sample(2)
    assert sample(1) != [x.tokens for x in greedy]


def test_generate_on_loaded_checkpoint(tmp_path):
    """End to end on a transformers-made GQA + tied + rope-scaled checkpoint: batch == single."""
    _, path = hf_llama(tmp_path, style="llama3.2")
    m = M.from_pretrained(path)
    prompts = [list(range(3, 43)), [5, 6, 7]]  # 40 + 16 positions > original_max_position_embeddings
    batch = M.generate(m, prompts, 16, temperature=0)
    for p, b in zip(prompts, batch, strict=True):
        assert b.tokens == greedy_no_cache(m, p, 16)


def test_bad_arguments():
    m = random_model("gpt2")
    with pytest.raises(ValueError, match="non-empty"):
        M.generate(m, [[1], []], 4)
    with pytest.raises(ValueError, match="prompt 1 has a token id outside"):
        M.generate(m, [[1], [64]], 4)
    with pytest.raises(ValueError, match="max_seq_len"):
        M.generate(m, [[1] * 100], 40)
    with pytest.raises(ValueError, match="top_p"):
        M.generate(m, [[1]], 4, top_p=0.0)
    assert M.generate(m, [[1, 2]], 0)[0].tokens == []


def test_generate_with_lora_adapters():
    """generate only calls model.forward, so LoRA-wrapped layers (and disable_lora) just work."""
    import lora

    m = lora.apply_lora(random_model("llama"), r=4)
    base = M.generate(m, PROMPTS, 12, temperature=0)
    with torch.no_grad():
        for a in lora.lora_modules(m).values():
            a.lora_B.normal_(0.0, 0.5)
    tuned = M.generate(m, PROMPTS, 12, temperature=0)
    assert [g.tokens for g in tuned] != [g.tokens for g in base]
    with lora.disable_lora(m):
        assert [g.tokens for g in M.generate(m, PROMPTS, 12, temperature=0)] == [g.tokens for g in base]
    for p, gen in zip(PROMPTS, tuned, strict=True):
        assert gen.tokens == greedy_no_cache(m, p, 12)
