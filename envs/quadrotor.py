"""Rigid-body quadrotor with thrust and body torques as controls (paper, Section 4.4).

Model of Sabatino, "Quadrotor control: modeling, nonlinear control design, and
simulation", MSc thesis, KTH 2015, eqs. (2.23)-(2.25), written with the linear velocity
in the inertial frame. Analytic Jacobians (hand-derived below) replace autograd.

Two parameter sets: the default ("quadrotor") is the paper's unit-mass, unit-inertia
vehicle; "quadrotor_realistic" (`realistic_quadrotor`) takes the widely used constants
of T. Luukkonen, "Modelling and control of quadcopter", Independent research project,
Aalto University, 2011, Table 1: m = 0.468 kg, arm l = 0.225 m,
I = diag(4.856e-3, 4.856e-3, 8.801e-3) kg m^2, rotor lift constant k = 2.980e-6 N s^2
and drag constant b = 1.140e-7 N m s^2. Action limits for both come from the same
rotor model (`action_bounds`); the realistic one's from k, b and a largest rotor speed
of 900 rad/s, which Luukkonen does not state (our assumption: thrust-to-weight 2.1).
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


# Luukkonen, "Modelling and control of quadcopter", Aalto University 2011, Table 1:
# rotor thrust f_i = k w_i^2 and drag torque b w_i^2 at rotor speed w_i (rad/s).
LUUKKONEN_K = 2.980e-6     # lift constant k (N s^2)
LUUKKONEN_B = 1.140e-7     # drag constant b (N m s^2)
# Our assumption, not Luukkonen's: the largest rotor speed. At 900 rad/s (8,594 rpm) the four
# rotors lift 4 k w^2 = 9.66 N, 2.10 times the weight of Luukkonen's 0.468 kg vehicle (hover at
# 620.6 rad/s), in line with the thrust-to-weight ratio of about 2 that small quadcopters are
# built with so that they hover near half throttle.
LUUKKONEN_MAX_ROTOR_SPEED = 900.0


@dataclasses.dataclass(frozen=True)
class QuadrotorParams:
    """Physical constants, cost weights and initial-state spreads of `Quadrotor`."""

    mass: float = 1.0
    gravity: float = 9.8
    inertia: tuple[float, float, float] = (1.0, 1.0, 1.0)   # (Ix, Iy, Iz), principal axes
    control_weight: float = 0.01     # weight of |u - u_hover|^2 in the running cost
    # Actuator limits from a plus-configuration rotor model (see `action_bounds`).
    thrust_to_weight: float | None = 2.0   # 4 x the largest rotor thrust over m g; None: unbounded
    arm_length: float = 1.0          # l, rotor axis to the centre of mass (m)
    yaw_drag_ratio: float = LUUKKONEN_B / LUUKKONEN_K   # b / k (m): yaw torque per newton of rotor thrust
    position_range: float = 2.5      # x0 position ~ U(-position_range, position_range)^3
    angle_std: float = 0.1           # x0 Euler angles ~ N(0, angle_std^2)
    rate_std: float = 0.1            # x0 body rates ~ N(0, rate_std^2)


def action_bounds(prm: QuadrotorParams):
    """(low [4], high [4]) of (f_t, tau_x, tau_y, tau_z) from the rotor model, or None.

    Plus configuration (Luukkonen 2011, eqs. 5-7): rotor thrusts f_i in [0, f_max] with
    f_max = thrust_to_weight m g / 4 give f_t = sum f_i in [0, 4 f_max],
    tau_x = l (f_4 - f_2) and tau_y = l (f_3 - f_1) in [-l f_max, l f_max], and
    tau_z = (b/k) (f_1 - f_2 + f_3 - f_4) in [-2 (b/k) f_max, 2 (b/k) f_max]. The box
    is each input's own range: the rotors cannot reach all corners at once (full
    thrust leaves no differential for torque), a simplification kept for a box action
    space.
    """
    if prm.thrust_to_weight is None:
        return None
    f_max = prm.thrust_to_weight * prm.mass * prm.gravity / 4
    tau_xy, tau_z = prm.arm_length * f_max, 2 * prm.yaw_drag_ratio * f_max
    return [0.0, -tau_xy, -tau_xy, -tau_z], [4 * f_max, tau_xy, tau_xy, tau_z]


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
    thrust = -(u[:, :1] / prm.mass) * thrust_axis(x[:, ANG])
    accel = torch.cat([thrust[:, :2], thrust[:, 2:] + prm.gravity], dim=1)   # no host-made tensor per call
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
            hover) and body torques. k = 4. Bounds from four rotors of thrust
            0..f_max each (`action_bounds`): with thrust_to_weight 2, arm_length 1
            and Luukkonen's b/k = 0.0383 m they are f_t in [0, 2 m g] = [0, 19.6],
            |tau_x|, |tau_y| <= 4.9 and |tau_z| <= 0.375; thrust_to_weight=None
            removes them.
    Cost    w = |pos|^2 + |v|^2 + 0.01 |u - u_hover|^2 with u_hover = (m g, 0, 0, 0):
            thrust is charged relative to hover, so hovering at the origin costs
            nothing and the optimum does not sag below the target to save thrust.
            J = 0.
    x0      pos ~ U(-2.5, 2.5)^3, angles and body rates ~ N(0, 0.1^2), v = 0.
    Horizon T = 5.
    Params  mass 1, gravity 9.8, inertia (1, 1, 1), control_weight 0.01,
            thrust_to_weight 2, arm_length 1, yaw_drag_ratio 0.0383,
            position_range 2.5, angle_std 0.1, rate_std 0.1 (`QuadrotorParams`).
            `realistic_quadrotor()` (envs name "quadrotor_realistic") uses
            Luukkonen's measured constants instead.

    Failure mode: the Euler-angle kinematics are singular at theta = +-pi/2; a
    policy that flips the vehicle makes the solver take tiny steps or overflow.
    Jacobians are analytic; `vjp` is a^T J from them.
    """

    state_dim = 12
    action_dim = 4
    torch_f = True      # f is torch: autograd (and CTPG(compile=True)) may differentiate it too

    def __init__(self, horizon: float = 5.0, dtype: torch.dtype = torch.float64,
                 device: str | torch.device = "cpu", **params):
        super().__init__(dtype, device)
        self.horizon = float(horizon)
        self.params = override_params(QuadrotorParams(), params, type(self).__name__)
        self.hover_action = torch.tensor([self.params.mass * self.params.gravity, 0.0, 0.0, 0.0],
                                         dtype=dtype, device=self.device)
        bounds = action_bounds(self.params)
        if bounds is not None:
            if not self.params.thrust_to_weight > 1:
                raise ValueError(f"thrust_to_weight must exceed 1 (the rotors must lift the vehicle) "
                                 f"or be None (unbounded), got {self.params.thrust_to_weight}")
            self.action_low, self.action_high = (torch.tensor(b, dtype=dtype, device=self.device)
                                                 for b in bounds)

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


