"""Adaptive explicit steps whose step control stays on the tensors' device.

The host-controlled loop (integrate._Run.adaptive) reads each step's error ratio back
to decide accept/reject and the next step size: one host synchronisation per step,
which on a GPU stalls the queue for every step of a small system (the cost torchdiffeq
and torchode users report). Here t, h, the decision and the PI controller are 0-dim
tensors updated with torch.where: a rejected attempt leaves y, q, F and t as they were,
an attempt after t1 changes nothing, and the host looks only after a block of attempts
(have we reached t1? did the step collapse? and, in the same read, how far to t1 and
the step size). Blocks double from 1 to `sync_every` attempts and end near where t1 is
expected, so a long solve reads back once per sync_every attempts.

The controller is the host loop's, so the steps are its steps up to roundoff (a tensor
step size reorders roundings in the error estimate). What it costs: the attempts past
t1 in the last block (computed and discarded; few, the block was sized to the steps
left) and a dense polynomial for every attempt, rejected ones included. On a CPU, where
a read-back costs nothing, it is 3-19 % slower (README, Throughput); it is the form that
capturing a solve (CUDA graphs, torch.compile of an attempt) needs.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable

import torch

from ctpg.errors import MaxStepsExceeded, NonFiniteError, StepSizeTooSmall
from ctpg.solvers.control import ErrorNorm, PIController, error_ratio, initial_step
from ctpg.solvers.per_sample import pi_update
from ctpg.solvers.steppers import ExplicitRK, StepperState, step_polynomial


@dataclasses.dataclass
class CapturedField:
    """A right-hand side that whole attempts can be compiled around (capture).

    fn(ctx, t, y) -> (F, g): a pure function of tensors (g None without quadratures),
    the same object from solve to solve, so that its compiled attempts are reused;
    ctx: the tensors it reads (policy parameters, a stored trajectory), inputs of the
    compiled code, so new values do not recompile; count(calls, rows): records `calls`
    evaluations on `rows` samples where the eager function would have counted them
    (tracing skips Python side effects); cache: a dict, owned with fn, that keeps the
    compiled attempts (one per method, direction and error-norm layout; tolerances and
    times are inputs)."""

    fn: Callable
    ctx: tuple
    count: Callable
    cache: dict


def adaptive_on_device(run, y, q, t0: float, t1: float, sync_every: int, capture: CapturedField | None = None):
    """integrate._Run.adaptive's loop with device-side control: fills run.times,
    run.pieces, the counts, run.h and run.last_step as that loop does. Explicit
    Runge-Kutta methods only. With `capture`, every attempt (stages, error norm, PI
    controller, masked updates) runs as one torch.compile'd function of tensors."""
    stepper, rhs, norm = run.stepper, run.rhs, run.norm
    if not isinstance(stepper, ExplicitRK):
        raise ValueError(f"device-side step control (sync_every) supports explicit Runge-Kutta methods, not "
                         f"{stepper.name!r}; drop sync_every for Rosenbrock and auto")
    direction, span = (1.0 if t1 > t0 else -1.0), abs(t1 - t0)
    state = stepper.start(rhs, t0, y)
    if run.h is None:
        with torch.no_grad():
            run.h = initial_step(lambda t, z: rhs(t, z)[0], t0, y.detach(), state.f.detach(),
                                 stepper.order, *norm.tolerances(), direction, norm.select)
    if not run.times:
        run.times.append(t0)
    scalar = dict(dtype=torch.float64, device=y.device)
    flag = dict(dtype=torch.bool, device=y.device)
    prev_ratio, rejected_last = run.controller.memory
    t, h, prev = (torch.tensor(float(v), **scalar) for v in (t0, run.h, prev_ratio))
    carry = (t, h, y, q, state.f, state.g, prev, torch.tensor(rejected_last, **flag),
             *(torch.zeros((), **flag) for _ in range(3)), torch.tensor(float("nan"), **scalar))
    consts = tuple(torch.tensor(float(v), **scalar) for v in (t1, span, run.min_step))
    if capture is None:
        def attempt(carry):
            return _attempt(stepper, norm, run.controller, rhs, direction, run.dense, carry, consts)
    else:
        attempt = _captured(capture, stepper, norm, run, direction, rhs, consts, y.shape[0])
    attempts, log, block = 0, [], 1    # log per attempt, on the device: (accepted, live, end, polynomial)
    while True:
        for _ in range(block):
            carry, record = attempt(carry)
            log.append(record)
            attempts += 1
        t, h, done, collapsed = carry[0], carry[1], carry[8], carry[9]
        # the one read-back of this block. Blocks double from 1 up to sync_every and stop near
        # where t1 is expected (steps left at the current size), so that a short solve wastes
        # few attempts past t1 and a long one reads back once per sync_every attempts
        stop, left, size = torch.stack([(done | collapsed).to(torch.float64), (consts[0] - t).abs(), h]).tolist()
        if stop:
            break
        steps_left = math.ceil(left / size) if size > 0 and math.isfinite(left / size) else sync_every
        block = max(1, min(sync_every, 2 * block, steps_left))
        if run.accepted + run.rejected + attempts >= run.max_steps:
            raise MaxStepsExceeded(f"the solver attempted max_steps={run.max_steps} steps and reached only "
                                   f"t={float(t):.6g} of [{t0}, {t1}]; raise max_steps or loosen rtol/atol")
    _record(run, log)
    t, h, y, q, _, _, prev, rejected, done, _, nonfinite, last = carry
    t, h, prev, rejected, done, nonfinite, last = torch.stack(         # one read-back for all of them
        [v.to(torch.float64) for v in (t, h, prev, rejected, done, nonfinite, last)]).tolist()
    if not done:
        where = f"t={t:.6g}"
        if nonfinite:
            raise NonFiniteError(f"the right-hand side returned NaN or Inf at {where} and shrinking the step "
                                 f"(below min_step={run.min_step:.3g}) did not help")
        raise StepSizeTooSmall(f"the step size fell below min_step={run.min_step:.3g} at {where}; the problem "
                               "may be stiff (drop sync_every and use method='rodas5p' or 'auto') or blowing "
                               "up: loosen rtol/atol or check the dynamics")
    run.h, run.controller.memory = h, (prev, bool(rejected))
    if not math.isnan(last):
        run.last_step = last
    return y, q


