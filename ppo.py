"""PPO for the retrospector's reflections (Retroformer, Sec. 4; Schulman et al. 2017; Ziegler et al. 2019).

As in RLHF, but the reward comes from the environment: a reflection written after trial k gets
G(k+1) - G(k), the change in episode return it brought. Only the LoRA adapters and a value head
are trained; the reference policy for the KL penalty is the same model with adapters off.

    rollout:  policy / reference log-probs and values of each reflection   (make_rollout)
    rewards:  r_t = -kl_coef * (logp_t - ref_logp_t), + G(k+1) - G(k) on the last token
    GAE:      advantages and returns per token                            (compute_gae)
    update:   clipped surrogate + clipped value loss - entropy bonus,
              several epochs over shuffled minibatches                    (ppo_update)

With adapt_prompt=False the frozen model reads the prompt and the adapters act from its last token on:
sampling (sample_responses) and scoring agree, and the prompt, ~10x longer than a reflection, runs once
per step without gradient instead of forward and backward in every epoch.
"""

import time
import warnings
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from infra import ddp
from infra.prefix_cache import PrefixCache
from lora import disable_lora
from model import Generation, KVCache, PrefixKV, generate


@dataclass
class PPOConfig:
    lr: float = 1e-4
    epochs: int = 4  # passes over each rollout batch
    minibatch_size: int = 8  # sequences per optimizer step
    micro_batch_size: int = 4  # sequences per forward/backward (gradient accumulation)
    clip_eps: float = 0.2  # policy ratio clip
    value_clip: float = 0.2  # value prediction clip around the rollout's values
    vf_coef: float = 0.5
    ent_coef: float = 0.0
    gamma: float = 1.0
    lam: float = 0.95
    kl_coef: float = 0.05  # initial coefficient of the per-token KL penalty
    target_kl: float | None = None  # per-sequence KL to the reference; None -> kl_coef stays fixed
    kl_horizon: int = 10000  # Ziegler et al.'s horizon (in sequences) for the adaptive coefficient
    max_grad_norm: float = 1.0
    whiten: bool = True  # whiten advantages over the batch's valid tokens
    weight_decay: float = 0.0
    # False: the frozen model reads the prompt (the trial) and the adapters act from its last token on, so
    # its keys/values are computed once per step (frozen_prompt_kv), not in every epoch's forward/backward
    adapt_prompt: bool = True