def realistic_params() -> dict:
    """Luukkonen's quadcopter (2011, Table 1) as `Quadrotor` overrides.

    m = 0.468 kg, l = 0.225 m, I = (4.856e-3, 4.856e-3, 8.801e-3) kg m^2, g = 9.81,
    k = 2.980e-6 N s^2, b = 1.140e-7 N m s^2; with rotor speeds up to
    LUUKKONEN_MAX_ROTOR_SPEED = 900 rad/s (our assumption) each rotor gives up to
    f_max = k w_max^2 = 2.414 N, so f_t in [0, 9.655] N (hover 4.591 N),
    |tau_x|, |tau_y| <= l f_max = 0.543 N m and |tau_z| <= 2 b w_max^2 = 0.185 N m.
    """
    mass, gravity = 0.468, 9.81
    rotor_thrust_max = LUUKKONEN_K * LUUKKONEN_MAX_ROTOR_SPEED ** 2
    return dict(mass=mass, gravity=gravity, inertia=(4.856e-3, 4.856e-3, 8.801e-3),
                arm_length=0.225, yaw_drag_ratio=LUUKKONEN_B / LUUKKONEN_K,
                thrust_to_weight=4 * rotor_thrust_max / (mass * gravity))


def realistic_quadrotor(**overrides) -> Quadrotor:
    """`Quadrotor` with Luukkonen's constants (`realistic_params`); any keyword of
    `Quadrotor` or `QuadrotorParams` overrides them. Its rotational dynamics are fast
    (roll acceleration up to tau/I = 112 rad/s^2), so adaptive solvers take shorter
    steps than on the unit-inertia default."""
    return Quadrotor(**{**realistic_params(), **overrides})
