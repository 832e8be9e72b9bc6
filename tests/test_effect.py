"""The offline default world: a short PPO run makes the retrospector's reflections more useful.

The actor is the scripted explorer that obeys its memory (worlds.scripted.ExplorerLLM): a retry succeeds when
the reflection gives a plan it can follow to the goal, so the reward G(k+1) - G(k) measures the
reflections alone. The retrospector is the cached tiny checkpoint (checkpoints/tiny/retrospector)
with fresh LoRA adapters. ALFWorld: the environment with the shortest episodes, so the test is quick.
"""

import os

import numpy as np
import torch

import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def mean_reward(cfg, actor_llm, retrospector, tasks, method: str, seeds=(0, 1, 2)) -> float:
    """Mean G(1) - G(0) of the reflections on `tasks`' failed first trials, over sampling seeds."""
    make_env = train.env_factory(cfg, "alfworld", "train")
    rewards = []
    for seed in seeds:
        gen = torch.Generator().manual_seed(seed)
        records, _ = train.rollout(make_env, tasks, actor_llm, retrospector, cfg, method, (), gen)
        rewards += [r["reward"] for r in records]
    return float(np.mean(rewards))


def test_short_ppo_run_raises_the_mean_reflection_reward(tmp_path):
    cfg = train.parse_config([
        f"--out_dir={tmp_path}", "--envs=alfworld", "--actor=explorer", "--progress=false",
        f"--retrospector_path={ROOT}/checkpoints/tiny/retrospector",
        "--updates=12", "--tasks_per_env=32", "--max_trials=2", "--lr=5e-4", "--kl_coef=0.02",
        "--ppo_epochs=4",  # a short run: more passes over fewer reflections learn faster per rollout
    ])  # fmt: skip
    retrospector = train.train(cfg)
    actor_llm = train.build_actor(cfg, "cpu")
    tasks = list(range(64))  # fixed train tasks; both methods see the same first trials
    before = mean_reward(cfg, actor_llm, retrospector, tasks, "reflexion")  # adapters off: the frozen model
    after = mean_reward(cfg, actor_llm, retrospector, tasks, "retroformer")  # the trained adapters
    print(f"mean reflection reward: frozen {before:.3f}, after PPO {after:.3f}")
    assert after > before + 0.15, (before, after)  # measured: 0.276 -> 0.463
