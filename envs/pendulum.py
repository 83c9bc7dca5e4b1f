"""Torque-limited pendulum swing-up: the smallest nonlinear system in the registry."""
from __future__ import annotations

import dataclasses
import math

import torch

from ctpg.system import ControlSystem
from envs._common import override_params, uniform


@dataclasses.dataclass(frozen=True)
class PendulumParams:
    """Physical constants, cost weights and initial-state ranges of `Pendulum`."""

    gravity: float = 9.8
    mass: float = 1.0
    length: float = 1.0
    damping: float = 0.0            # b: viscous friction torque -b theta' at the pivot
    rate_weight: float = 0.1        # weight of theta'^2 in the running cost
    control_weight: float = 0.001   # weight of u^2 in the running cost
    angle_range: float = math.pi / 4   # theta0 ~ U(-angle_range, angle_range)
    rate_range: float = 0.5            # theta'0 ~ U(-rate_range, rate_range)


def pendulum_dynamics(x: torch.Tensor, u: torch.Tensor, p: PendulumParams) -> torch.Tensor:
    """d(theta, theta')/dt [N,2] with theta = 0 hanging down; u [N,1] is the pivot torque."""
    theta, rate = x[:, 0], x[:, 1]
    inertia = p.mass * p.length ** 2
    accel = -(p.gravity / p.length) * torch.sin(theta) + (u[:, 0] - p.damping * rate) / inertia
    return torch.stack([rate, accel], dim=1)


def pendulum_energy(x: torch.Tensor, p: PendulumParams) -> torch.Tensor:
    """Mechanical energy m l^2 theta'^2 / 2 + m g l (1 - cos theta) [N]; conserved when
    u = 0 and damping = 0, zero at rest hanging down."""
    theta, rate = x[:, 0], x[:, 1]
    return 0.5 * p.mass * p.length ** 2 * rate ** 2 + p.mass * p.gravity * p.length * (1 - torch.cos(theta))


def pendulum_running_cost(x: torch.Tensor, u: torch.Tensor, p: PendulumParams) -> torch.Tensor:
    """(1 + cos theta) + rate_weight theta'^2 + control_weight u^2 -> [N]; zero upright at rest."""
    upright_gap = 1 + torch.cos(x[:, 0])
    return upright_gap + p.rate_weight * x[:, 1] ** 2 + p.control_weight * u[:, 0] ** 2


class Pendulum(ControlSystem):
    """Pendulum swung up from near hanging and balanced upright.

    Equations::

        d theta/dt  = theta'
        d theta'/dt = -(g/l) sin(theta) + (u - b theta') / (m l^2)

    State   (theta, theta'): angle from hanging down (radians, not wrapped;
            upright is theta = +-pi) and its rate. d = 2.
    Action  u: torque at the pivot, k = 1, bounds [-max_torque, max_torque] with
            max_torque = 5 by default. That is about half of m g l = 9.8, so the
            pendulum cannot be lifted straight up and must be pumped. f accepts any
            u; the estimators and the gym env saturate u to the bounds before f and
            the cost (`ctpg.saturated_policy`).
            max_torque=None removes them.
    Cost    w = (1 + cos theta) + 0.1 theta'^2 + 0.001 u^2: the first term is the
            height gap to upright (0 upright, 2 hanging), smooth and periodic in
            theta so both swing directions are equally good. J = 0.
    x0      theta ~ U(-pi/4, pi/4), theta' ~ U(-0.5, 0.5): near hanging, slightly
            moving, so the cost gradient is nonzero from the start.
    Horizon T = 5.
    Params  gravity 9.8, mass 1, length 1, damping b = 0 (torque per rad/s),
            rate_weight 0.1, control_weight 0.001, angle_range pi/4, rate_range 0.5
            (`PendulumParams`).

    Derivatives come from autograd (the default `vjp` / `jacobians`).
    """

    state_dim = 2
    action_dim = 1

    def __init__(self, horizon: float = 5.0, max_torque: float | None = 5.0,
                 dtype: torch.dtype = torch.float64, device: str | torch.device = "cpu", **params):
        super().__init__(dtype, device)
        self.horizon = float(horizon)
        self.params = override_params(PendulumParams(), params, type(self).__name__)
        if max_torque is not None:
            if max_torque <= 0:
                raise ValueError(f"max_torque must be positive or None (unbounded), got {max_torque}")
            self.action_high = torch.full((1,), float(max_torque), dtype=dtype, device=self.device)
            self.action_low = -self.action_high

    def f(self, x, u):
        return pendulum_dynamics(x, u, self.params)

    def running_cost(self, x, u):
        return pendulum_running_cost(x, u, self.params)

    def energy(self, x):
        return pendulum_energy(x, self.params)

    def sample_initial_state(self, n, generator=None):
        p = self.params
        return uniform(n, [-p.angle_range, -p.rate_range], [p.angle_range, p.rate_range],
                       generator, self.dtype, self.device)

    def sample_exploration_state(self, n, generator=None):
        """theta ~ U(-pi, pi), theta' ~ U(-2, 2): the whole circle (exploring starts)."""
        return uniform(n, [-math.pi, -2.0], [math.pi, 2.0], generator, self.dtype, self.device)

    def safe_state_box(self):
        """(low, high) [2]: a box covering the whole swing, where f is smooth (test helper)."""
        high = torch.tensor([4.0, 6.0], dtype=self.dtype, device=self.device)
        return -high, high
