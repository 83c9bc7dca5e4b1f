"""torchdiffeq's method names and options -> ctpg.solvers.solve arguments.

torchdiffeq passes solver settings as `method` plus an `options` dict (and the adjoint
ones as `adjoint_method` plus `adjoint_options`). This module maps the ones that have a
ctpg counterpart and refuses the rest with a message that says what to use instead
(heun3 alone now). method="scipy_solver" takes scipy's options instead
(ctpg.ode.scipy_solve).
"""
from __future__ import annotations

import dataclasses

import torch

from ctpg.ode import scipy_solve
from ctpg.solvers import method_names
from ctpg.solvers.options import check_tolerances
from ctpg.solvers.tableaus import TABLEAUS

# torchdiffeq name -> ctpg name (same method)
ALIASES = {"adaptive_heun": "heun", "heun2": "heun", "fixed_adams": "implicit_adams"}
# torchdiffeq's fixed-grid solvers: fixed steps even where the ctpg method could adapt
FIXED_GRID = {"euler", "midpoint", "rk4", "heun2", "explicit_adams", "implicit_adams", "fixed_adams"}
# torchdiffeq names with no ctpg counterpart, and what to use instead
INSTEAD = {"heun3": "bosh3 or rk4 with options=dict(step_size=...)"}
OPTION_KEYS = ("step_size", "first_step", "max_num_steps", "step_t", "jump_t", "interp", "norm")
# torchdiffeq's fixed-grid solvers interpolate between their steps ("linear" or "cubic");
# ctpg's fixed steps land on every output time and events use the step's cubic Hermite,
# so the option is accepted and changes nothing
INTERP = ("linear", "cubic")


@dataclasses.dataclass
class SolveSettings:
    """One pass's solver settings in ctpg's terms (see `settings`)."""

    method: str
    rtol: object
    atol: object
    dt: float | None = None           # fixed steps (None: adaptive)
    fixed_grid: bool = False          # fixed steps landing on every output time
    first_step: float | None = None
    max_steps: int = 100_000
    tstops: tuple = ()                # in t, as the user gave them
    seminorm: bool = False
    scipy: dict | None = None         # method="scipy_solver": solve_ivp keywords (ctpg.ode.scipy_solve)

    def as_kwargs(self, grid) -> dict:
        """solve() keywords in the grid's increasing time s. Fixed-grid methods land on
        every output time (one step per output interval without step_size, as in
        torchdiffeq); adaptive ones step across them (outputs are interpolated)."""
        stops = grid.to_s(self.tstops) + (grid.s[1:-1] if self.fixed_grid else [])
        dt = self.dt
        if self.fixed_grid and dt is None:
            dt = max(b - a for a, b in zip(grid.s, grid.s[1:]))
        # odeint checks the tolerances once per call (ctpg.ode.odeint._check_values), not per solve
        return dict(method=self.method, rtol=self.rtol, atol=self.atol, dt=dt, first_step=self.first_step,
                    max_steps=self.max_steps, tstops=sorted(set(stops)), check_tolerance=False)


def solver_name(method: str | None) -> tuple[str, bool]:
    """(ctpg method name, fixed grid?) for a torchdiffeq or ctpg method name."""
    method = "dopri5" if method is None else method
    if method in INSTEAD:
        raise ValueError(f"odeint: torchdiffeq's method {method!r} has no ctpg counterpart; use {INSTEAD[method]}. "
                         f"ctpg methods: {', '.join(method_names())}")
    name = ALIASES.get(method, method)
    if name not in method_names() and not name.startswith("auto:"):
        raise ValueError(f"odeint: unknown method {method!r}; choose one of {', '.join(method_names())} "
                         f"(torchdiffeq's names {', '.join(sorted(ALIASES))} are accepted too)")
    fixed = method in FIXED_GRID or name in FIXED_GRID or (name in TABLEAUS and TABLEAUS[name].err is None)
    return name, fixed


def settings(method, rtol, atol, options, *, adjoint: bool = False) -> SolveSettings:
    """SolveSettings from torchdiffeq-style arguments.

    options: step_size (fixed steps of at most this size), first_step, max_num_steps,
    step_t and jump_t (times to land on: both become stops where the step restarts),
    and in adjoint_options norm="seminorm" (steps controlled by the adjoint alone)."""
    options = dict(options or {})
    what = "adjoint_options" if adjoint else "options"
    if method == scipy_solve.NAME:
        _check_tolerances(rtol, atol)
        return SolveSettings(method, rtol, atol, scipy=scipy_solve.scipy_options(options))
    unknown = sorted(set(options) - set(OPTION_KEYS))
    if unknown:
        raise ValueError(f"odeint: {what} key(s) {unknown} are not supported; ctpg.odeint understands "
                         f"{', '.join(OPTION_KEYS[:-1])} and, in adjoint_options, norm='seminorm'")
    if options.pop("interp", "cubic") not in INTERP:
        raise ValueError(f"odeint: {what}['interp'] must be one of {INTERP} (torchdiffeq's fixed-grid option)")
    norm = options.pop("norm", None)
    if norm is not None and not (adjoint and norm == "seminorm"):
        raise ValueError(f"odeint: {what}['norm']={norm!r} is not supported: the error norm is the RMS over all "
                         "components; adjoint_options=dict(norm='seminorm') leaves the parameter gradient out of "
                         "the adjoint's step control")
    name, fixed = solver_name(method)
    step_size = options.get("step_size")
    if step_size is not None and not (float(step_size) > 0):
        raise ValueError(f"odeint: {what}['step_size'] must be positive, got {step_size}")
    _check_tolerances(rtol, atol)
    return SolveSettings(name, rtol, atol, dt=None if step_size is None else float(step_size),
                         fixed_grid=fixed or step_size is not None, first_step=options.get("first_step"),
                         max_steps=int(options.get("max_num_steps", 100_000)),
                         tstops=tuple(float(v) for v in options.get("step_t", ())) +
                         tuple(float(v) for v in options.get("jump_t", ())),
                         seminorm=norm == "seminorm")


def _check_tolerances(rtol, atol) -> None:
    """check_tolerances, and no tolerance that requires grad (nothing differentiates it)."""
    for name, value in (("rtol", rtol), ("atol", atol)):
        if torch.is_tensor(value) and value.requires_grad:
            raise ValueError(f"odeint: {name} cannot require gradient; pass {name}.detach()")
    check_tolerances("odeint", rtol, atol, both_zero_ok=True)
