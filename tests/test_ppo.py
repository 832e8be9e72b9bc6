"""PPO: GAE, whitening, clipping, KL, non-finite steps and a small learning run, all checked by hand."""

import math

import pytest
import torch

from lora import apply_lora, disable_lora, lora_modules
from model import ModelConfig, Transformer, generate
from ppo import (
    AdaptiveKLController,
    PPOConfig,
    PPOTrainer,
    RolloutBatch,
    ValueHead,
    compute_gae,
    make_rollout,
    masked_whiten,
    ppo_losses,
    ppo_update,
    response_forward,
    sample_responses,
    token_rewards,
)


def tiny(vocab=64, dim=32, seed=0):
    torch.manual_seed(seed)
    cfg = ModelConfig(arch="llama", vocab_size=vocab, dim=dim, n_layers=2, n_heads=4, n_kv_heads=2,
                      hidden_dim=2 * dim, max_seq_len=64, norm_eps=1e-5)
    return Transformer(cfg).eval()


def test_gae_matches_hand_computation():
    gamma, lam = 0.9, 0.8
    rewards = torch.tensor([[0.1, -0.2, 1.0, 5.0], [0.3, 0.7, 9.0, 9.0]])  # pads hold junk
    values = torch.tensor([[0.5, 0.3, 0.2, 7.0], [-0.4, 0.6, 9.0, 9.0]])
    mask = torch.tensor([[1.0, 1, 1, 0], [1, 1, 0, 0]])
    adv, ret = compute_gae(rewards, values, mask, gamma, lam)
    for b in range(2):
        n = int(mask[b].sum())
        r, v = rewards[b, :n].tolist(), values[b, :n].tolist() + [0.0]  # value after the end is 0
        deltas = [r[t] + gamma * v[t + 1] - v[t] for t in range(n)]
        for t in range(4):
            if t < n:
                want = sum((gamma * lam) ** k * deltas[t + k] for k in range(n - t))
                assert adv[b, t].item() == pytest.approx(want, abs=1e-6)
                assert ret[b, t].item() == pytest.approx(want + v[t], abs=1e-6)
            else:
                assert adv[b, t] == 0 and ret[b, t] == 0


def test_whitening_ignores_masked_entries():
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0], [4.0, -50.0, 7.0, 8.0]])
    mask = torch.tensor([[1.0, 1, 1, 0], [1, 0, 1, 1]])
    valid = [1.0, 2.0, 3.0, 4.0, 7.0, 8.0]
    mean = sum(valid) / len(valid)
    std = math.sqrt(sum((v - mean) ** 2 for v in valid) / len(valid))
    w = masked_whiten(x, mask)
    for b in range(2):
        for t in range(4):
            want = (x[b, t].item() - mean) / std if mask[b, t] else 0.0
            assert w[b, t].item() == pytest.approx(want, abs=1e-5)
    x2 = x.clone()
    x2[mask == 0] = -1e4  # masked values must not matter
    assert torch.equal(masked_whiten(x2, mask), w)


def _batch(logprobs, values, mask, rewards=None):
    B, R = logprobs.shape
    z = torch.zeros(B, R)
    return RolloutBatch(torch.zeros(B, R + 1, dtype=torch.long), torch.ones(B, dtype=torch.long),
                        torch.zeros(B, R, dtype=torch.long), mask, logprobs, z.clone(), values,
                        rewards if rewards is not None else torch.zeros(B))


def test_clipped_surrogate_gradient():
    cfg = PPOConfig(clip_eps=0.2)
    old = torch.zeros(1, 6)
    ratios = torch.tensor([[1.5, 0.5, 0.5, 1.5, 1.1, 0.9]])  # outside, outside, outside, outside, in, in
    adv = torch.tensor([[1.0, -1.0, 1.0, -1.0, 2.0, -3.0]])
    new = ratios.log().requires_grad_()
    batch = _batch(old, torch.zeros(1, 6), torch.ones(1, 6))
    pg, *_ = ppo_losses(new, torch.zeros(1, 6), torch.zeros(1, 6), batch, adv, torch.zeros(1, 6), cfg)
    pg.backward()
    grad = new.grad[0].tolist()
    # A > 0, ratio > 1 + eps and A < 0, ratio < 1 - eps: clipped side, no gradient
    assert grad[0] == 0 and grad[1] == 0
    # the other side of the clip and inside it: d(-A * ratio)/d(log ratio) = -A * ratio
    for t in (2, 3, 4, 5):
        assert grad[t] == pytest.approx(-adv[0, t].item() * ratios[0, t].item(), rel=1e-5)
    # per token max(-A * ratio, -A * clip(ratio)), summed
    assert pg.item() == pytest.approx(-1.2 + 0.8 - 0.5 + 1.5 - 2.2 + 2.7, rel=1e-5)


