"""Head-to-head: ctpg against Stable-Baselines3 SAC and PPO on the same gymnasium envs (issue 20).

Each method of benchmarks/rl_methods.py (METHODS: today's full-horizon CTPG trainer,
SB3 SAC and PPO with rl-zoo's Pendulum-v1 settings, and the windowed actor-critic on
CTPG and on BPTT (SHAC), agents.train(..., algo="actor-critic")) trains once per seed for the same
wall-clock budget on one torch thread, `workers` runs side by side in separate
processes. All are evaluated the same way: the mean return of the accurate gym env
(dopri5, rtol 1e-8) over fixed reset seeds, the policy acting at every control
interval (sample-and-hold). Evaluation time is not charged to the budget.

Axes: training wall-clock (primary), training env steps (SB3 only: ctpg takes none),
training oracle evaluations (ctpg: f, vjp, Jacobians per sample; SB3: f evaluations of
the gym env's solver). The figure shows the median and 25-75 % band over seeds; the
JSON holds every point of every run.

Floors of issue 20 (for the full runs; reported per environment, checked over the
5 environments in the README): the best ctpg method's median final return above
SAC's and PPO's; and that method reaching SAC's median final return within 1/10 of
SAC's wall-clock (per seed: the first evaluation at or above it, a conservative
reading; median over seeds).

    ctpg bench rl --env pendulum [--smoke | --full] [--methods ctpg sac ppo] [--seeds 5] [--budget 300]

Full budget: 5 seeds x 300 s per method; with 3 methods 15 runs, two at a time (8 slots of
300 s plus 25-100 s of evaluations: 10 evaluations x 5 episodes of 100-512 accurate steps),
an estimated 45-55 min per environment on 2 free cores, 75-90 min with the two actor-critic
methods (estimated from the per-step costs). Measured: the pendulum with ac-ctpg, ac-bptt, sac
and ppo (20 runs, --clock cpu) took 118 min of wall-clock on a machine oversubscribed 2-3x
by other work; the actor-critics stop at their 600 iterations, after 95-232 CPU s. Writes
<out>/rl_<env>.json and .png; run directories under <out>/runs/.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import multiprocessing
import shutil
import time
from pathlib import Path

import numpy as np

from benchmarks._config import parse_config, publish, torch_threads
from benchmarks.learning import band, reach_ratio
from benchmarks.rl_methods import DEFAULT_METHODS, METHODS

ENVS = ("pendulum", "cartpole", "quadrotor", "quadrotor_realistic", "diffdrive", "electric")
AXES = (("wall_time", "training wall-clock [s]"), ("env_steps", "training env steps"),
        ("oracle_evals", "training oracle evaluations"))
CPU_AXIS = ("cpu_time", "training CPU time [s]")   # the first axis when the budget is in CPU seconds
CTPG_METHODS = ("ctpg", "ac-ctpg", "ac-bptt")
RL_METHODS = ("sac", "ppo")


@dataclasses.dataclass
class Config:
    env: str = "pendulum"
    """environment: pendulum, cartpole, quadrotor, quadrotor_realistic, diffdrive or electric"""
    methods: tuple = DEFAULT_METHODS
    """methods (benchmarks/rl_methods.py METHODS: ctpg, sac, ppo; ac-ctpg, ac-bptt need the actor-critic trainer)"""
    seeds: int = 2
    """number of seeds (0, 1, ...); each trains every method once"""
    budget: float = 120.0
    """training wall-clock seconds per method and seed (evaluations not counted)"""
    eval_points: int = 8
    """evaluations per run at least (every budget / eval_points seconds, plus 3 early ones and one at the start)"""
    episodes: int = 5
    """evaluation episodes (fixed reset seeds) per evaluation"""
    workers: int = 2
    """runs at a time, each in its own process on one torch thread (0: one after another in this process)"""
    clock: str = "wall"
    """the budget's clock: wall (wall-clock, the issue's axis) or cpu (process CPU seconds: equal budgets on a shared machine)"""
    out: str = "results/rl"
    """output folder (rl_<env>.json and .png, runs/)"""


PRESETS = {"smoke": dict(seeds=1, budget=4.0, eval_points=1, episodes=1),
           "full": dict(seeds=5, budget=300.0, eval_points=6, episodes=5)}


def run_task(task: dict) -> dict:
    """One method on one seed, in a worker process (one torch thread); a failure is recorded, not raised."""
    method, _ = METHODS[task["method"]]
    out_dir = Path(task["out"]) / "runs" / f"{task['env']}__{task['method']}__{task['seed']}"
    if out_dir.exists():                      # a re-run replaces its own earlier run
        shutil.rmtree(out_dir)
    start = time.perf_counter()
    try:
        with torch_threads(1):
            points = method(task["env"], task["seed"], task["budget"], out_dir,
                            eval_points=task["eval_points"], episodes=task["episodes"], clock=task["clock"])
    except Exception as err:                  # noqa: BLE001  reported in the summary and the JSON
        return dict(task, history=[], error=f"{type(err).__name__}: {err}", elapsed=time.perf_counter() - start)
    return dict(task, history=points, error=None, elapsed=time.perf_counter() - start,
                final_cost=points[-1]["cost"], final_return=points[-1]["return"])


def run_all(cfg: Config) -> list[dict]:
    """Every method on every seed, `workers` at a time, printing progress with an ETA."""
    tasks = [dict(env=cfg.env, method=m, seed=s, budget=cfg.budget, eval_points=cfg.eval_points,
                  episodes=cfg.episodes, clock=cfg.clock, out=cfg.out) for s in range(cfg.seeds) for m in cfg.methods]
    print(f"[rl] {cfg.env}: {len(tasks)} runs ({', '.join(cfg.methods)} x {cfg.seeds} seeds), "
          f"{cfg.budget:g} s each, {cfg.workers} at a time", flush=True)
    start, done, slots = time.perf_counter(), [], max(1, cfg.workers)
    with contextlib.ExitStack() as stack:
        if cfg.workers:        # a fresh process per run: no state carried from one run to the next
            pool = stack.enter_context(multiprocessing.get_context("spawn").Pool(cfg.workers, maxtasksperchild=1))
            results = pool.imap_unordered(run_task, tasks)
        else:
            results = map(run_task, tasks)
        for result in results:
            done.append(result)
            elapsed = time.perf_counter() - start
            per_slot = elapsed / math.ceil(len(done) / slots)
            eta = per_slot * (math.ceil(len(tasks) / slots) - math.ceil(len(done) / slots))
            what = result["error"] or f"final return {result['final_return']:.4g}"
            print(f"[rl] {len(done)}/{len(tasks)} done: {result['method']} seed {result['seed']} ({what}); "
                  f"elapsed {elapsed / 60:.1f} min, ETA {eta / 60:.1f} min", flush=True)
    order = {(t["method"], t["seed"]): i for i, t in enumerate(tasks)}
    return sorted(done, key=lambda r: order[(r["method"], r["seed"])])


def quartiles(values) -> dict:
    values = [v for v in values if v is not None]
    if not values:
        return dict(median=None, q25=None, q75=None)
    return dict(median=float(np.median(values)), q25=float(np.quantile(values, 0.25)),
                q75=float(np.quantile(values, 0.75)))


def summarise(runs: list[dict]) -> dict:
    ok = [r for r in runs if r["error"] is None]
    last = [r["history"][-1] for r in ok]
    return dict(final_return=quartiles([h["return"] for h in last]), wall_time=quartiles([h["wall_time"] for h in last]),
                cpu_time=quartiles([h["cpu_time"] for h in last]), env_steps=quartiles([h["env_steps"] for h in last]),
                oracle_evals=quartiles([h["oracle_evals"] for h in last]), seeds=len(ok),
                errors=[r["error"] for r in runs if r["error"]])


def axes(cfg) -> tuple:
    return ((CPU_AXIS,) + AXES[1:]) if cfg["clock"] == "cpu" else AXES


def floors(by_method: dict, summary: dict, clock_axis: str = "wall_time") -> dict:
    """Issue 20's two floors for this environment, on the methods present, time read on
    `clock_axis` (the budget's clock)."""
    ours = [m for m in CTPG_METHODS if summary.get(m, {}).get("seeds")]
    if not ours:
        return dict(best_ctpg=None)
    best = max(ours, key=lambda m: summary[m]["final_return"]["median"])
    out = dict(best_ctpg=best, best_final_return=summary[best]["final_return"]["median"])
    for rl in RL_METHODS:
        if not summary.get(rl, {}).get("seeds"):
            continue
        out[f"beats_{rl}"] = out["best_final_return"] > summary[rl]["final_return"]["median"]
        target = dict(final_cost=-summary[rl]["final_return"]["median"],
                      history=[{clock_axis: summary[rl][clock_axis]["median"]}])
        ratios = [reach_ratio(r, target, clock_axis) for r in by_method[best] if r["error"] is None]
        out[f"time_fraction_to_{rl}_final"] = float(np.median(ratios))
        out[f"time_fraction_to_{rl}_final_per_seed"] = ratios
        out[f"within_tenth_of_{rl}_time"] = bool(np.median(ratios) <= 0.1)
        # a baseline that barely left its untrained return makes the time ratio say little
        first = float(np.median([r["history"][0]["return"] for r in by_method[rl] if r["error"] is None]))
        out[f"{rl}_gain_over_untrained"] = summary[rl]["final_return"]["median"] - first
    return out


def run(cfg: Config) -> dict:
    unknown = [m for m in cfg.methods if m not in METHODS]
    if unknown:
        raise SystemExit(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    runs = run_all(cfg)
    by_method = {m: [r for r in runs if r["method"] == m] for m in cfg.methods}
    summary = {m: summarise(r) for m, r in by_method.items()}
    curves, shown = {}, axes(dataclasses.asdict(cfg))
    for m, rs in by_method.items():
        ok = [r for r in rs if r["error"] is None]
        curves[m] = {axis: band(ok, axis, value="return") for axis, _ in shown
                     if ok and all(h[axis] is not None for r in ok for h in r["history"])}
    return dict(config=dataclasses.asdict(cfg), labels={m: METHODS[m][1] for m in cfg.methods},
                summary=summary, floor=floors(by_method, summary, shown[0][0]), curves=curves, runs=runs)


def plot(result: dict, path) -> None:
    import matplotlib.pyplot as plt
    shown = axes(result["config"])
    fig, panels = plt.subplots(1, len(shown), figsize=(5.3 * len(shown), 4.5), sharey=True)
    for ax, (axis, label) in zip(panels, shown):
        for j, (m, curves) in enumerate(result["curves"].items()):
            if axis not in curves:
                continue
            c = curves[axis]
            ax.plot(c["x"], c["median"], color=f"C{j}", label=result["labels"][m])
            ax.fill_between(c["x"], c["q25"], c["q75"], color=f"C{j}", alpha=0.25)
        ax.set_xlabel(label)
        if axis in ("oracle_evals", "env_steps"):     # SAC takes 10x fewer steps than PPO in a budget
            ax.set_xscale("symlog", linthresh=1e2)
    panels[0].set_ylabel("mean eval return (median, 25-75 % band)")
    panels[0].legend(fontsize=8)
    cfg = result["config"]
    fig.suptitle(f"{cfg['env']}: {cfg['seeds']} seed(s), {cfg['budget']:g} s training per method "
                 f"(env steps: SB3 only)", fontsize=10)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def _fmt(q: dict, spec: str = ".4g") -> str:
    if q["median"] is None:
        return "-"
    return f"{q['median']:{spec}} [{q['q25']:{spec}}, {q['q75']:{spec}}]"


def print_summary(result: dict) -> None:
    print(f"{'method':42s} {'final return (median [25%, 75%])':>36s} {'env steps':>10s} {'oracle evals':>13s} "
          f"{'wall [s]':>9s} {'cpu [s]':>8s} seeds")
    for m, s in result["summary"].items():
        steps = "-" if s["env_steps"]["median"] is None else f"{s['env_steps']['median']:.0f}"
        print(f"{result['labels'][m]:42s} {_fmt(s['final_return']):>36s} {steps:>10s} "
              f"{s['oracle_evals']['median'] or 0:13.3g} {s['wall_time']['median'] or 0:9.1f} "
              f"{s['cpu_time']['median'] or 0:8.1f} {s['seeds']}")
        for error in s["errors"]:
            print(f"  failed: {error}")
    f = result["floor"]
    for key, value in f.items():
        if not key.endswith("per_seed"):
            print(f"  {key}: {value:.3g}" if isinstance(value, float) else f"  {key}: {value}")


def main(argv=None) -> dict:
    cfg, budget = parse_config(Config, argv, "ctpg bench rl", __doc__.split("\n\n")[0], PRESETS)
    if cfg.env not in ENVS:
        raise SystemExit(f"unknown environment {cfg.env!r} for this benchmark; choose one of: {', '.join(ENVS)}")
    if cfg.workers < 0 or cfg.seeds < 1 or not cfg.budget > 0 or cfg.clock not in ("wall", "cpu"):
        raise SystemExit("--workers must be >= 0, --seeds >= 1, --budget > 0 and --clock wall or cpu")
    result = dict(budget=budget, **run(cfg))
    publish(cfg.out, f"rl_{cfg.env}", result, plot, print_summary)
    return result


if __name__ == "__main__":
    main()