class ValueHead(nn.Module):
    """Scalar value of each state from the policy's final hidden state."""

    def __init__(self, dim: int):
        super().__init__()
        self.proj = nn.Linear(dim, 1)
        nn.init.zeros_(self.proj.weight)  # start at V = 0: no push on the shared trunk at step 0
        nn.init.zeros_(self.proj.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.proj(hidden.to(self.proj.weight.dtype)).squeeze(-1)  # (B, T, C) -> (B, T)


class AdaptiveKLController:
    """KL coefficient that moves toward a target KL (Ziegler et al. 2019); fixed if target is None."""

    def __init__(self, init_kl_coef: float, target: float | None = None, horizon: int = 10000):
        self.value, self.target, self.horizon = init_kl_coef, target, horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        if self.target is None:
            return
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon


@dataclass
class RolloutBatch:
    """B reflections. input_ids holds prompt + response, right-padded; response tensors are (B, R)."""

    input_ids: torch.Tensor  # (B, L) long
    prompt_lens: torch.Tensor  # (B,) long: the response starts at input_ids[i, prompt_lens[i]]
    response_ids: torch.Tensor  # (B, R) long, right-padded with 0
    response_mask: torch.Tensor  # (B, R) float, 1 on real response tokens
    logprobs: torch.Tensor  # (B, R) policy log-probs at rollout time ("old")
    ref_logprobs: torch.Tensor  # (B, R) reference (adapters off) log-probs
    values: torch.Tensor  # (B, R) value of the state before each response token
    rewards: torch.Tensor  # (B,) one scalar per reflection, G(k+1) - G(k)
    prompt_kv: list | None = None  # per row: its prompt's keys/values (adapt_prompt=False, frozen_prompt_kv)

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def index(self, idx: torch.Tensor) -> "RolloutBatch":
        """Rows idx, padded to their own longest prompt + response, not the whole update's: a micro-batch
        costs memory and compute for its own lengths. Response tensors become (b, R_idx)."""
        rows = RolloutBatch(*(getattr(self, f)[idx] for f in self.__dataclass_fields__ if f != "prompt_kv"))
        n = rows.response_mask.sum(1).long()  # (b,) response lengths
        L, R = int((rows.prompt_lens + n).max()), int(n.max())
        kv = None if self.prompt_kv is None else [self.prompt_kv[i] for i in idx.tolist()]
        return RolloutBatch(rows.input_ids[:, :L], rows.prompt_lens, rows.response_ids[:, :R],
                            rows.response_mask[:, :R], rows.logprobs[:, :R], rows.ref_logprobs[:, :R],
                            rows.values[:, :R], rows.rewards, kv)  # fmt: skip


def pad_batch(prompts, responses, device) -> tuple[torch.Tensor, ...]:
    """Right-pad prompt + response into (B, L) and responses into (B, R), with the response mask."""
    if len(prompts) != len(responses) or not prompts:
        raise ValueError(f"need as many prompts as responses (>0), got {len(prompts)} and {len(responses)}")
    for i, (p, r) in enumerate(zip(prompts, responses, strict=True)):
        if len(p) == 0:
            raise ValueError(f"prompt {i} is empty: the first response token needs a context")
        if len(r) == 0:
            raise ValueError(f"response {i} is empty: its reward has no token to go on")
    B, R = len(prompts), max(len(r) for r in responses)
    L = max(len(p) + len(r) for p, r in zip(prompts, responses, strict=True))
    input_ids = torch.zeros(B, L, dtype=torch.long)
    response_ids = torch.zeros(B, R, dtype=torch.long)
    response_mask = torch.zeros(B, R)
    for i, (p, r) in enumerate(zip(prompts, responses, strict=True)):
        input_ids[i, : len(p) + len(r)] = torch.tensor(list(p) + list(r))
        response_ids[i, : len(r)] = torch.tensor(list(r))
        response_mask[i, : len(r)] = 1.0
    prompt_lens = torch.tensor([len(p) for p in prompts])
    return input_ids.to(device), prompt_lens.to(device), response_ids.to(device), response_mask.to(device)


def response_forward(model, value_head, input_ids, prompt_lens, response_ids, prompt_kv=None):
    """Log-probs, entropies and values of the response tokens: three (B, R) tensors.

    Right padding needs no attention mask: a causal model never looks at the pads after a token.
    The logits and hidden state at position t belong to the token at t + 1.
    prompt_kv (adapt_prompt=False): per row the keys/values of all its prompt but the last token; only
    the R tokens from that one on run through `model`.
    """
    B, L = input_ids.shape
    R = response_ids.shape[1]
    pos = prompt_lens[:, None] - 1 + torch.arange(R, device=input_ids.device)  # (B, R)
    if prompt_kv is None:
        hidden = model(input_ids, hidden_only=True)  # (B, L, C): no (B, L, V) logits over the prompt
        hidden = hidden.gather(1, pos.clamp(max=L - 1)[..., None].expand(B, R, hidden.shape[-1]))  # (B, R, C)
    else:
        cache, mask = stack_prompt_kv(prompt_kv, R)
        tail = input_ids.gather(1, pos.clamp(max=L - 1))  # (B, R): the prompt's last token, the response's
        hidden = model(tail, cache=cache, pos=pos, attn_mask=mask, hidden_only=True)  # (B, R, C)
    lm_head = getattr(model, "module", model).lm_head  # `module`: the model under DDP
    logits = lm_head(hidden)  # (B, R, V)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # float32 at least
    logp_all = F.log_softmax(logits, dim=-1)
    logprobs = logp_all.gather(-1, response_ids[..., None]).squeeze(-1)  # (B, R)
    entropy = -(logp_all.exp() * logp_all).sum(-1)  # (B, R)
    values = value_head(hidden) if value_head is not None else None  # (B, R)
    return logprobs, entropy, values


def sample_responses(model, prompts: list[list[int]], max_new_tokens: int, adapt_prompt: bool = True,
                     **kw) -> list[Generation]:  # fmt: skip
    """The policy's responses, as make_rollout scores them: model.generate(), but with adapt_prompt=False
    the frozen model reads each prompt but its last token (into a prefix cache) and the adapters run from
    that token on."""
    if adapt_prompt or all(len(p) < 2 for p in prompts):
        return generate(model, prompts, max_new_tokens, **kw)
    cache = PrefixCache(max_entries=2 * len(prompts))
    with disable_lora(model):
        generate(model, [p[:-1] for p in prompts if len(p) > 1], 1, temperature=0, prefix_cache=cache)
    return generate(model, prompts, max_new_tokens, prefix_cache=cache, **kw)


@torch.no_grad()
def frozen_prompt_kv(model, input_ids, prompt_lens) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per row, keys and values (n_layers, n_kv, P_i - 1, hd) of its prompt but the last token, read by
    the frozen model (adapters off): what the policy and the reference share when adapt_prompt=False."""
    P = int(prompt_lens.max()) - 1
    cache = KVCache(model.config, input_ids.shape[0], max(P, 0), device=input_ids.device,
                    dtype=next(model.parameters()).dtype)  # fmt: skip
    if P > 0:
        with disable_lora(model):
            model(input_ids[:, :P], cache=cache, hidden_only=True)  # causal: pads after a row's prompt unseen
    # clones: compact copies, not views that keep the whole micro-batch's cache alive
    return [(cache.k[:, i, :, : p - 1].clone(), cache.v[:, i, :, : p - 1].clone())
            for i, p in enumerate(prompt_lens.tolist())]  # fmt: skip


def stack_prompt_kv(rows, R: int) -> tuple[PrefixKV, torch.Tensor]:
    """prompt_kv rows right-padded into one PrefixKV (n_layers, B, n_kv, P, hd) and the (B, P + R) mask
    of real keys: row i's P_i - 1 prompt keys, then all R new tokens (a causal model never sees the
    pads after a real one)."""
    P = max(k.shape[2] for k, _ in rows)
    n_layers, n_kv, _, hd = rows[0][0].shape
    k = rows[0][0].new_zeros(n_layers, len(rows), n_kv, P, hd)  # zeros: NaN * 0 attention weight is NaN
    v = torch.zeros_like(k)
    mask = torch.ones(len(rows), P + R, dtype=torch.bool, device=k.device)
    for i, (ki, vi) in enumerate(rows):
        k[:, i, :, : ki.shape[2]], v[:, i, :, : vi.shape[2]] = ki, vi
        mask[i, ki.shape[2] : P] = False
    return PrefixKV(k, v), mask


@torch.no_grad()
def make_rollout(model, value_head, prompts, responses, rewards, micro_batch_size: int = 8,
                 adapt_prompt: bool = True) -> RolloutBatch:  # fmt: skip
    """Score B (prompt_ids, response_ids, reward) with the policy, the reference and the value head."""
    device = next(model.parameters()).device
    input_ids, prompt_lens, response_ids, mask = pad_batch(prompts, responses, device)
    cfg = getattr(model, "config", None)
    if cfg is not None and not 0 <= int(input_ids.min()) <= int(input_ids.max()) < cfg.vocab_size:
        bad = next(i for i, (p, r) in enumerate(zip(prompts, responses, strict=True))
                   if not 0 <= min(min(p), min(r)) <= max(max(p), max(r)) < cfg.vocab_size)
        raise ValueError(f"sequence {bad}: prompt or response has a token id outside the model's "
                         f"vocabulary [0, {cfg.vocab_size})")
    if cfg is not None and cfg.arch == "gpt2" and input_ids.shape[1] > cfg.max_seq_len:
        raise ValueError(f"prompt + response of {input_ids.shape[1]} tokens exceeds the model's max_seq_len "
                         f"{cfg.max_seq_len}")
    rewards = torch.as_tensor(rewards, dtype=torch.float32, device=device).reshape(-1)
    if rewards.numel() != len(prompts):
        raise ValueError(f"need one reward per response: {rewards.numel()} rewards, {len(prompts)} responses")
    logprobs, ref_logprobs, values, kvs = [], [], [], []
    R = response_ids.shape[1]
    for s in range(0, len(prompts), micro_batch_size):
        mb = slice(s, s + micro_batch_size)
        n = mask[mb].sum(1).long()  # (b,) each micro-batch padded to its own longest sequence
        L_mb, R_mb = int((prompt_lens[mb] + n).max()), int(n.max())
        ids, pl, resp = input_ids[mb, :L_mb], prompt_lens[mb], response_ids[mb, :R_mb]
        kv = None if adapt_prompt else frozen_prompt_kv(model, ids, pl)
        kvs += kv or []
        lp, _, v = response_forward(model, value_head, ids, pl, resp, kv)
        with disable_lora(model):
            ref_lp, _, _ = response_forward(model, None, ids, pl, resp, kv)
        logprobs.append(F.pad(lp, (0, R - R_mb)))  # back to (b, R)
        ref_logprobs.append(F.pad(ref_lp, (0, R - R_mb)))
        values.append(F.pad(v, (0, R - R_mb)))
    return RolloutBatch(input_ids, prompt_lens, response_ids, mask, torch.cat(logprobs) * mask,
                        torch.cat(ref_logprobs) * mask, torch.cat(values) * mask, rewards,
                        None if adapt_prompt else kvs)  # fmt: skip


def token_rewards(batch: RolloutBatch, kl_coef: float) -> torch.Tensor:
    """Per-token reward (B, R): KL penalty on every token, the reflection's reward on its last one."""
    kl = (batch.logprobs - batch.ref_logprobs) * batch.response_mask  # (B, R)
    rewards = -kl_coef * kl
    last = batch.response_mask.sum(1).long() - 1  # (B,)
    rewards[torch.arange(len(batch)), last] += batch.rewards
    return rewards


