"""The neural-ODE (backsolve) adjoint: x is reconstructed backwards from x(T)."""
from __future__ import annotations

import torch

from ctpg.adjoint import unflatten
from ctpg.estimators.base import Estimator
from ctpg.estimators.closed_loop import adjoint_derivatives, closed_loop_rhs, clocked, terminal_adjoint
from ctpg.solvers import solve
from ctpg.solvers.options import check_method, check_positive, check_tolerances
from ctpg.trajectory import Trajectory


class Backsolve(Estimator):
    """Neural-ODE adjoint (Chen et al. 2018): O(1) memory, unstable for stabilising policies.

    The forward pass keeps only x(T) (and x at `checkpoints` equally spaced interior
    times). The backward pass integrates (x, lam) and the parameter gradient mu (a
    quadrature) together from T to 0, so x(t) is recomputed by running the closed
    loop in reverse; at a checkpoint x is reset to its stored value. Costs per
    backward stage one f call and one vjp. Per-sample adjoints are unscaled and the
    error norm is per sample, as in CTPG.

    Do not use it once the policy stabilises the system: reverse time turns the
    contracting closed loop into an expanding one, the reconstructed x(t) drifts away
    from the true trajectory and the gradient with it (paper, Section 3.3).
    `info.reconstruction_error` [N] is, per sample, the largest distance between a
    stored state (x0 or a checkpoint) and the state reconstructed back to it, over
    all segments.
    """

    name = "backsolve"
    events_refusal = ("it recomputes x(t) by solving the closed loop backwards from x(T), and crossing an "
                      "event backwards needs the inverse of each reset, which a restitution with coefficient "
                      "below one or a mode change does not have in general (and the events are not stored)")

    def __init__(self, method: str = "dopri5", rtol: float = 1e-6, atol: float = 1e-8,
                 checkpoints: int = 0, dt: float | None = None, max_steps: int = 100_000):
        if isinstance(checkpoints, bool) or not isinstance(checkpoints, int) or checkpoints < 0:
            raise ValueError(f"Backsolve: checkpoints must be an integer >= 0, got {checkpoints!r}")
        check_method("Backsolve", "method", method, adaptive=dt is None)
        check_tolerances("Backsolve", rtol, atol)
        check_positive("Backsolve", "dt", dt)
        check_positive("Backsolve", "max_steps", max_steps, integer=True, optional=False)
        self.method, self.rtol, self.atol, self.dt = method, rtol, atol, dt
        self.checkpoints, self.max_steps = checkpoints, max_steps

    def __repr__(self):
        return f"Backsolve(method={self.method!r}, rtol={self.rtol}, atol={self.atol}, checkpoints={self.checkpoints})"

    def _solve(self, rhs, y, t0, t1, q0=None):
        return solve(rhs, y, t0, t1, method=self.method, rtol=self.rtol, atol=self.atol, dt=self.dt,
                     max_steps=self.max_steps, q0=q0)

    def _forward(self, problem):
        system, x0, d = problem.system, problem.x0, problem.system.state_dim
        times = [problem.T * i / (self.checkpoints + 1) for i in range(self.checkpoints + 2)]
        y = torch.cat([x0, x0.new_zeros(x0.shape[0], 1)], 1)
        states, knots, accepted, rejected = [x0], [y], 0, 0
        rhs = closed_loop_rhs(system, problem.policy)
        with torch.no_grad():
            for t0, t1 in zip(times[:-1], times[1:]):
                sol = self._solve(rhs, y, t0, t1)
                y, accepted, rejected = sol.y1, accepted + sol.steps_accepted, rejected + sol.steps_rejected
                states.append(y[:, :d])
                knots.append(y)
            costs = y[:, d] + system.terminal_cost(y[:, :d])
        if problem.keep_path:   # y at the checkpoints only: x and c there, linear between
            problem.path = Trajectory.through(times, torch.stack(knots))
        if problem.keep_for_backward:
            problem.saved.update(times=times, states=torch.stack(states))
        # x(T) and the interior checkpoints are kept; x0 is the caller's own tensor
        return costs, accepted, rejected, (len(states) - 1) * x0.numel()

    def _backward(self, problem, saved, grad_loss):
        system, params, d = problem.system, problem.params, problem.system.state_dim

        def rhs(t, z):
            x, lam = clocked(system, z[:, :d], t), z[:, d:]
            dlam, dmu, u = adjoint_derivatives(system, problem.policy, params, x, lam, 1.0,
                                               problem.system_params)
            return torch.cat([system.f(x, u), dlam], 1), dmu

        times, states = saved["times"], saved["states"]
        lam, mu = terminal_adjoint(system, states[-1], params, 1.0)
        accepted = rejected = 0
        drift = torch.zeros(states.shape[1], dtype=states.dtype, device=states.device)
        for i in range(len(times) - 1, 0, -1):
            z = torch.cat([states[i], lam], 1)            # reset x at each checkpoint
            sol = self._solve(rhs, z, times[i], times[i - 1], q0=mu)
            accepted, rejected = accepted + sol.steps_accepted, rejected + sol.steps_rejected
            lam, mu = sol.y1[:, d:], sol.q1
            drift = torch.maximum(drift, (states[i - 1] - sol.y1[:, :d]).norm(dim=1))
        problem.info.reconstruction_error = drift
        scale = grad_loss / states.shape[1]
        return (scale * lam, unflatten(scale * mu, params)), (accepted, rejected)
