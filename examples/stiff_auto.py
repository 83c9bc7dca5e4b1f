"""A stiff problem with `method="auto"`: steps and evaluations against dopri5, accuracy
against scipy's Radau.

What it shows: the Van der Pol oscillator y1' = y2, y2' = mu (1 - y1^2) y2 - y1 with a
large mu is stiff on its slow branches (an eigenvalue near -mu) and non-stiff in its fast
jumps. An explicit method's step there is limited by stability, not accuracy, so dopri5
crawls; `ctpg.odeint(..., method="auto")` switches to the Rosenbrock method rodas5p while
an eigenvalue estimate says the steps are stability-limited and back to tsit5 when they
are not. The same call with method="rodas5p" is shown too. Cost is counted as the
README's stiff benchmark counts it: f evaluations + d per Jacobian (what a reverse-mode or
finite-difference Jacobian costs); LU factorisations are not counted.

Check: every solution at the output times must agree with scipy's Radau at rtol = atol =
1e-12 (exact Jacobian) to --max-error, relative to max |y|; and "auto" must cost at most
1 / --speedup of dopri5's evaluations. Exits 1 otherwise.

Cost: full run (mu = 100 on [0, 300], about two periods of the relaxation oscillation; dopri5
takes about 17,000 steps) about 20-30 s on a laptop CPU; --smoke (mu = 30 on [0, 60]) a
few seconds. With --mu 1000 --t1 3000 dopri5 needs millions of steps: pass
--skip-dopri5.

    python examples/stiff_auto.py
    python examples/stiff_auto.py --mu 1000 --t1 3000 --skip-dopri5
    python examples/stiff_auto.py --smoke
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch
from scipy.integrate import solve_ivp

import ctpg


def van_der_pol(mu: float):
    def f(t, y):
        return torch.stack([y[..., 1], mu * (1 - y[..., 0] ** 2) * y[..., 1] - y[..., 0]], dim=-1)
    return f


def radau_reference(mu: float, y0, times) -> np.ndarray:
    """scipy's Radau IIA (order 5) at rtol = atol = 1e-12 with the exact Jacobian: [S, 2]."""
    def f(t, y):
        return [y[1], mu * (1 - y[0] ** 2) * y[1] - y[0]]

    def jac(t, y):
        return [[0.0, 1.0], [-2 * mu * y[0] * y[1] - 1, mu * (1 - y[0] ** 2)]]
    sol = solve_ivp(f, (times[0], times[-1]), y0, method="Radau", t_eval=times, rtol=1e-12, atol=1e-12, jac=jac)
    if not sol.success:
        raise RuntimeError(f"the Radau reference failed: {sol.message}")
    return sol.y.T


def run(method: str, f, y0, t, tol: float):
    start = time.perf_counter()
    ys, info = ctpg.odeint(f, y0, t, rtol=tol, atol=tol, method=method, return_info=True,
                           options=dict(max_num_steps=10 ** 6))
    o, fwd = info.forward.oracle, info.forward
    cost = o["f_evals"] + y0.numel() * o["jac_evals"]
    return ys.numpy(), dict(method=method, accepted=fwd.steps_accepted, rejected=fwd.steps_rejected,
                            f=o["f_evals"], jac=o["jac_evals"], cost=cost, seconds=time.perf_counter() - start)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mu", type=float, default=100.0)
    p.add_argument("--t1", type=float, default=300.0)
    p.add_argument("--tol", type=float, default=1e-6, help="rtol = atol of the ctpg solves")
    p.add_argument("--max-error", type=float, default=1e-4, help="allowed error vs Radau, relative to max|y|")
    p.add_argument("--speedup", type=float, default=5.0, help="required dopri5 cost / auto cost")
    p.add_argument("--skip-dopri5", action="store_true", help="do not run dopri5 (for very stiff mu)")
    p.add_argument("--smoke", action="store_true", help="a few seconds: mu = 30 on [0, 60], speedup 2")
    args = p.parse_args(argv)
    if args.smoke:     # smaller defaults; options given explicitly still win
        p.set_defaults(mu=30.0, t1=60.0, speedup=2.0)
        args = p.parse_args(argv)
    torch.set_num_threads(1)

    f = van_der_pol(args.mu)
    y0 = torch.tensor([2.0, 0.0], dtype=torch.float64)
    t = torch.linspace(0.0, args.t1, 21, dtype=torch.float64)
    reference = radau_reference(args.mu, y0.tolist(), t.numpy())
    scale = np.abs(reference).max()
    methods = ["auto", "rodas5p"] + ([] if args.skip_dopri5 else ["dopri5"])
    print(f"Van der Pol, mu = {args.mu:g}, t in [0, {args.t1:g}], rtol = atol = {args.tol:g}")
    print(f"{'method':>8} {'accepted':>9} {'rejected':>9} {'f evals':>9} {'Jacobians':>10} {'cost':>9} "
          f"{'error':>9} {'seconds':>8}")
    rows, failures = {}, []
    for method in methods:
        ys, row = run(method, f, y0, t, args.tol)
        row["error"] = float(np.abs(ys - reference).max() / scale)
        rows[method] = row
        print(f"{method:>8} {row['accepted']:9d} {row['rejected']:9d} {row['f']:9d} {row['jac']:10d} "
              f"{row['cost']:9d} {row['error']:9.2e} {row['seconds']:8.2f}")
        if not row["error"] <= args.max_error:
            failures.append(f"{method}'s error {row['error']:.2e} against Radau exceeds {args.max_error:g}")
    if "dopri5" in rows:
        ratio = rows["dopri5"]["cost"] / rows["auto"]["cost"]
        print(f"auto costs 1/{ratio:.1f} of dopri5's evaluations")
        if not ratio >= args.speedup:
            failures.append(f"auto costs 1/{ratio:.2f} of dopri5, not 1/{args.speedup:g} or less")
    if failures:
        print("FAIL stiff_auto: " + "; ".join(failures), file=sys.stderr)
        return 1
    print(f"PASS stiff_auto: auto within {rows['auto']['error']:.1e} of Radau at cost {rows['auto']['cost']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