def test_clipped_value_loss():
    cfg = PPOConfig(value_clip=0.2)
    old_values, returns = torch.zeros(1, 2), torch.ones(1, 2)
    new_values = torch.tensor([[0.5, -0.1]], requires_grad=True)  # moved past the clip, inside it
    batch = _batch(torch.zeros(1, 2), old_values, torch.ones(1, 2))
    zeros = torch.zeros(1, 2)
    _, vf, *_ = ppo_losses(zeros, zeros, new_values, batch, zeros, returns, cfg)
    vf.backward()
    # token 0: max((0.5 - 1)^2, (0.2 - 1)^2) = 0.64, from the clipped value: no gradient
    # token 1: max((-0.1 - 1)^2, (-0.1 - 1)^2) = 1.21, gradient 0.5 * 2 * (-1.1)
    assert vf.item() == pytest.approx(0.5 * (0.64 + 1.21), rel=1e-6)
    assert new_values.grad[0, 0] == 0 and new_values.grad[0, 1].item() == pytest.approx(-1.1, rel=1e-6)


def test_token_rewards_and_adaptive_kl():
    logprobs = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.5, 0.0]])
    ref = torch.tensor([[-1.5, -1.0, -3.0], [-1.0, -0.7, 0.0]])
    mask = torch.tensor([[1.0, 1, 1], [1, 1, 0]])
    batch = _batch(logprobs, torch.zeros(2, 3), mask, rewards=torch.tensor([2.0, -1.0]))
    batch.ref_logprobs = ref
    r = token_rewards(batch, kl_coef=0.1)
    want = [[-0.05, 0.1, 2.0], [-0.05, -0.02 - 1.0, 0.0]]
    assert torch.allclose(r, torch.tensor(want), atol=1e-6)
    ctl = AdaptiveKLController(0.1, target=6.0, horizon=1000)
    ctl.update(12.0, n_steps=100)  # error clipped to +0.2
    assert ctl.value == pytest.approx(0.1 * 1.02)
    ctl.update(5.4, n_steps=100)  # error -0.1
    assert ctl.value == pytest.approx(0.1 * 1.02 * 0.99)
    fixed = AdaptiveKLController(0.1)
    fixed.update(100.0, n_steps=100)
    assert fixed.value == 0.1


