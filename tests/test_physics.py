"""Physics sanity of each environment: equilibria, signs, conserved quantities and
closed-form motions, checked by direct evaluation of f or a tight solve that does not
depend on ctpg's own solvers (a fixed-step RK4 loop here, or scipy's solve_ivp)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.integrate
import scipy.linalg
import torch

import ctpg
from envs.diffdrive import DiffDrive, observation_features
from envs.electric import Electric, electric_force
from envs.lqr import LQR
from envs.double_pendulum import DoublePendulum
from envs.pendulum import Pendulum
from envs.quadrotor import Quadrotor, rotation_matrix

F64 = torch.float64


def rk4(f, x, u, t1, steps):
    """Fixed-step classical RK4 of dx/dt = f(x, u) with constant u, from 0 to t1."""
    dt = t1 / steps
    for _ in range(steps):
        k1 = f(x, u)
        k2 = f(x + 0.5 * dt * k1, u)
        k3 = f(x + 0.5 * dt * k2, u)
        k4 = f(x + dt * k3, u)
        x = x + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return x


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------ quadrotor
def test_quadrotor_hover_is_an_equilibrium_at_any_position_and_yaw():
    quad = Quadrotor(mass=1.7)
    x = torch.zeros(3, 12, dtype=F64)
    x[:, :3] = torch.randn(3, 3, generator=seeded(), dtype=F64)
    x[:, 3] = torch.tensor([0.0, 1.0, -2.5])                       # yaw does not tilt thrust
    u = torch.tensor([[1.7 * 9.8, 0.0, 0.0, 0.0]], dtype=F64).expand(3, 4)
    torch.testing.assert_close(quad.f(x, u), torch.zeros_like(x), rtol=0, atol=1e-14)
    rest = torch.zeros(1, 12, dtype=F64)
    assert quad.running_cost(rest, u[:1]).item() == 0.0, "cost is charged relative to hover"


def test_quadrotor_thrust_direction():
    """z points down: extra thrust lifts (vz' < 0); nose up (pitch > 0) pushes back
    (-x), right side down (roll > 0) pushes right (+y), as in aircraft NED axes."""
    quad = Quadrotor()
    x = torch.zeros(3, 12, dtype=F64)
    x[1, 4] = 0.3                                                  # pitch
    x[2, 5] = 0.3                                                  # roll
    u = torch.tensor([[2 * 9.8, 0.0, 0.0, 0.0]], dtype=F64).expand(3, 4)
    accel = quad.f(x, u)[:, 6:9]
    assert accel[0, 2].item() == pytest.approx(-9.8)
    assert accel[1, 0].item() < 0 and accel[2, 1].item() > 0
    gravity = torch.tensor([0.0, 0.0, 9.8], dtype=F64)
    norms = torch.linalg.vector_norm(accel - gravity, dim=1)
    torch.testing.assert_close(norms, torch.full((3,), 2 * 9.8, dtype=F64))


def skew(w):
    return torch.tensor([[0.0, -w[2], w[1]], [w[2], 0.0, -w[0]], [-w[1], w[0], 0.0]], dtype=F64)


def test_quadrotor_euler_rates_reproduce_body_rotation():
    """With constant body rates w, R(t) = R(0) expm([w]x t); integrating the Euler-angle
    kinematics must give the same attitude (checks the ZYX matrix and its signs)."""
    quad = Quadrotor()
    x = torch.zeros(1, 12, dtype=F64)
    x[0, 3:6] = torch.tensor([0.4, -0.3, 0.2])
    w = torch.tensor([0.5, -0.7, 0.3], dtype=F64)
    x[0, 9:12] = w
    x1 = rk4(quad.f, x, torch.tensor([[9.8, 0.0, 0.0, 0.0]], dtype=F64), 1.0, 400)
    expected = rotation_matrix(x[:, 3:6])[0] @ torch.linalg.matrix_exp(skew(w) * 1.0)
    torch.testing.assert_close(rotation_matrix(x1[:, 3:6])[0], expected, rtol=0, atol=1e-10)
    torch.testing.assert_close(x1[0, 9:12], w)                     # equal inertia: rates constant


def test_quadrotor_rates_follow_eulers_equations():
    """I dw/dt = -w x (I w) + tau for principal inertia I."""
    inertia = (0.8, 1.3, 2.1)
    quad = Quadrotor(inertia=inertia)
    x = torch.randn(5, 12, generator=seeded(1), dtype=F64) * 0.5
    u = torch.randn(5, 4, generator=seeded(2), dtype=F64)
    I = torch.tensor(inertia, dtype=F64)
    w = x[:, 9:12]
    expected = (-torch.linalg.cross(w, I * w) + u[:, 1:]) / I
    torch.testing.assert_close(quad.f(x, u)[:, 9:12], expected)


def test_quadrotor_analytic_jacobians_with_general_parameters():
    """Default inertia is isotropic, which zeroes the gyroscopic terms; check them here."""
    quad = Quadrotor(inertia=(0.8, 1.3, 2.1), mass=1.7, gravity=9.81)
    low, high = quad.safe_state_box()
    x = low + (high - low) * torch.rand(6, 12, generator=seeded(3), dtype=F64)
    u = torch.randn(6, 4, generator=seeded(4), dtype=F64) + quad.hover_action
    jx, ju = quad.jacobians(x, u)
    ax, au = ctpg.autograd_jacobians(quad.f, x, u)
    fx, fu, _ = ctpg.finite_difference_jacobians(quad.f, x, u)
    torch.testing.assert_close(jx, ax, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ju, au, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(jx, fx, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(ju, fu, rtol=1e-6, atol=1e-7)
    a = torch.randn(6, 12, generator=seeded(5), dtype=F64)
    gx, gu = quad.vjp(x, u, a)
    vx, vu = torch.autograd.functional.vjp(lambda xs, us: quad.f(xs, us), (x, u), a)[1]
    torch.testing.assert_close(gx, vx)
    torch.testing.assert_close(gu, vu)


# ------------------------------------------------------------------- pendulum
def solve_tight(system, x0, u, t1):
    """scipy DOP853 at rtol 1e-11 of dx/dt = f(x, u) for a batch, flattened."""
    n, d = x0.shape

    def rhs(_, y):
        x = torch.from_numpy(y).reshape(n, d)
        return system.f(x, u).reshape(-1).numpy()

    sol = scipy.integrate.solve_ivp(rhs, (0.0, t1), x0.reshape(-1).numpy(), method="DOP853",
                                    rtol=1e-11, atol=1e-12, dense_output=True)
    assert sol.success, sol.message
    return sol


def test_undamped_pendulum_conserves_energy():
    pend = Pendulum()
    x0 = torch.tensor([[0.5, 0.0], [2.0, 1.0], [-1.0, 3.0]], dtype=F64)
    u = torch.zeros(3, 1, dtype=F64)
    sol = solve_tight(pend, x0, u, pend.horizon)
    energy0 = pend.energy(x0)
    for t in np.linspace(0.0, pend.horizon, 11):
        xt = torch.from_numpy(sol.sol(t)).reshape(3, 2)
        torch.testing.assert_close(pend.energy(xt), energy0, rtol=1e-8, atol=1e-9)


def test_pendulum_power_balance_with_damping_and_torque():
    """dE/dt = theta' (u - b theta'): torque does work, damping only removes energy."""
    pend = Pendulum(damping=0.3, mass=1.4, length=0.7)
    x = torch.randn(6, 2, generator=seeded(6), dtype=F64)
    u = torch.randn(6, 1, generator=seeded(7), dtype=F64)
    xg = x.clone().requires_grad_(True)
    (grad_energy,) = torch.autograd.grad(pend.energy(xg).sum(), xg)
    power = (grad_energy * pend.f(x, u)).sum(1)
    torch.testing.assert_close(power, x[:, 1] * (u[:, 0] - 0.3 * x[:, 1]))


def test_pendulum_upright_is_a_zero_cost_equilibrium():
    pend = Pendulum()
    x = torch.tensor([[math.pi, 0.0], [0.0, 0.0]], dtype=F64)
    u = torch.zeros(2, 1, dtype=F64)
    torch.testing.assert_close(pend.f(x, u), torch.zeros_like(x), rtol=0, atol=1e-14)
    cost = pend.running_cost(x, u)
    assert cost[0].item() == pytest.approx(0.0, abs=1e-15) and cost[1].item() == pytest.approx(2.0)


# ------------------------------------------------------------------ diffdrive
def test_diffdrive_equal_wheel_speeds_drive_straight():
    robot = DiffDrive()
    heading, omega = 0.7, 1.3
    x0 = torch.tensor([[1.0, -2.0, heading, omega, omega]], dtype=F64)
    x1 = rk4(robot.f, x0, torch.zeros(1, 2, dtype=F64), 2.0, 50)
    distance = robot.params.wheel_radius * omega * 2.0
    expected = x0.clone()
    expected[0, 0] += distance * math.cos(heading)
    expected[0, 1] += distance * math.sin(heading)
    torch.testing.assert_close(x1, expected)


def test_diffdrive_opposite_wheel_speeds_turn_in_place():
    robot = DiffDrive(wheelbase=0.8)
    x0 = torch.tensor([[1.0, -2.0, 0.3, -1.1, 1.1]], dtype=F64)
    x1 = rk4(robot.f, x0, torch.zeros(1, 2, dtype=F64), 2.0, 50)
    turn = robot.params.wheel_radius / 0.8 * 2.2 * 2.0
    expected = x0.clone()
    expected[0, 2] += turn
    torch.testing.assert_close(x1, expected)


def test_diffdrive_wheel_accelerations_and_features():
    robot = DiffDrive()
    x = robot.sample_initial_state(4, seeded(8))
    u = torch.randn(4, 2, generator=seeded(9), dtype=F64)
    torch.testing.assert_close(robot.f(x, u)[:, 3:], u)
    assert (x[:, 3:] == 0).all() and (x[:, :2].abs() <= 5).all()
    feats = observation_features(x)
    assert feats.shape == (4, 7)
    torch.testing.assert_close(feats[:, 5:], torch.stack([x[:, 2].sin(), x[:, 2].cos()], 1))


# ------------------------------------------------------------------- electric
def test_electric_positive_charge_repels_and_negative_attracts():
    elec = Electric()
    pos = torch.tensor([[0.5, 0.5]] * 2, dtype=F64)
    u = torch.zeros(2, 8, dtype=F64)
    u[0, 6], u[1, 6] = 1.0, -1.0                    # electrode 6 sits at (0.1, 0.5), left of pos
    force = electric_force(pos, u, elec.electrodes, 1e-3, 0.1)
    magnitude = 1e-3 / 0.4 ** 2                     # K |u| / |r|^2
    torch.testing.assert_close(force, torch.tensor([[magnitude, 0.0], [-magnitude, 0.0]], dtype=F64))


def test_electric_force_saturates_inside_min_distance():
    elec = Electric()
    pos = torch.tensor([[0.15, 0.1]], dtype=F64)    # 0.05 from electrode 0 at (0.1, 0.1)
    u = torch.zeros(1, 8, dtype=F64)
    u[0, 0] = 0.5
    force = electric_force(pos, u, elec.electrodes, 1e-3, 0.1)
    torch.testing.assert_close(force, torch.tensor([[1e-3 * 0.5 * 0.05 / 0.1 ** 3, 0.0]], dtype=F64))


def test_electric_velocity_decays_at_the_documented_rate():
    """Zero charge: v(t) = v0 exp(-0.2 t), pos(t) = pos0 + v0 (1 - exp(-0.2 t)) / 0.2;
    after DiffTaichi's dt = 0.03 the factor is its exp(-0.2 dt)."""
    elec = Electric()
    x0 = elec.sample_initial_state(2, seeded(10))
    x0[:, 2:4] = torch.tensor([[0.3, -0.2], [-0.1, 0.4]], dtype=F64)
    u = torch.zeros(2, 8, dtype=F64)
    for t1 in (0.03, 2.0):
        x1 = rk4(elec.f, x0, u, t1, 100)
        decay = math.exp(-0.2 * t1)
        torch.testing.assert_close(x1[:, 2:4], x0[:, 2:4] * decay, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(x1[:, :2], x0[:, :2] + x0[:, 2:4] * (1 - decay) / 0.2,
                                   rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(x1[:, 4], torch.full((2,), t1, dtype=F64))
        torch.testing.assert_close(x1[:, 5:], x0[:, 5:], rtol=0, atol=0)


def test_electric_goal_path_and_initial_state():
    elec = Electric()
    x = elec.sample_initial_state(5, seeded(11))
    g0, g1, g2 = x[:, 5:7], x[:, 7:9], x[:, 9:11]
    torch.testing.assert_close(x[:, :2], g0)       # starts on the first goal point, at rest
    assert (x[:, 2:5] == 0).all() and ((x[:, 5:] >= 0.2) & (x[:, 5:] <= 0.8)).all()
    seg = elec.params.segment_time
    for clock, expected in ((0.0, g0), (0.5 * seg, 0.5 * (g0 + g1)), (seg, g1),
                            (1.25 * seg, 0.75 * g1 + 0.25 * g2), (2 * seg, g2), (3 * seg, g2)):
        xt = x.clone()
        xt[:, 4] = clock
        torch.testing.assert_close(elec.goal(xt), expected)
    assert elec.running_cost(x, torch.zeros(5, 8, dtype=F64)).abs().max().item() == 0.0
    assert elec.horizon == pytest.approx(512 * 0.03)


# ------------------------------------------------------------------------ LQR
def test_lqr_exact_cost_matches_tight_closed_loop_solve():
    gen = seeded(12)
    A = 0.5 * torch.randn(2, 2, generator=gen, dtype=F64)
    Qf = torch.diag(torch.tensor([0.5, 2.0], dtype=F64))
    lqr = LQR(A=A, Qf=Qf, R=0.3 * torch.eye(2, dtype=F64), horizon=3.0)
    K = torch.randn(2, 2, generator=gen, dtype=F64) + torch.eye(2, dtype=F64)
    bias = torch.randn(2, generator=gen, dtype=F64)
    x0 = torch.randn(3, 2, generator=gen, dtype=F64)
    exact = lqr.exact_cost(K, x0, bias)

    def rhs(_, z):
        x = torch.from_numpy(z[:2])[None]
        u = -x @ K.T + bias
        return np.concatenate([lqr.f(x, u)[0].numpy(), lqr.running_cost(x, u).numpy()])

    for i in range(3):
        z0 = np.concatenate([x0[i].numpy(), [0.0]])
        sol = scipy.integrate.solve_ivp(rhs, (0.0, 3.0), z0, method="DOP853", rtol=1e-12, atol=1e-12)
        xT = torch.from_numpy(sol.y[:2, -1])[None]
        cost = sol.y[2, -1] + lqr.terminal_cost(xT).item()
        assert exact[i].item() == pytest.approx(cost, rel=1e-8)


# ---------------------------------------------------------------- constructors
@pytest.mark.parametrize("cls", [DiffDrive, Quadrotor, Pendulum, DoublePendulum, Electric],
                         ids=lambda c: c.__name__)
def test_overrides_and_unknown_parameters(cls):
    system = cls(horizon=1.5, dtype=torch.float32)
    assert system.horizon == 1.5 and system.sample_initial_state(2).dtype == torch.float32
    with pytest.raises(TypeError, match="valid overrides are"):
        cls(no_such_parameter=1.0)