def compute_gae(rewards, values, mask, gamma: float, lam: float):
    """Generalised advantage estimation over right-padded (B, R) sequences; returns (advantages, returns).

    The episode (one reflection) ends at its last valid token: the value after it is 0.
    """
    rewards, values = rewards * mask, values * mask
    R = rewards.shape[1]
    advantages = torch.zeros_like(rewards)
    last_gae = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(R)):
        next_value = values[:, t + 1] if t + 1 < R else torch.zeros_like(last_gae)  # 0 on pads
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last_gae = delta + gamma * lam * last_gae
        advantages[:, t] = last_gae
    advantages = advantages * mask
    return advantages, (advantages + values) * mask


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / std over the valid entries only; masked entries come out 0."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    return (x - mean) * torch.rsqrt(var + eps) * mask


def ppo_losses(new_logprobs, entropy, new_values, batch: RolloutBatch, advantages, returns, cfg: PPOConfig):
    """Summed (not averaged) per-token losses and stats; the caller divides by the token count."""
    mask = batch.response_mask
    log_ratio = (new_logprobs - batch.logprobs) * mask
    ratio = log_ratio.exp()
    # clipped surrogate: pessimistic bound, so moving the ratio past 1 +- eps earns nothing
    pg_loss = torch.max(-advantages * ratio, -advantages * ratio.clamp(1 - cfg.clip_eps, 1 + cfg.clip_eps))
    # clipped value loss, as in PPO2 / CleanRL
    v_clipped = batch.values + (new_values - batch.values).clamp(-cfg.value_clip, cfg.value_clip)
    vf_loss = 0.5 * torch.max((new_values - returns) ** 2, (v_clipped - returns) ** 2)
    with torch.no_grad():
        approx_kl = (ratio - 1) - log_ratio  # k3 estimator of KL(old || new), >= 0
        clipped = ((ratio - 1).abs() > cfg.clip_eps).float()
    s = lambda x: (x * mask).sum()
    return s(pg_loss), s(vf_loss), s(entropy), s(approx_kl), s(clipped)


