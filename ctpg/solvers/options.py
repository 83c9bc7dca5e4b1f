"""Checks of solver options at construction, so a bad setting fails where it is written
(as torch.optim's constructors do), not at the first solve with an error that blames
the dynamics."""
from __future__ import annotations

import math
import numbers

import torch

from ctpg.solvers.methods import make_stepper


def check_method(owner: str, name: str, method: str, extra: tuple[str, ...] = (), adaptive: bool = False) -> None:
    """Raise ValueError unless `method` is a solver name (or one of `extra`) and, when
    `adaptive` (no fixed step given), one with an error estimate."""
    if method in extra:
        return
    if not isinstance(method, str):
        raise ValueError(f"{owner}: {name} must be a solver name (a string), got {method!r}")
    try:
        stepper = make_stepper(method)
    except ValueError as err:
        more = f" (or {', '.join(map(repr, extra))})" if extra else ""
        raise ValueError(f"{owner}: {name}={method!r}: {err}{more}") from None
    if adaptive and not stepper.adaptive:
        raise ValueError(f"{owner}: {name}={method!r} has no error estimate, so it needs a fixed step "
                         "(dt=..., or adjoint_dt=... for the adjoint), or choose an adaptive method "
                         "(dopri5, tsit5, bosh3, heun, dop853, dopri8, rodas5p, ...)")


def check_tolerances(owner: str, rtol, atol, prefix: str = "", both_zero_ok: bool = False) -> None:
    """Raise ValueError unless rtol and atol are non-negative and finite (numbers, or
    tensors of them for per-component tolerances) and, unless `both_zero_ok` (odeint,
    whose fixed-grid methods ignore them, as torchdiffeq's do), not both zero."""
    for name, value in ((prefix + "rtol", rtol), (prefix + "atol", atol)):
        ok = (bool(torch.all(torch.isfinite(value) & (value >= 0))) if torch.is_tensor(value)
              else isinstance(value, numbers.Real) and not isinstance(value, bool)
              and math.isfinite(value) and value >= 0)
        if not ok:
            raise ValueError(f"{owner}: {name} must be a finite number >= 0 (or a tensor of them, per "
                             f"component), got {value!r}; e.g. {prefix}rtol=1e-6, {prefix}atol=1e-8")
    if not both_zero_ok and not torch.is_tensor(rtol) and not torch.is_tensor(atol) and rtol == 0 and atol == 0:
        raise ValueError(f"{owner}: {prefix}rtol and {prefix}atol are both 0, which no step can meet; "
                         "give at least one of them a positive value")


def check_positive(owner: str, name: str, value, integer: bool = False, optional: bool = True) -> None:
    """Raise ValueError unless `value` is a positive finite number (an int if `integer`),
    or None when `optional`."""
    if value is None and optional:
        return
    kind = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kind) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"{owner}: {name} must be a positive {'integer' if integer else 'number'}"
                         f"{' (or None)' if optional else ''}, got {value!r}")
