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

    @classmethod
    def from_pieces(cls, times: list[float], pieces: list[torch.Tensor]) -> "Trajectory":
        """A trajectory from each step's coefficients [P_i+1, *shape]; steps of lower
        degree (a solve that switched methods) are padded with zero coefficients."""
        degree = max(piece.shape[0] for piece in pieces)
        padded = [piece if piece.shape[0] == degree else
                  torch.cat([piece, piece.new_zeros((degree - piece.shape[0],) + piece.shape[1:])])
                  for piece in pieces]
        return cls(times, torch.stack(padded))

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
