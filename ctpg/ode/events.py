"""`ctpg.odeint_event`: torchdiffeq's odeint_event on ctpg.odeint, the event time and
state differentiable by the implicit function theorem with respect to everything they
depend on: y0, t0, func's parameters and event_fn's own (torchdiffeq reaches the last
only through the state).

The solve (odeint with event_fn) stops at t*, where an element g_e of event_fn(t, y)
first changes sign, located on the solver's dense output (ctpg.solvers.events). Its
solution is differentiable as if t* were a fixed end time. With G = g_e(t*, y(t*))
and its rate along the solution Gdot = dg_e/dt + dg_e/dy . func(t*, y(t*)), the
implicit function theorem (G = 0 moves with every input) gives

    dt* = -dG / Gdot,      dy_event = dy(t*)|_(t* fixed) + func(t*, y*) dt*,

built here as autograd expressions whose values are t* and y* themselves
(t* - (G - G.detach()) / Gdot), so any tensor event_fn uses receives its gradient,
and chained solves (a bouncing ball) differentiate through every event.
"""
from __future__ import annotations

import torch

from ctpg.ode.field import Packing


def odeint_event(func, y0, t0, *, event_fn, reverse_time: bool = False, odeint_interface=None, **kwargs):
    """Solve dy/dt = func(t, y) from (t0, y0) until the first element of event_fn(t, y)
    crosses zero; return (event_t, solution), solution holding the states at
    [t0, event_t] stacked along a new leading axis (a tuple of such for a tuple y0),
    as torchdiffeq's odeint_event.

    event_fn(t, y) returns a tensor of any shape whose elements are event functions;
    the first to change sign ends the solve (signs are taken just after t0: an element
    at zero there, a solve restarted at an event, does not count until it leaves zero).
    reverse_time=True solves backwards in t. The event is located on the step's dense
    output to atol in time. odeint_interface: ctpg.odeint (the default, any adjoint=
    mode via kwargs) or any function with its signature that returns (event_t,
    solution) for event_fn=... (torchdiffeq.odeint). kwargs go to it (rtol, atol,
    method, options, adjoint, adjoint_params, ...).

    Gradients (see the module docstring): event_t and the last state reach y0, t0,
    func's parameters (through the interface's own gradient) and every tensor event_fn
    computes with. Cost on top of the solve: one evaluation of func, one of event_fn
    with its graph, and one reverse pass of event_fn per element. Raises ValueError
    for a grazing event (event_fn's rate along the solution is 0 or not finite at the
    event: its time is not differentiable there), naming the time.
    """
    if odeint_interface is None:
        from ctpg.ode.odeint import odeint as odeint_interface
    t0 = torch.as_tensor(t0)
    if t0.numel() != 1:
        raise ValueError(f"odeint_event: t0 must be one time (a 0-dim tensor), got shape {tuple(t0.shape)}")
    step = -1.0 if reverse_time else 1.0
    t = torch.cat([t0.reshape(-1), t0.reshape(-1).detach() + step])
    event_t, solution = odeint_interface(func, y0, t, event_fn=event_fn, **kwargs)
    packing = Packing(y0)
    last = packing.pack(tuple(s[-1] for s in solution) if packing.is_tuple else solution[-1])
    with torch.no_grad():
        # detached: a packed y0 that requires grad keeps the flag even under no_grad
        start = torch.as_tensor(event_fn(t0.detach().to(packing.dtype),
                                         packing.unpack(packing.pack(y0)[0].detach()))).reshape(-1).detach()
    event_t, last = implicit_event(func, event_fn, packing, event_t, last, (float(t0.detach()), start))
    rows = packing.parts(solution)
    ends = packing.parts(packing.unpack(last[0]))
    out = tuple(torch.cat([r[:-1], e[None]]) for r, e in zip(rows, ends))
    return event_t, (out if packing.is_tuple else out[0])


GRAZING = 1e-8     # a rate below this fraction of the mean rate since t0 is grazing


def implicit_event(func, event_fn, packing: Packing, event_t: torch.Tensor, last: torch.Tensor, start):
    """(t*, y*) with the implicit function theorem's gradients; last: y(t*) packed
    [1, M], differentiable as if t* were fixed; start: (t0, event_fn(t0, y0) flat).
    Picks the element that triggered as the one closest to its root in time,
    |g_e| / |Gdot_e|. Grazing: |Gdot| below GRAZING times the element's mean rate
    |g_e(t0)| / |t* - t0| (a tangential touch, or a root of g's rate)."""
    tau = event_t.detach().to(dtype=packing.dtype, device=packing.device)
    with torch.enable_grad():
        t_, y_ = tau.clone().requires_grad_(True), last.detach().clone().requires_grad_(True)
        g = torch.as_tensor(event_fn(t_, packing.unpack(y_[0]))).reshape(-1)
        with torch.no_grad():
            f = packing.pack(func(tau, packing.unpack(y_[0].detach()))).detach()
        rates = torch.stack([_rate(g[e], t_, y_, f, retain=e + 1 < g.numel()) for e in range(g.numel())])
    which = int((g.detach().abs() / rates.abs()).nan_to_num(nan=float("inf")).argmin())
    rate = rates[which]
    mean_rate = float(start[1][which].abs()) / max(abs(float(tau) - start[0]), 1e-300)
    if not (bool(torch.isfinite(rate)) and abs(float(rate)) > GRAZING * mean_rate and float(rate) != 0.0):
        raise ValueError(f"odeint_event: the event at t={float(tau):.6g} is grazing: element {which} of event_fn "
                         f"has rate {float(rate):.3g} along the solution there (mean rate since t0: "
                         f"{mean_rate:.3g}), so the event time is not differentiable; move the event surface or "
                         "the initial state")
    G = torch.as_tensor(event_fn(tau, packing.unpack(last[0]))).reshape(-1)[which]
    event_time = tau - (G - G.detach()) / rate
    state = last + f * (event_time - tau)
    return event_time.to(event_t.dtype), state


def _rate(g_e, t_, y_, f, retain: bool) -> torch.Tensor:
    """dg_e/dt + dg_e/dy . f at the event (one reverse pass of event_fn)."""
    if not g_e.requires_grad:
        return torch.zeros((), dtype=f.dtype, device=f.device)
    g_t, g_y = torch.autograd.grad(g_e, (t_, y_), retain_graph=retain, allow_unused=True)
    total = torch.zeros((), dtype=f.dtype, device=f.device) if g_t is None else g_t.to(f.dtype)
    return total + (0.0 if g_y is None else (g_y * f).sum())
