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


def _dense_slope(name, base, **kwargs):
    dts = [base, base / 2, base / 4]
    errors = []
    for dt in dts:
        path = solve(rhs, Y0, 0.0, 2.0, method=name, dt=dt, dense=True, **kwargs).trajectory
        probes = [dt * (i + 0.37) for i in range(int(2.0 / dt))]
        errors.append(max(float((path.evaluate(t) - exact(t)).abs().max()) for t in probes))
    return slope(dts, errors)


@pytest.mark.parametrize("name", list(TABLEAUS), ids=list(TABLEAUS))
def test_dense_output_order(name):
    """Between mesh points the error falls at min(method order, interpolant order + 1):
    5 for the 4th-order dopri5/tsit5 interpolants, 4 for cubic Hermite. A Hermite
    stand-in for dopri5's own interpolant measures 4 and fails here."""
    tableau = TABLEAUS[name]
    expected = min(tableau.order, 5 if tableau.dense is not None else 4)
    base = {1: 0.02, 2: 0.05, 3: 0.1, 4: 0.2, 5: 0.25, 8: 0.25}[tableau.order]
    assert _dense_slope(name, base) >= expected - 0.3


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


# ------------------------------------------------------------ Rosenbrock methods
from ctpg.solvers import ROSENBROCK_TABLEAUS, Linearisation  # noqa: E402


def exact_jacobian(t, y):
    J = torch.zeros(y.shape[0], 2, 2, dtype=y.dtype)
    J[:, 0, 0] = math.cos(t)
    J[:, 1, 1] = 1 - 2 * y[:, 1]
    return J


def wrong_jacobian(t, y):
    return 0.5 * exact_jacobian(t, y) + 0.3


@pytest.mark.parametrize("name", list(ROSENBROCK_TABLEAUS), ids=list(ROSENBROCK_TABLEAUS))
def test_rosenbrock_order_and_dense_output_order(name):
    """Non-autonomous test problem, so dF/dt enters; dense output at min(order,
    interpolant order + 1): rodas5p 5, rodas4 4, ros34pw2 (Hermite) 3, rosenbrock23 2."""
    tableau = ROSENBROCK_TABLEAUS[name]
    base = {2: 0.05, 3: 0.1, 4: 0.05, 5: 0.1}[tableau.order]
    dts = [base, base / 2, base / 4]
    errors = [float((solve(rhs, Y0, 0.0, 2.0, method=name, dt=dt, jacobian=exact_jacobian).y1
                     - exact(2.0)).abs().max()) for dt in dts]
    assert tableau.order - 0.2 <= slope(dts, errors) <= tableau.order + 0.5
    dense_order = {"rodas5p": 5, "rodas4": 4, "ros34pw2": 3, "rosenbrock23": 2}[name]
    assert _dense_slope(name, base, jacobian=exact_jacobian) >= dense_order - 0.2


@pytest.mark.parametrize("name", list(ROSENBROCK_TABLEAUS), ids=list(ROSENBROCK_TABLEAUS))
def test_w_methods_keep_their_order_with_a_wrong_jacobian(name):
    """The property that lets W-methods reuse stale Jacobians; Rodas methods are not
    W-methods and drop to low order (which is why they get a fresh one every step)."""
    tableau = ROSENBROCK_TABLEAUS[name]
    dts = [0.05, 0.025, 0.0125]
    errors = [float((solve(rhs, Y0, 0.0, 2.0, method=name, dt=dt, jacobian=wrong_jacobian).y1
                     - exact(2.0)).abs().max()) for dt in dts]
    if tableau.w_method:
        assert slope(dts, errors) >= tableau.order - 0.2
    else:
        assert slope(dts, errors) < tableau.order - 1


def finite_difference_jacobian(t, y):
    from ctpg.solvers.jacobian import batched_jacobian  # noqa: F401 (the autograd route, compared below)
    eps = 1e-7
    cols = []
    for j in range(y.shape[1]):
        e = torch.zeros_like(y)
        e[:, j] = eps
        cols.append((rhs(t, y + e) - rhs(t, y - e)) / (2 * eps))
    return torch.stack(cols, dim=2)


@pytest.mark.parametrize("name", ["rodas5p", "ros34pw2"])
def test_jacobian_from_autograd_analytic_or_differences_gives_the_same_solution(name):
    solutions = [solve(rhs, Y0, 0.0, 3.0, method=name, rtol=1e-8, atol=1e-10, jacobian=jac)
                 for jac in (None, exact_jacobian, finite_difference_jacobian)]
    for sol in solutions:
        assert float((sol.y1 - exact(3.0)).abs().max()) < 1e-7
        assert sol.jacobian_calls > 0
    assert torch.allclose(solutions[0].y1, solutions[1].y1, rtol=1e-12, atol=1e-14)
    assert torch.allclose(solutions[0].y1, solutions[2].y1, rtol=1e-7)


def robertson(t, y):
    y1, y2, y3 = y[:, 0], y[:, 1], y[:, 2]
    return torch.stack([-0.04 * y1 + 1e4 * y2 * y3, 0.04 * y1 - 1e4 * y2 * y3 - 3e7 * y2 ** 2, 3e7 * y2 ** 2], 1)


ROBERTSON_Y0 = torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64)
# scipy Radau at rtol 1e-12, atol 1e-14 (computed once)
ROBERTSON_AT_40 = torch.tensor([[0.7158270687193, 9.185534764e-06, 0.2841637457460]], dtype=torch.float64)


