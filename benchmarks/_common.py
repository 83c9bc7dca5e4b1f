"""Helpers of benchmarks/pareto.py: policies, curve reduction, floors, plotting."""
from __future__ import annotations

import math
import statistics

import torch

from agents.policies import Squash

METRICS = ("param_error", "full_error", "oracle_evals", "weighted_evals", "sim_calls", "wall_time", "stored_floats")
COSTS = {"oracle_evals": "oracle evaluations (f, vjp, Jacobian per sample)",
         "weighted_evals": "f + vjp + Jacobians x their cost (1 analytic, else d)",
         "sim_calls": "MuJoCo simulator calls (mj_forward)",
         "wall_time": "wall-clock [s]", "stored_floats": "stored floats"}
COLORS = {"BPTT-Euler": "C0", "CTPG-dopri5": "C1", "CTPG-tsit5": "C2", "CTPG-bosh3": "C3",
          "Backsolve": "C4", "Backsolve-ckpt10": "C5", "CTPG-auto": "C6", "CTPG-rodas5p": "C7",
          "CTPG-ros34pw2": "C8", "CTPG-rosenbrock23": "C9",
          # benchmarks/pareto_contact.py: BPTT on the penalty-contact juggler, darker = stiffer
          "BPTT-Euler soft k=1e+03": "#9ecae1", "BPTT-Euler soft k=1e+04": "#4292c6",
          "BPTT-Euler soft k=1e+05": "#08519c", "BPTT-Euler soft k=1e+06": "#08306b"}
ERRORS = {"param_error": "rel. error of dL/dtheta", "full_error": "rel. error of [dL/dx0, dL/dtheta]"}


# ------------------------------------------------------------------ policies
class LinearPolicy(torch.nn.Module):
    """u = -K x with K trainable."""

    def __init__(self, K):
        super().__init__()
        self.K = torch.nn.Parameter(K.clone())

    def forward(self, x):
        return -x @ self.K.T


class AffinePolicy(LinearPolicy):
    """u = -K x + b with K and b trainable."""

    def __init__(self, K, bias):
        super().__init__(K)
        self.bias = torch.nn.Parameter(bias.clone())

    def forward(self, x):
        return super().forward(x) + self.bias


def inner_squash(low, high, fraction: float = 0.9):
    """y -> mid + fraction half tanh(y): strictly inside [low, high]."""
    mid, half = (high + low) / 2, fraction * (high - low) / 2
    return Squash(mid - half, mid + half)


class FeedbackPlusMLP(torch.nn.Module):
    """u = u_eq - K x + mlp(x): a fixed stabilising gain (a buffer, not trained) plus a
    trainable MLP."""

    def __init__(self, u_eq, K, mlp):
        super().__init__()
        self.register_buffer("u_eq", u_eq)
        self.register_buffer("K", K)
        self.mlp = mlp

    def forward(self, x):
        return self.u_eq - x @ self.K.T + self.mlp(x)


def seeded_mlp(system, seed: int, hidden: int = 16, scale: float = 1.0):
    """state -> tanh -> action MLP with torch's default init, last layer scaled by `scale`."""
    torch.manual_seed(seed)
    mlp = torch.nn.Sequential(torch.nn.Linear(system.state_dim, hidden), torch.nn.Tanh(),
                              torch.nn.Linear(hidden, system.action_dim)).to(dtype=system.dtype, device=system.device)
    with torch.no_grad():
        mlp[2].weight.mul_(scale)
        mlp[2].bias.mul_(scale)
    return mlp


def linearised_lqr_gain(system, x_eq, u_eq):
    """Infinite-horizon LQR gain of the linearisation at (x_eq, u_eq), with Q and R half the
    Hessians of the running cost there."""
    import numpy as np
    import scipy.linalg
    A, B = (m[0].cpu().numpy() for m in system.jacobians(x_eq[None], u_eq[None]))
    z = torch.cat([x_eq, u_eq])
    d = system.state_dim
    H = torch.autograd.functional.hessian(lambda z: system.running_cost(z[None, :d], z[None, d:]).sum(), z)
    Q, R = 0.5 * H[:d, :d].cpu().numpy(), 0.5 * H[d:, d:].cpu().numpy()
    P = scipy.linalg.solve_continuous_are(A, B, Q, R)
    return torch.as_tensor(np.linalg.solve(R, B.T @ P), dtype=system.dtype, device=x_eq.device)


# ------------------------------------------------------------ curves, floors
def median_curves(records) -> dict:
    """Per estimator and setting, the median over samples of each metric (and the count)."""
    curves = {}
    for label in dict.fromkeys(r["estimator"] for r in records):
        rows = [r for r in records if r["estimator"] == label]
        points = []
        for setting in dict.fromkeys(r["setting"] for r in rows):
            group = [r for r in rows if r["setting"] == setting]
            points.append({key: statistics.median(r[key] for r in group) for key in METRICS}
                          | {"setting": setting, "samples": len(group)})
        curves[label] = points
    return curves


