"""Solve y' = func(t, y) on [t0, t1] with fixed or adaptive steps, optionally keeping
the dense trajectory, landing on given stopping times, and carrying quadratures."""
from __future__ import annotations

import dataclasses
import math
import warnings

import torch

from ctpg.errors import MaxStepsExceeded, NonFiniteError, StepSizeTooSmall
from ctpg.solvers import events
from ctpg.solvers.control import ErrorNorm, PIController, initial_step
from ctpg.solvers.methods import make_stepper
from ctpg.solvers.on_device import adaptive_on_device
from ctpg.solvers.per_sample import solve_per_sample
from ctpg.trajectory import SampleTrajectory, Trajectory


CHECK_EVERY = 32      # fixed steps: read the NaN/Inf flag back from the device this often


@dataclasses.dataclass
class Solution:
    """Result of `solve`: final state (and quadratures), step counts, calls of func and
    of the Jacobian, the accepted step boundaries (None with per-sample steps: each
    sample has its own, in the trajectory) and the optional dense path. Per-sample
    steps count accepted and rejected steps over all samples."""

    y1: torch.Tensor
    steps_accepted: int
    steps_rejected: int
    func_calls: int
    times: list
    trajectory: Trajectory | None = None
    q1: torch.Tensor | None = None
    jacobian_calls: int = 0
    method_switches: int = 0
    last_step: float | torch.Tensor | None = None   # per-sample mode: a tensor [N]
    iterations: int | None = None                   # per-sample mode: batched step attempts
    event: object | None = None                     # events.EventRecord when an event ended the solve


class _Counted:
    """func as the steppers call it: (F, g) pairs, calls counted.

    At a stop (a jump of func) the value depends on the side: an evaluation exactly
    at a stop that bounds the current interval is moved to the nearest float inside
    the interval, so each side of a jump in t sees its own branch."""

    def __init__(self, func, with_quadrature: bool, per_sample: bool = False):
        self.func, self.with_quadrature, self.calls = func, with_quadrature, 0
        self.per_sample, self.rows = per_sample, None    # per-sample mode: func(t, y, rows)
        self.inside = {}        # stop time -> the float next to it inside the current interval

    def enter(self, start: float, end: float, stops: set) -> None:
        self.inside = {t: math.nextafter(t, other) for t, other in ((start, end), (end, start)) if t in stops}

    def _side(self, t):
        if not isinstance(t, torch.Tensor):
            return self.inside.get(t, t)
        for stop, inside in self.inside.items():
            t = torch.where(t == stop, torch.full_like(t, inside), t)
        return t

    def __call__(self, t, y):
        self.calls += 1
        t = self._side(t)
        out = self.func(t, y, self.rows) if self.per_sample else self.func(t, y)
        return out if self.with_quadrature else (out, None)


