"""Events: where guards g(t, y) first cross zero, located per sample on the dense output
of each accepted step. One mechanism for `ctpg.odeint_event` and for a hybrid system's
guards in the control estimators (DESIGN.md, "Wave 3 structure").

    watch = Watch(guard, tol)         # guard(t [k] float64, y [k, ...]) -> [k, E]
    sol = solve(func, y0, t0, t1, ..., event=watch)    # stops at the batch's first event
    sol.event                         # EventRecord(time, rows, index, y) or None
    sol = solve_until_event(func, y0, t0, span, watch, ...)   # no end time: until an event

Semantics. Element e of the guard is an event function; sample n triggers where one of
its elements changes sign, and the first such time over the batch ends the solve (a
shared mesh cannot step one sample across another's event, so the step is split at the
earliest event in the batch; the other samples stop there too, their own roots are in
`roots`). Signs are taken at t0 + tol (tol: the time tolerance), not at t0, so a solve
restarted at the event it stopped at does not stop again at once; an element that is
exactly 0 there is armed at the end of the first step where it is not. To continue
after a reset (a hybrid system: x+ = r(x-) for `rows`, then solve on from `time`), start
the next solve with a fresh Watch: it re-arms every element one tolerance after the
restart; a Watch passed on unchanged keeps its signs (solve_until_event does, as
nothing was reset). Two crossings of
one element inside one step cancel and are missed (bound the step with dt or
first_step if that can happen).

Location: on the accepted step's interpolant y(theta), theta in [0, 1], the combined
function c(theta) = min_e sign_e g_e(t(theta), y(theta)) (positive until the first
crossing) is bracketed by the step and its root found by the Illinois variant of
regula falsi (Dahlquist & Bjorck, Numerical Methods, 1974, 6.2) until the bracket is
at most `tol` wide in time. The time returned is the bracket's near end: |time - root|
<= tol and every guard still has its starting sign there. Cost: one guard call per
accepted step (two on the first), plus one per Illinois iteration on a step with a crossing (typically
5-10; at most `max_iter`, then the bracket is halved). Refuses per-sample steps and
device-side step control (ValueError from solve).
"""
from __future__ import annotations

import dataclasses
import math

import torch


@dataclasses.dataclass
class Roots:
    """Per sample, the first root on one step: hit [N] bool, time [N] float64 (the
    step's end where no hit), index [N] long (which guard element), y [N, ...] there."""

    hit: torch.Tensor
    time: torch.Tensor
    index: torch.Tensor
    y: torch.Tensor


@dataclasses.dataclass
class EventRecord:
    """The event that ended a solve: its time, the samples that hit then (rows [k]),
    the element each hit (index [k]), the state of the whole batch at that time (y,
    the pre-event state), and every sample's own first root on that step (roots)."""

    time: float
    rows: torch.Tensor
    index: torch.Tensor
    y: torch.Tensor
    roots: Roots


