"""Rigid-body quadrotor with thrust and body torques as controls (paper, Section 4.4).

Model of Sabatino, "Quadrotor control: modeling, nonlinear control design, and
simulation", MSc thesis, KTH 2015, eqs. (2.23)-(2.25), written with the linear velocity
in the inertial frame. Analytic Jacobians (hand-derived below) replace autograd.
"""
from __future__ import annotations

import dataclasses

import torch

from ctpg.system import ControlSystem
from envs._common import normal, override_params, uniform

# State layout: position, ZYX Euler angles, inertial velocity, body rates.
POS, ANG, VEL, RATE = slice(0, 3), slice(3, 6), slice(6, 9), slice(9, 12)
YAW, PITCH, ROLL = 3, 4, 5
P, Q, R = 9, 10, 11


@dataclasses.dataclass(frozen=True)
class QuadrotorParams:
    """Physical constants, cost weights and initial-state spreads of `Quadrotor`."""

    mass: float = 1.0
    gravity: float = 9.8
    inertia: tuple[float, float, float] = (1.0, 1.0, 1.0)   # (Ix, Iy, Iz), principal axes
    control_weight: float = 0.01     # weight of |u - u_hover|^2 in the running cost
    position_range: float = 2.5      # x0 position ~ U(-position_range, position_range)^3
    angle_std: float = 0.1           # x0 Euler angles ~ N(0, angle_std^2)
    rate_std: float = 0.1            # x0 body rates ~ N(0, rate_std^2)


def thrust_axis(angles: torch.Tensor) -> torch.Tensor:
    """R e3 [N,3]: the body z axis in the inertial frame for (yaw, pitch, roll) [N,3].

    R = Rz(yaw) Ry(pitch) Rx(roll) maps body to inertial coordinates; its third
    column is the direction along which the rotors push with -f_t.
    """
    c, s = torch.cos(angles), torch.sin(angles)
    cpsi, cth, cphi = c.unbind(1)
    spsi, sth, sphi = s.unbind(1)
    return torch.stack([cpsi * sth * cphi + spsi * sphi,
                        spsi * sth * cphi - cpsi * sphi,
                        cth * cphi], dim=1)


def rotation_matrix(angles: torch.Tensor) -> torch.Tensor:
    """Body-to-inertial rotation Rz(yaw) Ry(pitch) Rx(roll) [N,3,3] from (yaw, pitch, roll) [N,3]."""
    c, s = torch.cos(angles), torch.sin(angles)
    cpsi, cth, cphi = c.unbind(1)
    spsi, sth, sphi = s.unbind(1)
    rows = [[cpsi * cth, cpsi * sth * sphi - spsi * cphi, cpsi * sth * cphi + spsi * sphi],
            [spsi * cth, spsi * sth * sphi + cpsi * cphi, spsi * sth * cphi - cpsi * sphi],
            [-sth, cth * sphi, cth * cphi]]
    return torch.stack([torch.stack(row, dim=1) for row in rows], dim=1)


def euler_rates(angles: torch.Tensor, rates: torch.Tensor) -> torch.Tensor:
    """(yaw, pitch, roll) rates [N,3] from body rates (p, q, r) [N,3] (ZYX kinematics).

    Singular at pitch = +-pi/2 (gimbal lock): the rates blow up there.
    """
    pitch, roll = angles[:, 1], angles[:, 2]
    p, q, r = rates.unbind(1)
    a = torch.sin(roll) * q + torch.cos(roll) * r
    return torch.stack([a / torch.cos(pitch),
                        torch.cos(roll) * q - torch.sin(roll) * r,
                        p + torch.tan(pitch) * a], dim=1)


