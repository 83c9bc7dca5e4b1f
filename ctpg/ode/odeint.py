"""`ctpg.odeint`: torchdiffeq's odeint / odeint_adjoint interface on ctpg's solvers,
with CTPG's interpolating adjoint as the default gradient."""
from __future__ import annotations

import dataclasses
import time
import warnings

import torch

from ctpg.estimators.base import PassStats
from ctpg.ode.field import Packing, TimeGrid, VectorField
from ctpg.ode.memory import graph_saved_floats
from ctpg.ode.passes import Backsolve, Interpolating, Run, run_forward
from ctpg.ode.settings import settings
from ctpg.solvers import is_stiff_method
from ctpg.solvers.integrate import unreachable_tolerance

MODES = ("interpolating", "backsolve", "direct")


@dataclasses.dataclass
class OdeintInfo:
    """What one odeint call cost (`odeint(..., return_info=True)` returns it).

    forward / backward: PassStats, whose `oracle` dict counts f_evals (every evaluation
    of func, the ones inside VJPs included), vjp_evals (reverse passes through func),
    jac_evals (Jacobians, stiff methods; each costs M reverse passes) and total_evals;
    plus accepted/rejected steps and seconds. backward is None until a backward pass
    ran; in "direct" mode autograd runs it: its VJPs are counted as they happen, its
    steps are the forward's and its seconds run from the start of the backward pass
    to its last VJP of func. stored_floats: floats kept between the passes (the dense
    output for "interpolating", the outputs for "backsolve", what autograd's graph
    saved for "direct", counted by ctpg.ode.memory.graph_saved_floats). reconstruction_error (backsolve): the largest distance between an
    output of the forward pass and the state solved back to it.
    """

    adjoint: str
    method: str
    forward: PassStats | None = None
    backward: PassStats | None = None
    stored_floats: int = 0
    reconstruction_error: float | None = None

    @property
    def evals(self) -> int:
        """f, VJP and Jacobian evaluations of both passes so far."""
        return sum(p.oracle["total_evals"] for p in (self.forward, self.backward) if p is not None)


