"""The adjoint backward solve: one implementation for the control estimators (CTPG,
Backsolve) and for `ctpg.odeint`.

For y' = F(t, y; theta) and a loss with a running part, the adjoint a = dL/dy(t) and
the accumulated parameter gradient mu obey

    da/dt  = -(a^T dF/dy + dc/dy),         a(t1) = dL/dy(t1)
    dmu/dt = -(a^T dF/dtheta + dc/dtheta), mu(t1) = dL/dtheta at t1,

integrated from t1 back to t0, with a jumping by dL/dy(t_i) at every time t_i where
the loss reads y (odeint's output times). mu is a quadrature: its rate never depends
on mu, so it rides along the adjoint's steps and, for stiff methods, stays out of the
linear systems (see steppers.Rosenbrock). A front end supplies an `AdjointField`:

    field.derivatives(t, a) -> (da/dt, dmu/dt)     # reads y(t) from its stored trajectory
    field.linearisation(t, a) -> Linearisation      # stiff methods only: J = -(dF/dy)^T per
                                                      # sample and v -> -(v^T dF/dtheta)

The front ends: ctpg.estimators.closed_loop.ControlAdjoint (y = x, u = pi(x), running
cost w, terminal cost J) and ctpg.odeint's ODEAdjoint (func(t, y), loss on outputs).
"""
from __future__ import annotations

import dataclasses

import torch

from ctpg.solvers import is_stiff_method, solve


@dataclasses.dataclass
class AdjointSolution:
    """a(t0), mu(t0) and what the backward solve cost."""

    a0: torch.Tensor
    mu0: torch.Tensor
    steps_accepted: int = 0
    steps_rejected: int = 0
    func_calls: int = 0
    jacobian_calls: int = 0


def solve_adjoint(field, a1: torch.Tensor, mu1: torch.Tensor, t1: float, t0: float, *,
                  method: str, rtol=None, atol=None, dt: float | None = None,
                  first_step: float | None = None, max_steps: int = 100_000,
                  seminorm: bool = False, tstops=(), jumps=None, per_sample: bool = False,
                  sync_every: int | None = None, capture=None, check_tolerance: bool = True) -> AdjointSolution:
    """Integrate the adjoint of `field` from t1 back to t0.

    a1 [N, ...] (leading dimension: samples; the error norm is per sample) and mu1 [P]
    are the values at t1. `jumps`: a dict {t_i: da} of additions to a at times strictly
    between t0 and t1, where the solve stops (the loss reads y there). `tstops`: times
    where the field is discontinuous (the solve lands on them, no jump). `seminorm`:
    steps controlled by a alone, mu carried along. Stiff methods (Rosenbrock, "auto")
    use field.linearisation. `per_sample`: each sample its own steps (explicit
    methods; field.derivatives(t, a, rows), mu per sample [N, P], see
    ctpg.solvers.per_sample). `sync_every`: device-side step control, `capture`: its
    attempts compiled around field.derivatives' pure form (ctpg.solvers.on_device).
    `check_tolerance`: warn about unreachable tolerances once (on the first segment).
    Costs one field.derivatives call per stage (one vjp for
    the front ends), see `ctpg.solvers.solve`.
    """
    jumps = jumps or {}
    inside = [t for t in jumps if min(t0, t1) < t < max(t0, t1)]
    bounds = [t1] + sorted(inside, reverse=t1 > t0) + [t0]
    jacobian = field.linearisation if is_stiff_method(method) else None
    out = AdjointSolution(a1, mu1)
    a, mu, h = a1, mu1, first_step
    for start, end in zip(bounds[:-1], bounds[1:]):
        if start in jumps:
            a = a + jumps[start]
        sol = solve(field.derivatives, a, start, end, method=method, rtol=rtol, atol=atol, dt=dt,
                    first_step=h, max_steps=max_steps, q0=mu, quadrature_in_norm=not seminorm,
                    jacobian=jacobian, tstops=tstops, per_sample=per_sample, sync_every=sync_every,
                    capture=capture, check_tolerance=check_tolerance and start == t1)
        a, mu, h = sol.y1, sol.q1, sol.last_step
        out.steps_accepted += sol.steps_accepted
        out.steps_rejected += sol.steps_rejected
        out.func_calls += sol.func_calls
        out.jacobian_calls += sol.jacobian_calls
    out.a0, out.mu0 = a, mu
    return out


def flatten(tensors, like: torch.Tensor) -> torch.Tensor:
    """One flat vector of `tensors` (an empty one shaped like `like` when there are none)."""
    if not tensors:
        return like.new_zeros(0)
    return torch.cat([t.reshape(-1) for t in tensors])


def unflatten(flat: torch.Tensor, params) -> list[torch.Tensor]:
    """Split a flat vector into tensors shaped like `params`."""
    out, start = [], 0
    for p in params:
        out.append(flat[start:start + p.numel()].view_as(p))
        start += p.numel()
    return out


def num_params(params) -> int:
    return sum(p.numel() for p in params)