def test_rollout_logprobs_match_generation_and_kl_zero_at_init():
    model = apply_lora(tiny(), r=4, alpha=8)
    head = ValueHead(model.config.dim)
    g = torch.Generator().manual_seed(0)
    prompts = [[1, 2, 3], [4, 5], [6, 7, 8, 9, 10]]
    gens = generate(model, prompts, max_new_tokens=5, temperature=1.0, generator=g)
    batch = make_rollout(model, head, prompts, [x.tokens for x in gens], [1.0, 0.0, -1.0], micro_batch_size=2)
    for i, gen in enumerate(gens):
        n = len(gen.tokens)
        assert batch.response_mask[i].sum() == n
        assert torch.allclose(batch.logprobs[i, :n], torch.tensor(gen.logprobs), atol=1e-4)
    # a fresh adapter: the policy is its reference, so the KL penalty is exactly 0
    assert torch.equal(batch.logprobs, batch.ref_logprobs)
    with pytest.raises(ValueError, match="response 1 is empty"):
        make_rollout(model, head, prompts, [[1], [], [2]], [0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="sequence 2: .* outside the model's vocabulary"):
        make_rollout(model, head, prompts, [[1], [2], [64]], [0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="one reward per response: 2 rewards, 3 responses"):
        make_rollout(model, head, prompts, [[1], [2], [3]], [0.0, 0.0])


def _trainable(model, head):
    return [p.detach().clone() for p in model.parameters() if p.requires_grad] + \
        [p.detach().clone() for p in head.parameters()]


def test_non_finite_loss_skips_step_and_keeps_weights():
    model = apply_lora(tiny(), r=4, alpha=8)
    trainer = PPOTrainer(model, PPOConfig(lr=1e-2, epochs=2, minibatch_size=2, micro_batch_size=1))
    before = _trainable(model, trainer.value_head)
    prompts, responses = [[1, 2], [3, 4], [5, 6]], [[7, 8], [9], [10, 11, 12]]
    with pytest.warns(UserWarning, match="non-finite loss"):
        metrics = trainer.step(prompts, responses, [1.0, float("nan"), 0.0])
    assert metrics["steps"] == 0 and metrics["skipped_steps"] == 4
    for a, b in zip(before, _trainable(model, trainer.value_head), strict=True):
        assert torch.equal(a, b)
    assert all(p.grad is None for p in trainer.optimizer.param_groups[0]["params"])
    metrics = trainer.step(prompts, responses, [1.0, 0.5, 0.0])  # and the next good batch trains
    assert metrics["steps"] == 4 and metrics["skipped_steps"] == 0
    after = _trainable(model, trainer.value_head)
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))


@pytest.mark.parametrize("adapt_prompt", [True, False])
def test_micro_batches_accumulate_to_the_minibatch_gradient(adapt_prompt):
    prompts, responses = [[1, 2], [3, 4, 5], [6], [7, 8]], [[9, 10, 11], [12], [13, 14], [15, 16, 17, 18]]
    rewards = [1.0, -0.5, 0.25, 0.0]
    results, init = [], None
    for micro in (1, 4):
        model = apply_lora(tiny(), r=4, alpha=8)
        torch.manual_seed(1)
        for m in lora_modules(model).values():  # B != 0 so that every adapter tensor gets a gradient
            torch.nn.init.normal_(m.lora_B, std=0.1)
        head = ValueHead(model.config.dim)
        cfg = PPOConfig(epochs=1, minibatch_size=4, micro_batch_size=micro, max_grad_norm=1e9, vf_coef=0.5,
                        adapt_prompt=adapt_prompt)  # fmt: skip
        params = [p for p in model.parameters() if p.requires_grad] + list(head.parameters())
        opt = torch.optim.SGD(params, lr=1.0)
        init = init or _trainable(model, head)
        batch = make_rollout(model, head, prompts, responses, rewards, adapt_prompt=adapt_prompt)
        ppo_update(model, head, opt, batch, cfg, kl_coef=0.1)
        results.append(_trainable(model, head))
    assert all((a - b).abs().max() > 1e-4 for a, b in zip(results[0], init, strict=True))  # all moved
    for a, b in zip(*results, strict=True):
        assert torch.allclose(a, b, atol=1e-5)


TARGET = 7  # the token the reward asks for


def _exact_kl(model, prompts, responses):
    """Mean over sequences of sum over response tokens of KL(policy || reference), over the whole vocab."""
    total = 0.0
    with torch.no_grad():
        for p, r in zip(prompts, responses, strict=True):
            ids = torch.tensor([p + r])
            logp = torch.log_softmax(model(ids)[0, len(p) - 1 : -1], -1)  # (R, V)
            with disable_lora(model):
                ref = torch.log_softmax(model(ids)[0, len(p) - 1 : -1], -1)
            total += (logp.exp() * (logp - ref)).sum().item()
    return total / len(prompts)


