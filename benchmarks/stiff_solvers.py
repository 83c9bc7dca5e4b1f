"""The Rosenbrock solvers on classic stiff test problems, side by side with scipy's Radau.

Van der Pol with mu = 1000 (y1' = y2, y2' = mu (1 - y1^2) y2 - y1, y0 = (2, 0), t in
[0, 3000], the MATLAB vdp1000 problem) and Robertson's chemical kinetics (t in
[0, 1e5], y0 = (1, 0, 0)). For each method and tolerance (rtol = tol, atol = tol *
ATOL_SCALE) we record the relative error of y(t1) against a reference (Radau at
rtol 1e-13) and the cost in function evaluations plus d per Jacobian (the same rule
for both: each is given the exact Jacobian, whose d columns a finite-difference or
reverse-mode Jacobian would cost d evaluations). LU factorisations are not counted.

    python -m benchmarks.stiff_solvers [--smoke | --full] [--out DIR]

Writes <out>/stiff_solvers.json and .png and prints, at 1e-3 and 1e-6 relative error,
each method's cost over Radau's (floor: the best Rosenbrock method within 3x).
"""
from __future__ import annotations

import dataclasses
import math
import time

import numpy as np
import torch
from scipy.integrate import solve_ivp

from benchmarks._common import cheapest_at
from benchmarks._config import parse_config, publish, torch_threads
from ctpg.solvers import solve
from ctpg.solvers.methods import ROSENBROCK_TABLEAUS


@dataclasses.dataclass
class Config:
    problems: tuple = ("vdp1000", "robertson")
    """test problems"""
    methods: tuple = ("rosenbrock23", "ros34pw2", "rodas4", "rodas5p", "auto")
    """ctpg methods (Rosenbrock, or auto)"""
    exponents: tuple = (2, 3, 4, 5, 6, 7, 8)
    """tolerances 10^-e"""
    out: str = "results/stiff_solvers"
    """output folder"""


PRESETS = {"smoke": {"problems": ("robertson",), "methods": ("rodas5p",), "exponents": (3,)},
           "full": {"exponents": (2, 3, 4, 5, 6, 7, 8, 9, 10)}}
TARGETS = (1e-3, 1e-6)
MU = 1000.0


def vdp(t, y):
    return torch.stack([y[:, 1], MU * (1 - y[:, 0] ** 2) * y[:, 1] - y[:, 0]], 1)


def vdp_jacobian(t, y):
    J = y.new_zeros(y.shape[0], 2, 2)
    J[:, 0, 1] = 1.0
    J[:, 1, 0] = -2 * MU * y[:, 0] * y[:, 1] - 1
    J[:, 1, 1] = MU * (1 - y[:, 0] ** 2)
    return J


def robertson(t, y):
    y1, y2, y3 = y[:, 0], y[:, 1], y[:, 2]
    return torch.stack([-0.04 * y1 + 1e4 * y2 * y3, 0.04 * y1 - 1e4 * y2 * y3 - 3e7 * y2 ** 2, 3e7 * y2 ** 2], 1)


def robertson_jacobian(t, y):
    y1, y2, y3 = y[:, 0], y[:, 1], y[:, 2]
    J = y.new_zeros(y.shape[0], 3, 3)
    J[:, 0] = torch.stack([torch.full_like(y1, -0.04), 1e4 * y3, 1e4 * y2], 1)
    J[:, 1] = torch.stack([torch.full_like(y1, 0.04), -1e4 * y3 - 6e7 * y2, -1e4 * y2], 1)
    J[:, 2] = torch.stack([torch.zeros_like(y1), 6e7 * y2, torch.zeros_like(y1)], 1)
    return J


# name -> (f, jacobian, y0, t1, atol scale: atol = tol * scale, the small species' size)
PROBLEMS = {
    "vdp1000": (vdp, vdp_jacobian, [2.0, 0.0], 3000.0, 1.0),
    "robertson": (robertson, robertson_jacobian, [1.0, 0.0, 0.0], 1e5, 1e-6),
}


def scipy_wrap(f, jac):
    return (lambda t, y: f(t, torch.as_tensor(y)[None])[0].numpy(),
            lambda t, y: jac(t, torch.as_tensor(y)[None])[0].numpy())


def reference(name) -> np.ndarray:
    f, jac, y0, t1, scale = PROBLEMS[name]
    fun, jacobian = scipy_wrap(f, jac)
    sol = solve_ivp(fun, (0.0, t1), y0, method="Radau", jac=jacobian, rtol=1e-13, atol=1e-13 * scale)
    return sol.y[:, -1]


def relative_error(y, ref) -> float:
    return float(np.max(np.abs(y - ref) / np.maximum(np.abs(ref), 1e-300)))


