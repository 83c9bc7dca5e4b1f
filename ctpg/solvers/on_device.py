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
a read-back costs nothing, it is 3-18 % slower (README, Throughput); it is the form that
capturing a solve (CUDA graphs, torch.compile of an attempt) needs.
"""
from __future__ import annotations

import math

import torch

from ctpg.errors import MaxStepsExceeded, NonFiniteError, StepSizeTooSmall
from ctpg.solvers.control import error_ratio, initial_step
from ctpg.solvers.per_sample import TensorPIController
from ctpg.solvers.steppers import ExplicitRK, step_polynomial


def adaptive_on_device(run, y, q, t0: float, t1: float, sync_every: int):
    """integrate._Run.adaptive's loop with device-side control: fills run.times,
    run.pieces, the counts, run.h and run.last_step as that loop does. Explicit
    Runge-Kutta methods only."""
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
    device = y.device
    scalar = dict(dtype=torch.float64, device=device)
    flag = dict(dtype=torch.bool, device=device)
    t, h, end = (torch.tensor(float(v), **scalar) for v in (t0, run.h, t1))
    last = torch.tensor(float("nan"), **scalar)
    done, collapsed, nonfinite = (torch.zeros((), **flag) for _ in range(3))
    control = TensorPIController(torch.ones(1, **scalar), torch.zeros(1, **flag))
    row = torch.zeros(1, dtype=torch.long, device=device)
    attempts, log, block = 0, [], 1    # log per attempt, on the device: (accepted, live, end, polynomial)
    while True:
        for _ in range(block):
            live = ~done
            remaining = (end - t).abs()
            lands = (h >= remaining) | (remaining - h < 1e-10 * span)
            h_try = torch.where(lands, remaining, h)
            step = stepper.step(rhs, state, t, y, q, direction * h_try)
            with torch.no_grad():
                ratio = error_ratio(norm.groups(step, y, q)).to(torch.float64)
                accept, factor = control.propose(row, ratio.reshape(1), step.error_order)
            accept = accept[0] & live
            t_new = torch.where(lands, end, t + direction * h_try)
            f_new = step.f_last if step.f_last is not None else rhs(t_new, step.y1)
            log.append((accept, live, t_new, step_polynomial(step, f_new[0]) if run.dense else None))
            y = torch.where(accept, step.y1, y)
            q = None if q is None else torch.where(accept, step.q1, q)
            state.f = torch.where(accept, f_new[0], state.f)
            state.g = None if state.g is None else torch.where(accept, f_new[1], state.g)
            nonfinite = torch.where(live, ~torch.isfinite(ratio), nonfinite)
            last = torch.where(accept, h_try, last)
            t = torch.where(accept, t_new, t)
            h = torch.where(live, h_try * factor[0], h)
            done = direction * (end - t) <= 1e-14 * span
            collapsed = collapsed | (~done & (h < run.min_step) & (direction * (end - t) > run.min_step))
            attempts += 1
        # the one read-back of this block. Blocks double from 1 up to sync_every and stop near
        # where t1 is expected (steps left at the current size), so that a short solve wastes
        # few attempts past t1 and a long one reads back once per sync_every attempts
        stop, left, size = torch.stack([(done | collapsed).to(torch.float64), (end - t).abs(), h]).tolist()
        if stop:
            break
        block = max(1, min(sync_every, 2 * block, math.ceil(left / size)))
        if run.accepted + run.rejected + attempts >= run.max_steps:
            raise MaxStepsExceeded(f"the solver attempted max_steps={run.max_steps} steps and reached only "
                                   f"t={float(t):.6g} of [{t0}, {t1}]; raise max_steps or loosen rtol/atol")
    _record(run, log)
    if not bool(done):
        where = f"t={float(t):.6g}"
        if bool(nonfinite):
            raise NonFiniteError(f"the right-hand side returned NaN or Inf at {where} and shrinking the step "
                                 f"(below min_step={run.min_step:.3g}) did not help")
        raise StepSizeTooSmall(f"the step size fell below min_step={run.min_step:.3g} at {where}; the problem "
                               "may be stiff (drop sync_every and use method='rodas5p' or 'auto') or blowing "
                               "up: loosen rtol/atol or check the dynamics")
    run.h = float(h)
    if not torch.isnan(last):
        run.last_step = float(last)
    return y, q


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
