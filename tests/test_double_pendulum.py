"""The double pendulum's physics: its closed-form accelerations are the Euler-Lagrange
equations of its Lagrangian (formed here by autograd, independently of the env's
algebra), energy is conserved without torque or damping (scipy's DOP853 at 1e-11), and
the motors and damping change the energy at the rate of their power."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.integrate
import torch

import envs
from envs.double_pendulum import double_pendulum_lagrangian

F64 = torch.float64


def random_states(system, n=6, seed=0):
    low, high = system.safe_state_box()
    gen = torch.Generator().manual_seed(seed)
    return low + (high - low) * torch.rand(n, 4, generator=gen, dtype=F64)


def euler_lagrange_by_autograd(lagrangian, x):
    """w' solving d/dt dL/dw = dL/dq, one state at a time (no torques)."""
    out = []
    for row in x:
        q, w = row[:2], row[2:]
        L = lambda q_, w_: lagrangian(q_[None], w_[None])[0]
        H_ww = torch.autograd.functional.hessian(lambda w_: L(q, w_), w)
        H_wq = torch.autograd.functional.jacobian(
            lambda q_: torch.autograd.functional.jacobian(lambda w_: L(q_, w_), w, create_graph=True), q)
        g_q = torch.autograd.functional.jacobian(lambda q_: L(q_, w), q)
        out.append(torch.linalg.solve(H_ww, g_q - H_wq @ w))
    return torch.stack(out)


@pytest.mark.parametrize("params", [{}, dict(mass1=1.7, mass2=0.6, length1=0.8, length2=1.3, gravity=3.0)],
                         ids=["equal", "unequal"])
def test_accelerations_are_the_euler_lagrange_equations(params):
    system = envs.make("double_pendulum", **params)
    x = random_states(system)
    accel = system.f(x, torch.zeros(6, 1, dtype=F64))[:, 2:]
    expected = euler_lagrange_by_autograd(lambda q, w: double_pendulum_lagrangian(q, w, system.params), x)
    torch.testing.assert_close(accel, expected, rtol=1e-10, atol=1e-10)


def test_energy_is_conserved_without_torque_or_damping():
    system = envs.make("double_pendulum")
    x0 = torch.tensor([[2.0, 2.5, 0.0, 0.0], [0.5, -1.0, 1.0, 2.0]], dtype=F64)   # the first is chaotic
    u = torch.zeros(2, 1, dtype=F64)

    def rhs(_, y):
        return system.f(torch.from_numpy(y).reshape(2, 4), u).reshape(-1).numpy()

    sol = scipy.integrate.solve_ivp(rhs, (0.0, 10.0), x0.reshape(-1).numpy(), method="DOP853",
                                    rtol=1e-11, atol=1e-12, dense_output=True)
    for t in np.linspace(0.0, 10.0, 11):
        xt = torch.from_numpy(sol.sol(t)).reshape(2, 4)
        torch.testing.assert_close(system.energy(xt), system.energy(x0), rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("actuated", ["first", "both"])
def test_power_balance_with_motors_and_damping(actuated):
    """dE/dt = u1 w1 + u2 (w2 - w1) - b w1^2 - b (w2 - w1)^2."""
    system = envs.make("double_pendulum", actuated=actuated, damping=0.3, mass2=0.7)
    x = random_states(system, seed=1)
    u = torch.randn(6, system.action_dim, generator=torch.Generator().manual_seed(2), dtype=F64)
    x_ = x.clone().requires_grad_(True)
    (grad_energy,) = torch.autograd.grad(system.energy(x_).sum(), x_)
    rate = (grad_energy * system.f(x, u)).sum(1)
    w1, rel = x[:, 2], x[:, 3] - x[:, 2]
    u2 = u[:, 1] if actuated == "both" else 0.0
    torch.testing.assert_close(rate, u[:, 0] * w1 + u2 * rel - 0.3 * (w1 ** 2 + rel ** 2), rtol=1e-10, atol=1e-10)


def test_hanging_and_upright_are_equilibria_and_bad_actuation_is_refused():
    system = envs.make("double_pendulum", actuated="both")
    rest = torch.tensor([[0.0, 0.0, 0.0, 0.0], [np.pi, np.pi, 0.0, 0.0], [np.pi, 0.0, 0.0, 0.0]], dtype=F64)
    torch.testing.assert_close(system.f(rest, torch.zeros(3, 2, dtype=F64)), torch.zeros(3, 4, dtype=F64),
                               rtol=0, atol=1e-12)
    assert float(system.running_cost(rest[1:2], torch.zeros(1, 2, dtype=F64))) == pytest.approx(0.0, abs=1e-12)
    assert system.action_dim == 2 and envs.make("double_pendulum").action_dim == 1
    with pytest.raises(ValueError, match="actuated must be one of"):
        envs.make("double_pendulum", actuated="elbow")
