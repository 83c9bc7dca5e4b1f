"""torchdiffeq's remaining methods in ctpg: dopri8 and fehlberg2 (tableaus), explicit and
implicit Adams (fixed-step multistep), scipy_solver (forward through scipy).

Order conditions: for every rooted tree tau with |tau| <= p, b . Phi(tau) = 1 / gamma(tau)
(Butcher; Hairer, Norsett & Wanner, Solving ODEs I, II.2), Phi(tau) the vector of
elementary weights, Phi([tau_1 .. tau_m]) = prod_j A Phi(tau_j), gamma = |tau| prod gamma(tau_j).
Convergence orders are fitted slopes of log error against log step on y' = A y.
"""
from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch

import ctpg
from ctpg.solvers import TABLEAUS, solve

F64 = torch.float64


@functools.lru_cache(maxsize=None)
def trees(order: int) -> tuple:
    """Every rooted tree with `order` nodes, as a sorted tuple of its children's trees."""
    if order == 1:
        return ((),)
    return tuple(sorted({tuple(sorted(children)) for children in _forests(order - 1, order - 1)}))


def _forests(nodes: int, largest: int):
    """Multisets of trees with `nodes` nodes in all, each tree of at most `largest` nodes."""
    if nodes == 0:
        yield ()
        return
    for size in range(min(nodes, largest), 0, -1):
        for tree in trees(size):
            for rest in _forests(nodes - size, size):
                yield (tree,) + rest


def _size(tree) -> int:
    return 1 + sum(_size(c) for c in tree)


def _gamma(tree) -> int:
    return _size(tree) * math.prod(_gamma(c) for c in tree)


def _weights(tree, A: np.ndarray) -> np.ndarray:
    out = np.ones(A.shape[0])
    for child in tree:
        out = out * (A @ _weights(child, A))
    return out


def order_residuals(tableau, weights, order: int) -> list[float]:
    """|b . Phi(tau) - 1 / gamma(tau)| for every tree of exactly `order` nodes."""
    s = tableau.stages
    A = np.zeros((s, s))
    for i, row in enumerate(tableau.a):
        A[i, :i] = [float(v) for v in row]
    b = np.array([float(v) for v in weights])
    return [abs(b @ _weights(t, A) - 1.0 / _gamma(t)) for t in trees(order)]


def test_tree_counts_are_the_known_ones():
    assert [len(trees(n)) for n in range(1, 9)] == [1, 1, 2, 4, 9, 20, 48, 115]


@pytest.mark.parametrize("name, order, embedded", [("dopri8", 8, 7), ("fehlberg2", 2, 1)])
def test_every_order_condition_holds(name, order, embedded):
    """b satisfies all conditions up to `order` and misses one of order + 1; the embedded
    weights (b - err) all up to `embedded` and miss one of `embedded` + 1."""
    tab = TABLEAUS[name]
    bhat = [float(b) - float(e) for b, e in zip(tab.b, tab.err)]
    for p in range(1, order + 1):
        assert max(order_residuals(tab, tab.b, p)) < 1e-12 * 10 ** (p / 2), (name, p)
    for p in range(1, embedded + 1):
        assert max(order_residuals(tab, bhat, p)) < 1e-12 * 10 ** (p / 2), (name, "embedded", p)
    assert max(order_residuals(tab, bhat, embedded + 1)) > 1e-7
    if order < 8:
        assert max(order_residuals(tab, tab.b, order + 1)) > 1e-7


def _linear_problem():
    A = torch.tensor([[-0.3, 2.0], [-2.0, -0.3]], dtype=F64)
    y0 = torch.tensor([[1.0, 0.5]], dtype=F64)
    exact = y0 @ torch.linalg.matrix_exp(A * 2.0).T
    return (lambda t, y: y @ A.T), y0, exact


def _nonlinear(t, y):
    """y1' = y1^2, y2' = -y2 cos(t y1): nonlinear and non-autonomous (on a linear problem
    dopri8 converges with order 9: only the tall trees' conditions matter there)."""
    return torch.cat([y[:, :1] ** 2, -y[:, 1:] * torch.cos(t * y[:, :1])], 1)


NONLINEAR_Y0 = torch.tensor([[0.5, 1.0]], dtype=F64)


@functools.lru_cache(maxsize=None)
def _reference() -> torch.Tensor:
    return solve(_nonlinear, NONLINEAR_Y0, 0.0, 1.0, method="dop853", dt=1 / 1500).y1


def fitted_order(method: str, steps, **kw) -> float:
    """Slope of log(error at t = 1) against log(dt) for fixed steps dt = 1 / n."""
    errors = [float((solve(_nonlinear, NONLINEAR_Y0, 0.0, 1.0, method=method, dt=1.0 / n, **kw).y1
                     - _reference()).abs().max()) for n in steps]
    return float(np.polyfit(np.log([1.0 / n for n in steps]), np.log(errors), 1)[0])


@pytest.mark.parametrize("name, steps, order", [("dopri8", (4, 6, 8, 11), 8), ("fehlberg2", (40, 80, 160), 2)])
def test_fixed_step_convergence_order(name, steps, order):
    assert abs(fitted_order(name, steps) - order) < 0.4


