"""Double pendulum (two point masses on massless rods): chaotic when swung hard."""
from __future__ import annotations

import dataclasses
import math

import torch

from ctpg.system import ControlSystem
from envs._common import override_params, uniform

ACTUATIONS = ("first", "both")


@dataclasses.dataclass(frozen=True)
class DoublePendulumParams:
    """Physical constants, cost weights and initial-state ranges of `DoublePendulum`
    (equal masses and lengths by default)."""

    gravity: float = 9.8
    mass1: float = 1.0
    mass2: float = 1.0
    length1: float = 1.0
    length2: float = 1.0
    damping: float = 0.0             # b: viscous torque -b (rate) at each joint (relative rate at the elbow)
    rate_weight: float = 0.05        # weight of w1^2 + w2^2 in the running cost
    control_weight: float = 0.001    # weight of |u|^2 in the running cost
    angle_range: float = math.pi / 4  # theta_i0 ~ U(-angle_range, angle_range)
    rate_range: float = 0.5           # w_i0 ~ U(-rate_range, rate_range)


def mass_matrix(x: torch.Tensor, p: DoublePendulumParams) -> torch.Tensor:
    """M(q) [N, 2, 2] of the kinetic energy T = w^T M(q) w / 2."""
    coupling = p.mass2 * p.length1 * p.length2 * torch.cos(x[:, 0] - x[:, 1])
    top = torch.stack([torch.full_like(coupling, (p.mass1 + p.mass2) * p.length1 ** 2), coupling], -1)
    bottom = torch.stack([coupling, torch.full_like(coupling, p.mass2 * p.length2 ** 2)], -1)
    return torch.stack([top, bottom], -2)


def joint_torques(x: torch.Tensor, u: torch.Tensor, p: DoublePendulumParams) -> torch.Tensor:
    """Generalised forces [N, 2] on (theta1, theta2) of the motor torques u ([N,1]:
    shoulder; [N,2]: shoulder, elbow) and the joints' damping. The elbow acts on the
    relative angle theta2 - theta1, so it pushes theta2 and pulls theta1."""
    shoulder = u[:, 0] - p.damping * x[:, 2]
    elbow = (u[:, 1] if u.shape[1] > 1 else torch.zeros_like(shoulder)) - p.damping * (x[:, 3] - x[:, 2])
    return torch.stack([shoulder - elbow, elbow], -1)


def double_pendulum_dynamics(x: torch.Tensor, u: torch.Tensor, p: DoublePendulumParams) -> torch.Tensor:
    """d(theta1, theta2, w1, w2)/dt [N, 4] by solving M(q) w' = rhs in closed form (2 x 2)."""
    th1, th2, w1, w2 = x.unbind(1)
    delta, lm = th1 - th2, p.mass2 * p.length1 * p.length2
    tau = joint_torques(x, u, p)
    r1 = -lm * torch.sin(delta) * w2 ** 2 - (p.mass1 + p.mass2) * p.gravity * p.length1 * torch.sin(th1) + tau[:, 0]
    r2 = lm * torch.sin(delta) * w1 ** 2 - p.mass2 * p.gravity * p.length2 * torch.sin(th2) + tau[:, 1]
    m11, m22, m12 = (p.mass1 + p.mass2) * p.length1 ** 2, p.mass2 * p.length2 ** 2, lm * torch.cos(delta)
    det = m11 * m22 - m12 ** 2
    return torch.stack([w1, w2, (m22 * r1 - m12 * r2) / det, (m11 * r2 - m12 * r1) / det], 1)


def double_pendulum_energy(x: torch.Tensor, p: DoublePendulumParams) -> torch.Tensor:
    """T + V [N], V = 0 with both rods hanging; conserved when u = 0 and damping = 0."""
    w = x[:, 2:, None]
    kinetic = 0.5 * (w.transpose(1, 2) @ mass_matrix(x, p) @ w)[:, 0, 0]
    height1 = p.length1 * (1 - torch.cos(x[:, 0]))
    height2 = height1 + p.length2 * (1 - torch.cos(x[:, 1]))
    return kinetic + p.gravity * (p.mass1 * height1 + p.mass2 * height2)


def double_pendulum_lagrangian(q: torch.Tensor, w: torch.Tensor, p: DoublePendulumParams) -> torch.Tensor:
    """L = T - V [N] from q = (theta1, theta2), w = (w1, w2): the reference a learned
    Lagrangian is compared with."""
    potential = double_pendulum_energy(torch.cat([q, torch.zeros_like(w)], 1), p)
    kinetic = double_pendulum_energy(torch.cat([q, w], 1), p) - potential
    return kinetic - potential


