"""The methods of `ctpg bench rl`: one function each, `(env, seed, wall_budget_s, out_dir) -> points`.

Every method trains on one torch thread until its training clock reaches the wall-clock
budget and is evaluated `eval_points` times on the way (and once at the start), always
the same way (`evaluate`): the mean undiscounted return of the accurate gymnasium env
(dopri5 at rtol 1e-8) over the fixed reset seeds EVAL_SEED, EVAL_SEED + 1, ..., the
policy acting deterministically at every control interval (sample-and-hold), through
agents.replay.gym_episodes. Evaluation time is not charged to the training clock.

A point: {"wall_time": training seconds, "cpu_time": this process's CPU seconds in
training (the two differ when the machine is oversubscribed), "env_steps": training
env steps (None for ctpg, which takes none), "oracle_evals": training oracle evaluations
(ctpg: f, vjp and Jacobians per sample, as the trainer counts them; SB3: the f
evaluations of the gym env's own solver, all envs of a vectorised PPO together),
"return": mean eval return, "cost": minus it}.

Hyperparameters of the baselines (facts from DLR-RM/rl-baselines3-zoo, hyperparams/sac.yml
and ppo.yml, entry "Pendulum-v1", the published setting of the closest task: a
low-dimensional torque-limited swing-up with a 200-step episode). They are used on every
environment; no per-environment sweep was run (README says so). Actions are rescaled to
[-1, 1] and observations are float32, as SB3 recommends. The training env of the
baselines integrates with the fastest step whose returns agree with the accurate one
(BASELINE_INTEGRATOR, measured by benchmarks/rl_integrators.py).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

EVAL_SEED = 10_000

# rl-zoo "Pendulum-v1" (sac.yml): learning_rate 1e-3, everything else SB3's defaults.
SAC_PARAMS = dict(learning_rate=1e-3)
# rl-zoo "Pendulum-v1" (ppo.yml): n_envs 4, n_steps 1024, gae_lambda 0.95, gamma 0.9,
# n_epochs 10, ent_coef 0.0, learning_rate 1e-3, clip_range 0.2, use_sde, sde_sample_freq 4.
PPO_N_ENVS = 4
PPO_PARAMS = dict(n_steps=1024, gae_lambda=0.95, gamma=0.9, n_epochs=10, ent_coef=0.0, learning_rate=1e-3,
                  clip_range=0.2, use_sde=True, sde_sample_freq=4)

# The baselines' training step per env: the fastest whose episode returns agree with dopri5
# (rtol 1e-8) to 1e-3 relative on 5 episodes of a seeded untrained policy (ctpg bench
# rl-integrators --full; README, "Head-to-head against SAC and PPO"). Measured largest relative
# return differences of RK4 x1 / x2 / x4: pendulum 2e-7 / 7e-9 / 3e-10, quadrotor 1e-7 / 7e-9 /
# 5e-10, diffdrive 6e-11 / 4e-12 / 2e-13, electric 5e-4 / 3e-13 / 1e-13. The cart-pole (4e-3 /
# 2e-3 / 1e-3) and the realistic quadrotor (3e-2 / 2e-2 / 5e-2) agree at no step: their
# untrained closed loops amplify any difference (the state error stops falling with the step),
# so they keep the accurate step ({}).
BASELINE_INTEGRATOR = {
    "pendulum": dict(method="rk4", substeps=1),
    "cartpole": {},
    "quadrotor": dict(method="rk4", substeps=1),
    "quadrotor_realistic": {},
    "diffdrive": dict(method="rk4", substeps=1),
    "electric": dict(method="rk4", substeps=1),
}


class Clock:
    """Training time: wall-clock and CPU seconds since start, less the time spent in `paused()`
    blocks. `budget_on` ("wall" or "cpu") is the one the budget is measured in: CPU seconds
    give an equal budget on a machine shared with other work."""

    def __init__(self, budget_on: str = "wall"):
        if budget_on not in ("wall", "cpu"):
            raise ValueError(f"the budget clock is 'wall' or 'cpu', got {budget_on!r}")
        self.budget_on = budget_on
        self.start_wall, self.start_cpu = time.perf_counter(), time.process_time()
        self.paused_wall = self.paused_cpu = 0.0

    def now(self) -> float:
        """Training seconds on the budget's clock."""
        return self.wall() if self.budget_on == "wall" else self.cpu()

    def wall(self) -> float:
        return time.perf_counter() - self.start_wall - self.paused_wall

    def cpu(self) -> float:
        return time.process_time() - self.start_cpu - self.paused_cpu

    def pause(self):
        return _Paused(self)


