"""Learning efficiency: CTPG against BPTT-Euler in training (paper, Section 4, Figures 4-7).

Policies are trained with agents.train on the differential drive, the quadrotor or
the cart-pole, once per estimator and seed, under the environment's defaults
(agents/config.py ENV_DEFAULTS). A seed fixes the policy initialisation, the training
batches (the trainer's own torch.Generator(seed), which no estimator touches) and the
held-out evaluation states (eval_seed): both estimators see the same states, and the
script checks that their evaluations at iteration 0 agree exactly.

BPTT's Euler step is the paper's: 0.01 for the cart-pole, 0.05 for the quadrotors;
on electric DiffTaichi's own configuration, semi-implicit Euler at dt = 0.03 (512
steps); for the differential drive one matched in compute as the paper's code does it (samuela/ctpg,
diffdrive/train.jl: Euler steps = CTPG's mean evaluations per start and iteration over
the whole run, over the evaluations an Euler step costs). With CTPG spending E oracle
evaluations per iteration on average on B states, BPTT (one f and one vjp per state
and Euler step) gets dt = T / ceil(E / 2B), measured on seed 0's run and kept for every
seed, so both spend about the same over a run; the measured ratio is printed and
stored with the results. On the quadrotor BPTT runs ceil(budget / (2 * 32 * T / dt))
iterations with max_oracle_evals = CTPG's total, so it may overshoot the budget by less
than one iteration.

Curves: held-out cost (the accurate evaluation, rtol 1e-7, at least `eval_points`
times per run) against iterations, cumulative training oracle evaluations, simulator
calls (cart-pole) and wall-clock (training and evaluations), median and 25-75 % band
across seeds. Floors (checked, not tuned), per seed, on the median curves across seeds
and on the median of the per-seed ratios (a floor holds when both medians meet it):
  diffdrive: CTPG reaches BPTT's final evaluation cost with at most half of BPTT's
    total oracle evaluations (read at CTPG's evaluation points);
  cartpole: CTPG learns the swing-up (>= 80 % of held-out starts upright at T) on at
    least 4/5 of the seeds, and reaches BPTT's final cost with at most half of BPTT's
    MuJoCo simulator calls (finite differences included);
  electric (paper, Figure 5): CTPG reaches BPTT's final cost with fewer oracle
    evaluations and less wall-clock, on the median curves and on >= 3/4 of the seeds;
  quadrotor, quadrotor_realistic: BPTT gets CTPG's total oracle budget
    (max_oracle_evals); reported, no floor (CTPG's final cost over BPTT's).
CTPG runs with the environment's defaults unless --method / --rtol / --atol say
otherwise (for the cart-pole these are auto:dopri5+rosenbrock23 with reused Jacobians,
agents/config.py CTPG_DEFAULTS; README).

    python -m benchmarks.learning --env diffdrive [--backsolve] [--smoke | --full] [--out DIR]
    python -m benchmarks.learning --env diffdrive --full --ray      # the runs as Ray tasks

Writes <out>/learning_<env>.json and .png; the runs go to <out>/runs/<env>__<est>__<seed>.
"""
from __future__ import annotations

import dataclasses
import math
import shutil
from pathlib import Path

import numpy as np

import agents
import envs
from agents.tasks import SerialRunner
from benchmarks._config import parse_config_and_runner, publish, torch_threads

ENVS = ("diffdrive", "quadrotor", "quadrotor_realistic", "cartpole", "electric")
BPTT_DT = {"cartpole": 0.01, "quadrotor": 0.05, "quadrotor_realistic": 0.05, "electric": 0.03}
BPTT_METHOD = {"electric": "semi-implicit-euler"}   # DiffTaichi's integrator; Euler elsewhere
EQUAL_BUDGET = {"quadrotor", "quadrotor_realistic"}  # BPTT trains on CTPG's oracle budget
AXES = (("step", "iterations"), ("oracle_total_cum", "training oracle evaluations"),
        ("sim_calls_cum", "simulator calls"), ("wall_time", "wall-clock [s]"))
LEARNED = {"cartpole": ("upright_fraction", 0.8)}    # metric >= value: the swing-up was learned


