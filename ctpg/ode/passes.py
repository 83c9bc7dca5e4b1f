"""The forward solve and the two adjoint gradient modes of `ctpg.odeint`.

Both modes are autograd Functions taking (run, y0 row [1, M], t, *params) and returning
the outputs [len(t), M]; the caller reshapes them. For a loss L reading y at the output
times, with g_i = dL/dy(t_i) and F the right-hand side in the increasing time s:

    da/ds  = -a^T dF/dy,       a jumps by g_i at every output time s_i (t_i),
    dmu/ds = -a^T dF/dtheta,   dL/dtheta = mu(s_0), dL/dy0 = a(s_0) + g_0,
    dL/ds_i = g_i . F(s_i, y_i) (i >= 1),   dL/ds_0 = -a(s_0+) . F(s_0, y_0),

and dL/dt_i = sign dL/ds_i. "interpolating" reads y(s) from the forward solve's dense
output through ctpg.adjoint.solve_adjoint (the adjoint shared with the control
estimators); "backsolve" integrates y backwards together with a (Chen et al. 2018).
"""
from __future__ import annotations

import dataclasses
import time

import torch

from ctpg.adjoint import solve_adjoint, unflatten
from ctpg.errors import NonFiniteError, SolverError
from ctpg.estimators.base import PassStats
from ctpg.ode.field import TimeGrid
from ctpg.ode.scipy_solve import scipy_forward
from ctpg.solvers import Linearisation, Solution, is_stiff_method, solve
from ctpg.solvers.events import Watch, solve_until_event
from ctpg.trajectory import Trajectory


@dataclasses.dataclass
class Run:
    """One odeint call in flight: the field, the grid, both passes' settings, the
    parameters that receive gradients and the info being filled."""

    field: object          # field.VectorField
    grid: object           # field.TimeGrid
    forward_settings: object
    adjoint_settings: object
    params: list
    info: object           # odeint.OdeintInfo
    backward_clock: tuple | None = None   # direct mode: (counter snapshot, start) of the backward pass
    event_fn: object = None               # odeint(..., event_fn=): the solve ends at its first root
    event_tol: float = 0.0                # the event's time tolerance (atol, as torchdiffeq)
    event_time: float | None = None       # where it ended, in t


def forward_pass(run: Run, y0row: torch.Tensor, keep_path: bool):
    """(outputs [len(t), M], Solution): one solve from s_0 to s_n; outputs at interior
    times from the dense output (kept when `keep_path` or when there are any)."""
    grid, cfg = run.grid, run.forward_settings
    if cfg.scipy is not None:
        outputs, path = scipy_forward(run.field, y0row, grid.s, cfg, dense=keep_path)
        return outputs, Solution(outputs[-1:], 0, 0, 0, [grid.s[0], grid.s[-1]], trajectory=path)
    kwargs = cfg.as_kwargs(grid)
    if is_stiff_method(cfg.method):
        kwargs["jacobian"] = run.field.jacobian
    if run.event_fn is not None:
        return event_forward(run, y0row, keep_path, kwargs)
    dense = keep_path or len(grid) > 2
    sol = solve(run.field, y0row, grid.s[0], grid.s[-1], dense=dense, **kwargs)
    rows = [y0row[0]] + [sol.trajectory.evaluate(s)[0] for s in grid.s[1:-1]] + [sol.y1[0]]
    return torch.stack(rows), sol


def event_forward(run: Run, y0row: torch.Tensor, keep_path: bool, kwargs: dict):
    """(outputs [y0, y(t_event)], Solution): the solve from t[0] until event_fn's first
    root (ctpg.solvers.events, no end time); run.grid becomes [t[0], t_event] for the
    backward pass and run.event_time records t_event."""
    field, packing, grid = run.field, run.field.packing, run.grid

    def guard(s, y):
        t = (field.sign * s[0]).to(packing.dtype)
        return torch.as_tensor(run.event_fn(t, packing.unpack(y[0]))).reshape(1, -1)

    sol = solve_until_event(field, y0row, grid.s[0], grid.s[1] - grid.s[0], Watch(guard, run.event_tol),
                            dense=keep_path, **kwargs)
    run.event_time = field.sign * sol.event.time
    run.grid = TimeGrid(torch.tensor([grid.times[0], run.event_time], dtype=torch.float64))
    return torch.stack([y0row[0], sol.y1[0]]), sol