@pytest.mark.parametrize("name", ["rodas5p", "rodas4", "ros34pw2", "auto"])
def test_stiff_methods_solve_robertson_where_explicit_steps_cannot(name):
    sol = solve(robertson, ROBERTSON_Y0, 0.0, 40.0, method=name, rtol=1e-6, atol=1e-12, autonomous=True)
    assert torch.allclose(sol.y1, ROBERTSON_AT_40, rtol=1e-4, atol=1e-11)
    assert sol.steps_accepted < 400
    with pytest.raises(MaxStepsExceeded):
        solve(robertson, ROBERTSON_Y0, 0.0, 40.0, method="dopri5", rtol=1e-6, atol=1e-12, max_steps=2000)


def test_auto_switches_on_a_stiff_problem_and_not_on_a_smooth_one():
    stiff = solve(robertson, ROBERTSON_Y0, 0.0, 40.0, method="auto", rtol=1e-6, atol=1e-12, autonomous=True)
    assert stiff.method_switches >= 1 and stiff.jacobian_calls > 0
    smooth = solve(rhs, Y0, 0.0, 3.0, method="auto", rtol=1e-8, atol=1e-10)
    tsit5 = solve(rhs, Y0, 0.0, 3.0, method="tsit5", rtol=1e-8, atol=1e-10)
    assert smooth.method_switches == 0 and smooth.jacobian_calls == 0
    assert smooth.steps_accepted == tsit5.steps_accepted
    assert torch.equal(smooth.y1, tsit5.y1)


def test_switching_back_to_explicit_when_the_stiffness_passes():
    # y' = -k(t) (y - cos t) with k = 1000 on [0, 1] and k = 1 after: stiff, then not
    def burst(t, y):
        k = 1000.0 if t < 1.0 else 1.0
        return -k * (y - math.cos(t))

    sol = solve(burst, torch.ones(1, 1, dtype=torch.float64), 0.0, 6.0, method="auto", rtol=1e-6, atol=1e-9)
    assert sol.method_switches >= 2
    reference = solve(burst, torch.ones(1, 1, dtype=torch.float64), 0.0, 6.0, method="rodas5p", rtol=1e-10,
                      atol=1e-12, tstops=[1.0])
    assert torch.allclose(sol.y1, reference.y1, atol=1e-5)


def test_rosenbrock_refuses_a_nan_jacobian_and_recovers_from_a_singular_one():
    def nan_jacobian(t, y):
        return exact_jacobian(t, y) * torch.nan

    with pytest.raises(NonFiniteError, match="Jacobian returned NaN or Inf at t=0"):
        solve(rhs, Y0, 0.0, 1.0, method="rodas5p", rtol=1e-6, atol=1e-6, jacobian=nan_jacobian)
    gamma = ROSENBROCK_TABLEAUS["rodas5p"].gamma
    first = 0.1

    def singular_at_first_step(t, y):     # I / (h gamma) - J is singular for h = first
        return torch.eye(2, dtype=y.dtype).expand(y.shape[0], 2, 2) / (first * gamma)

    sol = solve(rhs, Y0, 0.0, 1.0, method="rodas5p", rtol=1e-6, atol=1e-6, first_step=first,
                jacobian=singular_at_first_step)
    assert sol.steps_rejected >= 1 and torch.isfinite(sol.y1).all()


def test_tstops_land_on_a_jump_and_save_rejections():
    def jump(t, y):
        return torch.full_like(y, 1.0 if t < 0.5 else -3.0)

    y0 = torch.zeros(1, 1, dtype=torch.float64)
    blind = solve(jump, y0, 0.0, 1.0, method="dopri5", rtol=1e-8, atol=1e-10)
    told = solve(jump, y0, 0.0, 1.0, method="dopri5", rtol=1e-8, atol=1e-10, tstops=[0.5], dense=True)
    assert 0.5 in told.times
    assert told.steps_rejected < blind.steps_rejected
    assert float(told.y1) == pytest.approx(0.5 - 1.5, abs=1e-12)
    assert float(told.trajectory.evaluate(0.25)) == pytest.approx(0.25, abs=1e-12)
    back = solve(jump, told.y1, 1.0, 0.0, method="dopri5", rtol=1e-8, atol=1e-10, tstops=[0.5])
    assert float(back.y1) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("forward", [True, False], ids=["forward", "backward"])
def test_auto_never_evaluates_outside_the_interval_when_it_switches_at_the_end(forward):
    # Stiffness sets in just before the end, so the switch test may linearise at the
    # last point; a difference for dF/dt taken there must not step past the interval
    # (a right-hand side reading a stored trajectory cannot be evaluated outside it).
    # The (onset, k, tol) cases made the switch fall on the last step before the fix.
    t0, t1 = (0.0, 1.0) if forward else (1.0, 0.0)
    switched = 0
    for onset, k, tol in ((0.05, 1000.0, 1e-3), (0.02, 1000.0, 3e-2), (0.002, 1e4, 3e-2)):
        def late_stiff(t, y):
            if not 0.0 <= t <= 1.0:
                raise ValueError(f"t={t} is outside [0, 1]")
            stiff = t > 1.0 - onset if forward else t < onset
            return -(k if stiff else 1.0) * (y - math.cos(t))

        sol = solve(late_stiff, torch.ones(1, 1, dtype=torch.float64), t0, t1, method="auto", rtol=tol, atol=tol)
        switched += sol.method_switches
        assert torch.isfinite(sol.y1).all()
    assert switched > 0
