"""Per-sample adaptive steps: every sample of the batch has its own time, step size and
accept/reject decision, so its result does not depend on which samples share its batch.

One iteration attempts one step for every unfinished sample at once (a batched call
of func on those samples only: finished samples stop costing work), judges each
sample by its own error ratio (y's and, unless left out, its own quadrature row's),
and applies a vectorised PI controller per sample. The dense output keeps each
sample's own mesh (trajectory.SampleTrajectory).

In this mode func is called as func(t, y, rows): t [k] the samples' times, y [k, ...]
their states, rows [k] their indices in the batch (for functions that read per-sample
data, such as a stored trajectory). Quadratures are per sample too: q0 [N, ...].
Explicit Runge-Kutta methods only.
"""
from __future__ import annotations

import dataclasses

import torch

from ctpg.errors import MaxStepsExceeded, NonFiniteError, StepSizeTooSmall
from ctpg.solvers.control import PIController, initial_step
from ctpg.solvers.steppers import Step, StepperState, step_polynomial


@dataclasses.dataclass
class TensorPIController:
    """The PI controller of control.PIController on tensors, one state per sample
    (pi_update, which the device-side loop of ctpg.solvers.on_device also runs). Its
    gains and bounds are that controller's, so the two cannot drift apart."""

    prev: torch.Tensor
    rejected_last: torch.Tensor
    gains: PIController = dataclasses.field(default_factory=PIController)

    def propose(self, rows, ratio: torch.Tensor, error_order: int):
        """(accept [k], factor [k]) for the samples `rows` with error ratios `ratio`."""
        accept, factor, self.prev[rows], self.rejected_last[rows] = pi_update(
            self.gains, self.prev[rows], self.rejected_last[rows], ratio, error_order)
        return accept, factor


def pi_update(g: PIController, prev, rejected_last, ratio: torch.Tensor, error_order: int):
    """control.PIController.propose on tensors, without state: (accept, factor, the new
    previous ratio, the new rejected-last flag), element by element."""
    k = error_order + 1
    finite = torch.isfinite(ratio)
    accept = finite & (ratio <= 1.0)
    safe = torch.where(finite, ratio, torch.ones_like(ratio)).clamp_min(1e-300)
    grow = g.safety * safe ** (-g.beta1 / k) * prev ** (g.beta2 / k)
    grow = torch.where(ratio == 0, torch.full_like(ratio, g.max_factor), grow)
    grow = grow.clamp(g.min_factor, g.max_factor)
    grow = torch.where(rejected_last, grow.clamp_max(1.0), grow)
    shrink = (g.safety * safe ** (-1.0 / k)).clamp_min(g.min_factor)
    shrink = torch.where(finite, shrink, torch.full_like(ratio, g.min_factor))
    prev = torch.where(accept, ratio.clamp_min(1e-4), prev)
    return accept, torch.where(accept, grow, shrink), prev, ~accept


def _rows_of(step: Step, keep) -> Step:
    """The step restricted to the samples `keep` (indices into the step's batch)."""
    pick = (lambda v: None if v is None else v[keep])
    return dataclasses.replace(
        step, y1=step.y1[keep], q1=pick(step.q1), err=pick(step.err), err_q=pick(step.err_q),
        h=step.h[keep], y0=step.y0[keep], f0=step.f0[keep], vectors=[v[keep] for v in step.vectors],
        vector_scale=step.vector_scale[keep],
        f_last=None if step.f_last is None else (step.f_last[0][keep], pick(step.f_last[1])))


