"""CTPG through impacts and resets: the hybrid ControlSystem's forward pass in pieces
between events, and the adjoint's jump at each event (the transposed saltation matrix).

Forward (`solve_hybrid`). The closed loop is solved from t to T with the system's
guards watched on each accepted step's dense output (ctpg.solvers.events.Watch, per
sample). The batch shares one mesh, and a shared step cannot carry one sample across
another's impact, so the solve stops at the earliest event in the batch: the samples
that hit then are reset (x+ = r(x-, i)), every other sample is left as it is, and the
solve restarts from the event time with a fresh Watch (which re-arms the guards one
tolerance later), the step size carried over. The stored trajectory is the list of
pieces between events. Cost: a batch whose samples hit at different times pays one
split step (and the restart's step growth) per event of any sample, on every sample;
the README's "Events and impacts" gives the measured steps.

Backward (`saltation_jump`). Between events the adjoint is the smooth one
(ctpg.adjoint on each piece). At an event at t* with pre-state x-, post-state
x+ = r(x-, theta), guard element g (its zero set x- lies on), f- = f(x-, pi(x-)),
f+ = f(x+, pi(x+)) and running costs w-, w+ there, a perturbation dx- of the state
at t* and dtheta of the parameters move the event time by (implicit function
theorem on g(x(t*)) = 0)

    dt* = -(g_x dx- + g_theta dtheta) / (g_x f-)

and the post-event state, compared at one time after the event, by

    dx+ = Xi dx- + (r_theta + (f+ - R_x f-) g_theta / (g_x f-)) dtheta,
    Xi  = R_x + (f+ - R_x f-) g_x / (g_x f-)            (the saltation matrix).

The running cost accrues w- up to t* + dt* and w+ after it, so the cost changes by
(w- - w+) dt* at the event. With lam+ = dCost/dx+ the adjoint and parameter
gradient just before the event are therefore

    lam- = Xi^T lam+ + (w+ - w-) g_x^T / (g_x f-)
    mu-  = mu+ + (r_theta + (f+ - R_x f-) g_theta / (g_x f-))^T lam+ + (w+ - w-) g_theta / (g_x f-).

The saltation matrix of a hybrid system is a known fact, see Kong, Payne, Zhu &
Johnson, "Saltation matrices: the essential tool for linearizing hybrid dynamical
systems", arXiv 2306.06862 (2023); the cost terms follow from the same dt*. One
jump costs a reverse pass through r and two through g (autograd) and an f and policy
evaluation at x- and x+ for the hit samples: no adjoint ODE steps.

Fails loudly (GrazingEventError) where |g_x f-| is below `grazing` times |g_x| |f-|:
the trajectory touches the guard tangentially there, the event time is not
differentiable, and the jump would divide by ~0. Zeno behaviour (events piling up)
stops at `max_events` with the time and the samples. Both name time and sample.
"""
from __future__ import annotations

import dataclasses

import torch

from ctpg.adjoint import flatten
from ctpg.errors import SolverError
from ctpg.solvers import solve
from ctpg.solvers.events import Watch


class GrazingEventError(SolverError):
    """An event where the flow meets the guard tangentially (g_x f ~ 0), or too many events (Zeno)."""


@dataclasses.dataclass
class HybridEvent:
    """One event of the batch: its time, the samples that hit then (rows [k]), the
    guard element of each (index [k]), their states before (x_minus [k,d]) and after
    (x_plus [k,d]) the reset."""

    time: float
    rows: torch.Tensor
    index: torch.Tensor
    x_minus: torch.Tensor
    x_plus: torch.Tensor


@dataclasses.dataclass
class HybridSolution:
    """The pieces of the forward pass (Trajectory per interval between events, None
    where an interval is empty), the events, the end state [N, d+1] and the steps."""

    pieces: list
    events: list
    y1: torch.Tensor
    steps_accepted: int = 0
    steps_rejected: int = 0
    last_step: float | None = None

    def evaluate(self, t: float) -> torch.Tensor:
        """The state [N, d+1] at time t from the piece that holds it; at an event time the
        post-event piece's (the later piece wins). A time past the end reads the last piece's end."""
        pieces = [p for p in self.pieces if p is not None]
        for piece in reversed(pieces):
            if piece.t0 <= t:
                return piece.evaluate(min(t, piece.t1))
        return pieces[0].evaluate(t)


