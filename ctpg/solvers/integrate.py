"""Solve y' = func(t, y) on [t0, t1] with fixed or adaptive steps, optionally keeping
the dense trajectory."""
from __future__ import annotations

import dataclasses
import math

import torch

from ctpg.errors import MaxStepsExceeded, NonFiniteError, StepSizeTooSmall
from ctpg.solvers.stepper import PIController, error_ratio, initial_step, rk_step
from ctpg.solvers.tableaus import get_tableau
from ctpg.trajectory import Trajectory, step_coefficients


@dataclasses.dataclass
class Solution:
    """Result of `solve`: final state, step counts, func calls and the optional dense path."""

    y1: torch.Tensor
    steps_accepted: int
    steps_rejected: int
    func_calls: int
    times: list
    trajectory: Trajectory | None = None


class _CountingFunc:
    """Wraps func to count its calls and fail loudly on NaN/Inf, naming the time."""

    def __init__(self, func):
        self.func, self.calls = func, 0

    def __call__(self, t, y):
        self.calls += 1
        out = self.func(t, y)
        if not torch.isfinite(out).all():
            raise NonFiniteError(f"the right-hand side returned NaN or Inf at t={t:.6g}")
        return out


def solve(func, y0: torch.Tensor, t0: float, t1: float, *, method: str = "dopri5",
          rtol=None, atol=None, dt: float | None = None, first_step: float | None = None,
          max_steps: int = 100_000, min_step: float | None = None, dense: bool = False,
          error_on: slice | None = None) -> Solution:
    """Integrate from t0 to t1 (t1 < t0 integrates backwards in time).

    Fixed steps when `dt` is given (the interval is split into ceil(|t1-t0|/dt) equal
    steps) or the method has no error estimate; adaptive steps otherwise, with the
    error measured as an RMS over every component of y (one step size for the whole
    batch) and a PI controller. Adaptive solves need rtol and atol. `error_on`, a
    slice of y's last axis, restricts that norm to some components (a seminorm: the
    others are carried along at the steps the chosen ones need, e.g. a pure
    quadrature whose error does not feed back into the rest).

    Cost: (stages - 1) func calls per attempted step for FSAL methods, stages for the
    others, plus one for f(t0) and one for the automatic first step. Raises
    MaxStepsExceeded after max_steps attempted steps, StepSizeTooSmall when the step
    falls below min_step (default 1e-12 |t1 - t0|), NonFiniteError on NaN/Inf.
    """
    tableau = get_tableau(method)
    if not t1 != t0:
        raise ValueError(f"the integration interval is empty (t0 = t1 = {t0})")
    adaptive = dt is None
    if adaptive and not tableau.adaptive:
        raise ValueError(f"method {method!r} has no error estimate: give a fixed step, e.g. dt=0.01, "
                         "or choose an adaptive method (dopri5, tsit5, bosh3, heun, dop853)")
    if adaptive and (rtol is None or atol is None):
        raise ValueError("rtol and atol are required for adaptive steps, e.g. rtol=1e-6, atol=1e-8")
    if dense and t1 < t0:
        raise ValueError("dense output is only kept for forward-in-time solves (t1 > t0)")
    func = _CountingFunc(func)
    if adaptive:
        return _solve_adaptive(func, tableau, y0, t0, t1, rtol, atol, first_step, max_steps, min_step, dense,
                               error_on)
    return _solve_fixed(func, tableau, y0, t0, t1, dt, max_steps, dense)


def _solve_fixed(func, tableau, y, t0, t1, dt, max_steps, dense):
    if dt <= 0 or not math.isfinite(dt):
        raise ValueError(f"dt must be a positive number, got {dt}")
    n = max(1, math.ceil(abs(t1 - t0) / dt - 1e-9))
    if n > max_steps:
        raise MaxStepsExceeded(f"dt={dt} needs {n} steps on [{t0}, {t1}], more than max_steps={max_steps}; "
                               "raise max_steps or use a larger dt")
    h = (t1 - t0) / n
    times, segments = [t0], []
    f0 = func(t0, y)
    for i in range(n):
        t = t0 + i * h
        y1, _, stages = rk_step(tableau, func, t, y, h, f0)
        t_next = t1 if i == n - 1 else t0 + (i + 1) * h
        f1 = stages[-1] if tableau.fsal else (func(t_next, y1) if (dense or i < n - 1) else None)
        if dense:
            segments.append(step_coefficients(tableau, h, y, y1, f0, f1, stages))
        times.append(t_next)
        y, f0 = y1, f1
    trajectory = Trajectory(times, torch.stack(segments)) if dense else None
    return Solution(y, n, 0, func.calls, times, trajectory)


def _solve_adaptive(func, tableau, y, t0, t1, rtol, atol, first_step, max_steps, min_step, dense,
                    error_on=None):
    select = (lambda v: v) if error_on is None else (lambda v: v[..., error_on])
    if error_on is not None:        # per-component tolerances follow the same selection
        rtol, atol = (select(tol) if torch.is_tensor(tol) and tol.dim() else tol for tol in (rtol, atol))
    direction = 1.0 if t1 > t0 else -1.0
    span = abs(t1 - t0)
    min_step = 1e-12 * span if min_step is None else min_step
    f0 = func(t0, y)
    h = first_step or initial_step(func, t0, y, f0, tableau.order, rtol, atol, direction, select)
    h = min(h, span)
    controller = PIController(tableau.error_order)
    t, times, segments = t0, [t0], []
    accepted = rejected = 0
    while direction * (t1 - t) > 1e-14 * span:
        if accepted + rejected >= max_steps:
            raise MaxStepsExceeded(
                f"the solver took max_steps={max_steps} steps and reached only t={t:.6g} of [{t0}, {t1}]; "
                "raise max_steps, loosen rtol/atol, or check the dynamics for a blow-up")
        remaining = abs(t1 - t)
        if h >= remaining or remaining - h < 1e-10 * span:
            h = remaining      # land exactly on t1 instead of leaving a sliver
        y1, err, stages = rk_step(tableau, func, t, y, direction * h, f0)
        ok, factor = controller.propose(error_ratio(select(err), select(y), select(y1), rtol, atol))
        if ok:
            t_next = t1 if h == remaining else t + direction * h
            f1 = stages[-1] if tableau.fsal else func(t_next, y1)
            if dense:
                segments.append(step_coefficients(tableau, h, y, y1, f0, f1, stages))
            t, y, f0 = t_next, y1, f1
            times.append(t)
            accepted += 1
        else:
            rejected += 1
        h *= factor
        if h < min_step and direction * (t1 - t) > min_step:
            raise StepSizeTooSmall(
                f"the step size fell below min_step={min_step:.3g} at t={t:.6g}; the problem may be stiff, "
                "discontinuous or blowing up: loosen rtol/atol, smooth the dynamics, or use fixed steps (dt=...)")
    trajectory = Trajectory(times, torch.stack(segments)) if dense else None
    return Solution(y, accepted, rejected, func.calls, times, trajectory)
