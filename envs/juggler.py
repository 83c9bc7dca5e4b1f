"""Ball-paddle juggling: a hybrid system (an impact with restitution) for CTPG through events."""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from ctpg.system import ControlSystem
from envs._common import override_params, uniform


@dataclasses.dataclass(frozen=True)
class JugglerParams:
    """Physical constants, cost weights and initial-state ranges of `Juggler`."""

    gravity: float = 9.8
    restitution: float = 0.8           # e in v+ - w = -e (v- - w)
    target_apex: float = 1.0           # apex height H the ball should reach above 0
    paddle_stiffness: float = 10.0     # k: the paddle's spring back to 0, d w/dt = u - k p - c w
    paddle_damping: float = 4.0        # c
    paddle_weight: float = 1.0         # weight of p^2 in the running cost
    control_weight: float = 0.01       # weight of u^2 in the running cost
    height_range: tuple = (0.6, 1.4)   # h0 ~ U(height_range), ball at rest, paddle at rest at 0


class Juggler(ControlSystem):
    """A ball falls under gravity onto a paddle the policy drives; keep it bouncing to a
    target apex height.

    Equations (flight, between impacts)::

        dh/dt = v,   dv/dt = -g                    (ball: height h, velocity v)
        dp/dt = w,   dw/dt = u - k p - c w         (paddle: height p, velocity w)

    Impact: guard g(x) = h - p falling through zero (the ball reaches the paddle from
    above); reset v+ = w - e (v- - w), h, p, w unchanged: Newton's restitution law for
    a paddle much heavier than the ball (Brogliato, Nonsmooth Mechanics, 1999; the
    juggler of Buehler & Koditschek, "From stable to chaotic juggling", ICRA 1990, and
    the ball-paddle example of the saltation-matrix tutorial, Kong, Payne, Zhu & Johnson,
    arXiv 2306.06862).

    State   (h, v, p, w), d = 4.  Action u: paddle acceleration command, k = 1,
            bounds [-max_accel, max_accel] (30 m/s^2 by default).
    Cost    w = (h + v^2 / (2 g) - H)^2 + paddle_weight p^2 + control_weight u^2: the
            first term is the squared gap between the ball's ballistic apex (its energy
            height, constant in flight) and the target H, so the cost measures every
            bounce's apex, and jumps at an impact (the saltation jump's cost term). J = 0.
    x0      h ~ U(0.6, 1.4), v = 0, p = w = 0.
    Horizon T = 3.
    Events  guard_directions = (-1,): only CTPG differentiates through the impact; BPTT
            and Backsolve refuse this system. A ball left resting on the paddle makes
            impacts pile up (Zeno): the estimate raises GrazingEventError naming the
            time and the sample.
    """

    state_dim = 4
    action_dim = 1
    guard_directions = (-1,)

    def __init__(self, horizon: float = 3.0, max_accel: float | None = 30.0,
                 dtype: torch.dtype = torch.float64, device: str | torch.device = "cpu", **params):
        super().__init__(dtype, device)
        self.horizon = float(horizon)
        self.params = override_params(JugglerParams(), params, type(self).__name__)
        if not 0 < self.params.restitution <= 1:
            raise ValueError(f"restitution must be in (0, 1], got {self.params.restitution}")
        if max_accel is not None:
            self.action_high = torch.full((1,), float(max_accel), dtype=dtype, device=self.device)
            self.action_low = -self.action_high

    def f(self, x, u):
        p = self.params
        return torch.stack([x[:, 1], torch.full_like(x[:, 1], -p.gravity), x[:, 3],
                            u[:, 0] - p.paddle_stiffness * x[:, 2] - p.paddle_damping * x[:, 3]], 1)

    def apex(self, x):
        """The ball's ballistic apex h + v^2 / (2 g) [N]."""
        return x[:, 0] + x[:, 1] ** 2 / (2 * self.params.gravity)

    def running_cost(self, x, u):
        p = self.params
        return (self.apex(x) - p.target_apex) ** 2 + p.paddle_weight * x[:, 2] ** 2 + p.control_weight * u[:, 0] ** 2

    def guards(self, x):
        return (x[:, 0] - x[:, 2])[:, None]

    def reset(self, x, index):
        e = self.params.restitution
        v_plus = x[:, 3] - e * (x[:, 1] - x[:, 3])
        return torch.stack([x[:, 0], v_plus, x[:, 2], x[:, 3]], 1)

    def sample_initial_state(self, n, generator=None):
        low, high = self.params.height_range
        h = uniform(n, [low], [high], generator, self.dtype, self.device)
        return torch.cat([h, h.new_zeros(n, 3)], 1)

    def render(self, x, width: int = 320, height: int = 240) -> np.ndarray:
        """An rgb_array [height, width, 3] uint8: the paddle (a bar), the ball (a disk)
        and the target apex (a line), heights from -0.5 to 2 H + 0.5."""
        h, p = float(x[0]), float(x[2])
        top, bottom = 2 * self.params.target_apex + 0.5, -0.5
        image = np.full((height, width, 3), 255, dtype=np.uint8)

        def row(z):
            return int(round((top - z) / (top - bottom) * (height - 1)))

        image[np.clip(row(self.params.target_apex), 0, height - 1), :, :] = (120, 200, 120)
        r = np.clip(row(p), 0, height - 1)
        image[max(r - 2, 0):r + 3, width // 2 - width // 6:width // 2 + width // 6] = (60, 60, 60)
        radius = max(3, height // 30)
        yy, xx = np.ogrid[:height, :width]
        ball = (yy - (row(h) - radius)) ** 2 + (xx - width // 2) ** 2 <= radius ** 2
        image[ball] = (200, 40, 40)
        return image


def contact_damping_ratio(restitution: float) -> float:
    """The damping ratio zeta of a unilateral spring-damper contact (force k d + c d'
    while positive, d the penetration, c = 2 zeta sqrt(k m)) whose coefficient of
    restitution is `restitution`, gravity neglected during the contact.

    The ball separates when the force reaches zero (not when d does), at the first
    t > 0 with tan(w_d t) = -2 zeta w_d / (1 - 2 zeta^2) (unit natural frequency,
    w_d = sqrt(1 - zeta^2)); the exit speed over the entry speed there is the
    restitution. This differs from the unclamped exp(-zeta pi / w_d) by ~1 % at e = 0.8.
    A scalar root-find (brentq), microseconds."""
    from scipy.optimize import brentq

    if not 0 < restitution < 1:
        raise ValueError(f"a damped contact has restitution in (0, 1), got {restitution}")

    def exit_over_entry(zeta):
        wd = np.sqrt(1 - zeta ** 2)
        t = (np.pi + np.arctan(-2 * zeta * wd / (1 - 2 * zeta ** 2))) / wd
        return -np.exp(-zeta * t) * (np.cos(wd * t) - zeta / wd * np.sin(wd * t))

    return float(brentq(lambda z: exit_over_entry(z) - restitution, 1e-9, 0.5))


class SoftJuggler(Juggler):
    """The juggler with the impact replaced by a stiff penalty contact: what a user of
    BPTT does today (BPTT and Backsolve refuse guards), and the baseline of
    `ctpg bench pareto --env juggler`.

    While the ball is below the paddle (penetration d = p - h > 0) it feels a
    Kelvin-Voigt contact force per unit mass F = max(0, k d + c (w - v)), with
    c = 2 zeta sqrt(k) and zeta from `contact_damping_ratio(e)`, so the contact's
    restitution equals the hybrid juggler's e (gravity neglected during the contact);
    the paddle, much heavier, feels nothing (as in the hybrid reset). No guards; as k
    grows the trajectory tends to the hybrid one with a contact lasting ~pi / sqrt(k) s. The model's bias in the
    gradient falls with k, while an explicit integrator needs steps dt << 1/sqrt(k):
    the trade-off the Pareto benchmark measures. The damper's force c d' jumps from 0 at
    contact onset, so f is discontinuous there: a gradient by autograd through fixed steps
    (or any smooth adjoint) misses the onset time's dependence on the parameters, a bias
    that grows with k (measured in docs/benchmarks/pareto.md).

    contact_stiffness k [1/s^2] (1e4 by default: a 31 ms contact); every other parameter
    as `Juggler`.
    """

    guard_directions = ()

    def __init__(self, horizon: float = 3.0, max_accel: float | None = 30.0, contact_stiffness: float = 1e4,
                 dtype: torch.dtype = torch.float64, device: str | torch.device = "cpu", **params):
        super().__init__(horizon, max_accel, dtype, device, **params)
        if not contact_stiffness > 0:
            raise ValueError(f"contact_stiffness must be positive, got {contact_stiffness}")
        self.contact_stiffness = float(contact_stiffness)
        self.contact_damping = 2 * contact_damping_ratio(self.params.restitution) * self.contact_stiffness ** 0.5

    def contact_force(self, x):
        """max(0, k d + c d') while the penetration d = p - h is positive, else 0 [N]."""
        d, d_rate = x[:, 2] - x[:, 0], x[:, 3] - x[:, 1]
        force = torch.relu(self.contact_stiffness * d + self.contact_damping * d_rate)
        return torch.where(d > 0, force, torch.zeros_like(force))

    def f(self, x, u):
        dx = super().f(x, u)
        return torch.cat([dx[:, :1], dx[:, 1:2] + self.contact_force(x)[:, None], dx[:, 2:]], 1)