class _Paused:
    def __init__(self, clock: Clock):
        self.clock = clock

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def __exit__(self, *exc):
        self.clock.paused_wall += time.perf_counter() - self.wall
        self.clock.paused_cpu += time.process_time() - self.cpu


def eval_times(budget: float, eval_points: int, early: int = 3) -> list[float]:
    """When to evaluate, in training seconds: 0, every budget / eval_points, and `early` more
    at budget / 2^k below the first of those (so that reaching a return in a tenth of the
    budget can be read off the points)."""
    linear = [budget * i / eval_points for i in range(1, eval_points + 1)]
    geometric = [linear[0] / 2 ** k for k in range(1, early + 1)]
    return sorted({0.0, *geometric, *linear})


class Evaluator:
    """Evaluates at the training times `eval_times` gives (the first call at or after each);
    records the points."""

    def __init__(self, env: str, budget: float, eval_points: int, episodes: int, clock: Clock):
        import agents
        self.config, self.episodes, self.clock = agents.resolve_config(env), episodes, clock
        self.budget, self.schedule = budget, eval_times(budget, max(1, eval_points))
        self.points, self.next_at = [], 0.0

    def due(self) -> bool:
        return self.clock.now() >= self.next_at or self.spent()

    def spent(self) -> bool:
        return self.clock.now() >= self.budget

    def record(self, policy, env_steps, oracle_evals) -> None:
        """Evaluate `policy` (torch callable on states [1, d]) now, with the clock paused."""
        wall, cpu, now = self.clock.wall(), self.clock.cpu(), self.clock.now()
        with self.clock.pause():
            ret = evaluate(self.config, policy, self.episodes)
        self.points.append(dict(wall_time=wall, cpu_time=cpu, env_steps=env_steps, oracle_evals=oracle_evals,
                                **{"return": ret, "cost": -ret}))
        self.next_at = next((t for t in self.schedule if t > now), float("inf"))


def evaluate(config, policy, episodes: int) -> float:
    """Mean return of `episodes` accurate gym episodes from the reset seeds EVAL_SEED, ... (a
    policy that blows the env's solver up gets -inf)."""
    from agents.replay import gym_episodes
    from ctpg.errors import SolverError
    try:
        report = gym_episodes(config, policy, {}, episodes, seed=EVAL_SEED)
    except (SolverError, FloatingPointError) as err:
        print(f"[rl] evaluation failed ({type(err).__name__}: {err}); return -inf")
        return -float("inf")
    return float(np.mean(report.returns))


# ---------------------------------------------------------------- ctpg's trainer
def train_ctpg(env: str, seed: int, wall_budget_s: float, out_dir, *, eval_points: int = 8, episodes: int = 5,
               clock: str = "wall", estimator: str = "ctpg", **overrides) -> list[dict]:
    """Today's trainer (agents.train, the environment's defaults, `overrides` on top) until
    the budget or its own iteration count, whichever comes first. With algo="actor-critic"
    in `overrides` it is the windowed actor-critic."""
    from torch.utils import tensorboard  # noqa: F401  imported before the clock starts: a process cost

    import agents
    from agents.builders import make_system
    from agents.config import FIELD_NAMES
    from agents.trainer import build_policy
    # the policy is built here, as agents.train would (same config, same seed), so that the
    # progress callback can evaluate it
    config = agents.resolve_config(env, estimator, **{k: v for k, v in overrides.items()
                                                      if k in FIELD_NAMES})
    system = make_system(config)
    torch.manual_seed(seed)                  # as agents.train seeds before building the policy
    policy = build_policy(config, system)
    clock = Clock(clock)
    evaluator = Evaluator(env, wall_budget_s, eval_points, episodes, clock)
    evaluator.record(policy, None, 0)
    last = {}

    def progress(step, metrics):
        last.update(metrics)
        if evaluator.due():
            evaluator.record(policy, None, int(metrics["oracle/total_cum"]))
        return not evaluator.spent()

    agents.train(env=env, estimator=estimator, seed=seed, system=system, policy=policy,
                 logdir=Path(out_dir) / "run", quiet=True, figure_every=0, eval_every=0, eval_batch=8,
                 checkpoint_every=10 ** 9, threads=1, progress_fn=progress, **overrides)
    if evaluator.points[-1]["oracle_evals"] != int(last.get("oracle/total_cum", 0)):
        evaluator.record(policy, None, int(last.get("oracle/total_cum", 0)))   # finished before the budget
    return evaluator.points