def run_ctpg(name, method, tol, ref) -> dict:
    f, jac, y0, t1, scale = PROBLEMS[name]
    start = time.perf_counter()
    sol = solve(f, torch.tensor([y0], dtype=torch.float64), 0.0, t1, method=method, rtol=tol, atol=tol * scale,
                jacobian=jac, autonomous=True, max_steps=200_000)
    d = len(y0)
    return dict(error=relative_error(sol.y1[0].numpy(), ref), func_calls=sol.func_calls,
                jacobians=sol.jacobian_calls, cost=sol.func_calls + d * sol.jacobian_calls,
                steps=sol.steps_accepted, seconds=time.perf_counter() - start)


def run_radau(name, tol, ref) -> dict:
    f, jac, y0, t1, scale = PROBLEMS[name]
    fun, jacobian = scipy_wrap(f, jac)
    start = time.perf_counter()
    sol = solve_ivp(fun, (0.0, t1), y0, method="Radau", jac=jacobian, rtol=tol, atol=tol * scale)
    d = len(y0)
    return dict(error=relative_error(sol.y[:, -1], ref), func_calls=int(sol.nfev), jacobians=int(sol.njev),
                cost=int(sol.nfev) + d * int(sol.njev), steps=len(sol.t) - 1, seconds=time.perf_counter() - start)


def run(cfg: Config) -> dict:
    rows, failures = [], []
    for name in cfg.problems:
        ref = reference(name)
        for e in cfg.exponents:
            tol = 10.0 ** -e
            for method in ("radau",) + tuple(cfg.methods):
                try:
                    row = run_radau(name, tol, ref) if method == "radau" else run_ctpg(name, method, tol, ref)
                except Exception as err:      # a failed solve is a result, not a crash
                    failures.append(f"{name} {method} tol {tol:g}: {type(err).__name__}: {err}"[:200])
                    continue
                rows.append(dict(problem=name, method=method, tol=tol, **row))
                print(f"{name:9s} {method:12s} tol {tol:.0e}  error {row['error']:.2e}  cost {row['cost']:7d}"
                      f"  steps {row['steps']:6d}", flush=True)
    return dict(config=dataclasses.asdict(cfg), rows=rows, failures=failures, floors=floors(rows, cfg))


def floors(rows, cfg) -> dict:
    """Per problem and target error: each method's cost over Radau's (log-log
    interpolated between the tolerances that bracket the target)."""
    out = {}
    for name in cfg.problems:
        for target in TARGETS:
            curves = {m: [dict(r, setting=r["tol"]) for r in rows if r["problem"] == name and r["method"] == m]
                      for m in ("radau",) + tuple(cfg.methods)}
            radau, _ = cheapest_at(curves["radau"], target, "cost", "error")
            ratios = {}
            for method in cfg.methods:
                cost, _ = cheapest_at(curves[method], target, "cost", "error")
                ratios[method] = None if cost is None or radau is None else cost / radau
            rosenbrock = [v for m, v in ratios.items() if m in ROSENBROCK_TABLEAUS and v is not None]
            best = min(rosenbrock, default=None)
            out[f"{name}@{target:g}"] = dict(ratios=ratios, radau_cost=radau, best_rosenbrock_over_radau=best,
                                             within_3x=None if best is None else best <= 3.0)
    return out


def plot(result, path):
    import matplotlib.pyplot as plt
    problems = result["config"]["problems"]
    fig, axes = plt.subplots(1, len(problems), figsize=(5.5 * len(problems), 4.5), squeeze=False)
    for ax, name in zip(axes[0], problems):
        for method in dict.fromkeys(r["method"] for r in result["rows"]):
            pts = sorted((r["cost"], r["error"]) for r in result["rows"] if r["problem"] == name and r["method"] == method)
            if pts:
                ax.loglog(*zip(*pts), "-o", ms=3, label=method, color="k" if method == "radau" else None)
        for target in TARGETS:
            ax.axhline(target, color="gray", ls="--", lw=0.8)
        ax.set_title(name)
        ax.set_xlabel("function evaluations + d per Jacobian")
        ax.set_ylabel("relative error of y(t1)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def print_summary(result):
    for key, table in result["floors"].items():
        ratios = ", ".join(f"{m} {v:.2f}x" if v is not None else f"{m} never" for m, v in table["ratios"].items())
        radau = table["radau_cost"]
        print(f"{key}: Radau cost {radau if radau is None else round(radau)}; over Radau: {ratios}; "
              f"best Rosenbrock within 3x: {table['within_3x']}")
    for failure in result["failures"]:
        print(f"failed: {failure}")


def main(argv=None) -> dict:
    cfg, _ = parse_config(Config, argv, "ctpg bench stiff-solvers", __doc__.split("\n\n")[0], PRESETS)
    with torch_threads(1):
        result = run(cfg)
    publish(cfg.out, "stiff_solvers", result, plot, print_summary)
    return result


if __name__ == "__main__":
    main()
