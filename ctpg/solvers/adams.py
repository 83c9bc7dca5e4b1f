"""Fixed-step Adams methods: torchdiffeq's explicit_adams (Adams-Bashforth) and
implicit_adams (an Adams-Bashforth predictor corrected by Adams-Moulton), as steppers of
the common protocol (ctpg.solvers.steppers), so `solve`, the dense output and the
adjoint modes drive them like any fixed-step method.

Order k (4 by default): y_{n+1} = y_n + h sum_j beta_j F_{n-j} over the last k values
(Bashforth), corrected with y_{n+1} = y_n + h (beta*_0 F(t_{n+1}, y_{n+1}) + sum_{j>=1}
beta*_j F_{n+1-j}) (Moulton, k values), iterated `corrections` times (PE(CE)^m). The
coefficients integrate the interpolating polynomial through the nodes exactly
(Hairer, Norsett & Wanner, Solving ODEs I, III.1); they are solved here in exact
rational arithmetic. The first k - 1 steps after every start (t0 and each stop) are
RK4 steps, whose order 4 keeps the global order k = 4 (torchdiffeq also starts with
RK4, then raises the order up to 11; both converge with order 4, set by the start).

Cost per step: one evaluation of F (Bashforth), 1 + corrections (Moulton); the
history holds k - 1 earlier values of F. Fixed steps only (no error estimate); steps
of one interval are equal, as the multistep formulas assume.
"""
from __future__ import annotations

from fractions import Fraction

import numpy as np

from ctpg.solvers.steppers import ExplicitRK, Step, StepperState, combine, step_polynomial
from ctpg.solvers.tableaus import RK4


def adams_coefficients(nodes) -> tuple:
    """Weights w_j with sum_j w_j p(x_j) = int_0^1 p for every polynomial p of degree
    < len(nodes) (nodes in units of h relative to t_n): Bashforth 0, -1, ..., -(k-1);
    Moulton 1, 0, ..., -(k-2). Exact fractions."""
    k = len(nodes)
    rows = [[Fraction(x) ** m for x in nodes] for m in range(k)]
    rhs = [Fraction(1, m + 1) for m in range(k)]
    for col in range(k):                      # Gauss-Jordan in exact arithmetic
        pivot = next(r for r in range(col, k) if rows[r][col] != 0)
        rows[col], rows[pivot], rhs[col], rhs[pivot] = rows[pivot], rows[col], rhs[pivot], rhs[col]
        for r in range(k):
            if r != col and rows[r][col] != 0:
                ratio = rows[r][col] / rows[col][col]
                rows[r] = [a - ratio * b for a, b in zip(rows[r], rows[col])]
                rhs[r] -= ratio * rhs[col]
    return tuple(rhs[i] / rows[i][i] for i in range(k))


class Adams:
    """A fixed-step Adams stepper; `implicit` adds the Moulton corrector."""

    needs_jacobian = False
    adaptive = False
    error_order = None

    def __init__(self, name: str, implicit: bool, order: int = 4, corrections: int = 2):
        if not 1 <= order <= 12:
            raise ValueError(f"Adams order must be between 1 and 12, got {order}")
        self.name, self.implicit, self.order, self.corrections = name, implicit, order, corrections
        self.bashforth = tuple(map(float, adams_coefficients([-j for j in range(order)])))
        self.moulton = tuple(map(float, adams_coefficients([1 - j for j in range(order)])))
        self._start = ExplicitRK(RK4)

    def start(self, rhs, t, y) -> StepperState:
        f, g = rhs(t, y)
        state = StepperState(f=f, g=g, t=t)
        state.history = [(f, g)]          # F (and g) at t_n, t_{n-1}, ...: most recent first
        return state

    def step(self, rhs, state, t, y, q, h) -> Step:
        if len(state.history) < self.order:
            return self._start.step(rhs, state, t, y, q, h)
        fs, gs = [f for f, _ in state.history], [g for _, g in state.history]
        y1 = combine(y, h, self.bashforth, fs)
        q1 = None if q is None else combine(q, h, self.bashforth, gs)
        for _ in range(self.corrections if self.implicit else 0):
            f1, g1 = rhs(t + h, y1)
            y1 = combine(y, h, self.moulton, [f1] + fs[:-1])
            q1 = None if q is None else combine(q, h, self.moulton, [g1] + gs[:-1])
        return Step(y1, q1, None, None, None, h, y, state.f, [], None, h)

    def accept(self, rhs, state, step, t1, dense):
        state.f, state.g = rhs(t1, step.y1)
        state.t = t1
        state.history = [(state.f, state.g)] + state.history[:self.order - 1]
        return step_polynomial(step, state.f) if dense else None

    def reject(self, state, step):
        pass


ADAMS = {"explicit_adams": dict(implicit=False), "implicit_adams": dict(implicit=True)}


def check_coefficients(order: int = 4) -> float:
    """Largest |sum_j w_j x_j^m - 1/(m+1)| of both families in floats (a self-check)."""
    worst = 0.0
    for nodes in ([-j for j in range(order)], [1 - j for j in range(order)]):
        w = np.array([float(v) for v in adams_coefficients(nodes)])
        for m in range(order):
            worst = max(worst, abs(float(w @ np.array(nodes, float) ** m) - 1 / (m + 1)))
    return worst
