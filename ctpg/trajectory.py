"""The stored forward trajectory: a piecewise polynomial in time, evaluable at any t.

CTPG's backward pass reads x(t) only through this object. Each solver step
[t_i, t_i + h_i] keeps the coefficients of its local interpolant in the normalised
time theta = (t - t_i) / h_i, so evaluation is a binary search plus Horner's rule.
"""
from __future__ import annotations

import bisect

import torch


class Trajectory:
    """Piecewise-polynomial path y(t) on [t0, t1].

    times: list of S+1 increasing step boundaries; coefs: tensor [S, P+1, *shape] with
    y(t_i + theta h_i) = sum_p coefs[i, p] theta^p. Memory: S (P+1) numel(y) floats.
    Evaluating outside [t0, t1] raises ValueError: never a silent extrapolation.
    """

    def __init__(self, times: list[float], coefs: torch.Tensor):
        if len(times) != coefs.shape[0] + 1:
            raise ValueError("a trajectory needs one more boundary time than segments")
        self.times = times
        self.coefs = coefs
        self._tol = 1e-12 * max(1.0, abs(times[-1] - times[0]))

    @property
    def t0(self) -> float:
        return self.times[0]

    @property
    def t1(self) -> float:
        return self.times[-1]

    @property
    def stored_floats(self) -> int:
        return self.coefs.numel() + len(self.times)

    def _locate(self, t: float) -> tuple[int, float, float]:
        if not (self.t0 - self._tol <= t <= self.t1 + self._tol):
            raise ValueError(f"t={t} is outside the stored trajectory [{self.t0}, {self.t1}]")
        i = min(max(bisect.bisect_right(self.times, t) - 1, 0), len(self.times) - 2)
        h = self.times[i + 1] - self.times[i]
        return i, (t - self.times[i]) / h, h

    def evaluate(self, t: float) -> torch.Tensor:
        """y(t)."""
        i, theta, _ = self._locate(t)
        c = self.coefs[i]
        y = c[-1]
        for p in range(c.shape[0] - 2, -1, -1):
            y = c[p] + theta * y
        return y

    def derivative(self, t: float) -> torch.Tensor:
        """dy/dt(t) of the interpolant."""
        i, theta, h = self._locate(t)
        c = self.coefs[i]
        y = c[-1] * (c.shape[0] - 1)
        for p in range(c.shape[0] - 2, 0, -1):
            y = p * c[p] + theta * y
        return y / h


def step_coefficients(tableau, h: float, y0, y1, f0, f1, stages) -> torch.Tensor:
    """Coefficients [P+1, *shape] of one step's interpolant in theta.

    The tableau's own interpolant where it has one, else the cubic Hermite through
    (y0, h f0) and (y1, h f1), which is third-order accurate.
    """
    if tableau.dense is not None:
        degree = len(tableau.dense[0])
        rows = [y0]
        for p in range(degree):
            rows.append(h * sum(float(w[p]) * k for w, k in zip(tableau.dense, stages) if w[p]))
        return torch.stack(rows)
    delta = y1 - y0
    return torch.stack([y0, h * f0, 3 * delta - h * (2 * f0 + f1), -2 * delta + h * (f0 + f1)])
