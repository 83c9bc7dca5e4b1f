"""One explicit Runge-Kutta step for any tableau, and the pure helpers around it:
the scaled error norm, automatic first-step selection and the PI step-size controller."""
from __future__ import annotations

import dataclasses
import math

import torch

from ctpg.solvers.tableaus import Tableau


def rk_step(tableau: Tableau, func, t0: float, y0: torch.Tensor, h: float, f0: torch.Tensor):
    """Advance y' = func(t, y) by one step h from (t0, y0) with f0 = func(t0, y0) given.

    Returns (y1, err, stages): err is the local error estimate h sum e_i k_i (None for
    methods without one) and stages the list of k_i. Costs stages - 1 calls of func.
    Differentiable by autograd (BPTT relies on that).
    """
    stages = [f0]
    for c_i, a_i in zip(tableau.c[1:], tableau.a[1:]):
        y_i = _combine(y0, h, a_i, stages)
        stages.append(func(t0 + float(c_i) * h, y_i))
    y1 = _combine(y0, h, tableau.b, stages)
    err = None if tableau.err is None else _combine(None, h, tableau.err, stages)
    return y1, err, stages


def _combine(y0, h, weights, stages):
    """y0 + h sum_i w_i k_i, skipping zero weights (y0 None means start from zero)."""
    total = None
    for w, k in zip(weights, stages):
        if w:
            term = float(w) * k
            total = term if total is None else total + term
    if total is None:
        return torch.zeros_like(stages[0]) if y0 is None else y0
    return h * total if y0 is None else y0 + h * total


def error_ratio(err, y0, y1, rtol, atol) -> float:
    """RMS over all components of err / (atol + rtol * max(|y0|, |y1|)); a step is
    accepted when this is <= 1. rtol and atol may be floats or tensors that broadcast
    against y (per-component tolerances)."""
    return _rms(err / (atol + rtol * torch.maximum(y0.abs(), y1.abs())))


def _rms(v: torch.Tensor) -> float:
    return float(torch.sqrt(torch.mean(v ** 2)))


def initial_step(func, t0, y0, f0, order: int, rtol, atol, direction: float,
                 select=None) -> float:
    """Automatic first step (Hairer, Norsett & Wanner, Solving ODEs I, II.4).

    `select` (a function of a y-shaped tensor) picks the components that control the
    step, as in the solve's error norm. Costs one extra call of func.
    """
    select = select or (lambda v: v)
    scale = atol + rtol * select(y0).abs()
    d0, d1 = _rms(select(y0) / scale), _rms(select(f0) / scale)
    h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
    f1 = func(t0 + direction * h0, y0 + direction * h0 * f0)
    d2 = _rms(select(f1 - f0) / scale) / h0
    if max(d1, d2) <= 1e-15:
        h1 = max(1e-6, h0 * 1e-3)
    else:
        h1 = (0.01 / max(d1, d2)) ** (1.0 / (order + 1))
    return min(100 * h0, h1)


@dataclasses.dataclass
class PIController:
    """Proportional-integral step-size control (Gustafsson; Hairer & Wanner, Solving ODEs II, IV.2).

    The proportional term reacts to the current error, the integral term to the
    previous accepted one, which damps the oscillation of a plain controller.
    """

    error_order: int
    safety: float = 0.9
    min_factor: float = 0.2
    max_factor: float = 10.0
    beta1: float = 0.7
    beta2: float = 0.4
    _prev_ratio: float = 1.0
    _rejected_last: bool = False

    def propose(self, ratio: float) -> tuple[bool, float]:
        """Return (accept, factor by which to scale the step)."""
        k = self.error_order + 1
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