def cheapest_at(curve, target: float, cost: str, error: str):
    """(cost, exact) at which the median error first reaches `target`, going from cheap to
    dear: interpolated log-log between the two settings that bracket it (exact=True), the
    cheapest point's cost if even that one reaches it (an upper bound, exact=False), or
    (None, False) if no setting reaches it."""
    points = sorted(curve, key=lambda p: p[cost])
    if not points:
        return None, False
    if points[0][error] <= target:
        return points[0][cost], False
    for prev, cur in zip(points, points[1:]):
        if prev[error] > target >= cur[error]:
            if cur[error] <= 0 or prev[cost] <= 0:
                return cur[cost], True
            w = math.log(prev[error] / target) / math.log(prev[error] / cur[error])
            return math.exp((1 - w) * math.log(prev[cost]) + w * math.log(cur[cost])), True
    return None, False


def best_ctpg_at(curves, level: float, cost: str, error: str):
    """(cost, exact) of the cheapest CTPG solver (labels "CTPG...") to reach `level` of
    `error`, as `cheapest_at` reads each; (None, False) if none does."""
    found = [cheapest_at(curves[k], level, cost, error) for k in curves if k.startswith("CTPG")]
    return min((f for f in found if f[0] is not None), default=(None, False))


def floors(curves, target: float, error: str, costs) -> dict:
    """At `target` of `error`: BPTT-Euler's cost over the best CTPG solver's for each cost
    axis, and whether the best CTPG solver is at most as dear as each Backsolve variant, on
    each cost axis, at every level 1e-2..1e-6 that CTPG reaches (a Backsolve that never
    reaches a level counts as dearer).

    `*_is_lower_bound` is true when CTPG's cheapest setting already beats the target, so
    its cost there is only an upper bound and the ratio a lower bound. Where BPTT never
    reaches the target the ratio is None and `*_at_least` bounds it from below (BPTT's
    dearest try over CTPG's cost at the target).
    """
    out = {"error": error, "target": target}

    def best_ctpg(level, cost):
        return best_ctpg_at(curves, level, cost, error)

    for cost in costs:
        bptt, _ = cheapest_at(curves["BPTT-Euler"], target, cost, error)
        best, exact = best_ctpg(target, cost)
        out[f"bptt_over_ctpg_{cost}"] = None if bptt is None or best is None else bptt / best
        out[f"bptt_over_ctpg_{cost}_is_lower_bound"] = best is not None and not exact
        if bptt is None and best is not None and curves.get("BPTT-Euler"):
            # BPTT never reaches the target: the dearest setting it tried bounds its cost from below
            out[f"bptt_over_ctpg_{cost}_at_least"] = max(p[cost] for p in curves["BPTT-Euler"]) / best
    for back in ("Backsolve", "Backsolve-ckpt10"):   # every setting may have failed: no curve
        for cost in costs:
            below = []
            for level in (1e-2, 1e-3, 1e-4, 1e-5, 1e-6):
                ctpg_cost, _ = best_ctpg(level, cost)
                back_cost, _ = cheapest_at(curves.get(back, []), level, cost, error)
                if ctpg_cost is not None:
                    below.append(back_cost is None or ctpg_cost <= back_cost)
            out[f"ctpg_below_{back}_{cost}"] = all(below) if below else None
    return out


def best_cost(curves, labels, target: float, cost: str, error: str):
    """The cheapest cost at which any of `labels` reaches `target` (None if none does)."""
    found = [cheapest_at(curves[k], target, cost, error)[0] for k in labels if k in curves]
    return min((f for f in found if f is not None), default=None)


def solver_floors(curves, target: float, error: str, costs) -> dict:
    """Ratios among the CTPG solvers at `target`: explicit dopri5 over the best stiff
    (Rosenbrock) setting, BPTT-Euler over it, and CTPG-auto over CTPG-dopri5 (how much
    the automatic switching costs where it need not switch)."""
    stiff = [k for k in curves if k.split("-", 1)[-1] in ("rodas5p", "rodas4", "ros34pw2", "rosenbrock23")]
    out = {"error": error, "target": target}
    for cost in costs:
        best_stiff = best_cost(curves, stiff, target, cost, error)
        for name, labels, over in (("dopri5_over_rosenbrock", ["CTPG-dopri5"], best_stiff),
                                   ("bptt_over_rosenbrock", ["BPTT-Euler"], best_stiff),
                                   ("auto_over_dopri5", ["CTPG-auto"], best_cost(curves, ["CTPG-dopri5"], target,
                                                                                 cost, error))):
            top = best_cost(curves, labels, target, cost, error)
            out[f"{name}_{cost}"] = None if top is None or not over else top / over
            if top is None and over and labels[0] in curves:   # never reaches it: its dearest try bounds it
                out[f"{name}_{cost}_at_least"] = max(p[cost] for p in curves[labels[0]]) / over
    return out