def odeint(func, y0, t, *, rtol=1e-7, atol=1e-9, method=None, options=None, event_fn=None,
           adjoint: str = "interpolating", adjoint_params=None, adjoint_rtol=None, adjoint_atol=None,
           adjoint_method=None, adjoint_options=None, return_info: bool = False):
    """Solve dy/dt = func(t, y), y(t[0]) = y0, and return y at every time of t, stacked
    along a new leading axis ([len(t), *y0.shape], or a tuple of such for a tuple y0;
    y0 may be 0-dim).

    torchdiffeq's calling convention: `from ctpg import odeint` replaces
    `from torchdiffeq import odeint_adjoint as odeint` (or plain odeint). func(t, y) gets
    t as a 0-dim tensor and y shaped like y0; t may decrease. Methods: ctpg's (dopri5,
    the default, tsit5, bosh3, heun, dop853, dopri8, fehlberg2, euler, midpoint, rk4,
    explicit_adams, implicit_adams, the stiff rodas5p, rodas4, ros34pw2, rosenbrock23
    and "auto"), torchdiffeq's adaptive_heun, heun2 and fixed_adams (aliases), and
    scipy_solver (ctpg.ode.scipy_solve: forward by scipy; the adjoint modes solve back
    with ctpg's adjoint_method, dopri5 by default; in direct mode values only, a
    backward pass raises). options: step_size (fixed steps), first_step,
    max_num_steps, step_t, jump_t (scipy_solver: solver, min_step, max_step,
    first_step). The error norm is the RMS over every component (as torchdiffeq's;
    for a tuple state torchdiffeq takes the largest part's RMS instead).

    Gradients reach y0, t and the parameters of func (an nn.Module) or
    `adjoint_params`. `adjoint` chooses how:

    - "interpolating" (default): the forward solve keeps its dense output, O(steps x M)
      floats; the adjoint is solved backwards with adjoint_method / adjoint_rtol /
      adjoint_atol (default: the forward's), reading y(t) from it and jumping by
      dL/dy(t_i) at each output time. Per backward stage one evaluation and one VJP of
      func. Accurate on contracting dynamics, where backsolve fails.
    - "backsolve": Chen et al.'s adjoint (torchdiffeq's odeint_adjoint): only the
      outputs are kept; y is solved backwards with the adjoint. O(len(t) x M) floats;
      its gradient degrades when the dynamics contract (reversed, they expand).
      Explicit methods only.
    - "direct": autograd through every solver step (torchdiffeq's odeint): exact
      gradient of the discrete solution; memory O(steps x stages x func's activations).
      Gradients in t follow the adjoint modes' formulas, dL/dt_i = g_i . func(t_i, y_i)
      and dL/dt_0 = -a(t_0+) . func(t_0, y_0) with a from autograd (see _direct):
      the derivative of the exact solution, which the discrete one matches to the
      solver's accuracy (a fixed grid: to O(h^order)).

    adjoint_options: step_size, first_step, max_num_steps, step_t, jump_t and
    norm="seminorm" (the parameter gradient left out of the step control; Kidger, Chen
    & Lyons 2021); default: options without first_step. return_info=True returns
    (solution, OdeintInfo).

    event_fn(t, y) (torchdiffeq's event mode; ctpg.odeint_event is the front end to
    use): t must hold two times, t0 and t0 +- 1 (the direction); the solve runs
    from t0 with no end until an element of event_fn changes sign, located on the
    dense output to atol in time (ctpg.solvers.events), and returns (event_t,
    solution) with solution the states at [t0, event_t]. As in torchdiffeq the
    gradient of solution treats event_t as a fixed end time and event_t carries none;
    odeint_event adds the implicit function theorem's. Fixed-step methods need
    options=dict(step_size=...).
    """
    if adjoint not in MODES:
        raise ValueError(f"odeint: adjoint must be one of {', '.join(map(repr, MODES))}, got {adjoint!r}")
    if not callable(func):
        raise TypeError(f"odeint: func must be callable as func(t, y), got {type(func).__name__}")
    packing, grid = Packing(y0), TimeGrid(t)
    fwd = settings(method, _tolerance(rtol, packing, "rtol"), _tolerance(atol, packing, "atol"), options)
    adj = _adjoint_settings(fwd, method, rtol, atol, options, adjoint_method, adjoint_rtol, adjoint_atol,
                            adjoint_options, packing)
    y0row = packing.pack(y0)
    _check_values(y0row, fwd, adj, adjoint_wanted=_needs_grad(y0row, grid.t))
    params = _params(func, adjoint_params, adjoint, needs_grad=_needs_grad(y0row, grid.t))
    _check_mode(adjoint, adj, grid)
    info = OdeintInfo(adjoint, fwd.method)
    run = Run(VectorField(func, packing, grid.sign, detach_outputs=adjoint != "direct"), grid, fwd, adj,
              params, info)
    if event_fn is not None:
        _check_event(event_fn, grid, fwd)
        run.event_fn, run.event_tol = event_fn, _event_tolerance(atol)
    outputs = _solve(run, y0row, adjoint, return_info)
    solution = packing.unpack(outputs, lead=(len(outputs),))
    if event_fn is not None:
        event_t = torch.tensor(run.event_time, dtype=grid.t.dtype, device=grid.t.device)
        solution = (event_t, solution)
    return (solution, info) if return_info else solution


def _check_event(event_fn, grid, fwd) -> None:
    if fwd.scipy is not None:
        raise ValueError("odeint: event_fn with method='scipy_solver' is not supported; use a ctpg method "
                         "(dopri5, dopri8, ...)")
    if not callable(event_fn):
        raise TypeError(f"odeint: event_fn must be callable as event_fn(t, y), got {type(event_fn).__name__}")
    if len(grid) != 2:
        raise ValueError(f"odeint: with event_fn, t must hold 2 times (t0 and t0 +- 1, as odeint_event builds it: "
                         f"the sign gives the direction, the distance the first search span), got {len(grid)}")
    if fwd.fixed_grid and fwd.dt is None:
        raise ValueError(f"odeint: event handling with the fixed-step method {fwd.method!r} needs "
                         "options=dict(step_size=...) (as torchdiffeq's)")


def _event_tolerance(atol) -> float:
    """The event's time tolerance: atol (its smallest entry), as torchdiffeq locates events."""
    value = float(torch.as_tensor(atol).min()) if torch.is_tensor(atol) or isinstance(atol, tuple) else float(atol)
    return value if value > 0 else 1e-12


