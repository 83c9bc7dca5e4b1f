"""When is CTPG worth it? Learning efficiency against the closed loop's time scale.

One system, one knob: the LQR dx/dt = s u (A = 0, B = s I, Q = R = I, T = 10). Its
optimal gain is K = I whatever s (the Riccati solution scales as 1/s), so the policy
learns the same small weights at every s, and the learned closed loop decays at rate s:
1/s is its fastest time scale and s T how many of them fit in the horizon. (Scaling Q
instead would ask the policy for gains ~ s, which a small MLP does not reach in a few
hundred iterations, so the loop it learns would never be fast.) For each s a 2-32-2 tanh
MLP policy (the LQR training defaults of agents/config.py) is trained with CTPG (the
LQR's default solver, or --method, e.g. auto for a stiff-capable one) and with BPTT-Euler
at the step matched to CTPG's mean evaluations per iteration, as the paper's code
matches them (benchmarks/learning.py), on the same seeds, batches and held-out starts.
Reported per s: CTPG's oracle evaluations to reach BPTT's final held-out cost over
BPTT's total (median over seeds; below 1 CTPG is cheaper, inf if it never gets there),
both final costs over the exact optimum, and BPTT's matched step times s against Euler's
stability limit (dt s < 2 for the learned loop).

    python -m benchmarks.crossover [--smoke | --full] [--scales 1 3 10 30] [--method auto] [--out DIR]

Writes <out>/crossover.json and .png (the ratio against s T, with the per-seed values).
No floor: the figure is the result.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np

from agents import resolve_config
from benchmarks import learning
from benchmarks._config import parse_config, publish, torch_threads


@dataclasses.dataclass
class Config:
    scales: tuple = (1.0, 3.0, 10.0, 30.0, 100.0)
    """closed-loop rates s (B = s I)"""
    seeds: int = 3
    """seeds per scale"""
    iters: int = 0
    """iterations per run (0: the LQR default, 200)"""
    eval_points: int = 20
    """evaluations per run"""
    method: str = ""
    """CTPG's solver (empty: the LQR's default, agents/config.py)"""
    out: str = "results/crossover"
    """output folder"""


PRESETS = {"smoke": dict(scales=(1.0, 10.0), seeds=1, iters=3, eval_points=3), "full": dict(seeds=5)}
HORIZON = 10.0


def run_scale(cfg: Config, scale: float) -> dict:
    import torch
    lcfg = learning.Config(env="lqr", seeds=cfg.seeds, iters=cfg.iters, eval_points=cfg.eval_points,
                           out=str(Path(cfg.out) / f"s{scale:g}"))
    env_kwargs = dict(B=scale * torch.eye(2, dtype=torch.float64), horizon=HORIZON)
    iters = cfg.iters or resolve_config("lqr").iters
    per_seed = []
    for seed in range(cfg.seeds):
        ctpg = learning.train_one(lcfg, "ctpg", seed, iters=iters, env_kwargs=env_kwargs,
                                  **({"method": cfg.method} if cfg.method else {}))
        dt = learning.matched_dt(lcfg, ctpg)
        bptt = learning.train_one(lcfg, "bptt", seed, iters=iters, dt=dt, env_kwargs=env_kwargs)
        per_seed.append(dict(seed=seed, dt=dt, ratio=learning.reach_ratio(ctpg, bptt),
                             ctpg_final=ctpg["final_cost"], bptt_final=bptt["final_cost"],
                             ctpg_status=ctpg["status"], bptt_status=bptt["status"]))
        print(f"s={scale:g} seed {seed}: BPTT dt {dt:.4g} (stable below {2 / scale:.4g}), ratio "
              f"{per_seed[-1]['ratio']:.3g}, final costs CTPG {ctpg['final_cost']:.5g} BPTT {bptt['final_cost']:.5g}",
              flush=True)
    optimum = optimal_cost(scale)
    ratios = [r["ratio"] for r in per_seed]
    return dict(scale=scale, time_scales_in_horizon=scale * HORIZON, per_seed=per_seed,
                median_ratio=float(np.median(ratios)), optimal_cost=optimum,
                ctpg_over_optimum=float(np.median([r["ctpg_final"] for r in per_seed])) / optimum,
                bptt_over_optimum=float(np.median([r["bptt_final"] for r in per_seed])) / optimum,
                dt_times_rate=float(np.median([r["dt"] for r in per_seed])) * scale)


def optimal_cost(scale: float) -> float:
    """Mean exact cost of the infinite-horizon optimal gain on the held-out starts."""
    import torch
    import envs
    from agents.evaluation import heldout_states
    system = envs.make("lqr", B=scale * torch.eye(2, dtype=torch.float64), horizon=HORIZON)
    cfg = resolve_config("lqr")
    x0 = heldout_states(system, cfg.eval_batch, cfg.eval_seed)
    return float(system.exact_cost(system.optimal_gain(), x0).mean())


def run(cfg: Config) -> dict:
    return dict(config=dataclasses.asdict(cfg), rows=[run_scale(cfg, s) for s in cfg.scales])


def plot(result, path):
    import matplotlib.pyplot as plt
    rows = result["rows"]
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    x = [r["time_scales_in_horizon"] for r in rows]
    finite = lambda v: v if math.isfinite(v) else np.nan
    ax.semilogx(x, [finite(r["median_ratio"]) for r in rows], "-o", label="median over seeds")
    for r in rows:
        ax.scatter([r["time_scales_in_horizon"]] * len(r["per_seed"]), [finite(p["ratio"]) for p in r["per_seed"]],
                   s=12, alpha=0.5, color="gray")
    ax.axhline(1.0, color="k", ls="--", lw=0.8)
    ax.set_xlabel("s T: fastest closed-loop time scales in the horizon")
    ax.set_ylabel("CTPG evals to reach BPTT's final cost / BPTT's")
    method = result["config"].get("method") or "default solver"
    ax.set_title(f"LQR, dx/dt = s u: when CTPG ({method}) pays (below 1)")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def print_summary(result):
    print(f"{'s':>6s} {'s T':>6s} {'ratio':>8s} {'CTPG/opt':>9s} {'BPTT/opt':>9s} {'dt s':>6s}  per seed")
    for r in result["rows"]:
        print(f"{r['scale']:6g} {r['time_scales_in_horizon']:6g} {r['median_ratio']:8.3g} "
              f"{r['ctpg_over_optimum']:9.4g} {r['bptt_over_optimum']:9.4g} {r['dt_times_rate']:6.3g}  "
              f"{[round(p['ratio'], 3) for p in r['per_seed']]}")


def main(argv=None) -> dict:
    cfg, _ = parse_config(Config, argv, "ctpg bench crossover", __doc__.split("\n\n")[0], PRESETS)
    with torch_threads(1):
        result = run(cfg)
    publish(cfg.out, "crossover", result, plot, print_summary)
    return result


if __name__ == "__main__":
    main()