def _attempt(stepper, norm, gains, rhs, direction: float, dense: bool, carry, consts):
    """One step attempt on tensors: (new carry, (accepted, live, end time, polynomial)).

    carry: (t, h, y, q, F, g, previous error ratio, rejected last, done, collapsed,
    non-finite, last accepted step); consts: (t1, |t1 - t0|, min_step). An attempt
    after t1 (not live) changes nothing but computes all the same."""
    t, h, y, q, f, g, prev, rejected, done, collapsed, nonfinite, last = carry
    end, span, min_step = consts
    live = ~done
    remaining = (end - t).abs()
    lands = (h >= remaining) | (remaining - h < 1e-10 * span)
    h_try = torch.where(lands, remaining, h)
    step = stepper.step(rhs, StepperState(f=f, g=g, t=0.0), t, y, q, direction * h_try)
    with torch.no_grad():
        ratio = error_ratio(norm.groups(step, y, q)).to(torch.float64)
        accept, factor, new_prev, new_rejected = pi_update(gains, prev, rejected, ratio, step.error_order)
    accept = accept & live
    t_new = torch.where(lands, end, t + direction * h_try)
    f_new = step.f_last if step.f_last is not None else rhs(t_new, step.y1)
    coefs = step_polynomial(step, f_new[0]) if dense else None
    t_next = torch.where(accept, t_new, t)
    h_next = torch.where(live, h_try * factor, h)
    done = direction * (end - t_next) <= 1e-14 * span
    carry = (t_next, h_next, torch.where(accept, step.y1, y), None if q is None else torch.where(accept, step.q1, q),
             torch.where(accept, f_new[0], f), None if g is None else torch.where(accept, f_new[1], g),
             torch.where(live, new_prev, prev), torch.where(live, new_rejected, rejected), done,
             collapsed | (~done & (h_next < min_step) & (direction * (end - t_next) > min_step)),
             torch.where(live, ~torch.isfinite(ratio), nonfinite), torch.where(accept, h_try, last))
    return carry, (accept, live, t_new, coefs)


def _captured(capture: CapturedField, stepper, norm, run, direction, rhs, consts, rows):
    """attempt(carry) running _attempt compiled around capture.fn, counted as the eager
    attempt counts (stages - 1 calls for FSAL methods, stages otherwise)."""
    if any(torch.is_tensor(v) for v in (norm.rtol, norm.atol)):
        raise ValueError("capture needs scalar rtol and atol (per-component tolerances are not captured)")
    tab = stepper.tableau
    # tolerances and times are inputs, not constants: a new rtol or interval reuses the code
    key = (tab.name, str(norm.error_on), norm.quadrature_in_norm, direction, run.dense)
    if key not in capture.cache:
        # constants only in the closure: the compiled attempt outlives this solve
        fn, gains, dense, error_on, in_norm = capture.fn, PIController(), run.dense, norm.error_on, \
            norm.quadrature_in_norm

        def attempt(ctx, sides, tolerances, carry, consts):
            def field(t, y):      # each side of a stop just inside it, as the eager solve does
                for stop, inside in sides:
                    t = torch.where(t == stop, inside, t)
                return fn(ctx, t, y)

            rtol, atol = tolerances
            tensor_norm = ErrorNorm(rtol, atol, error_on, in_norm, (rtol, atol))
            return _attempt(stepper, tensor_norm, gains, field, direction, dense, carry, consts)

        capture.cache[key] = torch.compile(attempt)
    compiled, calls = capture.cache[key], len(tab.c) - 1 if tab.fsal else len(tab.c)
    device = consts[0].device
    inside = list(rhs.inside.items()) or [(float("nan"), float("nan"))]
    sides = torch.tensor(inside, dtype=torch.float64, device=device)
    tolerances = torch.tensor([norm.rtol, norm.atol], dtype=torch.float64, device=device)

    def attempt(carry):
        out = compiled(capture.ctx, sides, tolerances, carry, consts)
        rhs.calls += calls
        capture.count(calls, rows)
        return out

    return attempt


def _record(run, log):
    """Read the attempts back at once: the accepted steps' end times and polynomials,
    and the counts (attempts after t1 count as neither)."""
    accepted = torch.stack([a for a, _, _, _ in log]).tolist()
    live = torch.stack([lv for _, lv, _, _ in log]).tolist()
    ends = torch.stack([t for _, _, t, _ in log]).tolist()
    run.accepted += sum(accepted)
    run.rejected += sum(lv and not a for a, lv in zip(accepted, live))
    for (_, _, _, coefs), ok, end in zip(log, accepted, ends):
        if ok:
            run.times.append(end)
            if run.dense:
                run.pieces.append(coefs)
