"""Pareto accuracy-vs-cost through impacts: `ctpg bench pareto --env juggler` (issue 21).

The juggler's paddle impacts (envs/juggler.py: guard h - p, reset v+ = w - e (v- - w)),
one fixed seeded MLP paddle policy (benchmarks.pareto.make_policy), horizon 1.5 s (two
or three impacts per start). The gradient wanted is that of the hybrid system's cost.

- CTPG differentiates through the impacts: events located on the dense output, the
  adjoint jumped by the transposed saltation matrix (ctpg.estimators.hybrid). Swept over
  rtol = atol for each explicit method.
- BPTT-Euler cannot take guards, so it runs as users run it today: on the penalty-contact
  model `envs.juggler.SoftJuggler` (a Kelvin-Voigt spring-damper whose restitution is
  calibrated to e), at several contact stiffnesses k, each swept over the step dt. Its
  error has two parts: the model's bias (the soft trajectory tends to the hybrid one as
  k grows) and the discretisation (a contact lasts ~pi / sqrt(k) s, so dt must shrink
  with it); and a third that does not vanish as dt -> 0: the damper's force jumps at
  contact onset, and a fixed-step autograd gradient misses the onset time's shift.

Reference: CTPG at rtol = atol = 1e-12 on the hybrid juggler (benchmarks.pareto.REFERENCE),
checked against central differences of the accurately solved cost (the run stops with a
RuntimeError if they disagree). Floors printed: CTPG reaches 1e-4 relative error (the
cheapest cost at which it does), BPTT's best median error over every stiffness and step,
and BPTT's cost there over CTPG's cost at the same error, on each cost axis.

Cost (measured on 2 shared cores): default 3 states, ~10-15 min; --full 8 states and
dt down to 5e-5, ~45-60 min (BPTT at dt 5e-5 is 30k Euler steps per estimate); --smoke
one state, seconds.
"""
from __future__ import annotations

import dataclasses

import torch

import ctpg
import envs
from benchmarks._common import best_ctpg_at, median_curves, plot, print_floor_table
from benchmarks._config import publish, torch_threads
from benchmarks.pareto import REFERENCE, check_against_finite_differences, gradient, make_policy, sweep_records

HORIZON = 1.5
STIFFNESSES = {"smoke": (1e3, 1e4), "default": (1e3, 1e4, 1e5), "full": (1e3, 1e4, 1e5, 1e6)}
STEPS = {"smoke": [0.01, 0.002],
         "default": [1e-2, 5e-3, 2e-3, 1e-3, 5e-4, 2e-4, 1e-4],
         "full": [1e-2, 5e-3, 2e-3, 1e-3, 5e-4, 2e-4, 1e-4, 5e-5]}
TOLERANCES = {"smoke": [1e-2, 1e-5], "default": [10.0 ** -e for e in range(1, 10)],
              "full": [10.0 ** -e for e in range(1, 11)]}
CTPG_METHODS = ("dopri5", "tsit5", "bosh3")   # explicit: the juggler is not stiff between impacts
TARGET = 1e-4                                 # the floor for CTPG
COSTS = ["oracle_evals", "wall_time", "stored_floats"]


def soft_label(k: float) -> str:
    return f"BPTT-Euler soft k={k:.0e}"


def sweeps(budget: str) -> dict:
    """Estimator label -> [(setting, estimator)], coarse to fine."""
    out = {soft_label(k): [(dt, ctpg.BPTT(dt=dt)) for dt in STEPS[budget]] for k in STIFFNESSES[budget]}
    for method in CTPG_METHODS:
        out[f"CTPG-{method}"] = [(tol, ctpg.CTPG(method=method, rtol=tol, atol=tol)) for tol in TOLERANCES[budget]
                                 if method != "bosh3" or tol >= 1e-8]   # 3rd order: ~1e5 steps below
    return out