def guard_of(system, index: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """g_index(x) [k]: each sample's own fired element."""
    return system.guards(x).gather(1, index[:, None]).squeeze(1)


def check_transversal(system, policy, event: HybridEvent, grazing: float) -> None:
    """Raise GrazingEventError naming the time and the samples where the closed-loop
    flow f- meets the fired guard at a relative rate below `grazing`."""
    with torch.enable_grad():
        x_ = event.x_minus.detach().requires_grad_(True)
        (g_x,) = torch.autograd.grad(guard_of(system, event.index, x_).sum(), x_)
    with torch.no_grad():
        f_minus = system.f(event.x_minus, policy(event.x_minus))
    rate = (g_x * f_minus).sum(1)
    bad = rate.abs() <= grazing * g_x.norm(dim=1) * f_minus.norm(dim=1)
    if bool(bad.any()):
        rows = event.rows[bad].tolist()
        raise GrazingEventError(
            f"grazing event at t={event.time:.12g} in sample(s) {rows}: the flow crosses guard element(s) "
            f"{event.index[bad].tolist()} at rate g_x f = {rate[bad].tolist()} (relative {grazing:g} or less), "
            "so the event time is not differentiable there; move the initial state or the policy away from "
            "tangential contact, or make the guard's crossing transversal")


def solve_hybrid(rhs, system, policy, y0: torch.Tensor, T: float, *, event_tol: float, max_events: int,
                 grazing: float, max_steps: int, dense: bool, first_step=None, t0: float = 0.0,
                 **solve_kwargs) -> HybridSolution:
    """Solve y = [x, c] from t0 (default 0) to T through the system's events (see the module
    docstring). solve_kwargs go to ctpg.solvers.solve (method, rtol, atol, dt, ...).
    Raises GrazingEventError on a grazing event or after max_events events."""
    d = system.state_dim
    guard = lambda t, y: system.guards(y[:, :d])        # noqa: E731 (autonomous guards)
    out = HybridSolution([], [], y0)
    t, y, h, tstops = t0, y0, first_step, system.breakpoints(T)
    while True:
        watch = Watch(guard, event_tol, directions=system.guard_directions)
        sol = solve(rhs, y, t, T, max_steps=max_steps - out.steps_accepted - out.steps_rejected, dense=dense,
                    first_step=h, event=watch, tstops=tstops, **solve_kwargs)
        out.steps_accepted += sol.steps_accepted
        out.steps_rejected += sol.steps_rejected
        out.pieces.append(sol.trajectory)
        h = out.last_step = sol.last_step
        y = sol.y1
        if sol.event is None:
            break
        ev = sol.event
        x_minus = ev.y[ev.rows, :d]
        with torch.no_grad():
            x_plus = system.reset(x_minus, ev.index)
        event = HybridEvent(ev.time, ev.rows, ev.index, x_minus, x_plus)
        check_transversal(system, policy, event, grazing)
        out.events.append(event)
        if len(out.events) > max_events:
            raise GrazingEventError(
                f"more than max_events={max_events} events by t={ev.time:.12g} (the last in sample(s) "
                f"{ev.rows.tolist()}): Zeno behaviour (impacts piling up, a ball coming to rest) or a "
                "reset that leaves the state on its guard; raise max_events, or end the contact in the model "
                "(a resting mode, a minimum rebound velocity)")
        y = ev.y.clone()
        y[ev.rows, :d] = x_plus
        t = ev.time
        if T - t <= event_tol:           # the event lands on the horizon: nothing left to solve
            out.pieces.append(None)
            break
    out.y1 = y
    return out


def saltation_jump(system, policy, params, event: HybridEvent, lam: torch.Tensor, mu: torch.Tensor):
    """(lam-, mu-) just before `event` from (lam+ [N,d], mu+ [P] flat) just after it
    (formulas in the module docstring). Samples that did not hit keep their adjoint."""
    rows, index, x_minus = event.rows, event.index, event.x_minus.detach()
    a = lam[rows]
    with torch.no_grad():
        f_minus = system.f(x_minus, policy(x_minus))
        w_minus = system.running_cost(x_minus, policy(x_minus))
        u_plus = policy(event.x_plus)
        f_plus = system.f(event.x_plus, u_plus)
        w_plus = system.running_cost(event.x_plus, u_plus)
    with torch.enable_grad():
        x_ = x_minus.clone().requires_grad_(True)
        x_plus = system.reset(x_, index)
        grads = torch.autograd.grad(x_plus, [x_, *params], a, allow_unused=True) if x_plus.requires_grad else (
            [None] * (1 + len(params)))
        r_x_a = torch.zeros_like(a) if grads[0] is None else grads[0]          # R_x^T lam+
        r_theta_a = grads[1:]                                                   # r_theta^T lam+
        x2 = x_minus.clone().requires_grad_(True)
        g = guard_of(system, index, x2)
        (g_x,) = torch.autograd.grad(g.sum(), x2, retain_graph=True)
        rate = (g_x * f_minus).sum(1)                                           # g_x f-
        # (f+ - R_x f-)^T lam+ + w+ - w-, per sample; R_x f- . lam+ = f- . R_x^T lam+
        s = (a * f_plus).sum(1) - (r_x_a * f_minus).sum(1) + (w_plus - w_minus)
        g_grads = torch.autograd.grad(g, [x2, *params], s / rate, allow_unused=True)
    lam = lam.clone()
    lam[rows] = r_x_a + g_grads[0]
    extra = [torch.zeros_like(p) for p in params]
    for i, (r_g, g_g) in enumerate(zip(r_theta_a, g_grads[1:])):
        for part in (r_g, g_g):
            if part is not None:
                extra[i] = extra[i] + part
    return lam, mu + flatten(extra, lam)