def quadrotor_dynamics(x: torch.Tensor, u: torch.Tensor, prm: QuadrotorParams) -> torch.Tensor:
    """dx/dt [N,12] for x [N,12] and u [N,4] = (f_t, tau_x, tau_y, tau_z); z points down."""
    ix, iy, iz = prm.inertia
    p, q, r = x[:, RATE].unbind(1)
    accel = -(u[:, :1] / prm.mass) * thrust_axis(x[:, ANG])
    accel = accel + torch.tensor([0.0, 0.0, prm.gravity], dtype=x.dtype, device=x.device)
    rate_dot = torch.stack([((iy - iz) * q * r + u[:, 1]) / ix,     # Euler's equations
                            ((iz - ix) * p * r + u[:, 2]) / iy,
                            ((ix - iy) * p * q + u[:, 3]) / iz], dim=1)
    return torch.cat([x[:, VEL], euler_rates(x[:, ANG], x[:, RATE]), accel, rate_dot], dim=1)


def _thrust_axis_derivatives(angles: torch.Tensor) -> torch.Tensor:
    """d(R e3)/d(yaw, pitch, roll) as [N,3,3] (rows: axis component, cols: angle)."""
    c, s = torch.cos(angles), torch.sin(angles)
    cpsi, cth, cphi = c.unbind(1)
    spsi, sth, sphi = s.unbind(1)
    n = thrust_axis(angles)
    d_yaw = torch.stack([-n[:, 1], n[:, 0], torch.zeros_like(cth)], dim=1)
    d_pitch = torch.stack([cpsi * cth * cphi, spsi * cth * cphi, -sth * cphi], dim=1)
    d_roll = torch.stack([-cpsi * sth * sphi + spsi * cphi,
                          -spsi * sth * sphi - cpsi * cphi,
                          -cth * sphi], dim=1)
    return torch.stack([d_yaw, d_pitch, d_roll], dim=2)


def _euler_rate_jacobian(jx: torch.Tensor, angles: torch.Tensor, rates: torch.Tensor) -> None:
    """Write d(euler_rates)/d(angles, rates) into rows 3:6 of jx [N,12,12] in place."""
    pitch, roll = angles[:, 1], angles[:, 2]
    p, q, r = rates.unbind(1)
    cth, tth = torch.cos(pitch), torch.tan(pitch)
    sphi, cphi = torch.sin(roll), torch.cos(roll)
    a = sphi * q + cphi * r              # d a / d roll = b
    b = cphi * q - sphi * r              # d b / d roll = -a; b is the pitch rate
    jx[:, YAW, PITCH] = a * tth / cth
    jx[:, YAW, ROLL] = b / cth
    jx[:, YAW, Q], jx[:, YAW, R] = sphi / cth, cphi / cth
    jx[:, PITCH, ROLL] = -a
    jx[:, PITCH, Q], jx[:, PITCH, R] = cphi, -sphi
    jx[:, ROLL, PITCH] = a / cth ** 2
    jx[:, ROLL, ROLL] = tth * b
    jx[:, ROLL, P] = 1.0
    jx[:, ROLL, Q], jx[:, ROLL, R] = tth * sphi, tth * cphi


def quadrotor_jacobians(x: torch.Tensor, u: torch.Tensor, prm: QuadrotorParams):
    """Hand-derived (df/dx [N,12,12], df/du [N,12,4]) of `quadrotor_dynamics`."""
    n = x.shape[0]
    ix, iy, iz = prm.inertia
    p, q, r = x[:, RATE].unbind(1)
    jx = x.new_zeros(n, 12, 12)
    ju = x.new_zeros(n, 12, 4)
    jx[:, POS, VEL] = torch.eye(3, dtype=x.dtype, device=x.device)
    _euler_rate_jacobian(jx, x[:, ANG], x[:, RATE])
    jx[:, VEL, ANG] = -(u[:, 0, None, None] / prm.mass) * _thrust_axis_derivatives(x[:, ANG])
    jx[:, P, Q], jx[:, P, R] = (iy - iz) * r / ix, (iy - iz) * q / ix
    jx[:, Q, P], jx[:, Q, R] = (iz - ix) * r / iy, (iz - ix) * p / iy
    jx[:, R, P], jx[:, R, Q] = (ix - iy) * q / iz, (ix - iy) * p / iz
    ju[:, VEL, 0] = -thrust_axis(x[:, ANG]) / prm.mass
    ju[:, P, 1], ju[:, Q, 2], ju[:, R, 3] = 1.0 / ix, 1.0 / iy, 1.0 / iz
    return jx, ju