def _solve(run: Run, y0row: torch.Tensor, adjoint: str, return_info: bool) -> torch.Tensor:
    if len(run.grid) == 1 and run.event_fn is None:
        return y0row
    if adjoint == "direct" and run.forward_settings.scipy is not None:
        return _refuse_gradient(run_forward(run, y0row.detach(), keep_path=False)[0], y0row, run.grid.t,
                                run.field.func)
    if adjoint == "direct":
        return _direct(run, y0row, count_floats=return_info)
    if not _needs_grad(y0row, run.grid.t, run.params):
        return run_forward(run, y0row.detach(), keep_path=False)[0]
    function = Interpolating if adjoint == "interpolating" else Backsolve
    return function.apply(run, y0row, run.grid.t, *run.params)


def _needs_grad(y0row, t, params=()) -> bool:
    return torch.is_grad_enabled() and (y0row.requires_grad or t.requires_grad or any(p.requires_grad for p in params))


def _params(func, adjoint_params, adjoint: str, needs_grad: bool) -> list:
    """The tensors that receive gradients (requires_grad only), as torchdiffeq picks them."""
    if adjoint == "direct":
        return []
    if adjoint_params is None:
        if not isinstance(func, torch.nn.Module):
            if needs_grad:
                raise ValueError("odeint: func is not an nn.Module, so its parameters are unknown; pass them as "
                                 "adjoint_params=(...) (adjoint_params=() if it has none), make func an "
                                 "nn.Module, or use adjoint='direct'")
            return []
        adjoint_params = func.parameters()
    params = list(adjoint_params)
    if not all(isinstance(p, torch.Tensor) for p in params):
        raise TypeError("odeint: adjoint_params must be tensors")
    seen, unique = set(), []
    for p in params:
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            unique.append(p)
    return unique


def _adjoint_settings(fwd, method, rtol, atol, options, adjoint_method, adjoint_rtol, adjoint_atol,
                      adjoint_options, packing):
    if fwd.scipy is not None and adjoint_method is None:     # scipy runs forward only: ctpg solves back
        adjoint_method, options = "dopri5", {}
    if adjoint_options is None:
        adjoint_options = {k: v for k, v in (options or {}).items() if k not in ("norm", "first_step")}
    return settings(adjoint_method or method, _tolerance(rtol if adjoint_rtol is None else adjoint_rtol, packing,
                                                         "adjoint_rtol"),
                    _tolerance(atol if adjoint_atol is None else adjoint_atol, packing, "adjoint_atol"),
                    adjoint_options, adjoint=True)


def _check_mode(adjoint: str, adj, grid) -> None:
    if adj.scipy is not None:
        raise ValueError("odeint: adjoint_method='scipy_solver' is not supported; the backward pass needs a ctpg "
                         "method (dopri5 by default)")
    if adjoint == "backsolve" and is_stiff_method(adj.method):
        raise ValueError(f"odeint: adjoint='backsolve' needs an explicit adjoint_method, not {adj.method!r} "
                         "(its Jacobian would need second derivatives of func); use adjoint='interpolating' "
                         "for stiff problems")


def _check_values(y0row: torch.Tensor, fwd, adj, adjoint_wanted: bool) -> None:
    """Refuse a y0 with NaN/Inf (the solver would blame func); warn once when a pass's
    tolerances ask for more than the dtype carries (the solves themselves do not warn)."""
    if not bool(torch.isfinite(y0row).all()):
        bad = (~torch.isfinite(y0row[0])).nonzero()[:, 0].tolist()
        raise ValueError(f"odeint: y0 contains NaN or Inf (at flat indices {bad[:8]}{' ...' if len(bad) > 8 else ''}"
                         "); the solve needs a finite initial state")
    for cfg in (fwd, adj) if adjoint_wanted else (fwd,):
        if cfg.dt is None:
            message = unreachable_tolerance(cfg.rtol, cfg.atol, y0row)
            if message is not None:
                warnings.warn(f"odeint: {message}", stacklevel=3)
                return


def _tolerance(value, packing: Packing, name: str):
    """A float, or a [M] tensor in the packed order (from a tensor shaped like y0 or a
    tuple of per-part tolerances)."""
    if isinstance(value, tuple):
        if len(value) != len(packing.shapes):
            raise ValueError(f"odeint: {name} as a tuple needs one entry per part of y0 ({len(packing.shapes)})")
        return torch.cat([torch.as_tensor(v, dtype=packing.dtype, device=packing.device).expand(s).reshape(-1)
                          for v, s in zip(value, packing.shapes)])
    if torch.is_tensor(value) and value.numel() != 1:
        if value.numel() != packing.size or packing.is_tuple:
            raise ValueError(f"odeint: {name} as a tensor must be shaped like y0 (or be a tuple, one per part), "
                             f"got shape {tuple(value.shape)}")
        return value.detach().reshape(-1).to(dtype=packing.dtype, device=packing.device)
    return float(value) if torch.is_tensor(value) else value