def timed(run: Run, work, name: str):
    """(result, PassStats) of work() -> (result, steps accepted, rejected): the counts of
    run.field.counter and the seconds; solver errors name the pass."""
    start, snapshot = time.perf_counter(), run.field.counter.snapshot()
    try:
        result, accepted, rejected = work()
    except (SolverError, NonFiniteError) as err:
        raise type(err)(f"odeint {name} pass: {err}") from err
    return result, PassStats(run.field.counter.since(snapshot), accepted, rejected, time.perf_counter() - start)


def run_forward(run: Run, y0row: torch.Tensor, keep_path: bool):
    """forward_pass, timed and counted into run.info.forward."""
    def work():
        outputs, sol = forward_pass(run, y0row, keep_path)
        return (outputs, sol), sol.steps_accepted, sol.steps_rejected

    (outputs, sol), run.info.forward = timed(run, work, "forward")
    return outputs, sol


class ODEAdjoint:
    """The odeint front end of ctpg.adjoint: the adjoint field of F, reading y(s) from
    the forward pass's dense output. One evaluation and one reverse pass of func per
    call of `derivatives`; `linearisation` (stiff methods) adds one Jacobian."""

    def __init__(self, field, path: Trajectory, params):
        self.field, self.path, self.params = field, path, params

    def derivatives(self, s, a):
        _, rate_a, rate_mu = self.field.vjp(s, self.path.evaluate(s), -a, self.params)
        return rate_a, rate_mu

    def linearisation(self, s, a) -> Linearisation:
        J = self.field.jacobian(s, self.path.evaluate(s))
        return Linearisation(-J.transpose(1, 2), lambda v: self.derivatives(s, v)[1])


def time_gradients(run: Run, state, grads: torch.Tensor, a0_plus: torch.Tensor, t: torch.Tensor):
    """dL/dt [len(t)] (see the module docstring); state(i) is y at output i. One
    evaluation of func for t_0 and for every later output time whose g_i is nonzero."""
    out = torch.zeros(len(run.grid), dtype=grads.dtype, device=grads.device)
    for i, s in enumerate(run.grid.s):
        weight = -a0_plus if i == 0 else grads[i:i + 1]
        if bool(weight.any()):
            out[i] = (weight * run.field(s, state(i))).sum()
    return (run.grid.sign * out).to(dtype=t.dtype, device=t.device)


def _first_nonzero_from_end(grads: torch.Tensor) -> int:
    """Largest i >= 1 with g_i != 0 (0 if none): the adjoint starts there."""
    nonzero = grads[1:].reshape(grads.shape[0] - 1, -1).any(dim=1).nonzero()
    return int(nonzero[-1]) + 1 if nonzero.numel() else 0


def interpolating_adjoint(run: Run, path: Trajectory, grads: torch.Tensor, params, first_step):
    """(a(s_0+) [1, M], mu [P], AdjointSolution or None) by ctpg.adjoint.solve_adjoint."""
    grid, cfg = run.grid, run.adjoint_settings
    mu = grads.new_zeros(sum(p.numel() for p in params))
    last = _first_nonzero_from_end(grads)
    if last == 0:
        return torch.zeros_like(grads[:1]), mu, None
    jumps = {grid.s[i]: grads[i:i + 1] for i in range(1, last) if bool(grads[i].any())}
    kwargs = cfg.as_kwargs(grid)
    kwargs["first_step"] = cfg.first_step or first_step
    sol = solve_adjoint(ODEAdjoint(run.field, path, params), grads[last:last + 1], mu, grid.s[last], grid.s[0],
                        seminorm=cfg.seminorm, jumps=jumps, **kwargs)
    return sol.a0, sol.mu0, sol


def _needed(ctx, params):
    """The parameters whose gradient is asked for; refuses a differentiable backward."""
    if torch.is_grad_enabled():
        raise RuntimeError("odeint: the adjoint modes give first-order gradients only; for backward(create_graph="
                           "True) (double backward, Hessian-vector products) use adjoint='direct'")
    return [p for p, need in zip(params, ctx.needs_input_grad[3:]) if need]


def _gradients(ctx, run, a0_plus, mu, grads, needed, state):
    """The tuple of gradients backward returns: (run, y0, t, *params)."""
    grad_t = time_gradients(run, state, grads, a0_plus, ctx.t) if ctx.needs_input_grad[2] else None
    if grad_t is not None and run.event_fn is not None:
        grad_t[1:] = 0          # t[1] only sets the first search span: the end is the event
    by_id = {id(p): g for p, g in zip(needed, unflatten(mu, needed))}
    grad_params = [by_id.get(id(p)) for p in run.params]
    grad_y0 = (a0_plus + grads[:1]) if ctx.needs_input_grad[1] else None
    return (None, grad_y0, grad_t, *grad_params)


