"""The stored forward trajectory: a piecewise polynomial in time, evaluable at any t.

CTPG's backward pass reads x(t) only through these objects. Each solver step
[t_i, t_i + h_i] keeps the coefficients of its local interpolant in the normalised
time theta = (t - t_i) / h_i, so evaluation is a binary search plus Horner's rule.
`Trajectory` holds one mesh shared by the whole batch (shared step sizes);
`SampleTrajectory` one mesh per sample (per-sample step sizes). Both answer
`evaluate(t, rows)` for a float t (every selected sample at t) or a tensor of times,
one per selected sample, and refuse to extrapolate.
"""
from __future__ import annotations

import bisect

import torch


def _horner(c: torch.Tensor, theta) -> torch.Tensor:
    """sum_p c[p] theta^p for c [P+1, ...] (theta broadcasting against c[0])."""
    y = c[-1]
    for p in range(c.shape[0] - 2, -1, -1):
        y = c[p] + theta * y
    return y


def evaluate_at_tensor_time(times: torch.Tensor, coefs: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """y(t) of a shared-mesh trajectory (times [S+1] float64, coefs [S, P+1, N, ...]) at a
    0-dim tensor t, without reading t back to the host: the piece is found by
    searchsorted on the device. For solvers stepping inside [t0, t1]
    (ctpg.solvers.on_device); a t outside is clamped to the end pieces, not refused
    (refusing would need the read-back this path exists to avoid)."""
    t64 = t.to(torch.float64).reshape(1)
    i = (torch.searchsorted(times, t64, right=True) - 1).clamp(0, times.shape[0] - 2)
    c = coefs[i][0]
    theta = ((t64 - times[i]) / (times[i + 1] - times[i])).to(c.dtype)[0]
    return _horner(c, theta)


class Trajectory:
    """Piecewise-polynomial path y(t) on [t0, t1], one mesh for the whole batch.

    times: list of S+1 increasing step boundaries; coefs: tensor [S, P+1, N, ...] with
    y(t_i + theta h_i) = sum_p coefs[i, p] theta^p. Memory: S (P+1) numel(y) floats.
    Evaluating outside [t0, t1] raises ValueError: never a silent extrapolation.
    """

    def __init__(self, times: list[float], coefs: torch.Tensor):
        if len(times) != coefs.shape[0] + 1:
            raise ValueError("a trajectory needs one more boundary time than segments")
        self.times = times
        self.coefs = coefs
        self._tol = 1e-12 * max(1.0, abs(times[-1] - times[0]))
        self._times_tensor = None

    @classmethod
    def from_pieces(cls, times: list[float], pieces: list[torch.Tensor]) -> "Trajectory":
        """A trajectory from each step's coefficients [P_i+1, *shape]; steps of lower
        degree (a solve that switched methods) are padded with zero coefficients."""
        return cls(times, torch.stack(pad_degrees(pieces)))

    @classmethod
    def through(cls, times: list[float], values: torch.Tensor) -> "Trajectory":
        """The piecewise-linear path through `values` [S+1, N, ...] at `times`: exact at
        the knots (a fixed-step method's steps, checkpoints), linear between them."""
        return cls(list(times), torch.stack([values[:-1], values[1:] - values[:-1]], 1))

    @classmethod
    def from_state(cls, state: dict) -> "Trajectory":
        """Rebuild from a dict holding this object's attributes (vars(trajectory))."""
        return cls(state["times"], state["coefs"])

    @property
    def t0(self) -> float:
        return self.times[0]

    @property
    def t1(self) -> float:
        return self.times[-1]

    @property
    def stored_floats(self) -> int:
        return self.coefs.numel() + len(self.times)

    def _check(self, t: float) -> None:
        if not (self.t0 - self._tol <= t <= self.t1 + self._tol):
            raise ValueError(f"t={t} is outside the stored trajectory [{self.t0}, {self.t1}]")

    def _locate(self, t: float) -> tuple[int, float, float]:
        self._check(t)
        i = min(max(bisect.bisect_right(self.times, t) - 1, 0), len(self.times) - 2)
        h = self.times[i + 1] - self.times[i]
        return i, (t - self.times[i]) / h, h

    def evaluate(self, t, rows=None) -> torch.Tensor:
        """y(t) for the samples `rows` (all by default); t a float, or a tensor with one
        time per selected sample."""
        if isinstance(t, torch.Tensor) and t.ndim:
            return self._evaluate_each(t, rows)
        if isinstance(t, torch.Tensor):          # a device-side solve's time: no read-back
            return self._evaluate_on_device(t, rows)
        i, theta, _ = self._locate(float(t))
        c = self.coefs[i] if rows is None else self.coefs[i][:, rows]
        return _horner(c, theta)

    def times_tensor(self) -> torch.Tensor:
        """The boundary times as a float64 tensor on the coefficients' device (made once)."""
        if self._times_tensor is None:
            self._times_tensor = torch.tensor(self.times, dtype=torch.float64, device=self.coefs.device)
        return self._times_tensor

    def _evaluate_on_device(self, t: torch.Tensor, rows) -> torch.Tensor:
        out = evaluate_at_tensor_time(self.times_tensor(), self.coefs, t)
        return out if rows is None else out[rows]

    def _evaluate_each(self, t: torch.Tensor, rows) -> torch.Tensor:
        self._check(float(t.min())), self._check(float(t.max()))
        times = self.times_tensor()
        t64 = t.to(torch.float64)
        i = (torch.searchsorted(times, t64, right=True) - 1).clamp(0, len(self.times) - 2)
        rows = torch.arange(t.shape[0], device=t.device) if rows is None else rows
        c = self.coefs[i, :, rows]                                     # [k, P+1, ...]
        theta = ((t64 - times[i]) / (times[i + 1] - times[i])).to(c.dtype)
        return _horner(c.transpose(0, 1), theta.view((-1,) + (1,) * (c.ndim - 2)))

    def derivative(self, t: float) -> torch.Tensor:
        """dy/dt(t) of the interpolant."""
        i, theta, h = self._locate(t)
        c = self.coefs[i]
        y = c[-1] * (c.shape[0] - 1)
        for p in range(c.shape[0] - 2, 0, -1):
            y = p * c[p] + theta * y
        return y / h


class SampleTrajectory:
    """Piecewise-polynomial paths y_n(t) on [t0, t1], one mesh per sample.

    boundaries [N, S+1] (sample n's step boundaries, padded with +inf after its own
    count[n] steps) and coefs [N, S, P+1, ...]; built by `from_pieces`. Memory: the
    real pieces' coefficients and boundaries (padding is not counted as stored).
    """

    def __init__(self, boundaries: torch.Tensor, coefs: torch.Tensor, counts: torch.Tensor, t0: float, t1: float):
        self.boundaries, self.coefs, self.counts = boundaries, coefs, counts
        self.t0, self.t1 = t0, t1
        self._tol = 1e-12 * max(1.0, abs(t1 - t0))

    @classmethod
    def from_pieces(cls, n: int, pieces, t0: float, t1: float) -> "SampleTrajectory":
        """pieces: (rows [k], starts [k], ends [k], coefs [P+1, k, ...]) per solver
        iteration, in order; each row's pieces arrive in time order."""
        rows = torch.cat([p[0] for p in pieces])
        starts = torch.cat([p[1] for p in pieces])
        ends = torch.cat([p[2] for p in pieces])
        coefs = torch.cat([c.transpose(0, 1) for c in pad_degrees([p[3] for p in pieces])])   # [K, P+1, ...]
        order = torch.sort(rows, stable=True).indices
        rows, starts, ends, coefs = rows[order], starts[order], ends[order], coefs[order]
        counts = torch.bincount(rows, minlength=n)
        offsets = torch.cumsum(counts, 0) - counts
        slot = torch.arange(rows.shape[0], device=rows.device) - offsets[rows]
        width = int(counts.max())
        boundaries = torch.full((n, width + 1), float("inf"), dtype=torch.float64, device=rows.device)
        boundaries[rows, slot] = starts
        boundaries[rows, slot + 1] = ends
        table = coefs.new_zeros((n, width) + coefs.shape[1:])
        table[rows, slot] = coefs
        return cls(boundaries, table, counts, t0, t1)

    @classmethod
    def from_state(cls, state: dict) -> "SampleTrajectory":
        """Rebuild from a dict holding this object's attributes (vars(trajectory))."""
        return cls(state["boundaries"], state["coefs"], state["counts"], state["t0"], state["t1"])

    @property
    def stored_floats(self) -> int:
        pieces = int(self.counts.sum())
        return pieces * self.coefs[0, 0].numel() + pieces + self.counts.shape[0]

    def evaluate(self, t, rows=None) -> torch.Tensor:
        """y_n(t) for the samples `rows` (all by default); t a float or a tensor with
        one time per selected sample."""
        n = self.counts.shape[0]
        rows = torch.arange(n, device=self.coefs.device) if rows is None else rows
        t64 = torch.as_tensor(t, dtype=torch.float64, device=self.coefs.device).expand(rows.shape[0])
        if not bool(((t64 >= self.t0 - self._tol) & (t64 <= self.t1 + self._tol)).all()):
            raise ValueError(f"a time in {t} is outside the stored trajectory [{self.t0}, {self.t1}]")
        bounds = self.boundaries[rows]
        i = torch.searchsorted(bounds, t64[:, None].contiguous(), right=True)[:, 0] - 1
        i = torch.minimum(i.clamp_min(0), self.counts[rows] - 1)
        left = bounds.gather(1, i[:, None])[:, 0]
        right = bounds.gather(1, (i + 1)[:, None])[:, 0]
        c = self.coefs[rows, i]                                        # [k, P+1, ...]
        theta = ((t64 - left) / (right - left)).to(c.dtype)
        return _horner(c.transpose(0, 1), theta.view((-1,) + (1,) * (c.ndim - 2)))


def pad_degrees(pieces: list[torch.Tensor]) -> list[torch.Tensor]:
    """Pad each [P_i+1, ...] coefficient block with zeros to the largest degree."""
    degree = max(piece.shape[0] for piece in pieces)
    return [piece if piece.shape[0] == degree else
            torch.cat([piece, piece.new_zeros((degree - piece.shape[0],) + piece.shape[1:])])
            for piece in pieces]