def _train(kl_coef, updates=30, seed=0, adapt_prompt=True):
    """Reward = fraction of the 6 sampled response tokens equal to TARGET. Returns curves and final KL."""
    # lm_head is a target too: the tiny random model's output layer (std 0.02) is too weak to make any
    # token likely from the normed hidden state alone
    model = apply_lora(tiny(vocab=64, dim=64, seed=seed), r=8, alpha=16,
                       targets=("q_proj", "v_proj", "up_proj", "down_proj", "lm_head"))
    cfg = PPOConfig(lr=1e-2, epochs=4, minibatch_size=8, micro_batch_size=4, kl_coef=kl_coef,
                    adapt_prompt=adapt_prompt)  # fmt: skip
    trainer = PPOTrainer(model, cfg, seed=seed)
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(0, 64, (3,), generator=g).tolist() for _ in range(16)]
    rewards_by_update, kl_by_update = [], []
    for _ in range(updates):
        gens = sample_responses(model, prompts, 6, adapt_prompt, temperature=1.0, generator=g)
        responses = [x.tokens for x in gens]
        rewards = [sum(t == TARGET for t in r) / len(r) for r in responses]
        metrics = trainer.step(prompts, responses, rewards)
        rewards_by_update.append(round(metrics["reward_mean"], 3))
        kl_by_update.append(round(metrics["kl_ref"], 2))
    return rewards_by_update, kl_by_update, _exact_kl(model, prompts, responses)


def test_ppo_learns_and_kl_keeps_it_near_the_reference():
    # three seeds: one run's curve is one draw of samples, and the floats' rounding (so the draws) differs
    # between CPUs; on one AMD EPYC seed 0 peaks at 0.96 and ends at 0.70, seeds 1 and 2 end at 1.0
    runs = [_train(kl_coef=0.01, seed=seed) for seed in range(3)]
    for curve, kls, final_kl in runs:
        print("\nkl_coef 0.01: reward by update", curve, "sampled KL", kls, "final KL", round(final_kl, 3))
        assert sum(curve[:3]) / 3 < 0.3
    assert sum(sum(curve[-3:]) / 3 for curve, _, _ in runs) / 3 >= 0.8
    final_kl = runs[0][2]
    curve_kl, kls_kl, final_kl_kl = _train(kl_coef=2.0)
    print("kl_coef 2.0: reward by update", curve_kl, "sampled KL", kls_kl, "final KL", round(final_kl_kl, 3))
    assert max(curve_kl) < 0.1  # the KL penalty outweighs the reward: the policy barely moves toward it
    assert final_kl_kl < 1.5 and final_kl_kl < 0.1 * final_kl


def test_ppo_learns_with_the_prompt_read_by_the_frozen_model():
    # adapt_prompt=False: the adapters act on the last prompt token and the response only, and still learn
    curve, kls, _ = _train(kl_coef=0.01, adapt_prompt=False)
    print("\nadapt_prompt=False: reward by update", curve, "sampled KL", kls)
    assert sum(curve[:3]) / 3 < 0.3 and sum(curve[-3:]) / 3 >= 0.8