def ppo_update(model, value_head, optimizer, batch: RolloutBatch, cfg: PPOConfig, kl_coef: float,
               generator: torch.Generator | None = None) -> dict:
    """Several epochs of clipped PPO over shuffled minibatches of `batch`; returns mean metrics."""
    t0 = time.perf_counter()
    B, mask = len(batch), batch.response_mask
    with torch.no_grad():
        rewards = token_rewards(batch, kl_coef)
        advantages, returns = compute_gae(rewards, batch.values, mask, cfg.gamma, cfg.lam)
        if cfg.whiten:
            advantages = masked_whiten(advantages, mask)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    sums = dict(policy_loss=0.0, value_loss=0.0, entropy=0.0, approx_kl=0.0, clip_frac=0.0)
    n_tokens, skipped, steps = 0.0, 0, 0
    for _epoch in range(cfg.epochs):
        order = torch.randperm(B, generator=generator).to(mask.device)
        for start in range(0, B, cfg.minibatch_size):
            mb_idx = order[start : start + cfg.minibatch_size]
            mb_tokens = mask[mb_idx].sum().clamp(min=1)
            optimizer.zero_grad(set_to_none=True)
            ok, mb_sums = True, [0.0] * 5
            for ms in range(0, len(mb_idx), cfg.micro_batch_size):
                idx = mb_idx[ms : ms + cfg.micro_batch_size]
                mb = batch.index(idx)
                R = mb.response_ids.shape[1]  # (b, R) tensors: this micro-batch's own padding
                logp, ent, values = response_forward(model, value_head, mb.input_ids, mb.prompt_lens,
                                                     mb.response_ids, mb.prompt_kv)
                adv, ret = advantages[idx, :R], returns[idx, :R]
                pg, vf, en, kl, cf = ppo_losses(logp, ent, values, mb, adv, ret, cfg)
                # divide by the minibatch's token count so accumulated micro-batches give its mean
                loss = (pg + cfg.vf_coef * vf - cfg.ent_coef * en) / mb_tokens
                if not torch.isfinite(loss):
                    warnings.warn(f"PPO: non-finite loss (policy loss {pg.item()}, value loss {vf.item()}, "
                                  f"entropy {en.item()}); optimizer step skipped", stacklevel=2)
                    ok = False
                    break
                loss.backward()
                for k, x in enumerate((pg, vf, en, kl, cf)):
                    mb_sums[k] += x.item()
            grad_norm = nn.utils.clip_grad_norm_(params, cfg.max_grad_norm) if ok else None
            if ok and not torch.isfinite(grad_norm):
                warnings.warn(f"PPO: non-finite gradient norm {grad_norm.item()}; optimizer step skipped",
                              stacklevel=2)
                ok = False
            if not ok:
                optimizer.zero_grad(set_to_none=True)  # never let a bad gradient reach the weights
                skipped += 1
                continue
            optimizer.step()
            steps += 1
            n_tokens += mb_tokens.item()
            for k, x in zip(sums, mb_sums, strict=True):
                sums[k] += x
    optimizer.zero_grad(set_to_none=True)
    metrics = {k: v / max(n_tokens, 1.0) for k, v in sums.items()}
    kl_ref = ((batch.logprobs - batch.ref_logprobs) * mask).sum(1)  # (B,) per-reflection KL estimate
    metrics.update(reward_mean=batch.rewards.mean().item(), kl_ref=kl_ref.mean().item(), kl_coef=kl_coef,
                   advantage_mean=masked_mean(advantages, mask).item(),
                   return_mean=masked_mean(returns, mask).item(), steps=steps, skipped_steps=skipped,
                   tokens_per_s=n_tokens / (time.perf_counter() - t0))
    return metrics


