"""How big a step: the per-sample error norm, the automatic first step and the PI
step-size controller. Pure helpers, shared by every stepper.

The leading dimension of the state y indexes independent samples. A step is judged
by each sample's own RMS of err / (atol + rtol max(|y0|, |y1|)) over its components
and accepted when the worst sample's (and the quadrature's, if any) is <= 1: rtol
and atol promise accuracy per sample, whatever else shares the batch.
"""
from __future__ import annotations

import dataclasses
import math

import torch

INF = float("inf")


def scaled_rms(err: torch.Tensor, y0: torch.Tensor, y1: torch.Tensor, rtol, atol) -> torch.Tensor:
    """Per-sample RMS [N] of err / (atol + rtol max(|y0|, |y1|)) over all but the leading
    axis (a 1-D tensor is one sample). A component with zero scale (atol = 0 and a zero
    value) counts as 0 when its error is 0 and as inf otherwise, never as NaN."""
    scale = atol + rtol * torch.maximum(y0.abs(), y1.abs())
    ratio = torch.where(scale > 0, err / scale.clamp_min(torch.finfo(err.dtype).tiny),
                        torch.where(err == 0, 0.0, INF))
    if ratio.ndim <= 1:
        return torch.sqrt(torch.mean(ratio ** 2)).reshape(1)
    return torch.sqrt(torch.mean(ratio.reshape(ratio.shape[0], -1) ** 2, dim=1))


def error_ratio(groups) -> torch.Tensor:
    """Worst per-sample error ratio over `groups`, an iterable of (err, y0, y1, rtol,
    atol); inf when any new value or error is NaN/Inf, so such a step is rejected.
    Returns a 0-dim tensor (the caller synchronises once to read it)."""
    worst, finite = None, None
    for err, y0, y1, rtol, atol in groups:
        if err.numel() == 0:             # e.g. a gradient quadrature with no parameters
            continue
        rms = scaled_rms(err, y0, y1, rtol, atol).max()
        ok = torch.isfinite(y1).all() & torch.isfinite(rms)
        worst = rms if worst is None else torch.maximum(worst, rms)
        finite = ok if finite is None else finite & ok
    return torch.where(finite, worst, torch.full_like(worst, INF))


class ErrorNorm:
    """The accept/reject measure of a solve: per-sample error ratios of y and of the
    quadratures q (one group when q is shared by the batch, one row per sample with
    per-sample steps), with rtol/atol (per component or scalar), an optional slice of
    y's last axis (`error_on`, a seminorm) and the quadrature left out on request."""

    def __init__(self, rtol, atol, error_on=None, quadrature_in_norm=True, quadrature_tolerances=None):
        self.rtol, self.atol, self.error_on = rtol, atol, error_on
        self.quadrature_in_norm = quadrature_in_norm
        # per-component tolerances describe y; the quadrature takes their tightest (or the
        # given pair: a compiled attempt passes 0-dim tensors and must not read them back)
        self.q_rtol, self.q_atol = quadrature_tolerances or (
            float(v.min()) if torch.is_tensor(v) else v for v in (rtol, atol))

    def select(self, v):
        return v if self.error_on is None else v[..., self.error_on]

    def tolerances(self):
        rtol, atol = self.rtol, self.atol
        if self.error_on is not None:
            rtol, atol = (self.select(v) if torch.is_tensor(v) and v.dim() else v for v in (rtol, atol))
        return rtol, atol

    def groups(self, step, y, q):
        """(err, y0, y1, rtol, atol) of y and, when it counts, of q."""
        rtol, atol = self.tolerances()
        out = [(self.select(step.err), self.select(y), self.select(step.y1), rtol, atol)]
        if q is not None and self.quadrature_in_norm and q.numel():
            out.append((step.err_q, q, step.q1, self.q_rtol, self.q_atol))
        return out

    @torch.no_grad()   # step control is not part of what autograd differentiates (direct mode)
    def ratio(self, step, y, q) -> float:
        """The step's worst error ratio (one number for shared steps)."""
        return float(error_ratio(self.groups(step, y, q)))

    @torch.no_grad()
    def sample_ratios(self, step, y, q) -> torch.Tensor:
        """Each sample's own error ratio [N] (per-sample steps; q per sample too); inf
        where its new values are not finite."""
        ratio = None
        for err, y0, y1, rtol, atol in self.groups(step, y, q):
            rms = scaled_rms(err, y0, y1, rtol, atol)
            finite = torch.isfinite(y1.reshape(y1.shape[0], -1)).all(1) & torch.isfinite(rms)
            rms = torch.where(finite, rms, torch.full_like(rms, INF))
            ratio = rms if ratio is None else torch.maximum(ratio, rms)
        return ratio