def test_micro_batches_are_padded_to_their_own_length():
    """One long sequence must not make every micro-batch as long: each is padded to its own longest
    prompt + response, and the scores are those of each sequence alone."""
    model = tiny()
    apply_lora(model, r=4, alpha=8)
    vh = ValueHead(32)
    torch.nn.init.normal_(vh.proj.weight)
    g = torch.Generator().manual_seed(0)
    lens = [(50, 9), (3, 2), (4, 5), (6, 1)]  # one long sequence, three short ones
    prompts = [torch.randint(0, 64, (p,), generator=g).tolist() for p, _ in lens]
    responses = [torch.randint(0, 64, (r,), generator=g).tolist() for _, r in lens]
    batch = make_rollout(model, vh, prompts, responses, [1.0, 0.0, -1.0, 0.5], micro_batch_size=2)
    assert batch.input_ids.shape == (4, 59) and batch.response_ids.shape == (4, 9)
    for j in range(4):  # scored alone, no padding at all
        alone = make_rollout(model, vh, prompts[j : j + 1], responses[j : j + 1], [0.0])
        n = len(responses[j])
        torch.testing.assert_close(batch.logprobs[j, :n], alone.logprobs[0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(batch.values[j, :n], alone.values[0], rtol=1e-5, atol=1e-6)
        assert (batch.logprobs[j, n:] == 0).all()
    short = batch.index(torch.tensor([1, 2]))  # what ppo_update runs through the model
    assert short.input_ids.shape == (2, 9) and short.response_ids.shape == (2, 5)
    assert short.response_mask.sum().item() == 2 + 5


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_frozen_prompt_sampling_and_rollout_agree(arch):
    """adapt_prompt=False: the frozen model reads the prompt, the adapters act from its last token on.
    What sample_responses samples is what make_rollout scores; the reference is unchanged."""
    cfg = ModelConfig(arch=arch, vocab_size=64, dim=32, n_layers=2, n_heads=4,
                      n_kv_heads=2 if arch == "llama" else 4, hidden_dim=64, max_seq_len=64, norm_eps=1e-5)
    torch.manual_seed(0)
    model = apply_lora(Transformer(cfg).eval(), r=4, alpha=8)
    for m in lora_modules(model).values():  # B != 0: the adapters change the prompt's keys if they run on it
        torch.nn.init.normal_(m.lora_B, std=0.3)
    head = ValueHead(cfg.dim)
    prompts = [[1, 5, 7, 9, 11, 13, 2, 3], [4, 6, 8], [3], [9, 9, 9, 9, 9, 1, 2]]  # a 1-token prompt too
    gens = sample_responses(model, prompts, 6, adapt_prompt=False, generator=torch.Generator().manual_seed(1))
    responses, rewards = [g.tokens for g in gens], [1.0, 0.0, -1.0, 0.5]
    frozen = make_rollout(model, head, prompts, responses, rewards, micro_batch_size=3, adapt_prompt=False)
    adapted = make_rollout(model, head, prompts, responses, rewards, micro_batch_size=3)
    assert [k.shape[2] for k, _ in frozen.prompt_kv] == [len(p) - 1 for p in prompts]
    for i, g in enumerate(gens):
        n = len(g.tokens)
        torch.testing.assert_close(frozen.logprobs[i, :n], torch.tensor(g.logprobs), atol=1e-4, rtol=0)
    assert (frozen.logprobs - adapted.logprobs).abs().max() > 1e-2  # the two policies differ
    torch.testing.assert_close(frozen.ref_logprobs, adapted.ref_logprobs, atol=1e-5, rtol=0)
    # the 1-token prompt has no keys to read: its row is the same policy either way
    torch.testing.assert_close(frozen.logprobs[2], adapted.logprobs[2], atol=1e-5, rtol=0)


def test_frozen_prompt_gradient_matches_finite_differences():
    """Gradients flow through the new tokens' keys and values (PrefixKV concatenates, never writes in place):
    d(sum of response log-probs) along a random direction of the adapters equals a central difference."""
    model = apply_lora(tiny(), r=4, alpha=8).double()
    for m in lora_modules(model).values():
        torch.nn.init.normal_(m.lora_B, std=0.3)
    head = ValueHead(model.config.dim).double()
    prompts, responses = [[1, 2, 3, 4, 5], [6, 7]], [[9, 10, 11], [12, 13, 14, 15]]
    batch = make_rollout(model, head, prompts, responses, [1.0, 0.0], adapt_prompt=False)
    params = [p for p in model.parameters() if p.requires_grad]
    direction = [torch.randn_like(p) for p in params]

    def objective():
        lp, _, _ = response_forward(model, None, batch.input_ids, batch.prompt_lens, batch.response_ids,
                                    batch.prompt_kv)  # fmt: skip
        return (lp * batch.response_mask).sum()

    grads = torch.autograd.grad(objective(), params)
    want = sum((g * d).sum() for g, d in zip(grads, direction, strict=True)).item()
    eps, f = 1e-7, []  # float64 throughout (ppo's logits are float32 at least, not at most)
    with torch.no_grad():
        for sign in (1, -1):
            for p, d in zip(params, direction, strict=True):
                p.add_(sign * eps * d)
            f.append(objective().item())
            for p, d in zip(params, direction, strict=True):
                p.sub_(sign * eps * d)
    assert abs(want) > 1e-3
    assert (f[0] - f[1]) / (2 * eps) == pytest.approx(want, rel=1e-6)