def solve(func, y0: torch.Tensor, t0: float, t1: float, *, method: str = "dopri5",
          rtol=None, atol=None, dt: float | None = None, first_step: float | None = None,
          max_steps: int = 100_000, min_step: float | None = None, dense: bool = False,
          error_on: slice | None = None, q0: torch.Tensor | None = None,
          quadrature_in_norm: bool = True, jacobian=None, autonomous: bool = False,
          tstops=(), per_sample: bool = False, sync_every: int | None = None, capture=None,
          check_tolerance: bool = True, event=None) -> Solution:
    """Integrate from t0 to t1 (t1 < t0 integrates backwards in time).

    y0 [N, ...]: the leading dimension indexes independent samples. Adaptive steps
    (rtol and atol required) accept a step when every sample's RMS error ratio is
    <= 1, so the tolerances are a per-sample promise; rtol and atol may be tensors that
    broadcast against one sample (per-component tolerances). `error_on`, a slice of
    y's last axis, restricts the norm to some components (a seminorm). Fixed steps
    when `dt` is given: each interval between stops is split into equal steps <= dt.

    Quadratures: with `q0` (any shape), func returns (dy, dq) where dq must not depend
    on q (an accumulated cost or gradient); q is advanced with the method's weights
    and its error counts as one more sample unless quadrature_in_norm=False.

    Methods: the explicit tableaus (euler, midpoint, heun, rk4, bosh3, dopri5, tsit5,
    dop853), the Rosenbrock methods (rosenbrock23, ros34pw2, rodas4, rodas5p) and
    "auto" (tsit5, switching to rodas5p while stiff; "auto:EXPLICIT+ROSENBROCK" picks
    the pair). Rosenbrock steps need `jacobian(t, y)` -> [N, m, m] or a
    `Linearisation`; by default it comes from autograd through func. `autonomous=True`
    says func does not depend on t, which spares the rhs call for dF/dt.

    `per_sample=True` (adaptive explicit methods): every sample has its own time, step
    size and accept/reject decision, so a sample's result does not depend on its batch
    (see ctpg.solvers.per_sample: func is then called as func(t [k], y [k, ...], rows
    [k]), quadratures are per sample, q0 [N, ...], and the dense output is a
    SampleTrajectory). Fixed steps are batch-independent already and ignore it.

    `sync_every=k` (adaptive explicit methods, shared steps): the step control stays on
    the device and the host reads it back every k attempts instead of every step (see
    ctpg.solvers.on_device): the same steps, for GPUs where a read-back stalls the queue.
    With it, `capture` (an on_device.CapturedField: func as a pure function of tensors)
    runs every step attempt as one torch.compile'd function.

    `event`: an events.Watch; the solve stops at the first time where a sample's guard
    crosses zero (located on the step's dense output, see ctpg.solvers.events) and
    Solution.event records it (None when t1 came first). Shared steps only, no
    quadratures.

    `check_tolerance`: warn (once, here) when rtol and atol ask for more relative
    accuracy than y0's dtype carries (see `unreachable_tolerance`); a front end that
    makes several solves checks once itself and passes False.

    `tstops`: times strictly between t0 and t1 where the solve must land, e.g. where
    func jumps in t; the step restarts there (func is evaluated afresh), and func is
    evaluated on each side of a stop just inside that side (the neighbouring float),
    so a jump written either way (t < s or t <= s) gives each interval its own branch.

    Cost: explicit: stages - 1 func calls per attempted step (FSAL) or stages, one more
    per stop and one for the automatic first step. Rosenbrock: stages calls plus one
    Jacobian and one LU factorisation per step (W-methods reuse the Jacobian while
    steps are accepted). Raises MaxStepsExceeded after max_steps attempted steps,
    StepSizeTooSmall when the step falls below min_step (default 1e-12 |t1 - t0|), and
    NonFiniteError when func keeps returning NaN/Inf however small the step (a NaN in
    a trial step merely rejects it) or a fixed step produces NaN/Inf.
    """
    if not t1 != t0:
        raise ValueError(f"the integration interval is empty (t0 = t1 = {t0})")
    if not (math.isfinite(t0) and math.isfinite(t1)):
        raise ValueError(f"the integration interval must be finite, got [{t0}, {t1}]")
    if dense and t1 < t0:
        raise ValueError("dense output is only kept for forward-in-time solves (t1 > t0)")
    adaptive = dt is None
    per_sample = per_sample and adaptive
    rhs = _Counted(func, q0 is not None, per_sample)
    if jacobian is None:
        from ctpg.solvers.jacobian import autograd_jacobian
        jacobian = autograd_jacobian(func, q0 is not None)
    stepper = make_stepper(method, jacobian=jacobian, autonomous=autonomous)
    if adaptive and not stepper.adaptive:
        raise ValueError(f"method {method!r} has no error estimate: give a fixed step, e.g. dt=0.01, "
                         "or choose an adaptive method (dopri5, tsit5, bosh3, heun, dop853, rodas5p, ...)")
    if adaptive and (rtol is None or atol is None):
        raise ValueError("rtol and atol are required for adaptive steps, e.g. rtol=1e-6, atol=1e-8")
    if adaptive and check_tolerance:
        warn_if_unreachable(rtol, atol, y0, stacklevel=3)
    bounds = _stop_points(t0, t1, tstops)
    if sync_every is not None and not (isinstance(sync_every, int) and sync_every >= 1
                                       and adaptive and not per_sample):
        raise ValueError(f"sync_every must be a positive integer and needs adaptive shared steps (no dt, "
                         f"per_sample=False), got sync_every={sync_every!r}")
    if event is not None and (per_sample or sync_every is not None or q0 is not None):
        raise ValueError("events need shared steps on the host without quadratures (per_sample=False, "
                         "sync_every=None, q0=None)")
    if capture is not None and sync_every is None:
        raise ValueError("capture compiles the attempts of the device-side loop: give sync_every too")
    if per_sample:
        return _solve_per_sample(rhs, stepper, y0, q0, bounds, ErrorNorm(rtol, atol, error_on, quadrature_in_norm),
                                 first_step, max_steps, min_step, dense)
    run = _Run(rhs, stepper, dense, max_steps, sync_every, capture)
    run.watch = event
    y, q = y0, q0
    if adaptive:
        norm = ErrorNorm(rtol, atol, error_on, quadrature_in_norm)
        run.prepare_adaptive(norm, first_step, min_step, t0, t1)
    for a, b in zip(bounds[:-1], bounds[1:]):
        rhs.enter(a, b, set(bounds[1:-1]))
        y, q = run.adaptive(y, q, a, b) if adaptive else run.fixed(y, q, a, b, dt)
        if run.event is not None:
            break
    trajectory = Trajectory.from_pieces(run.times, run.pieces) if dense else None
    return Solution(y, run.accepted, run.rejected, rhs.calls, run.times, trajectory, q,
                    getattr(stepper, "jacobian_calls", 0), run.switches, run.last_step, event=run.event)


