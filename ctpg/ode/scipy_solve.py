"""method="scipy_solver": the forward solve by scipy.integrate.solve_ivp (torchdiffeq's
scipy_solver), func evaluated in float64 numpy round trips.

Gradients: the adjoint modes have a meaning, their backward solve running on ctpg's
solver with adjoint_method (default dopri5): "interpolating" reads y(t) from scipy's
own dense output (solve_ivp(dense_output=True): the chosen method's interpolant,
`ScipyPath`), "backsolve" needs only the outputs (Chen et al.; torchdiffeq's
odeint_adjoint defaults to scipy for the backward solve too). adjoint="direct" gives
the values (as torchdiffeq's odeint does) and a backward pass through them raises:
scipy keeps no autograd graph.

options: solver (a solve_ivp method: "RK45", "DOP853", "Radau", "BDF", "LSODA", the
default as in torchdiffeq), min_step, max_step, first_step. Cost: one func call per
solve_ivp evaluation, each a host round trip; stiff solve_ivp methods approximate the
Jacobian by finite differences (extra calls) unless the method needs none.
"""
from __future__ import annotations

import numpy as np
import torch

from ctpg.errors import SolverError

NAME = "scipy_solver"
OPTION_KEYS = ("solver", "min_step", "max_step", "first_step")


def scipy_options(options: dict) -> dict:
    """solve_ivp keywords from torchdiffeq's scipy_solver options (unknown keys refused)."""
    unknown = sorted(set(options) - set(OPTION_KEYS))
    if unknown:
        raise ValueError(f"odeint: options {unknown} are not understood by method='scipy_solver'; it takes "
                         f"{', '.join(OPTION_KEYS)} (solver: a scipy.integrate.solve_ivp method, e.g. 'RK45')")
    out = dict(method=options.get("solver", "LSODA"))
    for key in ("min_step", "max_step", "first_step"):
        if options.get(key) is not None:
            out[key] = float(options[key])
    return out


def _tolerance(value):
    return value.detach().cpu().numpy().astype(np.float64) if torch.is_tensor(value) else float(value)


class ScipyPath:
    """scipy's dense output (an OdeSolution) as the interpolating adjoint reads a
    Trajectory: evaluate(s) -> [1, M] on [t0, t1] (one numpy round trip per call;
    outside it raises ValueError, never extrapolates). stored_floats: the floats its
    interpolants hold."""

    def __init__(self, solution, dtype, device):
        self.solution, self.dtype, self.device = solution, dtype, device
        self.t0, self.t1 = float(solution.t_min), float(solution.t_max)
        self._tol = 1e-12 * max(1.0, self.t1 - self.t0)
        self.stored_floats = sum(v.size for piece in solution.interpolants for v in vars(piece).values()
                                 if isinstance(v, np.ndarray)) + len(solution.ts)

    def evaluate(self, s, rows=None) -> torch.Tensor:
        s = float(s)
        if not (self.t0 - self._tol <= s <= self.t1 + self._tol):
            raise ValueError(f"t={s} is outside scipy's dense output [{self.t0}, {self.t1}]")
        y = torch.as_tensor(self.solution(min(max(s, self.t0), self.t1)), dtype=self.dtype, device=self.device)
        return y[None] if rows is None else y[None][rows]


def scipy_forward(field, y0row: torch.Tensor, s_times: list, cfg, dense: bool = False):
    """(outputs [len(s_times), M], ScipyPath or None) of dy/ds = field(s, y) from y0row
    at s_times[0]; the path (scipy's dense output) when `dense`."""
    dtype, device = y0row.dtype, y0row.device

    def rhs(s, y):
        row = torch.as_tensor(y, dtype=dtype, device=device)[None]
        with torch.no_grad():
            return field(float(s), row)[0].detach().cpu().numpy().astype(np.float64)

    from scipy.integrate import solve_ivp
    y0 = y0row[0].detach().cpu().numpy().astype(np.float64)
    result = solve_ivp(rhs, (s_times[0], s_times[-1]), y0, t_eval=s_times, rtol=_tolerance(cfg.rtol),
                       atol=_tolerance(cfg.atol), dense_output=dense, **cfg.scipy)
    if not result.success:
        raise SolverError(f"scipy's solve_ivp ({cfg.scipy['method']}) failed: {result.message}")
    outputs = torch.as_tensor(result.y.T.copy(), dtype=dtype, device=device)
    return outputs, (ScipyPath(result.sol, dtype, device) if dense else None)