# ------------------------------------------------------------------ plotting
def plot(result, path, costs, targets: dict):
    """Log-log error vs cost: one column per cost axis, one row per error metric."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(len(ERRORS), len(costs), figsize=(4.6 * len(costs), 4.2 * len(ERRORS)),
                             squeeze=False)
    for row, (error, ylabel) in zip(axes, ERRORS.items()):
        for ax, cost in zip(row, costs):
            for label, curve in result["curves"].items():
                rows = [r for r in result["records"] if r["estimator"] == label]
                ax.loglog([p[cost] for p in curve], [p[error] for p in curve], "-o", ms=3, label=label,
                          color=COLORS.get(label))
                ax.scatter([r[cost] for r in rows], [r[error] for r in rows], s=6, alpha=0.3, color=COLORS.get(label))
            if error in targets:
                ax.axhline(targets[error], color="k", ls="--", lw=0.8)
            if any(r[error] > 1e2 for r in result["records"]):   # a diverging estimator: keep the rest readable
                ax.set_ylim(top=1e2)
                ax.text(0.02, 0.97, "errors above 1e2 off scale", transform=ax.transAxes, fontsize=7, va="top")
            ax.set_xlabel(COSTS[cost])
            ax.set_ylabel(ylabel)
            ax.grid(True, which="major", alpha=0.3)
    for label in COLORS.keys() - result["curves"].keys():   # failed at every setting and state
        if any(f.startswith(f"{label} ") for f in result["failures"]):
            axes[0][0].plot([], [], "x", color=COLORS[label], label=f"{label}: failed at every setting")
    fig.legend(*axes[0][0].get_legend_handles_labels(), loc="lower center", ncol=7, fontsize=9)
    cfg = result["config"]
    fig.suptitle(f"Gradient accuracy vs cost: {cfg['env']}" + (f" ({cfg['gain']} gain)" if cfg["env"] == "lqr" else "")
                 + (" (trained policy)" if cfg.get("policy") else "")
                 + f", median of {cfg['samples']} initial states (dots: single states; dashed: target)")
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def print_summary(result):
    print("Columns: the median over the initial states of each setting (BPTT: step dt; CTPG, Backsolve: "
          "rtol = atol).\n  param err / full err: relative error of dL/dtheta / of [dL/dx0, dL/dtheta] against "
          "the reference;\n  oracle: f, vjp and Jacobian evaluations per sample (both passes); weighted: the "
          "same with each Jacobian counted at its cost\n  (1 where analytic, d reverse passes otherwise); sim: "
          "simulator calls (MuJoCo, finite differences included);\n  seconds: wall-clock on one thread; floats: "
          "floats stored between the passes; ok: initial states whose solve\n  succeeded (the median is over "
          "these; failures are listed below).")
    print(f"{'estimator':18s} {'setting':>9s} {'param err':>10s} {'full err':>10s} {'oracle':>9s} {'weighted':>9s} "
          f"{'sim':>8s} {'seconds':>8s} {'floats':>9s} {'ok':>3s}")
    for label, curve in result["curves"].items():
        for p in curve:
            print(f"{label:18s} {p['setting']:9.1e} {p['param_error']:10.2e} {p['full_error']:10.2e} "
                  f"{p['oracle_evals']:9.0f} {p['weighted_evals']:9.0f} {p['sim_calls']:8.0f} "
                  f"{p['wall_time']:8.3f} {p['stored_floats']:9.0f} {p['samples']:3d}")
    for failure in result["failures"]:
        print(f"failed: {failure}")
    table = result.get("solver_floors", {})
    print(f"solver ratios at {table.get('target')} ({table.get('error')}): " + ", ".join(
        f"{k} {v:.3g}" for k, v in table.items() if isinstance(v, float)))
    print("Floors, at the target error: bptt_over_ctpg_<cost> = BPTT-Euler's cost over the best CTPG "
          "solver's (> 1: CTPG cheaper; n/a: one of them never reaches the target, *_at_least then bounds "
          "it by BPTT's dearest try); ctpg_below_<Backsolve>_<cost>: CTPG at most as dear at every level "
          "1e-2..1e-6 it reaches.")
    for name, table in result["floors"].items():
        print(f"floors on {name}" + ("  (primary)" if name == result["primary_error"] else ""))
        print_floor_table(table)


def print_floor_table(table: dict) -> None:
    """One line per floor: a ratio marked >= where `<key>_is_lower_bound` says it is a
    lower bound, n/a where it was not reached."""
    for key, value in table.items():
        if key.endswith("_is_lower_bound"):
            continue
        if value is None:
            print(f"  {key}: n/a (not reached at the target)")
        else:
            bound = ">= " if table.get(f"{key}_is_lower_bound") else ""
            print(f"  {key}: {bound}{value:.3g}" if isinstance(value, float) else f"  {key}: {value}")