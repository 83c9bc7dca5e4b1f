"""Stable-Baselines3 trains on ctpg's gymnasium environments (slow: `pytest -m slow`).

PPO with SB3's defaults, on the float32 variant with the action box rescaled to
[-1, 1] (gymnasium's RescaleAction, as SB3 recommends), for a short budget; the mean
return of the deterministic policy on fixed reset seeds must improve on the untrained
one's. The budgets and the improvements measured are in the agents report.
"""
from __future__ import annotations

import time

import gymnasium
import numpy as np
import pytest
from gymnasium.wrappers import RescaleAction

pytestmark = pytest.mark.slow

EVAL_SEEDS = range(100, 105)


def make_env(env_id):
    import envs  # noqa: F401  registers the ids
    return RescaleAction(gymnasium.make(env_id, dtype=np.float32), -1.0, 1.0)


def mean_return(model, env) -> float:
    total = 0.0
    for seed in EVAL_SEEDS:
        obs, _ = env.reset(seed=seed)
        done = False
        while not done:
            action, _ = model.predict(obs, deterministic=True)
            obs, reward, terminated, truncated, _ = env.step(action)
            total, done = total + reward, terminated or truncated
    return total / len(EVAL_SEEDS)


@pytest.mark.parametrize("env_id, steps", [("ctpg/LQR-v0", 20_000), ("ctpg/DiffDrive-v0", 30_000)])
def test_ppo_improves_the_return(env_id, steps):
    import torch
    from stable_baselines3 import PPO
    torch.set_num_threads(1)
    env = make_env(env_id)
    model = PPO("MlpPolicy", env, seed=0, verbose=0, device="cpu")
    before = mean_return(model, make_env(env_id))
    start = time.perf_counter()
    model.learn(total_timesteps=steps)
    after = mean_return(model, make_env(env_id))
    print(f"{env_id}: PPO {steps} steps in {time.perf_counter() - start:.0f} s, "
          f"mean return {before:.3f} -> {after:.3f}")
    assert after > before + 0.2 * abs(before), (before, after)
