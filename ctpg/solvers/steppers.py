"""How to step: one protocol for explicit Runge-Kutta and linearly implicit
(Rosenbrock) steps, and a stepper that switches between the two.

A stepper advances y' = F(t, y) (and, optionally, quadratures q' = g(t, y) whose
rate never depends on q, such as an accumulated cost or gradient) by one step:

    state = stepper.start(rhs, t0, y0)          # F (and g) at the start: one rhs call
    step = stepper.step(rhs, state, t, y, q, h)   # y1, q1, error estimates
    coefs = stepper.accept(rhs, state, step, t1, dense)   # after the controller accepts
    stepper.reject(state, step)                   # ... or rejects

`rhs(t, y)` returns (F, g), g None without quadratures. The integration loop, the
step-size control and the trajectory storage never ask which kind they drive; the
step reports the order of its error estimate (for the controller), its dense output
as coefficients of theta^p (for the trajectory), and, where the stepper can tell, an
estimate of |h lambda| of the fastest mode (for stiffness detection).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable

import numpy as np
import torch

from ctpg.solvers.rosenbrock_tableaus import RosenbrockTableau
from ctpg.solvers.tableaus import Tableau


@dataclasses.dataclass
class Step:
    """One attempted step: new values, error estimates and what `accept` needs."""

    y1: torch.Tensor
    q1: torch.Tensor | None
    err: torch.Tensor | None
    err_q: torch.Tensor | None
    error_order: int | None
    h: float
    y0: torch.Tensor
    f0: torch.Tensor       # F at the step start
    vectors: list          # stage vectors the dense output is built from
    dense_weights: object  # [P, s] weights of theta^1..theta^P on `vectors`, or None: Hermite
    vector_scale: float    # vectors are slopes (scale h) or increments (scale 1)
    f_last: tuple | None = None   # (F, g) at (t + h, y1) when the method computed it (FSAL)
    stiffness: torch.Tensor | None = None


@dataclasses.dataclass
class StepperState:
    """Per-solve mutable state: F and g at the current point, the Jacobian cache."""

    f: torch.Tensor
    g: torch.Tensor | None
    t: float
    linearisation: object = None
    linearised_at: float | None = None
    stale: bool = False        # refresh the cached Jacobian at the next step (W-methods)
    jacobian_age: int = 0      # steps since the cached Jacobian was computed
    time_derivative: tuple | None = None
    time_derivative_at: float | None = None
    mode: str = "explicit"
    patience: int = 0
    switches: int = 0


@dataclasses.dataclass
class Linearisation:
    """The Jacobian J = dF/dy [N, m, m] at a point (one matrix per sample), and for
    quadratures the map v [N, m] -> G v with G = dg/dy (None when there are none)."""

    J: torch.Tensor
    quadrature_jvp: Callable | None = None
    time_derivative: tuple | None = None


def column(h, like: torch.Tensor):
    """A step size as `like`'s samples see it: a float stays a float (one step for the
    batch); a tensor [N] of per-sample steps becomes [N, 1, ...] to broadcast."""
    if not isinstance(h, torch.Tensor):
        return h
    return h.view((-1,) + (1,) * (like.ndim - 1)).to(like.dtype)


def combine(y0, scale, weights, vectors):
    """y0 + scale sum_i w_i v_i, skipping zero weights (y0 None: start from zero).

    With a float scale each term is one fused multiply-add (torch.add with alpha) on
    a fresh tensor: half the tensor operations of multiplying and adding apart, which
    is most of a small solve's cost. A tensor scale (per-sample steps) broadcasts."""
    pairs = [(float(w), v) for w, v in zip(weights, vectors) if v is not None and float(w)]
    if not pairs:
        return torch.zeros_like(vectors[0]) if y0 is None else y0
    if isinstance(scale, torch.Tensor):
        total = pairs[0][1] * pairs[0][0]
        for w, v in pairs[1:]:
            total = total + w * v
        return scale * total if y0 is None else y0 + scale * total
    (w0, v0), rest = pairs[0], pairs[1:]
    total = v0 * (w0 * scale) if y0 is None else torch.add(y0, v0, alpha=w0 * scale)
    for w, v in rest:   # total is this function's own fresh tensor: accumulate in place
        total = total.add_(v, alpha=w * scale)
    return total