class Interpolating(torch.autograd.Function):
    """Forward: one solve keeping the dense output (O(steps) floats). Backward: the
    adjoint integrated back with its own adaptive steps, reading y(s) from that spline,
    jumping by g_i at the output times. Costs per backward stage one evaluation and
    one reverse pass of func."""

    @staticmethod
    def forward(ctx, run, y0row, t, *params):
        outputs, sol = run_forward(run, y0row.detach(), keep_path=True)
        run.info.stored_floats = sol.trajectory.stored_floats
        ctx.run, ctx.t, ctx.times, ctx.last_step = run, t.detach(), sol.times, sol.last_step
        if isinstance(sol.trajectory, Trajectory):
            ctx.save_for_backward(sol.trajectory.coefs)
        else:                   # scipy_solver: scipy's own dense output (ScipyPath)
            ctx.path = sol.trajectory
        return outputs

    @staticmethod
    def backward(ctx, grads):
        run = ctx.run
        path = getattr(ctx, "path", None) or Trajectory(ctx.times, ctx.saved_tensors[0])
        needed = _needed(ctx, run.params)
        grads = grads.detach()

        def work():
            a0_plus, mu, sol = interpolating_adjoint(run, path, grads, needed, ctx.last_step)
            out = _gradients(ctx, run, a0_plus, mu, grads, needed, lambda i: path.evaluate(run.grid.s[i]))
            return out, getattr(sol, "steps_accepted", 0), getattr(sol, "steps_rejected", 0)

        out, run.info.backward = timed(run, work, "backward")
        return out


class Backsolve(torch.autograd.Function):
    """Forward: one solve; only the outputs are kept (O(len(t)) floats). Backward: y
    and a integrated back together from the last output, y reset to the forward's
    output at every output time (as torchdiffeq does). Costs per backward stage one
    evaluation and one reverse pass of func. Unstable where the forward dynamics
    contract: reversed, they expand every error (info.reconstruction_error)."""

    @staticmethod
    def forward(ctx, run, y0row, t, *params):
        outputs, sol = run_forward(run, y0row.detach(), keep_path=False)
        run.info.stored_floats = outputs.numel()
        ctx.run, ctx.t, ctx.last_step = run, t.detach(), sol.last_step
        ctx.save_for_backward(outputs)
        return outputs

    @staticmethod
    def backward(ctx, grads):
        run, (outputs,) = ctx.run, ctx.saved_tensors
        needed, grads = _needed(ctx, run.params), grads.detach()

        def work():
            a0_plus, mu, steps = backsolve_adjoint(run, outputs, grads, needed, ctx.last_step)
            out = _gradients(ctx, run, a0_plus, mu, grads, needed, lambda i: outputs[i:i + 1])
            return out, *steps

        out, run.info.backward = timed(run, work, "backward")
        return out


def backsolve_adjoint(run: Run, outputs, grads, params, first_step):
    """(a(s_0+), mu, (accepted, rejected)): [y; a] as a [2, M] state (the error norm
    takes the larger of their RMS ratios, torchdiffeq's mixed norm), mu a quadrature."""
    grid, cfg, field = run.grid, run.adjoint_settings, run.field

    def rhs(s, z):
        F, rate_a, rate_mu = field.vjp(s, z[:1], -z[1:], params)
        return torch.cat([F, rate_a]), rate_mu

    kwargs = cfg.as_kwargs(grid)
    h, mu, steps, drift = cfg.first_step or first_step, grads.new_zeros(sum(p.numel() for p in params)), [0, 0], 0.0
    a = grads[-1:]
    for i in range(len(grid) - 1, 0, -1):
        kwargs["first_step"] = h
        sol = solve(rhs, torch.cat([outputs[i:i + 1], a]), grid.s[i], grid.s[i - 1], q0=mu,
                    quadrature_in_norm=not cfg.seminorm, **kwargs)
        h, mu = sol.last_step, sol.q1
        steps = [steps[0] + sol.steps_accepted, steps[1] + sol.steps_rejected]
        drift = max(drift, float((sol.y1[0] - outputs[i - 1]).norm()))
        a = sol.y1[1:] + (grads[i - 1:i] if i > 1 else 0.0)
    run.info.reconstruction_error = drift
    return a, mu, steps
