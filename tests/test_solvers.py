"""Solvers: measured convergence order of every tableau, dense-output order, adaptive
control, and clear errors."""
import math

import numpy as np
import pytest
import torch

from ctpg import MaxStepsExceeded, NonFiniteError, StepSizeTooSmall
from ctpg.solvers import TABLEAUS, solve
from ctpg.trajectory import Trajectory

# y1' = cos(t) y1  -> y1 = y1(0) e^{sin t};   y2' = y2 (1 - y2) -> logistic
Y0 = torch.tensor([[1.0, 0.2], [0.5, 0.7]], dtype=torch.float64)


def rhs(t, y):
    return torch.stack([math.cos(t) * y[:, 0], y[:, 1] * (1 - y[:, 1])], 1)


def exact(t):
    y1 = Y0[:, 0] * math.exp(math.sin(t))
    y2 = 1 / (1 + (1 / Y0[:, 1] - 1) * math.exp(-t))
    return torch.stack([y1, y2], 1)


def slope(dts, errors):
    return np.polyfit(np.log(dts), np.log(errors), 1)[0]


@pytest.mark.parametrize("name", list(TABLEAUS), ids=list(TABLEAUS))
def test_measured_order_matches_tableau(name):
    tableau = TABLEAUS[name]
    # step sizes in the asymptotic range but above round-off for each order
    base = {1: 0.05, 2: 0.05, 3: 0.1, 4: 0.2, 5: 0.1, 8: 0.5}[tableau.order]
    dts = [base, base / 2, base / 4]
    errors = [float((solve(rhs, Y0, 0.0, 2.0, method=name, dt=dt).y1 - exact(2.0)).abs().max()) for dt in dts]
    # at least the claimed order; tsit5's leading error term is small, so its
    # pre-asymptotic slope sits a little above 5
    assert tableau.order - 0.25 <= slope(dts, errors) <= tableau.order + 0.6


@pytest.mark.parametrize("name", list(TABLEAUS), ids=list(TABLEAUS))
def test_dense_output_order(name):
    """Between mesh points the error falls at min(method order, interpolant order):
    4 for the dopri5/tsit5 interpolants, 3 for cubic Hermite."""
    tableau = TABLEAUS[name]
    expected = min(tableau.order, 4 if tableau.dense is not None else 3)
    base = {1: 0.02, 2: 0.05, 3: 0.1, 4: 0.2, 5: 0.25, 8: 0.25}[tableau.order]
    dts = [base, base / 2, base / 4]
    errors = []
    for dt in dts:
        path = solve(rhs, Y0, 0.0, 2.0, method=name, dt=dt, dense=True).trajectory
        probes = [dt * (i + 0.37) for i in range(int(2.0 / dt))]
        errors.append(max(float((path.evaluate(t) - exact(t)).abs().max()) for t in probes))
    assert slope(dts, errors) >= expected - 0.3


@pytest.mark.parametrize("name", ["heun", "bosh3", "dopri5", "tsit5", "dop853"])
def test_adaptive_error_follows_tolerance(name):
    errors, steps = [], []
    for tol in (1e-4, 1e-7):
        sol = solve(rhs, Y0, 0.0, 3.0, method=name, rtol=tol, atol=tol)
        errors.append(float((sol.y1 - exact(3.0)).abs().max()))
        steps.append(sol.steps_accepted)
    assert errors[1] < errors[0] / 30 and errors[1] < 1e-5
    assert steps[1] > steps[0]


def test_adaptive_backwards_in_time_and_dense_derivative():
    back = solve(rhs, exact(3.0), 3.0, 0.0, method="dopri5", rtol=1e-10, atol=1e-10)
    assert torch.allclose(back.y1, Y0, atol=1e-8)
    path = solve(rhs, Y0, 0.0, 3.0, method="tsit5", rtol=1e-10, atol=1e-10, dense=True).trajectory
    assert torch.allclose(path.derivative(1.3), rhs(1.3, exact(1.3)), atol=1e-6)
    assert path.stored_floats == path.coefs.numel() + len(path.times)