class ExplicitRK:
    """Explicit Runge-Kutta from a `Tableau`: stages - 1 rhs calls per step for FSAL
    methods, stages otherwise (the next step's F is computed on acceptance)."""

    needs_jacobian = False

    def __init__(self, tableau: Tableau, detect_stiffness: bool = False):
        self.tableau = tableau
        self.name, self.order, self.error_order = tableau.name, tableau.order, tableau.error_order
        self.adaptive = tableau.adaptive
        self.detect_stiffness = detect_stiffness and tableau.stiffness_stages is not None

    def start(self, rhs, t, y) -> StepperState:
        f, g = rhs(t, y)
        return StepperState(f=f, g=g, t=t)

    def step(self, rhs, state, t, y, q, h) -> Step:
        """h: a float, or a tensor [N] of per-sample steps (with t a tensor [N] too)."""
        tab = self.tableau
        hy = column(h, y)
        ks, gs, inputs = [state.f], [state.g], [y]
        for c_i, a_i in zip(tab.c[1:], tab.a[1:]):
            y_i = combine(y, hy, a_i, ks)
            k, g = rhs(t + float(c_i) * h, y_i)
            ks.append(k), gs.append(g), inputs.append(y_i)
        y1 = combine(y, hy, tab.b, ks)
        err = None if tab.err is None else combine(None, hy, tab.err, ks)
        q1 = err_q = None
        if q is not None:
            hq = column(h, q)
            q1 = combine(q, hq, tab.b, gs)
            err_q = None if tab.err is None else combine(None, hq, tab.err, gs)
        stiffness = None
        if self.detect_stiffness:
            i, j = tab.stiffness_stages
            stiffness = abs(h) * _rowwise_ratio(ks[j] - ks[i], inputs[j] - inputs[i])
        f_last = (ks[-1], gs[-1]) if tab.fsal else None
        return Step(y1, q1, err, err_q, self.error_order, hy, y, state.f, ks, tab.dense, hy, f_last, stiffness)

    def accept(self, rhs, state, step, t1, dense):
        state.f, state.g = step.f_last if step.f_last is not None else rhs(t1, step.y1)
        state.t = t1
        return step_polynomial(step, state.f) if dense else None

    def reject(self, state, step):
        pass