def _solve_per_sample(rhs, stepper, y, q, bounds, norm, first_step, max_steps, min_step, dense) -> Solution:
    counts, pieces, h = dict(accepted=0, rejected=0, iterations=0), [], first_step
    for a, b in zip(bounds[:-1], bounds[1:]):
        rhs.enter(a, b, set(bounds[1:-1]))
        y, q, more, h = solve_per_sample(rhs, stepper, y, q, a, b, norm, h, max_steps,
                                         1e-12 * abs(bounds[-1] - bounds[0]) if min_step is None else min_step,
                                         dense, counts)
        pieces += more
    trajectory = SampleTrajectory.from_pieces(y.shape[0], pieces, bounds[0], bounds[-1]) if dense else None
    return Solution(y, counts["accepted"], counts["rejected"], rhs.calls, None, trajectory, q,
                    last_step=h, iterations=counts["iterations"])


def _stop_points(t0, t1, tstops) -> list:
    """[t0, stops strictly inside in the direction of integration..., t1]."""
    direction = 1.0 if t1 > t0 else -1.0
    inside = sorted({float(s) for s in tstops if direction * (s - t0) > 0 and direction * (t1 - s) > 0},
                    key=lambda s: direction * s)
    return [float(t0)] + inside + [float(t1)]


# Relative accuracy below eps / UNREACHABLE is where steps collapse: measured with dopri5 in
# float32 (eps 1.2e-7) on a damped oscillator, y' = -y and van der Pol over [0, 10], atol 0:
# rtol 1e-8 takes the steps of float64 (+2 %), rtol 1e-9 5x more, rtol 1e-10 fails.
UNREACHABLE = 30


def unreachable_tolerance(rtol, atol, y0: torch.Tensor) -> str | None:
    """The warning to give when rtol and atol ask for more relative accuracy than y0's
    dtype carries, else None. The asked accuracy is rtol + atol / max|y0| (the tightest
    per-component values); below eps / UNREACHABLE the error estimate is rounding
    noise, so steps shrink towards min_step (measured, see UNREACHABLE). One read-back
    of max|y0|."""
    smallest = [float(v.min()) if torch.is_tensor(v) else float(v) for v in (rtol, atol)]
    eps = torch.finfo(y0.dtype).eps
    size = float(y0.detach().abs().max()) if y0.numel() else 0.0
    asked = smallest[0] + (smallest[1] / size if size > 0 else float("inf"))
    if not asked < eps / UNREACHABLE:
        return None
    return (f"rtol={smallest[0]:.1e} with atol={smallest[1]:.1e} asks for a relative accuracy of {asked:.1e} "
            f"at |y0| = {size:.2g}, below what {y0.dtype} carries (eps {eps:.1e}); the steps will shrink until "
            f"rounding dominates and the solve may take many more steps or fail: use float64, or rtol and "
            f"atol / |y| of at least {eps / UNREACHABLE:.0e}")