def state_records(cfg, budget: str, i: int) -> tuple[list, list]:
    """(records, failures) of the sweep on start i (seeded as benchmarks.pareto's)."""
    with torch_threads(1):
        hybrid = envs.make("juggler", horizon=HORIZON, device=cfg.device)
        soft = {soft_label(k): envs.make("juggler_soft", horizon=HORIZON, contact_stiffness=k, device=cfg.device)
                for k in STIFFNESSES[budget]}
        policy = make_policy(hybrid, cfg)
        x0 = hybrid.sample_initial_state(cfg.samples, torch.Generator().manual_seed(cfg.seed + 1))[i:i + 1]
        tight = ctpg.CTPG(**REFERENCE)
        ref_theta, ref_x0, _ = gradient(tight, hybrid, policy, x0)
        check_against_finite_differences(tight, hybrid, policy, x0, ref_theta, ref_x0)
        records, failures = sweep_records(sweeps(budget), lambda label: soft.get(label, hybrid), policy, x0,
                                          (ref_theta, torch.cat([ref_x0, ref_theta])), i, cfg)
    print(f"state {i + 1}/{cfg.samples} done", flush=True)
    return records, failures


def contact_floors(curves: dict, error: str = "param_error") -> dict:
    """CTPG's cheapest cost at TARGET; BPTT's best median error (over every stiffness and
    step) with its cost; and BPTT's cost there over the best CTPG method's cost at that
    same error (`*_is_lower_bound`: CTPG's cheapest setting already beats it, so its cost
    is an upper bound and the ratio a lower bound)."""
    ctpg_labels = [k for k in curves if k.startswith("CTPG")]
    bptt_points = [(label, p) for label, curve in curves.items() if label.startswith("BPTT") for p in curve]
    out = {"error": error, "target": TARGET}
    for cost in COSTS:
        out[f"ctpg_cost_at_target_{cost}"] = best_ctpg_at(curves, TARGET, cost, error)[0]
    out["ctpg_reaches_target"] = out["ctpg_cost_at_target_oracle_evals"] is not None
    out["ctpg_best_error"] = min((p[error] for k in ctpg_labels for p in curves[k]), default=None)
    if bptt_points:
        label, best = min(bptt_points, key=lambda lp: lp[1][error])
        out.update(bptt_best_error=best[error], bptt_best_at=f"{label}, dt {best['setting']:g}")
        for cost in COSTS:
            ctpg_cost, exact = best_ctpg_at(curves, best[error], cost, error)
            out[f"bptt_over_ctpg_{cost}"] = None if ctpg_cost is None else best[cost] / ctpg_cost
            out[f"bptt_over_ctpg_{cost}_is_lower_bound"] = ctpg_cost is not None and not exact
    return out


def run(cfg, budget: str, runner) -> dict:
    per_state = runner.map(state_records, [dict(cfg=cfg, budget=budget, i=i) for i in range(cfg.samples)])
    records = [r for rows, _ in per_state for r in rows]
    curves = median_curves(records)
    return dict(config=dataclasses.asdict(cfg) | {"horizon": HORIZON, "stiffnesses": STIFFNESSES[budget]},
                budget=budget, records=records, failures=[f for _, rows in per_state for f in rows],
                curves=curves, floors=contact_floors(curves),
                reference=f"CTPG {REFERENCE} on the hybrid juggler, checked by central differences")


def print_summary(result: dict) -> None:
    print(f"{'estimator':26s} {'setting':>9s} {'param err':>10s} {'full err':>10s} {'oracle':>9s} "
          f"{'seconds':>8s} {'floats':>9s} {'ok':>3s}")
    for label, curve in result["curves"].items():
        for p in curve:
            print(f"{label:26s} {p['setting']:9.1e} {p['param_error']:10.2e} {p['full_error']:10.2e} "
                  f"{p['oracle_evals']:9.0f} {p['wall_time']:8.3f} {p['stored_floats']:9.0f} {p['samples']:3d}")
    for failure in result["failures"]:
        print(f"failed: {failure}")
    print("Floors (median over starts, relative error of dL/dtheta): ctpg_cost_at_target_<cost> = CTPG's "
          "cheapest cost at 1e-4; bptt_over_ctpg_<cost> = BPTT's cost at its best error over CTPG's at that "
          "error (>= : a lower bound)")
    print_floor_table(result["floors"])


def main(cfg, budget: str, runner) -> dict:
    """Called by benchmarks.pareto.main for --env juggler (its Config, budget and runner)."""
    result = run(cfg, budget, runner)
    publish(cfg.out, "pareto_juggler", result,
            lambda res, path: plot(res, path, COSTS, {"param_error": TARGET, "full_error": TARGET}), print_summary)
    return result