class DoublePendulum(ControlSystem):
    """Double pendulum swung up from hanging and balanced upright.

    Equations (absolute angles from hanging down, point masses m1, m2 at the ends of
    massless rods l1, l2; Delta = theta1 - theta2)::

        M(q) (w1', w2')^T = (tau1 - m2 l1 l2 sin(Delta) w2^2 - (m1 + m2) g l1 sin(theta1),
                             tau2 + m2 l1 l2 sin(Delta) w1^2 - m2 g l2 sin(theta2))
        M(q) = [[(m1 + m2) l1^2, m2 l1 l2 cos(Delta)], [m2 l1 l2 cos(Delta), m2 l2^2]]

    the Euler-Lagrange equations of L = T - V, T = w^T M(q) w / 2,
    V = -(m1 + m2) g l1 cos(theta1) - m2 g l2 cos(theta2) (up to a constant), solved
    in closed form (det M = m2 l1^2 l2^2 (m1 + m2 sin^2 Delta) > 0). Motor torques:
    u1 at the shoulder, u2 at the elbow on the relative angle, so tau1 = u1 - u2,
    tau2 = u2; damping b adds -b w1 at the shoulder and -b (w2 - w1) at the elbow.

    State   (theta1, theta2, w1, w2): the rods' angles from hanging down (radians, not
            wrapped; upright is theta = +-pi) and their rates. d = 4.
    Action  actuated="first" (default): u = (u1), the shoulder only (an acrobot-like
            underactuated arm with the motor at the base); actuated="both": u = (u1,
            u2). Bounds +-max_torque per motor, 10 N m by default: about half the
            largest gravity torque at the shoulder ((m1 + m2) g l1 = 19.6), so the
            arm must be pumped up, as the single pendulum is. The estimators and the
            gym env saturate u to the bounds; max_torque=None removes them.
    Cost    w = (1 + cos theta1) + (1 + cos theta2) + 0.05 (w1^2 + w2^2) + 0.001 |u|^2:
            each rod's height gap to upright (0 upright, 2 hanging). J = 0.
    x0      theta_i ~ U(-pi/4, pi/4), w_i ~ U(-0.5, 0.5): near hanging.
    Horizon T = 5.
    Params  gravity 9.8, masses 1, lengths 1, damping 0 (`DoublePendulumParams`).
            Undamped and unforced it conserves energy and is chaotic at high energy
            (benchmarks/double_pendulum.py estimates the Lyapunov time).

    Derivatives come from autograd (the default `vjp` / `jacobians`).
    """

    state_dim = 4

    def __init__(self, horizon: float = 5.0, actuated: str = "first", max_torque: float | None = 10.0,
                 dtype: torch.dtype = torch.float64, device: str | torch.device = "cpu", **params):
        if actuated not in ACTUATIONS:
            raise ValueError(f"actuated must be one of {ACTUATIONS} (motor at the shoulder only, or at both "
                             f"joints), got {actuated!r}")
        self.action_dim = 1 if actuated == "first" else 2
        super().__init__(dtype, device)
        self.horizon, self.actuated = float(horizon), actuated
        self.params = override_params(DoublePendulumParams(), params, type(self).__name__)
        if max_torque is not None:
            if max_torque <= 0:
                raise ValueError(f"max_torque must be positive or None (unbounded), got {max_torque}")
            self.action_high = torch.full((self.action_dim,), float(max_torque), dtype=dtype, device=self.device)
            self.action_low = -self.action_high

    def f(self, x, u):
        return double_pendulum_dynamics(x, u, self.params)

    def running_cost(self, x, u):
        p = self.params
        gap = (1 + torch.cos(x[:, 0])) + (1 + torch.cos(x[:, 1]))
        return gap + p.rate_weight * (x[:, 2:] ** 2).sum(1) + p.control_weight * (u ** 2).sum(1)

    def energy(self, x):
        return double_pendulum_energy(x, self.params)

    def sample_initial_state(self, n, generator=None):
        p = self.params
        high = [p.angle_range, p.angle_range, p.rate_range, p.rate_range]
        return uniform(n, [-v for v in high], high, generator, self.dtype, self.device)

    def safe_state_box(self):
        """(low, high) [4]: a box covering whole swings, where f is smooth (test helper)."""
        high = torch.tensor([4.0, 4.0, 6.0, 6.0], dtype=self.dtype, device=self.device)
        return -high, high