@dataclasses.dataclass
class Config:
    env: str = "diffdrive"
    """environment: diffdrive, quadrotor or cartpole"""
    seeds: int = 2
    """number of seeds (0, 1, ...); each trains every estimator once"""
    iters: int = 0
    """CTPG iterations (0: the environment's default); BPTT trains as many, or on the quadrotor CTPG's oracle budget"""
    eval_every: int = 0
    """evaluate every this many iterations (0: the environment's default)"""
    eval_points: int = 20
    """evaluations per run at least (eval_every = iters // eval_points unless --eval-every is given)"""
    bptt_dt: float = 0.0
    """BPTT's Euler step (0: the paper's, cartpole 0.01, quadrotors 0.05, electric 0.03, diffdrive matched to CTPG's mean compute)"""
    method: str = ""
    """CTPG's solver (empty: the environment's default, agents/config.py)"""
    rtol: float = 0.0
    """CTPG's rtol (0: the environment's default)"""
    atol: float = 0.0
    """CTPG's atol (0: the environment's default)"""
    reuse_jacobians: bool = False
    """CTPG reads the dynamics' Jacobians from a spline of the forward pass's (no simulator calls backward;
    the cart-pole's default already does)"""
    backsolve: bool = False
    """also train with Backsolve (CTPG's tolerances); a run that diverges is reported as such"""
    threads: int = 1
    """torch intra-op threads of every run"""
    device: str = "cpu"
    """torch device of every run (cpu, cuda)"""
    out: str = "results/learning"
    """output folder (learning_<env>.json and .png, runs/)"""


PRESETS = {"smoke": dict(seeds=1, iters=4, eval_every=2), "full": dict(seeds=5)}