class Rosenbrock:
    """A linearly implicit (Rosenbrock / Rosenbrock-W) step from a `RosenbrockTableau`.

    Per step: one Jacobian of F (per sample, [N, m, m]; W-methods keep it across
    accepted steps and refresh it after a rejection, when the controller shrinks the
    step, or after `max_jacobian_age` steps, since a stale Jacobian costs stability,
    not order), one batched LU factorisation of
    I / (h gamma) - J reused by every stage, stages rhs calls (stages - 1 when the
    last stage is FSAL), plus two rhs calls for dF/dt (a one-sided second-order
    difference in time) unless `autonomous`. Quadratures stay out of the linear systems: they are
    advanced with the method's classical weights plus one application of G = dg/dy
    per step (see RosenbrockTableau.classical_weights), so the linear solves stay m x m
    however many quadrature components there are.

    `jacobian(t, y)` returns J [N, m, m] or a `Linearisation`. A singular
    I / (h gamma) - J rejects the step (a smaller step makes it regular); a NaN/Inf
    Jacobian raises NonFiniteError.
    """

    needs_jacobian = True
    adaptive = True
    max_jacobian_age = 8     # W-methods: refresh a Jacobian kept this many steps

    def __init__(self, tableau: RosenbrockTableau, jacobian, autonomous: bool = False):
        self.tableau = tableau
        self.name, self.order, self.error_order = tableau.name, tableau.order, tableau.error_order
        self.jacobian, self.autonomous = jacobian, autonomous
        self.jacobian_calls = 0
        self.classical_b, self.classical_btilde = tableau.classical_weights
        # per stage, the weights of theta^1..theta^P (the layout of the explicit tableaus)
        self._dense = None if tableau.dense is None else tuple(map(tuple, tableau.dense.T))

    def start(self, rhs, t, y) -> StepperState:
        f, g = rhs(t, y)
        return StepperState(f=f, g=g, t=t, mode="implicit")

    def linearise(self, rhs, state, t, y, h) -> Linearisation:
        """The Jacobian to use for a step of size h from (t, y) (jacobian_at), with dF/dt
        for non-autonomous problems, taken inside that step."""
        lin = self.jacobian_at(state, t, y)
        if self.autonomous:
            return lin
        if state.time_derivative_at != t:
            state.time_derivative, state.time_derivative_at = self._time_derivative(rhs, state, t, y, h), t
        return dataclasses.replace(lin, time_derivative=state.time_derivative)

    def jacobian_at(self, state, t, y) -> Linearisation:
        """The Jacobian to use at (t, y): cached at this point, or (W-methods) from an
        earlier accepted step; computed (one jacobian call) otherwise."""
        reuse = state.linearisation is not None and (
            state.linearised_at == t
            or (self.tableau.w_method and not state.stale and state.jacobian_age < self.max_jacobian_age))
        if not reuse:
            lin = self.jacobian(t, y)
            lin = lin if isinstance(lin, Linearisation) else Linearisation(lin)
            self.jacobian_calls += 1
            if not bool(torch.isfinite(lin.J).all()):
                from ctpg.errors import NonFiniteError
                raise NonFiniteError(f"the Jacobian returned NaN or Inf at t={t:.6g}")
            state.linearisation, state.linearised_at, state.stale, state.jacobian_age = lin, t, False, 0
        elif state.linearised_at != t:
            state.jacobian_age += 1
        return state.linearisation

    @staticmethod
    def _time_derivative(rhs, state, t, y, h):
        """(dF/dt, dg/dt) at (t, y) by a one-sided second-order difference in the step's
        direction (t +- delta must stay inside the solve's interval: a stored trajectory
        may end at t). delta ~ eps^(1/3) balances truncation against round-off, which
        matters when F is large and cancels (a stiff mode that does not move with t).
        Costs two rhs calls."""
        delta = math.copysign(torch.finfo(y.dtype).eps ** (1 / 3) * max(1.0, abs(t)), h)
        delta = math.copysign(min(abs(delta), abs(h) / 2), h)
        f1, g1 = rhs(t + delta, y)
        f2, g2 = rhs(t + 2 * delta, y)

        def slope(v0, v1, v2):
            return None if v0 is None else (4 * v1 - 3 * v0 - v2) / (2 * delta)

        return slope(state.f, f1, f2), slope(state.g, g1, g2)

    def step(self, rhs, state, t, y, q, h) -> Step:
        tab = self.tableau
        lin = self.linearise(rhs, state, t, y, h)
        n, m = lin.J.shape[0], lin.J.shape[-1]
        shape = y.shape
        eye = torch.eye(m, dtype=y.dtype, device=y.device)
        lu, pivots, info = torch.linalg.lu_factor_ex(eye / (h * tab.gamma) - lin.J)
        if bool((info != 0).any()):          # singular: a smaller step makes W regular again
            return _failed_step(y, q, h, self.error_order)
        f_t, g_t = lin.time_derivative or (None, None)
        us, gs = [], []
        for i in range(tab.stages):
            if i == 0:
                f_i, g_i = state.f, state.g
            else:
                f_i, g_i = rhs(t + float(tab.c[i]) * h, combine(y, 1.0, tab.A[i, :i], us))
            r = combine(f_i, 1.0 / h, tab.C[i, :i], us)
            if f_t is not None and tab.d[i]:
                r = r + (float(tab.d[i]) * h) * f_t
            u = torch.linalg.lu_solve(lu, pivots, r.reshape(n, m, 1)).reshape(shape)
            us.append(u), gs.append(g_i)
        y1 = combine(y, 1.0, tab.b, us)
        err = combine(None, 1.0, tab.btilde, us)
        q1 = err_q = None
        if q is not None:
            q1 = q + self._quadrature(self.classical_b, us, gs, lin, g_t, h)
            err_q = self._quadrature(self.classical_btilde, us, gs, lin, g_t, h)
        f_last = (f_i, g_i) if tab.fsal else None   # the last stage ran at (t + h, y1) itself
        return Step(y1, q1, err, err_q, self.error_order, h, y, state.f, us, self._dense, 1.0, f_last)

    def _quadrature(self, weights, us, gs, lin, g_t, h):
        """h sum_i w_i g_i + h G(sum_i w_i u_i) + h^2 (sum_i w_i d_i) g_t."""
        increment = combine(None, h, weights, gs)
        if lin.quadrature_jvp is not None:
            increment = increment + h * lin.quadrature_jvp(combine(None, 1.0, weights, us))
        elif not self.tableau.w_method:
            raise ValueError(f"{self.name} is not a W-method: quadratures need the coupling "
                             "dg/dy (Linearisation.quadrature_jvp) from the jacobian callable")
        weight_t = float(np.dot(weights, self.tableau.d))
        if g_t is not None and weight_t:
            increment = increment + (weight_t * h * h) * g_t
        return increment

    def accept(self, rhs, state, step, t1, dense):
        state.f, state.g = step.f_last if step.f_last is not None else rhs(t1, step.y1)
        state.t = t1
        return step_polynomial(step, state.f) if dense else None

    def reject(self, state, step):
        state.stale = True


def _failed_step(y, q, h, error_order) -> Step:
    inf = torch.full_like(y, float("inf"))
    q_inf = None if q is None else torch.full_like(q, float("inf"))
    return Step(inf, q_inf, inf, q_inf, error_order, h, y, inf, [], None, 1.0)


def _rowwise_ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """max over samples of ||num_i|| / ||den_i|| (0-dim)."""
    num, den = num.reshape(num.shape[0], -1), den.reshape(den.shape[0], -1)
    return (num.norm(dim=1) / den.norm(dim=1).clamp_min(torch.finfo(den.dtype).tiny)).max()