def evaluate_piece(piece: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """y(theta) of one step's coefficients piece [P+1, N, ...] at per-sample theta [N]."""
    theta = theta.to(piece.dtype).view((-1,) + (1,) * (piece.ndim - 2))
    y = piece[-1]
    for p in range(piece.shape[0] - 2, -1, -1):
        y = piece[p] + theta * y
    return y


def truncate_piece(piece: torch.Tensor, ratio: float) -> torch.Tensor:
    """The same polynomial on the first `ratio` of the step (theta' = theta / ratio)."""
    scale = torch.tensor([ratio ** p for p in range(piece.shape[0])], dtype=piece.dtype, device=piece.device)
    return piece * scale.view((-1,) + (1,) * (piece.ndim - 1))


class Watch:
    """A guard watched by `solve`: guard(t [k] float64 tensor, y [k, ...]) -> [k, E];
    `tol` the time tolerance of the location (> 0); `max_iter` Illinois iterations per
    step. Keeps the armed signs [N, E] across the solves of one trajectory (so
    solve_until_event can continue a solve), `calls` counts guard evaluations.
    `directions` (optional, one entry per element): -1 watches element e only for a
    fall through zero, +1 only for a rise, 0 for both; an element armed on the side
    it cannot leave in its direction (positive for +1) is ignored by this Watch."""

    def __init__(self, guard, tol: float, max_iter: int = 60, directions=None):
        if not (tol > 0 and math.isfinite(tol)):
            raise ValueError(f"the event tolerance must be a positive time, got {tol}")
        if directions is not None and any(d not in (-1, 0, 1) for d in directions):
            raise ValueError(f"event directions must be -1, 0 or +1 per guard element, got {tuple(directions)}")
        self.directions = None if directions is None else torch.tensor([float(d) for d in directions])
        self.guard, self.tol, self.max_iter = guard, float(tol), max_iter
        self.signs, self.calls = None, 0
        self.end = None      # (time, combined value [N]) at the last checked step's end: the next start

    def values(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The guard [N, E] at per-sample times t [N], without a graph."""
        self.calls += 1
        with torch.no_grad():
            g = self.guard(t, y)
        if g.ndim != 2 or g.shape[0] != y.shape[0]:
            raise ValueError(f"the event guard must return [N, E] for N = {y.shape[0]} samples, got {tuple(g.shape)}")
        return g

    def check(self, piece: torch.Tensor, t_a: float, t_b: float) -> Roots | None:
        """Roots on the accepted step [t_a, t_b] (piece: its coefficients), None if none."""
        n = piece.shape[1]
        lo = torch.zeros(n, dtype=torch.float64, device=piece.device)
        if self.signs is None:          # arm at start + tol (or the step's end if shorter)
            lo = lo + min(self.tol / abs(t_b - t_a), 1.0)
            self.signs = torch.sign(self._at(piece, t_a, t_b, lo))
        cached = self.end[1] if self.end is not None and self.end[0] == t_a and not bool(lo.any()) else None
        roots, c_end = first_root(self, piece, t_a, t_b, lo, cached)
        self.end = (t_b, c_end)
        unarmed = self.signs == 0       # arm elements that were exactly 0, at this step's end
        if bool(unarmed.any()):
            end = torch.sign(self._at(piece, t_a, t_b, torch.ones_like(lo)))
            self.signs = torch.where(unarmed, end, self.signs)
            self.end = None
        return roots if bool(roots.hit.any()) else None

    def _at(self, piece, t_a, t_b, theta):
        return self.values(t_a + theta * (t_b - t_a), evaluate_piece(piece, theta))

    def combined(self, piece, t_a, t_b, theta) -> torch.Tensor:
        """(c(theta) [N], per-element signed values [N, E]); unarmed elements count +inf."""
        signed = self.signs * self._at(piece, t_a, t_b, theta)
        ignored = self.signs == 0
        if self.directions is not None:       # armed on the wrong side: it cannot fire in its direction
            if self.directions.numel() != signed.shape[1]:
                raise ValueError(f"{self.directions.numel()} event directions for a guard of {signed.shape[1]} "
                                 "elements; give one direction per element")
            ignored = ignored | (self.directions.to(signed) * self.signs > 0)
        signed = torch.where(ignored, torch.full_like(signed, math.inf), signed)
        return signed.min(dim=1).values, signed


def first_root(watch: Watch, piece: torch.Tensor, t_a: float, t_b: float, lo: torch.Tensor, c_lo=None):
    """(Roots, combined value at theta = 1 [N]): each sample's first root of watch's
    combined guard on theta in [lo, 1] (Illinois); c_lo: the value at lo if known (the
    previous step's end, which spares a guard call per step)."""
    if c_lo is None:
        c_lo, _ = watch.combined(piece, t_a, t_b, lo)
    hi = torch.ones_like(lo)
    c_hi, signed = watch.combined(piece, t_a, t_b, hi)
    hit = (c_hi <= 0) & (c_lo > 0)
    index = signed.argmin(dim=1)
    c_end = c_hi
    if bool(hit.any()):
        lo, hi, index = _illinois(watch, piece, t_a, t_b, lo, hi, c_lo, c_hi, hit, index)
    time = torch.where(hit, t_a + lo * (t_b - t_a), torch.full_like(lo, t_b))
    theta = torch.where(hit, lo, torch.ones_like(lo))
    return Roots(hit, time, index, evaluate_piece(piece, theta)), c_end


def _illinois(watch, piece, t_a, t_b, lo, hi, c_lo, c_hi, hit, index):
    """Shrink [lo, hi] (c_lo > 0 >= c_hi) on the hit samples until it is tol wide in time;
    a new point replaces the end of its sign, and an end kept twice running has its
    value halved (Illinois), so the bracket closes from both sides."""
    width = watch.tol / abs(t_b - t_a)
    side = torch.zeros_like(lo)           # +1: lo kept last time, -1: hi kept last time
    for _ in range(watch.max_iter):
        open_ = hit & (hi - lo > width)
        if not bool(open_.any()):
            break
        theta = torch.where(c_hi < c_lo, hi - c_hi * (hi - lo) / (c_hi - c_lo), 0.5 * (lo + hi))
        theta = torch.where(torch.isfinite(theta), theta, 0.5 * (lo + hi))
        # at least half a tolerance inside the bracket: a root within tol of an end then
        # closes the bracket on the next point instead of creeping towards it
        margin = torch.minimum(torch.full_like(lo, 0.5 * width), 0.5 * (hi - lo))
        theta = torch.minimum(torch.maximum(theta, lo + margin), hi - margin)
        c, signed = watch.combined(piece, t_a, t_b, theta)
        # an exact zero (float32 guards reach it often) is the root: the bracket closes on it
        exact = open_ & (c == 0)
        before = open_ & (c > 0)
        after = open_ & (c < 0)
        lo, c_lo = torch.where(before | exact, theta, lo), torch.where(before, c, c_lo)
        hi, c_hi = torch.where(after | exact, theta, hi), torch.where(after, c, c_hi)
        index = torch.where(after | exact, signed.argmin(dim=1), index)
        c_hi = torch.where(before & (side > 0), 0.5 * c_hi, c_hi)
        c_lo = torch.where(after & (side < 0), 0.5 * c_lo, c_lo)
        side = torch.where(before, torch.ones_like(side), torch.where(after, -torch.ones_like(side), side))
    return lo, hi, index


def solve_until_event(func, y0: torch.Tensor, t0: float, span: float, watch: Watch, *, max_steps: int = 100_000,
                      dense: bool = False, first_step=None, **kwargs):
    """`solve` from t0 with no end time until `watch` sees an event: solves of span,
    2 span, 4 span, ... (span signed: negative runs backwards) continued from each
    other, the step size carried. Returns a Solution whose y1 is the state at the
    event and whose trajectory (dense=True) runs from t0 to it. Raises
    MaxStepsExceeded when max_steps steps in all find no event."""
    from ctpg.errors import MaxStepsExceeded
    from ctpg.solvers.integrate import solve
    from ctpg.trajectory import Trajectory

    if not (span != 0 and math.isfinite(span)):
        raise ValueError(f"solve_until_event needs a nonzero finite span, got {span}")
    start, y, h, steps, parts = t0, y0, first_step, [0, 0, 0], []
    while True:
        end = start + span
        try:
            sol = solve(func, y, start, end, max_steps=max_steps - steps[0] - steps[1], dense=dense,
                        first_step=h, event=watch, **kwargs)
        except MaxStepsExceeded as err:
            raise MaxStepsExceeded(f"no event in max_steps={max_steps} steps from t={t0:.6g} ({err}); raise "
                                   "max_steps (odeint: options max_num_steps) or check that an element of the "
                                   "guard crosses zero") from err
        steps = [steps[0] + sol.steps_accepted, steps[1] + sol.steps_rejected, steps[2] + sol.func_calls]
        parts.append(sol)
        if sol.event is not None:
            break
        if steps[0] + steps[1] >= max_steps:
            raise MaxStepsExceeded(f"no event in max_steps={max_steps} steps from t={t0:.6g} (up to t={end:.6g}); "
                                   "raise max_steps (odeint: options max_num_steps) or check that an element of "
                                   "the guard crosses zero")
        start, y, h, span = end, sol.y1, sol.last_step, 2 * span
    sol.steps_accepted, sol.steps_rejected, sol.func_calls = steps
    if len(parts) > 1:
        sol.times = [v for p in parts[:-1] for v in p.times[:-1]] + parts[-1].times
        if dense:
            sol.trajectory = Trajectory(sol.times, torch.cat([p.trajectory.coefs for p in parts]))
    return sol