def train_one(cfg: Config, estimator: str, seed: int, **overrides) -> dict:
    """One training run; its history (one entry per evaluation) and totals."""
    run_dir = Path(cfg.out) / "runs" / f"{cfg.env}__{estimator}__{seed}"
    if run_dir.exists():            # a benchmark re-run replaces its own earlier runs
        shutil.rmtree(run_dir)
    overrides["eval_every"] = cfg.eval_every or max(1, overrides["iters"] // cfg.eval_points)
    result = agents.train(env=cfg.env, estimator=estimator, seed=seed, logdir=run_dir, quiet=True,
                          figure_every=0, threads=cfg.threads, device=cfg.device, **overrides)
    metric = LEARNED.get(cfg.env, (None,))[0]
    history = [dict(step=h["step"], oracle_total_cum=h["oracle_total_cum"], sim_calls_cum=h["sim_calls_cum"],
                    wall_time=h["wall_time"], cost=h["cost"], **({metric: h[metric]} if metric else {}))
               for h in result.history]
    per_iter = [it["oracle/total"] for it in result.iterations]
    return dict(seed=seed, status=result.status, message=result.message, iterations=result.step,
                oracle_total=result.oracle_total, wall_time=result.wall_time,
                skipped_steps=result.skipped_steps, final_cost=history[-1]["cost"],
                first_iteration_evals=per_iter[0] if per_iter else None,
                mean_iteration_evals=float(np.mean(per_iter)) if per_iter else None,
                dt=result.config.dt, history=history)


def matched_dt(cfg: Config, ctpg_run: dict) -> float:
    """BPTT's Euler step matched to a CTPG run's mean evaluations per iteration: BPTT-Euler
    costs one f and one vjp per state and Euler step."""
    batch, T = agents.resolve_config(cfg.env).batch_size, horizon(cfg.env)
    return T / max(1, math.ceil(ctpg_run["mean_iteration_evals"] / (2 * batch)))


def bptt_settings(cfg: Config, ctpg_run: dict, iters: int, dt: float) -> dict:
    """BPTT's iterations and step; on CTPG's oracle budget where the floor asks for it."""
    bptt = dict(iters=iters, dt=dt, bptt_method=BPTT_METHOD.get(cfg.env, "euler"))
    if cfg.env in EQUAL_BUDGET:
        batch, T = agents.resolve_config(cfg.env).batch_size, horizon(cfg.env)
        budget = ctpg_run["oracle_total"]
        euler_steps = math.ceil(T / dt - 1e-9)
        bptt.update(max_oracle_evals=budget, iters=max(1, math.ceil(budget / (2 * batch * euler_steps))))
    return bptt


def train_all(cfg: Config, iters: int, dt: float | None, runner) -> dict:
    """Every estimator on every seed: CTPG (and Backsolve) first, then BPTT, on CTPG's
    budget where the floor asks and, with dt None, at the step matched to seed 0's CTPG
    run. The runs are independent within each phase, so `runner` (agents.tasks) may run
    them as Ray tasks; the results are the same either way (wall-clock aside)."""
    seeds = list(range(cfg.seeds))
    first = ["ctpg"] + (["backsolve"] if cfg.backsolve else [])
    print(f"{cfg.env}: training {', '.join(first)} on {len(seeds)} seed(s) ({runner.name})")
    settings = {k: v for k, v in (("method", cfg.method), ("rtol", cfg.rtol), ("atol", cfg.atol),
                                  ("reuse_jacobians", cfg.reuse_jacobians)) if v}
    done = runner.map(train_one, [dict(cfg=cfg, estimator=e, seed=s, iters=iters, **settings)
                                  for s in seeds for e in first])
    by_name = {e: done[j::len(first)] for j, e in enumerate(first)}
    dt = dt or matched_dt(cfg, by_name["ctpg"][0])
    print(f"{cfg.env}: training bptt (dt {dt:g}) on {len(seeds)} seed(s)")
    bptt = runner.map(train_one, [dict(cfg=cfg, estimator="bptt", seed=s, **bptt_settings(cfg, by_name["ctpg"][s], iters, dt))
                                  for s in seeds])
    runs = {"ctpg": by_name["ctpg"], "bptt": bptt, **({"backsolve": by_name["backsolve"]} if cfg.backsolve else {})}
    for s in seeds:
        first_costs = {name: r[s]["history"][0]["cost"] for name, r in runs.items()}
        if len(set(first_costs.values())) != 1:
            raise RuntimeError(f"seed {s}: the estimators' evaluations at iteration 0 differ ({first_costs}); "
                               "the policy initialisation or held-out states are not shared")
    return runs


def horizon(env: str) -> float:
    return envs.make(env).horizon


def band(runs: list[dict], axis: str, points: int = 60, value: str = "cost") -> dict:
    """Median and 25/75 % quantiles of `value` (the cost) across seeds on a common grid of
    `axis` (each seed's curve linearly interpolated; the grid stops at the shortest run)."""
    end = min(run["history"][-1][axis] for run in runs)
    grid = np.linspace(0.0, end, points)
    costs = np.array([np.interp(grid, [h[axis] for h in run["history"]],
                                [h[value] for h in run["history"]]) for run in runs])
    q25, q50, q75 = (np.nanquantile(costs, q, axis=0) for q in (0.25, 0.5, 0.75))
    return dict(x=grid.tolist(), median=q50.tolist(), q25=q25.tolist(), q75=q75.tolist())


def reach_ratio(ctpg: dict, bptt: dict, axis: str = "oracle_total_cum", slack: float = 0.0) -> float:
    """CTPG's cumulative `axis` (oracle evaluations, simulator calls, seconds) when its
    cost first reaches BPTT's final cost (plus `slack` times its magnitude), over BPTT's
    total on that axis; inf if never."""
    target = bptt["final_cost"] + slack * abs(bptt["final_cost"])
    hits = [h[axis] for h in ctpg["history"] if h["cost"] <= target]
    return hits[0] / bptt["history"][-1][axis] if hits else math.inf


def median_run(runs: list[dict]) -> dict:
    """A run whose history is, entry by entry, the median over seeds (shortest length)."""
    length = min(len(r["history"]) for r in runs)
    keys = runs[0]["history"][0].keys()
    history = [{k: float(np.median([r["history"][i][k] for r in runs])) for k in keys} for i in range(length)]
    return dict(history=history, final_cost=float(np.median([r["final_cost"] for r in runs])))


# env -> (cost axes of the reach ratio, the bound it must stay within, share of seeds that
# must meet it on every axis, or None when the medians decide as for the diffdrive)
REACH_FLOORS = {"diffdrive": (("oracle_total_cum",), 0.5, None),
                "cartpole": (("sim_calls_cum",), 0.5, None),
                "electric": (("oracle_total_cum", "wall_time"), 1.0, 0.75)}


def floor(cfg: Config, runs: dict) -> dict:
    """The environment's floor per seed, on the median curves across seeds, and on the
    median of the per-seed ratios; it holds only when both medians do, so that seeds
    where one estimator never learns cannot carry it alone."""
    ctpg, bptt = runs["ctpg"], runs["bptt"]
    if cfg.env in EQUAL_BUDGET:
        ratios = [c["final_cost"] / b["final_cost"] for c, b in zip(ctpg, bptt)]
        median = float(np.median([c["final_cost"] for c in ctpg]) / np.median([b["final_cost"] for b in bptt]))
        return dict(floor="none (reported): CTPG final cost / BPTT final cost at an equal oracle budget",
                    per_seed={"final_cost": ratios}, median_ratio={"final_cost": median},
                    per_seed_median={"final_cost": float(np.median(ratios))}, holds=None)
    axes, bound, share = REACH_FLOORS[cfg.env]
    strict = bound >= 1.0       # "fewer", not "at most half"
    meets = (lambda r: r < bound) if strict else (lambda r: r <= bound)
    per_seed = {axis: [reach_ratio(c, b, axis) for c, b in zip(ctpg, bptt)] for axis in axes}
    median_c, median_b = median_run(ctpg), median_run(bptt)
    median = {axis: reach_ratio(median_c, median_b, axis) for axis in axes}
    per_seed_median = {axis: float(np.median(v)) for axis, v in per_seed.items()}
    seeds_meeting = sum(all(meets(per_seed[a][i]) for a in axes) for i in range(len(ctpg)))
    holds = all(meets(median[a]) for a in axes)
    if share is None:
        holds = holds and all(meets(v) for v in per_seed_median.values())
    else:
        holds = holds and seeds_meeting >= share * len(ctpg)
    text = (f"CTPG's {' and '.join(AXIS_NAMES[a] for a in axes)} to reach BPTT's final cost / BPTT's total "
            f"{'<' if strict else '<='} {bound:g}" + (f" on >= {share:.0%} of the seeds" if share else ""))
    # Reported beside the floor, not part of it: when both estimators end at the same cost
    # to a fraction of a percent, "first reaches BPTT's final cost" hinges on that fraction.
    within_1pc = {axis: float(np.median([reach_ratio(c, b, axis, slack=0.01) for c, b in zip(ctpg, bptt)]))
                  for axis in axes}
    out = dict(floor=text, per_seed=per_seed, seeds_meeting=seeds_meeting, median_ratio=median,
               per_seed_median=per_seed_median, per_seed_median_within_1pc=within_1pc, holds=bool(holds))
    if cfg.env in LEARNED:
        metric, value = LEARNED[cfg.env]
        learned = {name: sum(r["history"][-1][metric] >= value for r in rs) for name, rs in runs.items()}
        out.update(learned=learned, learned_needed=math.ceil(0.8 * len(ctpg)))
        out["floor"] += f"; CTPG learns ({metric} >= {value}) on >= 4/5 of the seeds"
        out["holds"] = bool(out["holds"] and learned["ctpg"] >= out["learned_needed"])
    return out


AXIS_NAMES = {"oracle_total_cum": "oracle evaluations", "sim_calls_cum": "simulator calls",
              "wall_time": "wall-clock"}


def summarise(runs: list[dict]) -> dict:
    def q(key):
        values = [r[key] for r in runs]
        return dict(median=float(np.median(values)), q25=float(np.quantile(values, 0.25)),
                    q75=float(np.quantile(values, 0.75)))
    return dict(final_cost=q("final_cost"), oracle_total=q("oracle_total"), wall_time=q("wall_time"),
                iterations=q("iterations"), first_iteration_evals=q("first_iteration_evals"),
                mean_iteration_evals=q("mean_iteration_evals"), statuses=[r["status"] for r in runs])


def _ratio(value) -> str:
    """A reach ratio for display; inf (None once written to JSON) is "never"."""
    return "never" if value is None or not math.isfinite(value) else f"{value:.3g}"


def plot(result: dict, path):
    import matplotlib.pyplot as plt
    # simulator calls only where a simulator was called (the cart-pole)
    shown = [(axis, label) for axis, label in AXES
             if any(max(c[axis]["x"], default=0) > 0 for c in result["curves"].values())]
    fig, axes = plt.subplots(1, len(shown), figsize=(5.3 * len(shown), 4.5), sharey=True)
    colours = {"ctpg": "tab:blue", "bptt": "tab:orange", "backsolve": "tab:green"}
    for ax, (axis, label) in zip(axes, shown):
        for name, curves in result["curves"].items():
            c = curves[axis]
            ax.plot(c["x"], c["median"], color=colours[name], label=result["labels"][name])
            ax.fill_between(c["x"], c["q25"], c["q75"], color=colours[name], alpha=0.25)
        ax.set_xlabel(label)
        if all(v > 0 for c in result["curves"].values() for v in c[axis]["q25"]):
            ax.set_yscale("log")            # the cart-pole's cost goes negative: linear there
    axes[0].set_ylabel("held-out cost (median, 25-75 % band)")
    axes[0].legend(fontsize=8)
    f = result["floor"]
    verdict = {None: "reported", True: "holds", False: "FAILS"}[f["holds"]]
    medians = ", ".join(f"{k} {_ratio(v)}" for k, v in f["median_ratio"].items())
    if f.get("per_seed_median_within_1pc"):
        medians += "; to within 1 %, median of seeds: " + ", ".join(
            f"{k} {_ratio(v)}" for k, v in f["per_seed_median_within_1pc"].items())
    fig.suptitle(f"{result['config']['env']}, {result['config']['seeds']} seed(s): {f['floor']}\n"
                 f"median curves: {medians} -> {verdict}", fontsize=10)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def print_summary(result: dict):
    print(f"{'estimator':22s} {'final cost (median [25%, 75%])':>34s} {'oracle evals':>13s} "
          f"{'evals/iter':>10s} {'wall [s]':>9s} {'iters':>6s}  status")
    for name, s in result["summary"].items():
        fc = s["final_cost"]
        print(f"{result['labels'][name]:22s} {fc['median']:12.5g} [{fc['q25']:9.4g}, {fc['q75']:9.4g}] "
              f"{s['oracle_total']['median']:13.0f} {s['mean_iteration_evals']['median']:10.0f} "
              f"{s['wall_time']['median']:9.1f} {s['iterations']['median']:6.0f}  {','.join(s['statuses'])}")
    f = result["floor"]
    print(f"BPTT dt {result['bptt_dt']:g}: CTPG / BPTT oracle evaluations per iteration (median, mean over "
          f"the run) = {result['evals_per_iteration_ratio']:.3g}")
    print(f"floor: {f['floor']}")
    for axis, ratios in f["per_seed"].items():
        print(f"  {axis}: per seed {[round(r, 3) for r in ratios]}, median of seeds "
              f"{f['per_seed_median'][axis]:.3g}, on the median curves {f['median_ratio'][axis]:.3g}")
    for axis, ratio in f.get("per_seed_median_within_1pc", {}).items():
        print(f"  {axis}: to within 1 % of BPTT's final cost (reported, not the floor): median of seeds {ratio:.3g}")
    if "learned" in f:
        print(f"  learned the task: {f['learned']} (CTPG needs {f['learned_needed']})")
    print(f"  -> {({None: 'REPORTED (no floor)', True: 'HOLDS', False: 'FAILS'})[f['holds']]}")


def run(cfg: Config, runner=None) -> dict:
    defaults = agents.resolve_config(cfg.env)
    iters = cfg.iters or defaults.iters
    dt = cfg.bptt_dt or BPTT_DT.get(cfg.env)          # None: matched on seed 0, then kept
    runs = train_all(cfg, iters, dt, runner or SerialRunner())
    dt = runs["bptt"][0]["dt"]
    summary = {name: summarise(r) for name, r in runs.items()}
    reused = cfg.reuse_jacobians or defaults.reuse_jacobians
    method = (cfg.method or defaults.method) + (", reused Jacobians" if reused else "")
    bptt_name = "BPTT-" + ("semi-implicit Euler" if cfg.env in BPTT_METHOD else "Euler")
    labels = {"ctpg": f"CTPG ({method})", "bptt": f"{bptt_name} (dt={dt:g})", "backsolve": f"Backsolve ({method})"}
    curves = {name: {axis: band(r, axis) for axis, _ in AXES} for name, r in runs.items()}
    ratio = summary["ctpg"]["mean_iteration_evals"]["median"] / summary["bptt"]["mean_iteration_evals"]["median"]
    return dict(config=dataclasses.asdict(cfg), iters=iters, bptt_dt=dt, labels=labels,
                evals_per_iteration_ratio=ratio, summary=summary, floor=floor(cfg, runs),
                curves=curves, runs=runs)


def main(argv=None) -> dict:
    cfg, budget, runner = parse_config_and_runner(Config, argv, "ctpg bench learning", __doc__.split("\n\n")[0],
                                                  PRESETS)
    if cfg.env not in ENVS:
        raise SystemExit(f"unknown environment {cfg.env!r} for this benchmark; choose one of: {', '.join(ENVS)}")
    with torch_threads(cfg.threads):
        result = dict(budget=budget, **run(cfg, runner))
    publish(cfg.out, f"learning_{cfg.env}", result, plot, print_summary)
    return result


if __name__ == "__main__":
    main()
