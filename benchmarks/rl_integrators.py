"""The gym step's cost and the fast integrator's accuracy: which step the RL baselines get.

The gymnasium adapter integrates each control interval with adaptive dopri5 at
rtol = atol = 1e-8 (envs/gym_adapter.py). For each environment this script measures,
with one torch thread:

- the wall-clock and f evaluations of one env step, accurate and with fixed-step RK4
  at 1, 2 and 4 substeps per interval (`gym.make(id, method="rk4", substeps=k)`);
- each fast step's accuracy against the accurate one: the same fixed policy (the
  environment's default MLP policy, seeded, last layer at torch's default scale so it
  acts from the start) runs one episode per reset seed in both envs, and the largest
  state difference over the episode (max norm) and the return difference are recorded;
  the policy feeds back on its own states, so the differences compound as they would
  in training;
- Stable-Baselines3 SAC's cost per environment step including its gradient update
  (rl-zoo's Pendulum-v1 settings, benchmarks/rl_methods.py), on the accurate and on the
  fastest agreeing env: how much of SAC's wall-clock the step is.

The fastest candidate whose return differs from the accurate return by at most
`return_rtol` (relative) on every episode is the baselines' choice; benchmarks/rl.py
keeps the measured choices in BASELINE_INTEGRATOR.

    python -m benchmarks.rl_integrators [--smoke | --full] [--envs pendulum diffdrive] [--out DIR]

Writes <out>/rl_integrators.json and .png.
"""
from __future__ import annotations

import dataclasses
import time

import numpy as np
import torch

from benchmarks._config import parse_config, publish, torch_threads

ENVS = ("pendulum", "cartpole", "quadrotor", "quadrotor_realistic", "diffdrive", "electric")
CANDIDATES = ((("rk4", 1), ("rk4", 2), ("rk4", 4)))


@dataclasses.dataclass
class Config:
    envs: tuple = ENVS
    """environments (envs names with a gymnasium id)"""
    episodes: int = 5
    """episodes (reset seeds 0, 1, ...) per environment and integrator"""
    return_rtol: float = 1e-3
    """a fast step agrees when |return - accurate return| <= return_rtol |accurate return| on every episode"""
    sac_steps: int = 600
    """SAC steps timed per env (after its 100 warm-up steps without updates); 0 skips SAC"""
    out: str = "results/rl"
    """output folder (rl_integrators.json and .png)"""


PRESETS = {"smoke": dict(envs=("pendulum",), episodes=1, sac_steps=0), "full": dict(episodes=5, sac_steps=1000)}


def make_env(env: str, **options):
    """The gymnasium env of an envs name (the adapter itself, unwrapped), with integrator options."""
    import gymnasium

    import envs  # noqa: F401  registers the ids
    from agents.replay import gym_id
    return gymnasium.make(gym_id(env), **options).unwrapped


def fixed_policy(env: str, system, seed: int = 0):
    """The environment's default MLP policy, seeded, with its last layer at torch's scale."""
    from agents.policies import make_policy
    torch.manual_seed(seed)
    return make_policy(system, env=env, last_layer_scale=1.0).requires_grad_(False)


def episode(gym_env, policy, seed: int) -> dict:
    """One episode: states [n+1, d], return, seconds per step and f evaluations per step."""
    from agents.replay import act
    obs, _ = gym_env.reset(seed=seed)
    states, total, seconds, f_evals, done = [obs.astype(np.float64)], 0.0, 0.0, 0, False
    while not done:
        action = act(policy, obs, gym_env.system)
        start = time.perf_counter()
        obs, reward, _, done, info = gym_env.step(action)
        seconds += time.perf_counter() - start
        states.append(obs.astype(np.float64))
        total, f_evals = total + reward, f_evals + info["f_evals"]
    steps = len(states) - 1
    return dict(states=np.stack(states), ret=total, step_seconds=seconds / steps, f_per_step=f_evals / steps)


def compare(env: str, cfg: Config) -> dict:
    """Accurate against each candidate on the same episodes; the fastest agreeing one."""
    accurate_env = make_env(env)
    policy = fixed_policy(env, accurate_env.system)
    reference = [episode(accurate_env, policy, s) for s in range(cfg.episodes)]
    rows = [_row("dopri5 (rtol 1e-8)", {}, reference, reference)]
    for method, k in CANDIDATES:
        fast = [episode(make_env(env, method=method, substeps=k), policy, s) for s in range(cfg.episodes)]
        rows.append(_row(f"{method} x{k}", dict(method=method, substeps=k), fast, reference))
    agreeing = [r for r in rows[1:] if r["max_return_rel_diff"] <= cfg.return_rtol]
    chosen = min(agreeing, key=lambda r: r["step_ms"]) if agreeing else rows[0]
    return dict(rows=rows, chosen=chosen["name"], chosen_options=chosen["options"],
                dt=accurate_env.dt, steps_per_episode=accurate_env.n_steps)


