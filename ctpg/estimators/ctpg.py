"""The Continuous-Time Policy Gradient estimator (Ainsworth et al., Algorithm 1)."""
from __future__ import annotations

import torch

from ctpg.estimators.adjoint import (adjoint_derivatives, closed_loop_rhs, num_params,
                                     terminal_adjoint, unflatten)
from ctpg.estimators.base import Estimator
from ctpg.solvers import solve


class CTPG(Estimator):
    """Forward adaptive solve stored as a spline, backward adaptive adjoint solve.

    Forward: x and the accumulated cost are integrated with `method` at (rtol, atol)
    (or fixed steps `dt`), keeping each step's interpolant (the method's own dense
    output, cubic Hermite otherwise). Backward: (lam, mu) are integrated from T to 0
    with `adjoint_method` at (adjoint_rtol, adjoint_atol), reading x(t) only from the
    stored spline; lam(T) = dJ/dx(T), so terminal costs need no special casing.
    With adjoint_seminorm the backward step size is controlled by lam alone: mu is a
    quadrature that feeds back into nothing, so it rides along at lam's steps
    (Kidger, Chen & Lyons, "Hey, that's not an ODE", 2021); fewer backward steps when
    the parameter count dominates the norm, at some accuracy of mu.

    Stores O(steps x N x d) floats. Costs per forward stage one f call, per backward
    stage one vjp; both passes adapt their steps to the requested accuracy. Fails
    when the stored spline is too coarse for the adjoint to be accurate (tighten rtol
    of the forward pass) or the system is stiff (steps collapse; a StepSizeTooSmall
    or MaxStepsExceeded error says so).
    """

    name = "ctpg"

    def __init__(self, method: str = "dopri5", rtol: float = 1e-6, atol: float = 1e-8,
                 adjoint_method: str | None = None, adjoint_rtol: float | None = None,
                 adjoint_atol: float | None = None, dt: float | None = None,
                 adjoint_dt: float | None = None, adjoint_seminorm: bool = False,
                 max_steps: int = 100_000):
        self.method, self.rtol, self.atol, self.dt = method, rtol, atol, dt
        self.adjoint_method = adjoint_method or method
        self.adjoint_rtol = rtol if adjoint_rtol is None else adjoint_rtol
        self.adjoint_atol = atol if adjoint_atol is None else adjoint_atol
        self.adjoint_dt = dt if adjoint_dt is None else adjoint_dt
        self.adjoint_seminorm = adjoint_seminorm
        self.max_steps = max_steps

    def __repr__(self):
        return (f"CTPG(method={self.method!r}, rtol={self.rtol}, atol={self.atol}, dt={self.dt}, "
                f"adjoint_method={self.adjoint_method!r}, adjoint_seminorm={self.adjoint_seminorm})")

    def _forward(self, problem):
        system, x0, d = problem.system, problem.x0, problem.system.state_dim
        y0 = torch.cat([x0, x0.new_zeros(x0.shape[0], 1)], 1)
        with torch.no_grad():
            sol = solve(closed_loop_rhs(system, problem.policy), y0, 0.0, problem.T, method=self.method,
                        rtol=self.rtol, atol=self.atol, dt=self.dt, max_steps=self.max_steps,
                        dense=problem.keep_for_backward)
            xT = sol.y1[:, :d]
            costs = sol.y1[:, d] + system.terminal_cost(xT)
        problem.saved.update(trajectory=sol.trajectory, xT=xT, first_step=backward_first_step(sol.times))
        stored = sol.trajectory.stored_floats if sol.trajectory is not None else 0
        return costs, sol.steps_accepted, sol.steps_rejected, stored

    def _backward(self, problem, grad_loss):
        system, params, d = problem.system, problem.params, problem.system.state_dim
        n = problem.x0.shape[0]
        weight = grad_loss / n
        path = problem.saved["trajectory"]
        n_lam = n * d

        def rhs(t, z):
            lam = z[:n_lam].view(n, d)
            x = path.evaluate(t)[:, :d]
            dlam, dmu, _ = adjoint_derivatives(system, problem.policy, params, x, lam, weight)
            return torch.cat([dlam.reshape(-1), dmu])

        lam_T = terminal_adjoint(system, problem.saved["xT"], weight)
        z_T = torch.cat([lam_T.reshape(-1), lam_T.new_zeros(num_params(params))])
        sol = solve(rhs, z_T, problem.T, 0.0, method=self.adjoint_method, rtol=self.adjoint_rtol,
                    atol=self.adjoint_atol, dt=self.adjoint_dt, max_steps=self.max_steps,
                    first_step=problem.saved["first_step"],
                    error_on=slice(0, n_lam) if self.adjoint_seminorm else None)
        problem.saved.clear()
        grads = (sol.y1[:n_lam].view(n, d), unflatten(sol.y1[n_lam:], params))
        return grads, (sol.steps_accepted, sol.steps_rejected)


def backward_first_step(times) -> float | None:
    """First step of the adjoint solve: the forward solve's last step, [t_{n-1}, T].

    The adjoint runs on the linearisation of the forward dynamics, so their time
    scales agree, and this step spans exactly the spline's last piece (no knot of
    the piecewise-polynomial x(t) inside it). The generic starting heuristic instead
    begins from lam(T), often zero (no terminal cost), where it picks a tiny step and
    spends several steps growing it. A poor guess only costs a rejected step.
    """
    return times[-1] - times[-2] if len(times) > 1 else None
