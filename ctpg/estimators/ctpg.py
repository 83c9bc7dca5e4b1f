"""The Continuous-Time Policy Gradient estimator (Ainsworth et al., Algorithm 1)."""
from __future__ import annotations

import torch

from ctpg.adjoint import solve_adjoint, unflatten
from ctpg.estimators.base import Estimator
from ctpg.estimators.closed_loop import ControlAdjoint, closed_loop_jacobian, closed_loop_rhs, terminal_adjoint
from ctpg.estimators.compiled import CompiledClosedLoop
from ctpg.estimators.hybrid import saltation_jump, solve_hybrid
from ctpg.estimators.jacobian_spline import JacobianSpline
from ctpg.solvers import is_stiff_method, solve
from ctpg.solvers.options import check_method, check_positive, check_tolerances


class CTPG(Estimator):
    """Forward adaptive solve stored as a spline, backward adaptive adjoint solve.

    Forward: x and the accumulated cost are integrated with `method` at (rtol, atol)
    (or fixed steps `dt`), keeping each step's interpolant (the method's own dense
    output, cubic Hermite otherwise). Backward: the adjoint lam and the parameter
    gradient mu are integrated from T to 0 with `adjoint_method` at (adjoint_rtol,
    adjoint_atol) by the shared adjoint solve (ctpg.adjoint), reading x(t) only from
    the stored spline. Each sample's adjoint is integrated unscaled, so rtol/atol
    promise the same accuracy per sample at every batch size; the gradient is scaled
    by dLoss/dcost once at the end. With adjoint_seminorm the backward step size is
    controlled by lam alone and mu, a quadrature, rides along (Kidger, Chen & Lyons,
    "Hey, that's not an ODE", 2021).

    Stiff closed loops (a high-gain or trained balancing policy): a Rosenbrock method
    ("rodas5p", "rodas4", "ros34pw2", "rosenbrock23") or "auto" (tsit5, switching to
    rodas5p while stiff) takes steps limited by accuracy instead of stability. They
    use the closed-loop Jacobian A = f_x + f_u pi_x (one counted system.jacobians call
    per Jacobian: finite differences for black-box systems) and, backward, -A^T with
    the parameter gradient kept out of the d x d linear solves.

    Black-box systems (a simulator with finite-difference derivatives, whose vjp costs a
    full Jacobian): `reuse_jacobians=True` computes f_x, f_u once per forward step and
    lets the backward pass read them from a cubic interpolant (JacobianSpline): no
    system call backward, an O(h^4) error in the forward step h, (S+1) N d (d+k) more
    stored floats.

    Small systems (a few states, a small MLP): `compile=True` runs the forward
    right-hand side and the backward stage under torch.compile (CompiledClosedLoop),
    which cuts eager torch's per-operation overhead that dominates there; the first
    estimate pays the compilation (seconds), later ones reuse it. Needs f and costs in
    torch and the policy's own parameters only; not with per_sample or reuse_jacobians.

    GPUs: `sync_every=k` keeps the adaptive step control of both passes on the device
    and reads it back every k attempts instead of every step (explicit methods; see
    ctpg.solvers.on_device), at the price of a few discarded attempts past the end of a solve.

    Hybrid systems (system.guards and reset: impacts, resets): the forward pass stops at
    the batch's earliest event, resets the samples that hit and restarts there; the
    backward pass jumps the adjoint by the transposed saltation matrix at each event
    (ctpg.estimators.hybrid). `event_tol`: the time tolerance of the event location;
    `max_events`: per estimate, beyond which (Zeno) it raises; `grazing`: the relative
    crossing rate |g_x f| / (|g_x| |f|) below which an event is refused as tangential.
    Shared host-side steps only (no per_sample, reuse_jacobians, compile, sync_every).

    Stores O(steps x N x d) floats. Costs per forward stage one f call, per backward
    stage one vjp (plus Jacobians for stiff methods); both passes adapt their steps to
    the requested accuracy. Lands on the system's breakpoints (system.breakpoints)
    in both passes. Fails when the stored spline is too coarse for the adjoint to be
    accurate (tighten rtol of the forward pass) or an explicit method meets a stiff
    closed loop (steps collapse: StepSizeTooSmall or MaxStepsExceeded says so; use a
    stiff method).
    """

    name = "ctpg"
    events_refusal = None            # differentiates through events (ctpg.estimators.hybrid)

    def __init__(self, method: str = "dopri5", rtol: float = 1e-6, atol: float = 1e-8,
                 adjoint_method: str | None = None, adjoint_rtol: float | None = None,
                 adjoint_atol: float | None = None, dt: float | None = None,
                 adjoint_dt: float | None = None, adjoint_seminorm: bool = False,
                 max_steps: int = 100_000, per_sample: bool = False, reuse_jacobians: bool = False,
                 compile: bool = False, sync_every: int | None = None, event_tol: float = 1e-10,
                 max_events: int = 1000, grazing: float = 1e-8):
        check_method("CTPG", "method", method, adaptive=dt is None)
        check_method("CTPG", "adjoint_method", adjoint_method or method,
                     adaptive=(dt if adjoint_dt is None else adjoint_dt) is None)
        check_tolerances("CTPG", rtol, atol)
        check_tolerances("CTPG", rtol if adjoint_rtol is None else adjoint_rtol,
                         atol if adjoint_atol is None else adjoint_atol, prefix="adjoint_")
        for name, value in (("dt", dt), ("adjoint_dt", adjoint_dt)):
            check_positive("CTPG", name, value)
        check_positive("CTPG", "max_steps", max_steps, integer=True, optional=False)
        check_positive("CTPG", "sync_every", sync_every, integer=True)
        check_positive("CTPG", "event_tol", event_tol, optional=False)
        check_positive("CTPG", "max_events", max_events, integer=True, optional=False)
        # events of a hybrid system (system.guards): located to event_tol in time, at most
        # max_events per estimate, refused below a relative crossing rate `grazing`
        self.event_tol, self.max_events, self.grazing = event_tol, max_events, grazing
        self.method, self.rtol, self.atol, self.dt = method, rtol, atol, dt
        self.adjoint_method = adjoint_method or method
        self.adjoint_rtol = rtol if adjoint_rtol is None else adjoint_rtol
        self.adjoint_atol = atol if adjoint_atol is None else adjoint_atol
        self.adjoint_dt = dt if adjoint_dt is None else adjoint_dt
        self.adjoint_seminorm = adjoint_seminorm
        self.max_steps, self.per_sample = max_steps, per_sample
        if reuse_jacobians and per_sample:
            raise ValueError("reuse_jacobians needs one mesh for the batch; use it with per_sample=False")
        self.reuse_jacobians = reuse_jacobians
        if compile and (per_sample or reuse_jacobians):
            raise ValueError("compile=True compiles the shared-step closed loop with the system's own vjp; "
                             "use it with per_sample=False and reuse_jacobians=False")
        self.compile = compile
        self.sync_every = sync_every     # device-side step control in both passes (ctpg.solvers.on_device)
        self._compiled = None        # the last CompiledClosedLoop: its code is tied to one system and policy

    def __getstate__(self):          # compiled functions do not pickle (Ray, multiprocessing)
        return dict(vars(self), _compiled=None)

    def _compiled_loop(self, problem) -> CompiledClosedLoop:
        loop = self._compiled
        if loop is None or not loop.matches(problem.system, problem.policy, problem.params):
            loop = self._compiled = CompiledClosedLoop(problem.system, problem.policy, problem.params)
        return loop

    def __repr__(self):
        return (f"CTPG(method={self.method!r}, rtol={self.rtol}, atol={self.atol}, dt={self.dt}, "
                f"adjoint_method={self.adjoint_method!r}, adjoint_seminorm={self.adjoint_seminorm}"
                + (", per_sample=True" if self.per_sample else "")
                + (", reuse_jacobians=True" if self.reuse_jacobians else "")
                + (", compile=True" if self.compile else "")
                + (f", sync_every={self.sync_every})" if self.sync_every else ")"))

    def _forward(self, problem):
        system, x0, d = problem.system, problem.x0, problem.system.state_dim
        if (self.per_sample or self.reuse_jacobians) and problem.system_params:
            raise ValueError("per-sample steps and reused Jacobians differentiate the policy's own parameters "
                             "only, but the system or its costs hold learnable parameters too "
                             "(system.parameters()); use per_sample=False, reuse_jacobians=False")
        y0 = torch.cat([x0, x0.new_zeros(x0.shape[0], 1)], 1)
        if getattr(system, "has_events", False):
            return self._forward_hybrid(problem, y0)
        jacobian = closed_loop_jacobian(system, problem.policy) if is_stiff_method(self.method) else None
        capture = None
        if self.compile:
            loop = self._compiled_loop(problem)
            values = loop.parameters()
            rhs = loop.rhs(values)
            if self.sync_every and not is_stiff_method(self.method):
                capture = loop.captured("f", (values,))
        else:
            rhs = closed_loop_rhs(system, problem.policy)
        with torch.no_grad():
            sol = solve(rhs, y0, 0.0, problem.T, method=self.method,
                        rtol=self.rtol, atol=self.atol, dt=self.dt, max_steps=self.max_steps,
                        dense=problem.keep_for_backward or problem.keep_path, jacobian=jacobian, autonomous=True,
                        tstops=system.breakpoints(problem.T), per_sample=self.per_sample,
                        sync_every=self.sync_every, capture=capture)
            xT = sol.y1[:, :d]
            costs = sol.y1[:, d] + system.terminal_cost(xT)
        if problem.keep_path:
            problem.path = sol.trajectory
        stored = 0
        if problem.keep_for_backward:     # tensors, so that torch frees them after the backward pass
            problem.saved.update(vars(sol.trajectory), path_kind=type(sol.trajectory), xT=xT, first_step=(
                sol.last_step if self.per_sample else backward_first_step(sol.times)))
            stored = sol.trajectory.stored_floats
            if self.reuse_jacobians:
                spline = JacobianSpline.along(system, problem.policy, sol.trajectory)
                problem.saved.update(jac_times=spline.times, jac_x=spline.f_x, jac_u=spline.f_u)
                stored += spline.stored_floats
        return costs, sol.steps_accepted, sol.steps_rejected, stored

    def _forward_hybrid(self, problem, y0):
        """The forward pass of a system with guards: pieces between the batch's events
        (ctpg.estimators.hybrid.solve_hybrid)."""
        system, d = problem.system, problem.system.state_dim
        if self.per_sample or self.reuse_jacobians or self.compile or self.sync_every:
            raise ValueError("CTPG through events (a system with guards) needs one host-side mesh for the "
                             "batch: use per_sample=False, reuse_jacobians=False, compile=False, sync_every=None")
        jacobian = closed_loop_jacobian(system, problem.policy) if is_stiff_method(self.method) else None
        with torch.no_grad():
            sol = solve_hybrid(closed_loop_rhs(system, problem.policy), system, problem.policy, y0, problem.T,
                               event_tol=self.event_tol, max_events=self.max_events, grazing=self.grazing,
                               max_steps=self.max_steps, dense=problem.keep_for_backward, method=self.method,
                               rtol=self.rtol, atol=self.atol, dt=self.dt, jacobian=jacobian, autonomous=True)
            xT = sol.y1[:, :d]
            costs = sol.y1[:, d] + system.terminal_cost(xT)
        stored = 0
        if problem.keep_for_backward:     # the pieces and events stay on the problem (lists, not tensors)
            problem.saved.update(hybrid=(sol.pieces, sol.events), xT=xT)
            stored = sum(p.stored_floats for p in sol.pieces if p is not None) + sum(
                2 * e.x_minus.numel() for e in sol.events)
        return costs, sol.steps_accepted, sol.steps_rejected, stored

    def _backward_hybrid(self, problem, saved, grad_loss):
        """Adjoint solves over the pieces from T back to 0, the saltation jump at each
        event between them (ctpg.estimators.hybrid.saltation_jump)."""
        system, params = problem.system, problem.params
        pieces, events = saved["hybrid"]
        lam, mu = terminal_adjoint(system, saved["xT"], params, 1.0)
        accepted = rejected = 0
        for k in range(len(pieces) - 1, -1, -1):
            path = pieces[k]
            if path is not None and path.t1 > path.t0:
                field = ControlAdjoint(system, problem.policy, params, problem.system_params, path)
                sol = solve_adjoint(field, lam, mu, path.t1, path.t0, method=self.adjoint_method,
                                    rtol=self.adjoint_rtol, atol=self.adjoint_atol, dt=self.adjoint_dt,
                                    first_step=backward_first_step(path.times), max_steps=self.max_steps,
                                    seminorm=self.adjoint_seminorm, tstops=system.breakpoints(problem.T))
                lam, mu = sol.a0, sol.mu0
                accepted, rejected = accepted + sol.steps_accepted, rejected + sol.steps_rejected
            if k > 0:
                lam, mu = saltation_jump(system, problem.policy, params, events[k - 1], lam, mu)
        scale = grad_loss / problem.x0.shape[0]
        return (scale * lam, unflatten(scale * mu, params)), (accepted, rejected)

    def _backward(self, problem, saved, grad_loss):
        if "hybrid" in saved:
            return self._backward_hybrid(problem, saved, grad_loss)
        system, params = problem.system, problem.params
        path = saved["path_kind"].from_state(saved)
        spline = (JacobianSpline(saved["jac_times"], saved["jac_x"], saved["jac_u"]) if self.reuse_jacobians
                  else None)
        stage = capture = None
        if self.compile:
            loop = self._compiled_loop(problem)
            values = loop.parameters()
            stage = lambda t, x, lam: loop.stage(values, t, x, lam)     # noqa: E731
            if self.sync_every and not is_stiff_method(self.adjoint_method):
                capture = loop.captured("vjp", (values, path.times_tensor(), path.coefs))
        field = ControlAdjoint(system, problem.policy, params, problem.system_params, path, self.per_sample, spline,
                               stage)
        lam_T, mu_T = terminal_adjoint(system, saved["xT"], params, 1.0)
        if self.per_sample:     # each sample its own gradient row; J depends on no policy parameter
            mu_T = mu_T.new_zeros(lam_T.shape[0], mu_T.numel())
        sol = solve_adjoint(field, lam_T, mu_T, problem.T, 0.0, method=self.adjoint_method,
                            rtol=self.adjoint_rtol, atol=self.adjoint_atol, dt=self.adjoint_dt,
                            first_step=saved["first_step"], max_steps=self.max_steps,
                            seminorm=self.adjoint_seminorm, tstops=system.breakpoints(problem.T),
                            per_sample=self.per_sample, sync_every=self.sync_every, capture=capture)
        scale = grad_loss / problem.x0.shape[0]         # dLoss/dcost of each sample (batch mean)
        mu = sol.mu0.sum(0) if self.per_sample else sol.mu0
        grads = (scale * sol.a0, unflatten(scale * mu, params))
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