def _row(name: str, options: dict, runs: list, reference: list) -> dict:
    state_err = [float(np.abs(r["states"] - q["states"]).max()) for r, q in zip(runs, reference)]
    ret_diff = [abs(r["ret"] - q["ret"]) for r, q in zip(runs, reference)]
    rel = [d / max(abs(q["ret"]), 1e-12) for d, q in zip(ret_diff, reference)]
    return dict(name=name, options=options, step_ms=1e3 * float(np.median([r["step_seconds"] for r in runs])),
                f_per_step=float(np.mean([r["f_per_step"] for r in runs])),
                mean_return=float(np.mean([r["ret"] for r in runs])),
                max_state_error=max(state_err), max_return_diff=max(ret_diff), max_return_rel_diff=max(rel))


def sac_step_cost(env: str, options: dict, steps: int) -> dict:
    """Seconds per SAC environment step with its update, and the env step's share of them."""
    from benchmarks.rl_methods import sb3_env, sb3_model
    gym_env = sb3_env(env, options)
    model = sb3_model("sac", gym_env, seed=0)
    model.learn(total_timesteps=100)                 # learning_starts: the buffer fills without updates
    start, f0 = time.perf_counter(), gym_env.unwrapped.system.counter.f_evals
    model.learn(total_timesteps=steps, reset_num_timesteps=False)
    per_step = (time.perf_counter() - start) / steps
    return dict(options=options, sac_step_ms=1e3 * per_step,
                f_per_step=(gym_env.unwrapped.system.counter.f_evals - f0) / steps)


def run(cfg: Config) -> dict:
    out = {}
    for env in cfg.envs:
        out[env] = compare(env, cfg)
        if cfg.sac_steps:
            out[env]["sac"] = [sac_step_cost(env, {}, cfg.sac_steps),
                               sac_step_cost(env, out[env]["chosen_options"], cfg.sac_steps)]
        print(f"{env}: chosen {out[env]['chosen']}", flush=True)
    return dict(config=dataclasses.asdict(cfg), envs=out)


def print_summary(result: dict) -> None:
    print(f"{'env':20s} {'integrator':18s} {'ms/step':>8s} {'f/step':>7s} {'max |dx|':>10s} "
          f"{'max |dR|/|R|':>12s}")
    for env, res in result["envs"].items():
        for r in res["rows"]:
            mark = "  <- baselines" if r["name"] == res["chosen"] else ""
            print(f"{env:20s} {r['name']:18s} {r['step_ms']:8.3f} {r['f_per_step']:7.1f} "
                  f"{r['max_state_error']:10.2e} {r['max_return_rel_diff']:12.2e}{mark}")
        for s in res.get("sac", []):
            env_ms = next(r["step_ms"] for r in res["rows"] if r["options"] == s["options"])
            print(f"{'':20s} SAC step+update with {s['options'] or 'dopri5'}: {s['sac_step_ms']:.2f} ms "
                  f"(env step {env_ms:.2f} ms, {100 * env_ms / s['sac_step_ms']:.0f} %)")


def plot(result: dict, path) -> None:
    import matplotlib.pyplot as plt
    names = list(result["envs"])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for j, env in enumerate(names):
        rows = result["envs"][env]["rows"]
        axes[0].bar([j + 0.2 * i for i in range(len(rows))], [r["step_ms"] for r in rows], width=0.2,
                    color=[f"C{i}" for i in range(len(rows))])
        fast = rows[1:]
        axes[1].semilogy([r["name"] for r in fast], [max(r["max_return_rel_diff"], 1e-16) for r in fast], "-o",
                         label=env)
    axes[0].set_xticks([j + 0.3 for j in range(len(names))], names, rotation=20, fontsize=8)
    axes[0].set_ylabel("ms per env step (bars: " + ", ".join(r["name"] for r in rows) + ")", fontsize=8)
    axes[1].axhline(result["config"]["return_rtol"], color="k", ls="--", lw=0.8)
    axes[1].set_ylabel("max relative return difference vs dopri5")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> dict:
    cfg, budget = parse_config(Config, argv, "ctpg bench rl-integrators", __doc__.split("\n\n")[0], PRESETS)
    with torch_threads(1):
        result = dict(budget=budget, **run(cfg))
    publish(cfg.out, "rl_integrators", result, plot, print_summary)
    return result


if __name__ == "__main__":
    main()