def solve_per_sample(rhs, stepper, y0, q0, t0: float, t1: float, norm, first_step, max_steps,
                     min_step, dense, counts):
    """Adaptive per-sample integration from t0 to t1 (one interval between stops).

    Returns (y1, q1, dense pieces, the samples' next step sizes [N]); `counts` (accepted,
    rejected, iterations) are added to. first_step: a float or per-sample tensor [N]."""
    if stepper.needs_jacobian:
        raise ValueError(f"per-sample steps support explicit Runge-Kutta methods, not {stepper.name!r}; "
                         "use shared steps (per_sample=False) for Rosenbrock methods")
    n, device = y0.shape[0], y0.device
    direction, span = (1.0 if t1 > t0 else -1.0), abs(t1 - t0)
    min_step = 1e-12 * span if min_step is None else min_step
    every = torch.arange(n, device=device)
    rhs.rows = every
    state = stepper.start(rhs, torch.full((n,), t0, dtype=torch.float64, device=device), y0)
    f, g = state.f, state.g
    if first_step is None:       # each sample its own, from its own state
        with torch.no_grad():
            first_step = initial_step(lambda t, z: rhs(torch.as_tensor(t, dtype=torch.float64, device=device)
                                                       .expand(n), z)[0],
                                      t0, y0.detach(), f.detach(), stepper.order, *norm.tolerances(), direction,
                                      norm.select, per_sample=True)
    t = torch.full((n,), float(t0), dtype=torch.float64, device=device)
    h = torch.as_tensor(first_step, dtype=torch.float64, device=device).expand(n).clamp_max(span).clone()
    y, q = y0, q0
    control = TensorPIController(torch.ones(n, dtype=torch.float64, device=device), torch.zeros(n, dtype=torch.bool, device=device))
    pieces, nonfinite = [], torch.zeros(n, dtype=torch.bool, device=device)
    active = every
    while active.numel():
        if counts["iterations"] >= max_steps:
            raise MaxStepsExceeded(f"per-sample solve: max_steps={max_steps} iterations and {active.numel()} "
                                   f"samples still short of t1={t1}; raise max_steps or loosen rtol/atol")
        counts["iterations"] += 1
        remaining = (t1 - t[active]).abs()
        h_a = torch.minimum(h[active], remaining)
        lands = (h_a >= remaining) | (remaining - h_a < 1e-10 * span)
        h_a = torch.where(lands, remaining, h_a)
        rhs.rows = active
        sub = StepperState(f=f[active], g=None if g is None else g[active], t=0.0)
        qa = None if q is None else q[active]
        step = stepper.step(rhs, sub, t[active], y[active], qa, direction * h_a)
        with torch.no_grad():
            ratio = norm.sample_ratios(step, y[active], qa).to(torch.float64)
            accept, factor = control.propose(active, ratio, step.error_order)
            nonfinite[active] = torch.isinf(ratio)
        keep = accept.nonzero().squeeze(1)
        if keep.numel():
            done_rows = active[keep]
            t_new = torch.where(lands[keep], torch.full_like(h_a[keep], t1), t[done_rows] + direction * h_a[keep])
            kept = _rows_of(step, keep)
            if kept.f_last is None:
                rhs.rows = done_rows
                kept.f_last = rhs(t_new, kept.y1)
            if dense:
                pieces.append((done_rows, t[done_rows], t_new, step_polynomial(kept, kept.f_last[0])))
            y = y.index_copy(0, done_rows, kept.y1)
            q = None if q is None else q.index_copy(0, done_rows, kept.q1)
            f = f.index_copy(0, done_rows, kept.f_last[0])
            g = None if g is None else g.index_copy(0, done_rows, kept.f_last[1])
            t = t.index_copy(0, done_rows, t_new)
        counts["accepted"] += int(keep.numel())
        counts["rejected"] += int(active.numel() - keep.numel())
        h[active] = h_a * factor
        unfinished = direction * (t1 - t[active]) > 1e-14 * span
        collapsed = unfinished & (h[active] < min_step)
        if bool(collapsed.any()):
            _collapsed(active[collapsed], t, min_step, nonfinite)
        active = active[unfinished]
    return y, q, pieces, h


def _collapsed(rows, t, min_step, nonfinite) -> None:
    first = int(rows[0])
    where = f"sample {first} (and {rows.numel() - 1} more) at t={float(t[first]):.6g}"
    if bool(nonfinite[first]):
        raise NonFiniteError(f"per-sample solve: the right-hand side returned NaN or Inf for {where}, and "
                             f"shrinking the step (below min_step={min_step:.3g}) did not help")
    raise StepSizeTooSmall(
        f"per-sample solve: the step fell below min_step={min_step:.3g} for {where}; the sample may be "
        "stiff (use shared steps with method='rodas5p' or 'auto'), discontinuous or blowing up: loosen "
        "rtol/atol or check the dynamics there")