def test_per_component_tolerances():
    sol_loose = solve(rhs, Y0, 0.0, 3.0, method="dopri5", rtol=0.0, atol=torch.tensor([1e-3, 1e-3]))
    sol_mixed = solve(rhs, Y0, 0.0, 3.0, method="dopri5", rtol=0.0, atol=torch.tensor([1e-3, 1e-9]))
    assert sol_mixed.steps_accepted > sol_loose.steps_accepted


def test_error_on_restricts_the_step_control_to_some_components():
    # y = [the test system (2 columns), a fast-varying quadrature q' = sin(40 t)]:
    # with the quadrature in the norm the steps follow it; left out, they follow the
    # test system alone, which must still meet the tolerance.
    def with_quadrature(t, y):
        q = torch.full_like(y[:, :1], math.sin(40 * t))
        return torch.cat([rhs(t, y[:, :2]), q], 1)

    y0 = torch.cat([Y0, torch.zeros(2, 1, dtype=Y0.dtype)], 1)
    full = solve(with_quadrature, y0, 0.0, 3.0, method="dopri5", rtol=1e-8, atol=1e-8)
    semi = solve(with_quadrature, y0, 0.0, 3.0, method="dopri5", rtol=1e-8, atol=1e-8, error_on=slice(0, 2))
    alone = solve(rhs, Y0, 0.0, 3.0, method="dopri5", rtol=1e-8, atol=1e-8)
    assert semi.steps_accepted < full.steps_accepted / 2
    assert abs(semi.steps_accepted - alone.steps_accepted) <= 2
    assert float((semi.y1[:, :2] - exact(3.0)).abs().max()) < 1e-6
    tol = torch.full((3,), 1e-8, dtype=Y0.dtype)      # per-component tolerances follow the slice
    semi_tensor = solve(with_quadrature, y0, 0.0, 3.0, method="dopri5", rtol=tol, atol=tol, error_on=slice(0, 2))
    assert semi_tensor.steps_accepted == semi.steps_accepted


def test_trajectory_refuses_to_extrapolate():
    path = solve(rhs, Y0, 0.0, 1.0, method="rk4", dt=0.1, dense=True).trajectory
    with pytest.raises(ValueError, match="outside the stored trajectory"):
        path.evaluate(1.5)
    with pytest.raises(ValueError, match="one more boundary time"):
        Trajectory([0.0, 1.0], torch.zeros(2, 4, 1))


def test_solver_errors_are_clear():
    with pytest.raises(ValueError, match="rtol and atol are required"):
        solve(rhs, Y0, 0.0, 1.0, method="dopri5")
    with pytest.raises(ValueError, match="no error estimate"):
        solve(rhs, Y0, 0.0, 1.0, method="rk4", rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="unknown solver method 'rk45'.*dopri5"):
        solve(rhs, Y0, 0.0, 1.0, method="rk45", dt=0.1)
    with pytest.raises(MaxStepsExceeded, match="max_steps=5"):
        solve(rhs, Y0, 0.0, 10.0, method="dopri5", rtol=1e-10, atol=1e-10, max_steps=5)
    with pytest.raises(MaxStepsExceeded, match="raise max_steps or use a larger dt"):
        solve(rhs, Y0, 0.0, 10.0, method="euler", dt=1e-3, max_steps=100)
    blow_up = lambda t, y: y ** 2          # y = 1/(1 - t): singular at t = 1
    with pytest.raises((StepSizeTooSmall, MaxStepsExceeded, NonFiniteError)):
        solve(blow_up, torch.ones(1, 1, dtype=torch.float64), 0.0, 2.0, method="dopri5", rtol=1e-6, atol=1e-6)
    nan_rhs = lambda t, y: y * float("nan") if t > 0.5 else y
    with pytest.raises(NonFiniteError, match=r"NaN or Inf at t=0\.6"):
        solve(nan_rhs, Y0, 0.0, 1.0, method="euler", dt=0.1)


def test_float32_solves():
    y0 = Y0.float()
    sol = solve(rhs, y0, 0.0, 2.0, method="tsit5", rtol=1e-5, atol=1e-6)
    assert sol.y1.dtype == torch.float32
    assert torch.allclose(sol.y1.double(), exact(2.0), atol=1e-4)