def warn_if_unreachable(rtol, atol, y0: torch.Tensor, stacklevel: int = 2) -> None:
    """warnings.warn(unreachable_tolerance(...)) when there is something to say."""
    message = unreachable_tolerance(rtol, atol, y0)
    if message is not None:
        warnings.warn(message, stacklevel=stacklevel + 1)


def _raise_at_first_nonfinite(flags, first_index, t0, h) -> None:
    """Raise NonFiniteError naming the first fixed step whose result was not finite."""
    finite = torch.stack(flags)
    if bool(finite.all()):
        return
    i = first_index + int((~finite).nonzero()[0])
    raise NonFiniteError(f"the right-hand side returned NaN or Inf at t={t0 + i * h:.6g} (fixed step to "
                         f"t={t0 + (i + 1) * h:.6g}); a fixed step cannot shrink: use a smaller dt or adaptive steps")


class _Run:
    """The state of one solve across its stop intervals."""

    def __init__(self, rhs, stepper, dense, max_steps, sync_every=None, capture=None):
        self.rhs, self.stepper, self.dense, self.max_steps = rhs, stepper, dense, max_steps
        self.sync_every, self.capture = sync_every, capture
        self.times, self.pieces = [], []
        self.accepted = self.rejected = self.switches = 0
        self.last_step = None
        self.watch, self.event = None, None     # events.Watch, and the EventRecord that stopped the solve

    def keeps_piece(self) -> bool:
        return self.dense or self.watch is not None

    def stopped_at_event(self, coefs, t_a: float, t_b: float) -> torch.Tensor | None:
        """After an accepted step [t_a, t_b]: None, or the state at the batch's earliest
        event on it, the step (time, stored piece) cut there and run.event set."""
        roots = self.watch.check(coefs, t_a, t_b)
        if roots is None:
            return None
        times = roots.time[roots.hit]
        t_event = float(times.min() if t_b > t_a else times.max())
        rows = (roots.hit & (roots.time == t_event)).nonzero()[:, 0]
        ratio = (t_event - t_a) / (t_b - t_a)
        y = events.evaluate_piece(coefs, torch.full((coefs.shape[1],), ratio, dtype=torch.float64,
                                                    device=coefs.device))
        self.times[-1] = t_event
        if self.dense:
            self.pieces[-1] = events.truncate_piece(coefs, ratio)
        self.event = events.EventRecord(t_event, rows, roots.index[rows], y, roots)
        return y

    def prepare_adaptive(self, norm, first_step, min_step, t0, t1):
        self.norm, self.h = norm, first_step
        self.min_step = 1e-12 * abs(t1 - t0) if min_step is None else min_step
        self.controller = PIController()

    def fixed(self, y, q, t0, t1, dt):
        if not (dt > 0 and math.isfinite(dt)):
            raise ValueError(f"dt must be a positive number, got {dt}")
        n = max(1, math.ceil(abs(t1 - t0) / dt - 1e-9))
        if self.accepted + n > self.max_steps:
            raise MaxStepsExceeded(f"dt={dt} needs {n} steps on [{t0}, {t1}], more than max_steps="
                                   f"{self.max_steps}; raise max_steps or use a larger dt")
        h = (t1 - t0) / n
        state = self.stepper.start(self.rhs, t0, y)
        if not self.times:
            self.times.append(t0)
        flags = []      # per step, on the device: read back every CHECK_EVERY steps, not every step
        for i in range(n):
            t = t0 + i * h
            step = self.stepper.step(self.rhs, state, t, y, q, h)
            t_next = t1 if i == n - 1 else t0 + (i + 1) * h
            flags.append(torch.isfinite(step.y1).all())
            if (i + 1) % CHECK_EVERY == 0 or i == n - 1:
                _raise_at_first_nonfinite(flags, i + 1 - len(flags), t0, h)
                flags = []
            need_f = self.keeps_piece() or i < n - 1
            coefs = self.stepper.accept(self.rhs, state, step, t_next, self.keeps_piece()) if need_f else None
            if self.dense:
                self.pieces.append(coefs)
            self.times.append(t_next)
            y, q = step.y1, step.q1
            self.accepted += 1
            if self.watch is not None:
                y_event = self.stopped_at_event(coefs, t, t_next)
                if y_event is not None:
                    if flags:
                        _raise_at_first_nonfinite(flags, i + 1 - len(flags), t0, h)
                    self.last_step = abs(h)
                    return y_event, q
        self.last_step = abs(h)
        return y, q

    def adaptive(self, y, q, t0, t1):
        if self.sync_every:
            return adaptive_on_device(self, y, q, t0, t1, self.sync_every, self.capture)
        direction = 1.0 if t1 > t0 else -1.0
        span = abs(t1 - t0)
        stepper = self.stepper
        state = stepper.start(self.rhs, t0, y)
        if self.h is None:
            with torch.no_grad():
                self.h = initial_step(lambda t, z: self.rhs(t, z)[0], t0, y.detach(), state.f.detach(),
                                      stepper.order, *self.norm.tolerances(), direction, self.norm.select)
        if not self.times:
            self.times.append(t0)
        t, h, switches = t0, self.h, state.switches
        nonfinite_at = None
        while direction * (t1 - t) > 1e-14 * span:
            if self.accepted + self.rejected >= self.max_steps:
                raise MaxStepsExceeded(
                    f"the solver took max_steps={self.max_steps} steps and reached only t={t:.6g} "
                    f"of [{t0}, {t1}]; raise max_steps, loosen rtol/atol, try a stiff method "
                    "(method='rodas5p' or 'auto'), or check the dynamics for a blow-up")
            remaining = abs(t1 - t)
            if h >= remaining or remaining - h < 1e-10 * span:
                h = remaining      # land exactly on t1 instead of leaving a sliver
            step = stepper.step(self.rhs, state, t, y, q, direction * h)
            ratio = self.norm.ratio(step, y, q)
            ok, factor = self.controller.propose(ratio, step.error_order)
            if ok:
                t_next = t1 if h == remaining else t + direction * h
                coefs = stepper.accept(self.rhs, state, step, t_next, self.keeps_piece())
                if self.dense:
                    self.pieces.append(coefs)
                t_prev = t
                t, y, q = t_next, step.y1, step.q1
                # a shrinking step hints that a kept (W-method) Jacobian no longer fits
                state.stale = state.stale or factor < 1.0
                self.times.append(t)
                self.accepted += 1
                self.last_step = h
                nonfinite_at = None
                if state.switches != switches:     # a new method: forget the old error history
                    self.switches += state.switches - switches
                    switches = state.switches
                    self.controller.reset()
                if self.watch is not None:
                    y_event = self.stopped_at_event(coefs, t_prev, t)
                    if y_event is not None:
                        self.h = h * factor
                        return y_event, q
            else:
                stepper.reject(state, step)
                self.rejected += 1
                nonfinite_at = t if not math.isfinite(ratio) else None
            h *= factor
            if h < self.min_step and direction * (t1 - t) > self.min_step:
                self._step_collapsed(t, nonfinite_at)
        self.h = h
        return y, q

    def _step_collapsed(self, t, nonfinite_at):
        if nonfinite_at is not None:
            raise NonFiniteError(
                f"the right-hand side returned NaN or Inf at t={t:.6g} and shrinking the step "
                f"(below min_step={self.min_step:.3g}) did not help")
        raise StepSizeTooSmall(
            f"the step size fell below min_step={self.min_step:.3g} at t={t:.6g}; the problem may be "
            "stiff (try method='rodas5p' or 'auto'), discontinuous (give its breakpoints as tstops) or "
            "blowing up: loosen rtol/atol, smooth the dynamics, or use fixed steps (dt=...)")
