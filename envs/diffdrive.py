"""Differential-drive robot with torque-controlled wheels (paper, Section 4.1).

Kinematics from LaValle, *Planning Algorithms* (2006), Section 13.1.2 (the
differential drive), with one integrator added per wheel so that the controls are
wheel angular accelerations instead of wheel speeds (as in Ainsworth et al., "Faster Policy Learning with
Continuous-Time Gradients", 2021).
"""
from __future__ import annotations

import dataclasses
import math

import torch

from ctpg.system import ControlSystem
from envs._common import override_params, uniform


@dataclasses.dataclass(frozen=True)
class DiffDriveParams:
    """Physical constants, cost weights and initial-state ranges of `DiffDrive`."""

    wheelbase: float = 1.0          # L, distance between the wheels
    wheel_radius: float = 0.5       # r
    effort_weight: float = 0.1      # weight of wl^2 + wr^2 + u1^2 + u2^2 in the running cost
    position_range: float = 5.0     # x0, y0 ~ U(-position_range, position_range)


# Traction limit: the wheels cannot accelerate the robot faster than friction allows,
# mu g with mu ~ 1 (rubber on a hard floor), i.e. a wheel angular acceleration of
# mu g / r = 9.8 / 0.5 = 19.6 rad/s^2 at the default radius; rounded up to 20.
MAX_WHEEL_ACCELERATION = 20.0


def diffdrive_dynamics(x: torch.Tensor, u: torch.Tensor, p: DiffDriveParams) -> torch.Tensor:
    """dx/dt of the batch x [N,5] = (x, y, heading, wl, wr) under u [N,2] = (u1, u2)."""
    heading, wl, wr = x[:, 2], x[:, 3], x[:, 4]
    speed = 0.5 * p.wheel_radius * (wl + wr)        # forward speed of the axle midpoint
    turn_rate = p.wheel_radius / p.wheelbase * (wr - wl)
    return torch.stack([speed * torch.cos(heading), speed * torch.sin(heading), turn_rate,
                        u[:, 0], u[:, 1]], dim=1)


def diffdrive_running_cost(x: torch.Tensor, u: torch.Tensor, p: DiffDriveParams) -> torch.Tensor:
    """x^2 + y^2 + effort_weight (wl^2 + wr^2 + u1^2 + u2^2) -> [N]."""
    distance = x[:, 0] ** 2 + x[:, 1] ** 2
    effort = (x[:, 3:5] ** 2).sum(-1) + (u ** 2).sum(-1)
    return distance + p.effort_weight * effort


def observation_features(x: torch.Tensor) -> torch.Tensor:
    """[x, y, heading, wl, wr, sin heading, cos heading] -> [N,7].

    Heading is an unbounded angle; its sine and cosine let a policy see that
    heading and heading + 2 pi are the same pose. Compose it in front of a policy:
    `u = mlp(observation_features(x))`.
    """
    heading = x[:, 2:3]
    return torch.cat([x, torch.sin(heading), torch.cos(heading)], dim=1)


class DiffDrive(ControlSystem):
    """Differential-drive robot driven to the origin by wheel torques.

    Equations (LaValle 2006, Sec. 13.1.2, wheel speeds made states)::

        dx/dt  = r/2 (wl + wr) cos(h)        dwl/dt = u1
        dy/dt  = r/2 (wl + wr) sin(h)        dwr/dt = u2
        dh/dt  = r/L (wr - wl)

    State   (x, y, h, wl, wr): axle-midpoint position, heading h (radians, not
            wrapped), left and right wheel angular velocities. d = 5.
    Action  (u1, u2): left and right wheel angular accelerations (torque over
            wheel inertia). k = 2, bounds [-20, 20] rad/s^2 each: the traction limit
            mu g / r with mu ~ 1 (`MAX_WHEEL_ACCELERATION`; the default-trained policy
            stays below 10). max_wheel_acceleration=None removes them.
    Cost    w = x^2 + y^2 + 0.1 (wl^2 + wr^2 + u1^2 + u2^2), J = 0.
    x0      x, y ~ U(-5, 5), h ~ U(0, 2 pi), wheels at rest.
    Horizon T = 5.
    Params  wheelbase L = 1, wheel_radius r = 0.5, effort_weight 0.1,
            position_range 5 (see `DiffDriveParams`); override as keyword args.

    Derivatives come from autograd (the default `vjp` / `jacobians`).
    """

    state_dim = 5
    action_dim = 2

    def __init__(self, horizon: float = 5.0, max_wheel_acceleration: float | None = MAX_WHEEL_ACCELERATION,
                 dtype: torch.dtype = torch.float64, device: str | torch.device = "cpu", **params):
        super().__init__(dtype, device)
        self.horizon = float(horizon)
        self.params = override_params(DiffDriveParams(), params, type(self).__name__)
        if max_wheel_acceleration is not None:
            if not max_wheel_acceleration > 0:
                raise ValueError("max_wheel_acceleration must be positive or None (unbounded), "
                                 f"got {max_wheel_acceleration}")
            self.action_high = torch.full((2,), float(max_wheel_acceleration), dtype=dtype,
                                          device=self.device)
            self.action_low = -self.action_high

    def f(self, x, u):
        return diffdrive_dynamics(x, u, self.params)

    def running_cost(self, x, u):
        return diffdrive_running_cost(x, u, self.params)

    def sample_initial_state(self, n, generator=None):
        reach = self.params.position_range
        low = [-reach, -reach, 0.0, 0.0, 0.0]
        high = [reach, reach, 2 * math.pi, 0.0, 0.0]
        return uniform(n, low, high, generator, self.dtype, self.device)

    def safe_state_box(self):
        """(low, high) [5]: a box of states, wheels spinning, where f is smooth (test helper)."""
        reach = self.params.position_range
        low = torch.tensor([-reach, -reach, -math.pi, -3.0, -3.0], dtype=self.dtype, device=self.device)
        return low, -low