def train_actor_critic(estimator: str):
    """The windowed actor-critic on `estimator` (agents.train(..., algo="actor-critic"))."""
    def method(env, seed, wall_budget_s, out_dir, **kw):
        return train_ctpg(env, seed, wall_budget_s, out_dir, estimator=estimator, algo="actor-critic", **kw)
    method.__name__ = f"train_actor_critic_{estimator}"
    return method


# ------------------------------------------------------------- Stable-Baselines3
def sb3_env(env: str, options: dict | None = None, seed: int | None = None):
    """The float32 gym env of an envs name with actions rescaled to [-1, 1], integrating with `options`."""
    import gymnasium
    from gymnasium.wrappers import RescaleAction

    import envs  # noqa: F401  registers the ids
    from agents.replay import gym_id
    gym_env = RescaleAction(gymnasium.make(gym_id(env), dtype=np.float32, **(options or {})), -1.0, 1.0)
    if seed is not None:
        gym_env.reset(seed=seed)
    return gym_env


def sb3_model(algo: str, gym_env, seed: int):
    import stable_baselines3
    params = SAC_PARAMS if algo == "sac" else PPO_PARAMS
    return getattr(stable_baselines3, algo.upper())("MlpPolicy", gym_env, seed=seed, verbose=0, device="cpu",
                                                    **params)


class SB3Policy:
    """A trained SB3 model as a torch callable on states [1, d] -> actions [1, k] in the env's bounds."""

    def __init__(self, model, low: np.ndarray, high: np.ndarray):
        self.model, self.low, self.high = model, low, high

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        a, _ = self.model.predict(x[0].cpu().numpy().astype(np.float32), deterministic=True)
        u = self.low + (np.clip(a, -1.0, 1.0) + 1.0) / 2.0 * (self.high - self.low)
        return torch.as_tensor(u, dtype=x.dtype)[None]


def train_sb3(algo: str):
    """SB3 SAC or PPO on the env's fast training step; evaluations through `evaluate`."""
    def method(env, seed, wall_budget_s, out_dir, *, eval_points: int = 8, episodes: int = 5, clock: str = "wall"):
        import stable_baselines3  # noqa: F401  imported before the clock starts
        from stable_baselines3.common.callbacks import BaseCallback
        from stable_baselines3.common.vec_env import DummyVecEnv
        options = BASELINE_INTEGRATOR.get(env, {})
        n_envs = PPO_N_ENVS if algo == "ppo" else 1
        vec = DummyVecEnv([lambda: sb3_env(env, options) for _ in range(n_envs)])
        counters = [e.unwrapped.system.counter for e in vec.envs]
        model = sb3_model(algo, vec, seed)
        clock = Clock(clock)     # after building the model, as ctpg's starts after its system and policy
        low, high = (np.asarray(b, dtype=np.float64) for b in (vec.envs[0].unwrapped._low, vec.envs[0].unwrapped._high))
        policy = SB3Policy(model, low, high)
        evaluator = Evaluator(env, wall_budget_s, eval_points, episodes, clock)

        def record():
            evaluator.record(policy, int(model.num_timesteps), sum(c.f_evals for c in counters))

        class Budget(BaseCallback):
            def _on_step(self) -> bool:
                if evaluator.due():
                    record()
                return not evaluator.spent()

        record()
        model.learn(total_timesteps=10 ** 9, callback=Budget())
        if evaluator.points[-1]["env_steps"] != model.num_timesteps:
            record()
        return evaluator.points
    method.__name__ = f"train_{algo}"
    return method


# name -> (method, label).
METHODS = {
    "ctpg": (train_ctpg, "CTPG, full horizon (agents.train defaults)"),
    "ac-ctpg": (train_actor_critic("ctpg"), "actor-critic on CTPG"),
    "ac-bptt": (train_actor_critic("bptt"), "actor-critic on BPTT (SHAC)"),
    "sac": (train_sb3("sac"), "SB3 SAC (rl-zoo Pendulum-v1)"),
    "ppo": (train_sb3("ppo"), "SB3 PPO (rl-zoo Pendulum-v1)"),
}
DEFAULT_METHODS = ("ac-ctpg", "ac-bptt", "ctpg", "sac", "ppo")