class PPOTrainer:
    """Holds the retrospector, its value head, the optimizer and the KL controller across updates."""

    def __init__(self, model, cfg: PPOConfig, value_head: ValueHead | None = None, seed: int = 0):
        self.model, self.cfg = model, cfg
        device = next(model.parameters()).device
        self.value_head = value_head if value_head is not None else ValueHead(model.config.dim).to(device)
        params = [p for p in model.parameters() if p.requires_grad] + list(self.value_head.parameters())
        if not any(p.requires_grad for p in model.parameters()):
            raise ValueError("PPOTrainer: model has no trainable parameters (apply_lora first)")
        self.optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.kl_ctl = AdaptiveKLController(cfg.kl_coef, cfg.target_kl, cfg.kl_horizon)
        self.generator = torch.Generator().manual_seed(seed)  # minibatch shuffling
        self.policy, self.critic = self.model, self.value_head  # what the update runs through

    def distribute(self):
        """Run updates under DistributedDataParallel (torchrun): gradients of the adapters and the value
        head, the only trainable parameters, are averaged over ranks, so every rank keeps the same ones."""
        from torch.nn.parallel import DistributedDataParallel as DDP

        device = next(self.model.parameters()).device
        ids = [device.index] if device.type == "cuda" else None
        self.policy, self.critic = DDP(self.model, device_ids=ids), DDP(self.value_head, device_ids=ids)

    def step(self, prompts: list[list[int]], responses: list[list[int]], rewards) -> dict:
        """One PPO update from B (prompt ids, reflection ids, reward) triples, this rank's share under
        torchrun; returns metrics, averaged over ranks."""
        batch = make_rollout(self.model, self.value_head, prompts, responses, rewards,
                             micro_batch_size=self.cfg.micro_batch_size, adapt_prompt=self.cfg.adapt_prompt)
        metrics = ppo_update(self.policy, self.critic, self.optimizer, batch, self.cfg,
                             self.kl_ctl.value, self.generator)
        metrics = ddp.mean_over_ranks(metrics, next(self.model.parameters()).device)
        self.kl_ctl.update(metrics["kl_ref"], n_steps=len(batch) * ddp.world_size())
        return metrics