def _offsets(run: Run, dtype) -> torch.Tensor:
    """d_i = t_i - t_i.detach() [len(t)] in s (sign * t): value 0, gradient sign in t_i."""
    t = run.grid.t
    return (run.grid.sign * (t - t.detach())).to(dtype=dtype, device=run.field.packing.device)


def _shift_start(run: Run, y0row: torch.Tensor) -> torch.Tensor:
    """y0 - F(s_0, y0) d_0: the same value, and the gradient dy(s)/ds_0 = -Phi(s, s_0) F(s_0, y0)
    of a solve that starts later (one evaluation of func with its graph)."""
    return y0row - run.field(run.grid.s[0], y0row) * _offsets(run, y0row.dtype)[0]


def _move_outputs(run: Run, y0row: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor:
    """outputs_i + F(s_i, y_i) d_i for i >= 1 (dy(s_i)/ds_i = F), outputs_0 = y0 itself (one
    evaluation of func per later output time)."""
    d = _offsets(run, outputs.dtype)
    rows = [y0row[0]] + [outputs[i] + run.field(s, outputs[i:i + 1])[0] * d[i]
                         for i, s in enumerate(run.grid.s) if i > 0]
    return torch.stack(rows)


class _NoGradient(torch.autograd.Function):
    """Identity on scipy's outputs in direct mode: values as torchdiffeq's odeint gives
    them, and a backward pass that says why there is no gradient (instead of none)."""

    @staticmethod
    def forward(ctx, outputs, *inputs):
        return outputs.clone()

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError("odeint: method='scipy_solver' has no gradient in adjoint='direct' (scipy keeps no "
                           "autograd graph); use adjoint='interpolating' or 'backsolve' (the backward pass by ctpg's "
                           "adjoint_method, dopri5 by default) or a ctpg method such as dopri5")


def _refuse_gradient(outputs, y0row, t, func):
    params = list(func.parameters()) if isinstance(func, torch.nn.Module) else []
    inputs = [v for v in (y0row, t, *params) if v.requires_grad]
    return _NoGradient.apply(outputs, *inputs) if inputs and torch.is_grad_enabled() else outputs


class _BackwardClock(torch.autograd.Function):
    """Identity on the outputs whose backward (the first node of the backward pass)
    starts the direct mode's backward PassStats."""

    @staticmethod
    def forward(ctx, outputs, run):
        ctx.run = run
        return outputs.view_as(outputs)

    @staticmethod
    def backward(ctx, grad):
        run = ctx.run
        run.backward_clock = (run.field.counter.snapshot(), time.perf_counter())
        run.info.backward = PassStats(run.field.counter.since(run.backward_clock[0]),
                                      run.info.forward.steps_accepted, run.info.forward.steps_rejected, 0.0)
        return grad, None


def _tick(run: Run) -> None:
    """After each VJP autograd runs in direct mode: bring the backward PassStats up to date."""
    if run.backward_clock is not None:
        snapshot, start = run.backward_clock
        run.info.backward.oracle = run.field.counter.since(snapshot)
        run.info.backward.wall_time = time.perf_counter() - start


def _direct(run: Run, y0row: torch.Tensor, count_floats: bool) -> torch.Tensor:
    """Autograd through the solve; with `count_floats`, the floats its graph saved are
    counted (graph_saved_floats: one visit per node, no hooks, so func may use torch.func)."""
    timed = run.grid.t.requires_grad and torch.is_grad_enabled()
    start = _shift_start(run, y0row) if timed else y0row
    outputs, _ = run_forward(run, start, keep_path=False)
    if timed and run.event_fn is None:      # an event's end time is not an output time
        outputs = _move_outputs(run, y0row, outputs)
    elif timed:
        outputs = torch.cat([y0row, outputs[1:]])
    if not outputs.requires_grad:
        return outputs
    if count_floats:
        run.info.stored_floats = graph_saved_floats(outputs)
    run.field.on_vjp = lambda: _tick(run)
    return _BackwardClock.apply(outputs, run)
