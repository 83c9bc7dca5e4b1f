"""method="scipy_solver": the forward solve by scipy.integrate.solve_ivp (torchdiffeq's
scipy_solver), func evaluated in float64 numpy round trips.

Gradients: scipy keeps no autograd graph and no dense output ctpg can read, so
adjoint="direct" and adjoint="interpolating" refuse to differentiate it;
adjoint="backsolve" has a meaning: Chen et al.'s adjoint needs only the outputs, and
its backward solve runs on ctpg's solver with adjoint_method (default dopri5), as
torchdiffeq's odeint_adjoint does (which defaults to scipy for it too).

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


def scipy_forward(field, y0row: torch.Tensor, s_times: list, cfg) -> torch.Tensor:
    """Outputs [len(s_times), M] of dy/ds = field(s, y) from y0row at s_times[0]."""
    dtype, device = y0row.dtype, y0row.device

    def rhs(s, y):
        row = torch.as_tensor(y, dtype=dtype, device=device)[None]
        with torch.no_grad():
            return field(float(s), row)[0].detach().cpu().numpy().astype(np.float64)

    from scipy.integrate import solve_ivp
    y0 = y0row[0].detach().cpu().numpy().astype(np.float64)
    result = solve_ivp(rhs, (s_times[0], s_times[-1]), y0, t_eval=s_times, rtol=_tolerance(cfg.rtol),
                       atol=_tolerance(cfg.atol), **cfg.scipy)
    if not result.success:
        raise SolverError(f"scipy's solve_ivp ({cfg.scipy['method']}) failed: {result.message}")
    return torch.as_tensor(result.y.T.copy(), dtype=dtype, device=device)
