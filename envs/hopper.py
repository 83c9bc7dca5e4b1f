"""A planar one-legged hopper (spring-loaded inverted pendulum, SLIP) with flight and
stance modes: a hybrid system for CTPG through touchdowns and lift-offs."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

from ctpg.system import ControlSystem
from envs._common import override_params, uniform

FLIGHT, STANCE, FALLEN = 0.0, 1.0, 2.0           # values of the mode component x[:, 6]
TOUCHDOWN, LIFTOFF, FALL = 0, 1, 2               # guard elements


def observation_features(x: torch.Tensor) -> torch.Tensor:
    """The policy's input [N, 7]: (py, vx, vy, foot_x - px, phi, flight, stance). The
    body's px grows without bound as the hopper runs and nothing depends on it, so the
    policy sees the foot relative to the body instead (translation invariance), and the
    mode as two indicators."""
    mode = x[:, 6]
    flight, stance = (mode < 0.5).to(x.dtype), ((mode >= 0.5) & (mode < 1.5)).to(x.dtype)
    return torch.stack([x[:, 1], x[:, 2], x[:, 3], x[:, 4] - x[:, 0], x[:, 5], flight, stance], 1)


@dataclasses.dataclass(frozen=True)
class HopperParams:
    """Physical constants (per unit body mass), cost weights and initial-state ranges of `Hopper`."""

    gravity: float = 9.81
    leg_length: float = 1.0            # l0: the spring's rest length, the leg's full extension
    stiffness: float = 250.0           # k / m (1/s^2): k l0 / (m g) = 25, human running (Blickhan 1989)
    target_speed: float = 2.0          # v*: the forward speed to hop at (m/s)
    fall_height: float = 0.5           # the body below this height (x l0) has fallen
    speed_weight: float = 1.0          # weight of (vx - v*)^2
    height_weight: float = 0.1         # weight of (py - l0)^2
    effort_weight: float = 0.01        # weight of (u / bound)^2 of the actuator that acts
    fall_weight: float = 1.0           # extra cost rate once fallen (on top of (0 - v*)^2)
    servo_time: float = 0.05           # tau (s): the hip servo's time constant in flight
    contact_margin: float = 1e-8       # m: touchdown when the foot is this far below the ground
    height_range: tuple = (1.05, 1.35)  # py0 ~ U(.) x l0 (a drop: vy0 = 0)
    speed_range: tuple = (1.0, 3.0)    # vx0 ~ U(.)
    angle_range: tuple = (0.15, 0.35)  # phi0 ~ U(.) rad, the leg ahead of the body


class Hopper(ControlSystem):
    """A point-mass body on a massless spring leg hops forward; reach the target speed.

    The spring-loaded inverted pendulum (SLIP) of running and hopping (Blickhan, "The
    spring-mass model for running and hopping", J. Biomech. 22, 1989; Geyer, Seyfarth &
    Blickhan, "Compliant leg behaviour explains basic dynamics of walking and running",
    Proc. R. Soc. B 273, 2006), actuated as Raibert's hopper is, by swinging the leg in
    flight (foot placement) and thrusting along it in stance (Raibert, Legged Robots
    That Balance, MIT Press, 1986). Unit body mass, all forces per unit mass.

    State   x = (px, py, vx, vy, foot_x, phi, mode), d = 7: body position and velocity,
            the foot's horizontal position, the leg angle from vertical (positive: foot
            ahead of the body) and the mode (0 flight, 1 stance, 2 fallen), kept as a
            state component that f reads (ControlSystem.reset).
    Action  u = (u_angle, u_thrust), k = 2: the commanded leg angle in flight, bounds
            +-max_angle (0.6 rad), which a hip servo of time constant tau (0.05 s)
            follows; thrust along the leg in stance, bounds [0, max_thrust] (10 m/s^2,
            about 1 g; push only, so the ground never pulls). Each acts in its own mode
            only. A commanded angle rather than a swing rate (or torque) because the
            touchdown angle is SLIP's control variable (Raibert's foot placement, Geyer
            et al.'s angle of attack), so a policy that outputs a constant already hops,
            and a hip servo is how Raibert's hoppers swing the leg.

    Flight (mode 0)::   p'' = (0, -g),  phi' = (u_angle - phi) / tau,  foot_x' = vx + l0 cos(phi) phi'
                        (the foot at p + l0 (sin phi, -cos phi)).
    Stance (mode 1)::   foot pinned at (foot_x, 0); l = |p - foot|, e = (p - foot) / l,
                        p'' = (k (l0 - l) + u_thrust) e - (0, g),  foot_x' = 0,
                        phi' = d/dt atan2(foot_x - px, py) = -(vx py + (foot_x - px) vy) / l^2.
    Fallen (mode 2)::   x' = 0 (the body lies where it fell).

    Events (guard_directions (0, -1, -1); an element that does not apply in the current
    mode is the constant 1, so it never crosses zero; every reset leaves the next mode's
    guards strictly positive, see `contact_margin`):
      0 touchdown, in flight: g = py - l0 cos(phi) + margin, the foot reaching the ground
        (either direction: a foot that went below the ground and comes back counts, so
        the result never depends on when the solver re-arms the guard). Reset: if the leg
        would compress (e . v < 0 with the foot placed), stance with foot_x = px + l0 sin
        phi; otherwise the foot only brushes the ground (a leg at full extension cannot
        stretch) and the hopper stays in flight, the foot passing below ground level.
      1 lift-off, in stance: g = l0 - l falling through 0 (the leg back at full
        extension, the classic SLIP lift-off). Reset: flight, phi = atan2(foot_x - px, py).
      2 fall, in flight or stance: g = py - fall_height l0 falling through 0. Reset:
        fallen, vx = vy = 0.
    The margin (1e-8 m) makes the touchdown a hair late, so the stance starts with the
    spring compressed by ~margin (lift-off armed positive) and a lift-off leaves the foot
    above the touchdown level: the event location stops up to event_tol before a
    crossing, and without the margin the next guard would start on the wrong side of 0.
    It must exceed event_tol times the foot's speed (1e-10 x 10 m/s by default).

    Cost    w = speed_weight (vx - v*)^2 + height_weight (py - l0)^2
                + effort_weight ((u_angle / max_angle)^2 in flight, (u_thrust / max_thrust)^2
                in stance) + fall_weight once fallen; J = 0. Hopping forward at v* is the
            way to keep the first term small (a point mass in flight is ballistic, so it
            must hop; falling costs v*^2 + fall_weight per second).
    x0      a drop from apex: px = 0, py ~ U(1.05, 1.35) l0, vx ~ U(1, 3), vy = 0,
            phi ~ U(0.15, 0.35), foot_x = px + l0 sin phi, flight; the foot clears the
            ground by 0.06-0.41 l0, so samples touch down at different times.
    Horizon T = 3 (about 5 hops at v* = 2).
    Energy  with zero thrust the stance and flight conserve E = (vx^2 + vy^2)/2 + g py +
            k (l0 - l)^2 / 2 (stance), and the events are continuous in (p, v): E is
            conserved across touchdown and lift-off (tests/test_hopper.py).
    Failure a touchdown or lift-off where the flow meets the guard tangentially (a foot
            that reaches the ground at rest) raises GrazingEventError naming the time and
            the sample; `valid(x)` is False once fallen or below the fall height.
    """

    state_dim = 7
    action_dim = 2
    guard_directions = (0, -1, -1)

    def __init__(self, horizon: float = 3.0, max_angle: float = 0.6, max_thrust: float = 10.0,
                 dtype: torch.dtype = torch.float64, device: str | torch.device = "cpu", **params):
        super().__init__(dtype, device)
        self.horizon = float(horizon)
        self.params = override_params(HopperParams(), params, type(self).__name__)
        p = self.params
        if not (p.leg_length > 0 and p.stiffness > 0 and p.gravity > 0):
            raise ValueError("leg_length, stiffness and gravity must be positive, got "
                             f"{p.leg_length}, {p.stiffness}, {p.gravity}")
        if not 0 < p.fall_height < 1:
            raise ValueError(f"fall_height is a fraction of the leg length in (0, 1), got {p.fall_height}")
        if not (0 < max_angle < math.pi / 2 and max_thrust > 0 and p.servo_time > 0):
            raise ValueError(f"max_angle must lie in (0, pi/2), max_thrust and servo_time must be positive, got "
                             f"{max_angle}, {max_thrust}, {p.servo_time}")
        self.max_angle, self.max_thrust = float(max_angle), float(max_thrust)
        self.action_low = torch.tensor([-max_angle, 0.0], dtype=dtype, device=self.device)
        self.action_high = torch.tensor([max_angle, max_thrust], dtype=dtype, device=self.device)

    # ------------------------------------------------------------ geometry
    @staticmethod
    def modes(x):
        """(flight, stance, fallen) bool masks [N] from the mode component."""
        m = x[:, 6]
        return m < 0.5, (m >= 0.5) & (m < 1.5), m >= 1.5

    def leg(self, x):
        """(l [N], e [N,2]): length and unit direction foot -> body of the pinned leg
        (meaningful in stance; kept finite in every mode, so torch.where's unused
        branch never sends NaN into a gradient)."""
        dx, dy = x[:, 0] - x[:, 4], x[:, 1]
        length = torch.sqrt(torch.clamp(dx * dx + dy * dy, min=1e-12))
        return length, torch.stack([dx / length, dy / length], 1)

    def foot_height(self, x):
        """py - l0 cos(phi): the swinging foot's height in flight [N]."""
        return x[:, 1] - self.params.leg_length * torch.cos(x[:, 5])

    def energy(self, x):
        """Total mechanical energy per unit mass [N]: kinetic + gravity, plus the
        spring's k (l0 - l)^2 / 2 in stance."""
        p = self.params
        _, stance, _ = self.modes(x)
        length, _ = self.leg(x)
        spring = torch.where(stance, 0.5 * p.stiffness * (p.leg_length - length) ** 2, torch.zeros_like(length))
        return 0.5 * (x[:, 2] ** 2 + x[:, 3] ** 2) + p.gravity * x[:, 1] + spring

    # ------------------------------------------------------------ contract
    def f(self, x, u):
        p = self.params
        flight, stance, fallen = self.modes(x)
        zero = torch.zeros_like(x[:, 0])
        length, e = self.leg(x)
        push = p.stiffness * (p.leg_length - length) + u[:, 1]
        swing = (u[:, 0] - x[:, 5]) / p.servo_time
        ax = torch.where(stance, push * e[:, 0], zero)
        ay = torch.where(stance, push * e[:, 1], zero) - p.gravity
        dfoot = torch.where(flight, x[:, 2] + p.leg_length * torch.cos(x[:, 5]) * swing, zero)
        dphi_stance = -(x[:, 2] * x[:, 1] + (x[:, 4] - x[:, 0]) * x[:, 3]) / length ** 2
        dphi = torch.where(flight, swing, torch.where(stance, dphi_stance, zero))
        out = torch.stack([x[:, 2], x[:, 3], ax, ay, dfoot, dphi, zero], 1)
        return torch.where(fallen[:, None], torch.zeros_like(out), out)

    def running_cost(self, x, u):
        p = self.params
        flight, stance, fallen = self.modes(x)
        effort = torch.where(flight, (u[:, 0] / self.max_angle) ** 2,
                             torch.where(stance, (u[:, 1] / self.max_thrust) ** 2, torch.zeros_like(u[:, 0])))
        return (p.speed_weight * (x[:, 2] - p.target_speed) ** 2 + p.height_weight * (x[:, 1] - p.leg_length) ** 2
                + p.effort_weight * effort + p.fall_weight * fallen.to(x.dtype))

    def guards(self, x):
        p = self.params
        flight, stance, fallen = self.modes(x)
        one = torch.ones_like(x[:, 0])
        length, _ = self.leg(x)
        touchdown = torch.where(flight, self.foot_height(x) + p.contact_margin, one)
        liftoff = torch.where(stance, p.leg_length - length, one)
        fall = torch.where(fallen, one, x[:, 1] - p.fall_height * p.leg_length)
        return torch.stack([touchdown, liftoff, fall], 1)

    def reset(self, x, index):
        p = self.params
        px, py, vx, vy, foot, phi, mode = x.unbind(1)
        # touchdown: the foot placed under the leg's tip; stance only if the leg compresses
        foot_td = px + p.leg_length * torch.sin(phi)
        compress = (px - foot_td) * vx + py * vy < 0
        land = (index == TOUCHDOWN) & compress
        lift = index == LIFTOFF
        fall = index == FALL
        foot = torch.where(land, foot_td, foot)
        phi = torch.where(lift, torch.atan2(foot - px, py), phi)
        vx = torch.where(fall, torch.zeros_like(vx), vx)
        vy = torch.where(fall, torch.zeros_like(vy), vy)
        mode = torch.where(land, torch.full_like(mode, STANCE), torch.where(
            lift, torch.full_like(mode, FLIGHT), torch.where(fall, torch.full_like(mode, FALLEN), mode)))
        return torch.stack([px, py, vx, vy, foot, phi, mode], 1)

    def valid(self, x):
        _, _, fallen = self.modes(x)
        return ~fallen & (x[:, 1] >= self.params.fall_height * self.params.leg_length)

    def sample_initial_state(self, n, generator=None):
        p = self.params
        low = [p.height_range[0] * p.leg_length, p.speed_range[0], p.angle_range[0]]
        high = [p.height_range[1] * p.leg_length, p.speed_range[1], p.angle_range[1]]
        py, vx, phi = uniform(n, low, high, generator, self.dtype, self.device).unbind(1)
        zero = torch.zeros_like(py)
        return torch.stack([zero, py, vx, zero, p.leg_length * torch.sin(phi), phi, zero], 1)

    def safe_state_box(self):
        """A box of flight states where f is smooth (for the registry's derivative checks)."""
        low = torch.tensor([-0.5, 1.0, 0.5, -2.0, -0.5, -0.4, 0.0], dtype=self.dtype, device=self.device)
        high = torch.tensor([0.5, 1.5, 3.0, 2.0, 0.5, 0.4, 0.0], dtype=self.dtype, device=self.device)
        return low, high

    # ------------------------------------------------------------ drawing
    def render(self, x, width: int = 320, height: int = 240) -> np.ndarray:
        """An rgb_array [height, width, 3] uint8: the ground (with a tick every 0.5 l0,
        so forward motion shows), the leg (a line body -> foot) and the body (a disk),
        in a window 4 l0 wide centred on the body."""
        p = self.params
        px, py, foot, phi, mode = (float(x[i]) for i in (0, 1, 4, 5, 6))
        scale = width / (4 * p.leg_length)
        image = np.full((height, width, 3), 255, dtype=np.uint8)
        ground = height - 1 - int(0.1 * height)

        def pixel(X, Y):
            return int(round((X - px) * scale + width / 2)), int(round(ground - Y * scale))

        image[ground:, :] = (200, 190, 170)
        for k in range(math.floor((px - 2 * p.leg_length) / 0.5), math.ceil((px + 2 * p.leg_length) / 0.5) + 1):
            col = pixel(0.5 * k, 0.0)[0]
            if 0 <= col < width:
                image[ground:ground + 5, col] = (90, 80, 60)
        foot_xy = (foot, 0.0) if mode == STANCE else (px + p.leg_length * math.sin(phi),
                                                      py - p.leg_length * math.cos(phi))
        (c0, r0), (c1, r1) = pixel(px, py), pixel(*foot_xy)
        for s in np.linspace(0.0, 1.0, 2 * max(abs(c1 - c0), abs(r1 - r0), 1) + 1):
            r, c = int(round(r0 + s * (r1 - r0))), int(round(c0 + s * (c1 - c0)))
            if 0 <= r < height and 0 <= c < width:
                image[max(r - 1, 0):r + 2, max(c - 1, 0):c + 2] = (60, 60, 60)
        radius = max(3, height // 24)
        yy, xx = np.ogrid[:height, :width]
        body = (yy - r0) ** 2 + (xx - c0) ** 2 <= radius ** 2
        image[body] = (200, 40, 40) if mode != FALLEN else (120, 120, 120)
        return image