@pytest.mark.parametrize("name", ["dopri8", "fehlberg2"])
def test_adaptive_solve_and_dense_output_meet_the_tolerance(name):
    """Adaptive steps reach the closed form about as closely as torchdiffeq's same method
    at the same tolerance (a local error control: the global error of the 2(1) pair is
    far above rtol for both); the dense output between the steps is as accurate as the
    steps (dopri8: its quartic through the midpoint)."""
    torchdiffeq = pytest.importorskip("torchdiffeq")
    f, y0, _ = _linear_problem()
    A = torch.tensor([[-0.3, 2.0], [-2.0, -0.3]], dtype=F64)
    rtol = 1e-10 if name == "dopri8" else 1e-6
    sol = solve(f, y0, 0.0, 2.0, method=name, rtol=rtol, atol=rtol, dense=True)
    ts = torch.linspace(0.0, 2.0, 41, dtype=F64)
    exact = torch.stack([(y0 @ torch.linalg.matrix_exp(A * t).T)[0] for t in ts])
    dense = torch.stack([sol.trajectory.evaluate(float(t))[0] for t in ts])
    theirs = torchdiffeq.odeint(f, y0, ts, method=name, rtol=rtol, atol=rtol)[:, 0]
    error, their_error = (float((v - exact).abs().max()) for v in (dense, theirs))
    assert error < 3 * their_error + 1e-12 and error < (1e-6 if name == "dopri8" else 1e-3)


def test_dopri8_takes_fewer_steps_than_dopri5_at_tight_tolerances():
    f, y0, exact = _linear_problem()
    counts = {m: solve(f, y0, 0.0, 2.0, method=m, rtol=1e-12, atol=1e-12).steps_accepted for m in ("dopri5", "dopri8")}
    assert counts["dopri8"] < counts["dopri5"] / 3


def test_adams_coefficients_are_the_classical_ones():
    from fractions import Fraction as Fr

    from ctpg.solvers.adams import adams_coefficients
    assert adams_coefficients([0, -1, -2, -3]) == tuple(Fr(v, 24) for v in (55, -59, 37, -9))
    assert adams_coefficients([1, 0, -1, -2]) == tuple(Fr(v, 24) for v in (9, 19, -5, 1))


@pytest.mark.parametrize("name", ["explicit_adams", "implicit_adams"])
def test_adams_convergence_order_is_four(name):
    assert abs(fitted_order(name, (40, 80, 160, 320)) - 4) < 0.3


@pytest.mark.parametrize("name", ["explicit_adams", "implicit_adams", "fixed_adams"])
@pytest.mark.parametrize("mode", ["interpolating", "backsolve", "direct"])
def test_adams_through_odeint_in_every_gradient_mode(name, mode):
    """y' = A y with A a parameter: values and gradients in A and y0 against the matrix
    exponential, fixed steps of 0.005 (errors O(h^4))."""
    A = torch.tensor([[-0.3, 2.0], [-2.0, -0.3]], dtype=F64)
    A_ = A.clone().requires_grad_(True)
    y0 = torch.tensor([1.0, 0.5], dtype=F64, requires_grad=True)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=F64)
    ys = ctpg.odeint(lambda t, y: A_ @ y, y0, t, method=name, options=dict(step_size=0.005), adjoint=mode,
                     adjoint_params=(A_,))
    got = torch.autograd.grad(ys.sum(), [A_, y0])
    exact = torch.stack([torch.linalg.matrix_exp(A_ * ti) @ y0 for ti in t])
    want = torch.autograd.grad(exact.sum(), [A_, y0])
    torch.testing.assert_close(ys.detach(), exact.detach(), rtol=1e-6, atol=1e-7)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


class _Linear(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.A = torch.nn.Parameter(torch.tensor([[-0.3, 2.0], [-2.0, -0.3]], dtype=F64))

    def forward(self, t, y):
        return y @ self.A.T


@pytest.mark.parametrize("solver", ["RK45", "DOP853", "LSODA", "Radau"])
@pytest.mark.parametrize("reverse", [False, True], ids=["increasing", "decreasing"])
@pytest.mark.parametrize("mode", ["interpolating", "backsolve"])
def test_scipy_solver_values_and_adjoint_gradients_match_the_closed_form(solver, reverse, mode):
    """Forward by solve_ivp; backward by ctpg's dopri5, reading y(t) from scipy's dense
    output (interpolating) or solving it back from the outputs (backsolve)."""
    func = _Linear()
    y0 = torch.tensor([1.0, 0.5], dtype=F64, requires_grad=True)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=F64)
    t = t.flip(0) if reverse else t
    ys = ctpg.odeint(func, y0, t, method="scipy_solver", options=dict(solver=solver), rtol=1e-10, atol=1e-12,
                     adjoint=mode)
    got = torch.autograd.grad(ys.sum(), [func.A, y0])
    exact = torch.stack([torch.linalg.matrix_exp(func.A * (ti - t[0])) @ y0 for ti in t])
    want = torch.autograd.grad(exact.sum(), [func.A, y0])
    torch.testing.assert_close(ys.detach(), exact.detach(), rtol=1e-8, atol=1e-9)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-8)


def test_scipy_solver_refuses_what_it_cannot_differentiate():
    func, t = _Linear(), torch.tensor([0.0, 1.0], dtype=F64)
    y0 = torch.tensor([1.0, 0.5], dtype=F64)
    ys = ctpg.odeint(func, y0.clone().requires_grad_(True), t, method="scipy_solver", adjoint="direct")
    with pytest.raises(RuntimeError, match="no gradient in adjoint='direct'"):
        ys.sum().backward()
    with pytest.raises(ValueError, match="not understood by method='scipy_solver'"):
        ctpg.odeint(func, y0, t, method="scipy_solver", options=dict(step_size=0.1))
    with torch.no_grad():                     # values only: every mode
        assert ctpg.odeint(func, y0, t, method="scipy_solver", adjoint="direct").shape == (2, 2)