def initial_step(func, t0: float, y0, f0, order: int, rtol, atol, direction: float,
                 select=None, per_sample: bool = False):
    """Automatic first step (Hairer, Norsett & Wanner, Solving ODEs I, II.4), per sample.

    Each sample proposes its own step; the smallest counts, except that a sample with
    no dynamics (f = 0 and no change) constrains nothing. `func(t, y)` returns the
    derivative of y; `select` picks the components that control the step (as the
    solve's error norm does). Costs one call of func.
    """
    select = select or (lambda v: v)
    rms = _first_step_norm(select(y0), rtol, atol)
    d0, d1 = rms(select(y0)), rms(select(f0))
    if per_sample:
        return _initial_step_per_sample(func, t0, y0, f0, order, direction, select, rms, d0, d1)
    moving = d1 >= 1e-5
    h0_rows = torch.where((d0 < 1e-5) | ~moving, torch.full_like(d0, 1e-6), 0.01 * d0 / d1.clamp_min(1e-300))
    h0 = float(h0_rows[moving].min()) if bool(moving.any()) else 1e-6
    f1 = func(t0 + direction * h0, y0 + direction * h0 * f0)
    d2 = rms(select(f1 - f0)) / h0
    d12 = torch.maximum(d1, d2)
    active = d12 > 1e-15
    if not bool(active.any()):
        return max(1e-6, h0 * 1e-3)
    h1 = float(((0.01 / d12[active]) ** (1.0 / (order + 1))).min())
    return min(100 * h0, h1)


def _first_step_norm(y0, rtol, atol):
    """Each sample's RMS of a vector v scaled by atol + rtol |y0| (the first-step rule's norm)."""
    scale = atol + rtol * y0.abs()
    # Components with zero scale (atol = 0 at a zero value, e.g. an accrued cost at t0)
    # say nothing about the step size yet: they are left out, not divided by zero.
    scale = torch.where(scale > 0, scale, torch.full_like(scale, INF))
    return lambda v: scaled_rms(v, torch.zeros_like(v), torch.zeros_like(v), 0.0, scale)


def _initial_step_per_sample(func, t0, y0, f0, order, direction, select, rms, d0, d1) -> torch.Tensor:
    """The same rule with one first step per sample [N]; func(t, y) takes a float t."""
    h0 = torch.where((d0 < 1e-5) | (d1 < 1e-5), torch.full_like(d0, 1e-6), 0.01 * d0 / d1.clamp_min(1e-300))
    shape = (-1,) + (1,) * (y0.ndim - 1)
    f1 = func(t0 + direction * h0, y0 + direction * h0.view(shape).to(y0.dtype) * f0)
    d12 = torch.maximum(d1, rms(select(f1 - f0)) / h0)
    h1 = torch.where(d12 <= 1e-15, torch.clamp(h0 * 1e-3, min=1e-6), (0.01 / d12.clamp_min(1e-300)) ** (1.0 / (order + 1)))
    return torch.minimum(100 * h0, h1).to(torch.float64)


@dataclasses.dataclass
class PIController:
    """Proportional-integral step-size control (Gustafsson; Hairer & Wanner, Solving ODEs II, IV.2).

    The proportional term reacts to the current error, the integral term to the
    previous accepted one, which damps the oscillation of a plain controller. The
    exponents follow the order of the error estimate of the step just taken (a solve
    that switches methods passes each step's own).
    """

    safety: float = 0.9
    min_factor: float = 0.2
    max_factor: float = 10.0
    beta1: float = 0.7
    beta2: float = 0.4
    _prev_ratio: float = 1.0
    _rejected_last: bool = False

    def propose(self, ratio: float, error_order: int) -> tuple[bool, float]:
        """Return (accept, factor by which to scale the step)."""
        k = error_order + 1
        if not math.isfinite(ratio):
            self._rejected_last = True
            return False, self.min_factor
        if ratio <= 1.0:
            if ratio == 0.0:
                factor = self.max_factor
            else:
                factor = self.safety * ratio ** (-self.beta1 / k) * self._prev_ratio ** (self.beta2 / k)
            factor = min(self.max_factor, max(self.min_factor, factor))
            if self._rejected_last:
                factor = min(factor, 1.0)
            self._prev_ratio = max(ratio, 1e-4)
            self._rejected_last = False
            return True, factor
        self._rejected_last = True
        return False, max(self.min_factor, self.safety * ratio ** (-1.0 / k))

    @property
    def memory(self) -> tuple[float, bool]:
        """(previous accepted error ratio, whether the last step was rejected): the state a
        loop that runs the controller elsewhere (ctpg.solvers.on_device) takes and gives back."""
        return self._prev_ratio, self._rejected_last

    @memory.setter
    def memory(self, value) -> None:
        self._prev_ratio, self._rejected_last = value

    def reset(self) -> None:
        """Forget the error history (after a switch of method)."""
        self._prev_ratio, self._rejected_last = 1.0, False