def step_polynomial(step: Step, f1: torch.Tensor) -> torch.Tensor:
    """Coefficients [P+1, *shape] of the step's interpolant in theta = (t - t0) / h.

    The method's own dense output where it has one, else the cubic Hermite through
    (y0, h f0) and (y1, h f1), third-order accurate."""
    if step.dense_weights is not None:
        vectors = step.vectors
        if len(step.dense_weights) == len(vectors) + 1:      # a weight on F(t1, y1) too (not FSAL)
            vectors = vectors + [f1]
        rows = [step.y0] + [combine(None, step.vector_scale, [w[p] for w in step.dense_weights], vectors)
                            for p in range(len(step.dense_weights[0]))]
        return torch.stack(rows)
    h, y0, y1, f0 = step.h, step.y0, step.y1, step.f0
    delta = y1 - y0
    return torch.stack([y0, h * f0, 3 * delta - h * (2 * f0 + f1), -2 * delta + h * (f0 + f1)])


class AutoSwitch:
    """Explicit steps while they are limited by accuracy, Rosenbrock steps while they
    would be limited by stability, switching automatically in both directions.

    Explicit mode watches the free |h lambda| estimate of the explicit method's stages
    (Tableau.stiffness_stages, a one-step power iteration that tends to underestimate
    the fastest mode). When it exceeds `suspect` times the method's stability
    boundary (Tableau.stability_boundary) for `patience` consecutive accepted steps,
    the spectral radius rho of the Jacobian is computed once (the Jacobian is then kept
    for the first implicit step): if h rho exceeds `threshold` times the boundary, the
    steps are limited by stability (explicit steps on a stiff mode settle at about
    0.8 of the boundary, where the error estimate stops them) and the solve switches
    to the Rosenbrock method. Implicit mode reads rho off the Jacobian it already has
    and switches back after `patience` consecutive accepted steps at which an explicit
    step of the current size would sit below `back` times the boundary, well inside
    its stability region (the gap between the two thresholds stops a solve from
    flipping back and forth). Each switch resets the step-size controller's memory; the
    stored trajectory mixes both methods' dense outputs.
    """

    needs_jacobian = True
    adaptive = True

    def __init__(self, explicit: ExplicitRK, implicit: Rosenbrock, patience: int = 4,
                 suspect: float = 0.3, threshold: float = 0.6, back: float = 0.3):
        if explicit.tableau.stiffness_stages is None:
            raise ValueError(f"automatic switching needs an explicit method with stiffness detection "
                             f"(dopri5 or tsit5), not {explicit.name!r}")
        explicit.detect_stiffness = True
        self.explicit, self.implicit = explicit, implicit
        self.name = f"auto:{explicit.name}+{implicit.name}"
        self.order, self.error_order = explicit.order, explicit.error_order
        self.boundary = explicit.tableau.stability_boundary
        self.patience, self.suspect, self.threshold, self.back = patience, suspect, threshold, back

    @property
    def jacobian_calls(self) -> int:
        return self.implicit.jacobian_calls

    def _current(self, state):
        return self.implicit if state.mode == "implicit" else self.explicit

    def start(self, rhs, t, y) -> StepperState:
        return self.explicit.start(rhs, t, y)

    def step(self, rhs, state, t, y, q, h) -> Step:
        return self._current(state).step(rhs, state, t, y, q, h)

    def accept(self, rhs, state, step, t1, dense):
        coefs = self._current(state).accept(rhs, state, step, t1, dense)
        if state.mode == "explicit":
            suspicious = float(step.stiffness) > self.suspect * self.boundary
            state.patience = state.patience + 1 if suspicious else 0
            if state.patience >= self.patience:
                state.patience = 0
                # Kept for the first implicit step. Only J: dF/dt waits for that step, whose
                # direction keeps its difference inside the interval (t1 may be its end).
                self.implicit.jacobian_at(state, t1, step.y1)
                if abs(step.h) * _spectral_radius(state.linearisation.J) > self.threshold * self.boundary:
                    self._switch(state, "implicit")
        else:
            stable = abs(step.h) * _spectral_radius(state.linearisation.J) < self.back * self.boundary
            state.patience = state.patience + 1 if stable else 0
            if state.patience >= self.patience:
                self._switch(state, "explicit")
        return coefs

    @staticmethod
    def _switch(state, mode):
        state.mode, state.patience = mode, 0
        state.switches += 1

    def reject(self, state, step):
        self._current(state).reject(state, step)


def _spectral_radius(J: torch.Tensor) -> float:
    """Largest |eigenvalue| over the samples' Jacobians [N, m, m]."""
    return float(torch.linalg.eigvals(J).abs().max())