class Quadrotor(ControlSystem):
    """Quadrotor stabilised at the origin (Sabatino 2015, eqs. 2.23-2.25; z axis down).

    Equations, with R = Rz(psi) Ry(theta) Rx(phi) body-to-inertial and e3 = (0,0,1)::

        d pos/dt   = v
        d phi/dt   = p + tan(theta) (sin(phi) q + cos(phi) r)
        d theta/dt = cos(phi) q - sin(phi) r
        d psi/dt   = (sin(phi) q + cos(phi) r) / cos(theta)
        d v/dt     = g e3 - (f_t / m) R e3        (hover: f_t = m g at zero angles)
        d p/dt     = ((Iy - Iz) q r + tau_x) / Ix     (and cyclically for q, r)

    State   (x, y, z, psi, theta, phi, vx, vy, vz, p, q, r): inertial position (z
            down, so altitude is -z), ZYX Euler angles yaw psi, pitch theta, roll
            phi, inertial velocity, body angular rates. d = 12.
    Action  (f_t, tau_x, tau_y, tau_z): total thrust (absolute, not relative to
            hover) and body torques. k = 4, unbounded (None).
    Cost    w = |pos|^2 + |v|^2 + 0.01 |u - u_hover|^2 with u_hover = (m g, 0, 0, 0):
            thrust is charged relative to hover, so hovering at the origin costs
            nothing and the optimum does not sag below the target to save thrust.
            J = 0.
    x0      pos ~ U(-2.5, 2.5)^3, angles and body rates ~ N(0, 0.1^2), v = 0.
    Horizon T = 5.
    Params  mass 1, gravity 9.8, inertia (1, 1, 1), control_weight 0.01,
            position_range 2.5, angle_std 0.1, rate_std 0.1 (`QuadrotorParams`).

    Failure mode: the Euler-angle kinematics are singular at theta = +-pi/2; a
    policy that flips the vehicle makes the solver take tiny steps or overflow.
    Jacobians are analytic; `vjp` is a^T J from them.
    """

    state_dim = 12
    action_dim = 4

    def __init__(self, horizon: float = 5.0, dtype: torch.dtype = torch.float64,
                 device: str | torch.device = "cpu", **params):
        super().__init__(dtype, device)
        self.horizon = float(horizon)
        self.params = override_params(QuadrotorParams(), params, type(self).__name__)
        self.hover_action = torch.tensor([self.params.mass * self.params.gravity, 0.0, 0.0, 0.0],
                                         dtype=dtype, device=self.device)

    def f(self, x, u):
        return quadrotor_dynamics(x, u, self.params)

    def jacobians(self, x, u):
        return quadrotor_jacobians(x, u, self.params)

    def vjp(self, x, u, a):
        jx, ju = quadrotor_jacobians(x, u, self.params)
        return torch.einsum("ni,nij->nj", a, jx), torch.einsum("ni,nij->nj", a, ju)

    def running_cost(self, x, u):
        tracking = (x[:, POS] ** 2).sum(-1) + (x[:, VEL] ** 2).sum(-1)
        return tracking + self.params.control_weight * ((u - self.hover_action) ** 2).sum(-1)

    def sample_initial_state(self, n, generator=None):
        prm, dt, dev = self.params, self.dtype, self.device
        pos = uniform(n, [-prm.position_range] * 3, [prm.position_range] * 3, generator, dt, dev)
        angles = normal(n, [prm.angle_std] * 3, generator, dt, dev)
        rates = normal(n, [prm.rate_std] * 3, generator, dt, dev)
        return torch.cat([pos, angles, torch.zeros_like(pos), rates], dim=1)

    def safe_state_box(self):
        """(low, high) [12]: states well away from gimbal lock where f is smooth (test helper)."""
        half = [3.0] * 3 + [1.0] * 3 + [2.0] * 3 + [2.0] * 3
        high = torch.tensor(half, dtype=self.dtype, device=self.device)
        return -high, high
