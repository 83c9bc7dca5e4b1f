"""DiffTaichi's electric-field control task in continuous time (paper, Section 4.2).

Hu et al., "DiffTaichi: Differentiable Programming for Physical Simulation", ICLR
2020, task "electric": eight electrodes of controllable charge push a charged
particle around the unit square so that it follows a moving goal. The original steps
v <- v exp(-0.2 dt) + dt F, x <- x + dt v with dt = 0.03 for 512 steps; the
exp(-0.2 dt) factor is exactly the flow over dt of dv/dt = -0.2 v, so the continuous
damping rate is 0.2 per unit time, and the horizon is 512 * 0.03 = 15.36.
"""
from __future__ import annotations

import dataclasses

import torch

from ctpg.system import ControlSystem
from envs._common import override_params, uniform

POS, VEL, CLOCK, GOALS = slice(0, 2), slice(2, 4), 4, slice(5, 11)
ELECTRODES = ((0.1, 0.1), (0.1, 0.9), (0.9, 0.9), (0.9, 0.1),
              (0.5, 0.9), (0.5, 0.1), (0.1, 0.5), (0.9, 0.5))


@dataclasses.dataclass(frozen=True)
class ElectricParams:
    """Constants of `Electric` (DiffTaichi's values)."""

    charge_constant: float = 1e-3     # K in F = sum_i K u_i r_i / max(|r_i|, min_distance)^3
    min_distance: float = 0.1         # the force stops growing inside this radius
    damping: float = 0.2              # c in dv/dt = -c v + F / m (per unit time)
    mass: float = 1.0
    segment_time: float = 7.68        # time to move between goal points (256 steps of 0.03)
    goal_low: float = 0.2             # goal points ~ U(goal_low, goal_high)^2
    goal_high: float = 0.8
    electrodes: tuple = ELECTRODES


def electric_force(pos: torch.Tensor, u: torch.Tensor, electrodes: torch.Tensor,
                   charge_constant: float, min_distance: float) -> torch.Tensor:
    """Force [N,2] on the particle at pos [N,2] from electrode charges u [N,E].

    F = sum_i K u_i r_i / max(|r_i|, min_distance)^3 with r_i = pos - electrode_i:
    u_i > 0 pushes the particle away from electrode i, u_i < 0 pulls it in. The
    clamp keeps the force finite near an electrode; F is not differentiable where
    |r_i| = min_distance exactly.
    """
    r = pos[:, None, :] - electrodes                                # [N,E,2]
    dist = torch.linalg.vector_norm(r, dim=-1).clamp(min=min_distance)
    return (charge_constant * u / dist ** 3)[:, :, None].mul(r).sum(1)


def goal_position(x: torch.Tensor, segment_time: float) -> torch.Tensor:
    """Goal [N,2] at the state's clock: piecewise linear through the three goal points
    g0 -> g1 -> g2, one segment_time per leg, held at g2 afterwards (at g0 before 0)."""
    progress = x[:, CLOCK:CLOCK + 1] / segment_time
    g0, g1, g2 = x[:, 5:7], x[:, 7:9], x[:, 9:11]
    return g0 + progress.clamp(0, 1) * (g1 - g0) + (progress - 1).clamp(0, 1) * (g2 - g1)


def observation_features(x: torch.Tensor, segment_time: float = ElectricParams.segment_time):
    """DiffTaichi's policy inputs [N,8]: pos - 0.5, velocity, goal - 0.5, and the current
    leg's direction g_{i+1} - g_i (the goal velocity times segment_time)."""
    first_leg = x[:, CLOCK:CLOCK + 1] < segment_time
    direction = torch.where(first_leg, x[:, 7:9] - x[:, 5:7], x[:, 9:11] - x[:, 7:9])
    return torch.cat([x[:, POS] - 0.5, x[:, VEL], goal_position(x, segment_time) - 0.5, direction], 1)


class Electric(ControlSystem):
    """Charged particle steered by eight electrodes to follow a moving goal.

    Equations (r_i = pos - e_i, electrodes e_i listed in `ELECTRODES`)::

        d pos/dt   = v
        d v/dt     = -c v + (1/m) sum_i K u_i r_i / max(|r_i|, 0.1)^3
        d clock/dt = 1,     d goals/dt = 0

    State   (pos 2, v 2, clock 1, goal points g0, g1, g2 (6)), d = 11. The clock and
            the goal points are carried in the state, with trivial derivatives, so
            that f and the cost stay autonomous (time-invariant) while the goal moves.
    Action  u in [-1, 1]^8: electrode charges; positive repels the particle
            (action_low = -1, action_high = 1 tensors; f itself does not clip, the
            estimators and the gym env saturate u to them before f).
    Cost    w = |pos - goal(clock)|^2 with goal piecewise linear g0 -> g1 -> g2 over
            [0, segment_time] and [segment_time, 2 segment_time] (`goal_position`);
            no control cost, as in DiffTaichi. J = 0.
    x0      goal points g0, g1, g2 ~ U(0.2, 0.8)^2 independently; the particle
            starts at rest on g0 (as DiffTaichi does), clock 0.
    Horizon T = 15.36 (= 2 segment_time, DiffTaichi's 512 steps of 0.03).
    Params  charge_constant K = 1e-3, min_distance 0.1, damping c = 0.2 per unit
            time (DiffTaichi's exp(-0.2 dt) per step), mass 1, segment_time 7.68,
            goal_low 0.2, goal_high 0.8, electrodes (`ElectricParams`).

    Derivatives come from autograd. A shorter horizon truncates the task (the goal
    keeps its speed); to squeeze the whole path into T pass segment_time=T/2.
    """

    state_dim = 11
    action_dim = 8
    clock_index = CLOCK
    position_velocity = ((0, 1), (2, 3))

    def breakpoints(self, horizon: float) -> list[float]:
        """The goal turns (its velocity, a policy input, jumps) at every segment_time."""
        step = self.params.segment_time
        return [k * step for k in range(1, int(horizon / step) + 1) if k * step < horizon]

    def __init__(self, horizon: float = 15.36, dtype: torch.dtype = torch.float64,
                 device: str | torch.device = "cpu", **params):
        super().__init__(dtype, device)
        self.horizon = float(horizon)
        self.params = override_params(ElectricParams(), params, type(self).__name__)
        self.electrodes = torch.tensor(self.params.electrodes, dtype=dtype, device=self.device)
        if self.electrodes.ndim != 2 or self.electrodes.shape[1] != 2:
            raise ValueError("electrodes must be a sequence of (x, y) pairs, "
                             f"got shape {tuple(self.electrodes.shape)}")
        self.action_dim = self.electrodes.shape[0]
        self.action_high = torch.ones(self.action_dim, dtype=dtype, device=self.device)
        self.action_low = -self.action_high

    def f(self, x, u):
        p = self.params
        force = electric_force(x[:, POS], u, self.electrodes, p.charge_constant, p.min_distance)
        accel = -p.damping * x[:, VEL] + force / p.mass
        clock_rate = torch.ones_like(x[:, CLOCK:CLOCK + 1])
        return torch.cat([x[:, VEL], accel, clock_rate, torch.zeros_like(x[:, GOALS])], dim=1)

    def running_cost(self, x, u):
        return ((x[:, POS] - goal_position(x, self.params.segment_time)) ** 2).sum(-1)

    def goal(self, x):
        """Goal position [N,2] at each state's clock."""
        return goal_position(x, self.params.segment_time)

    def sample_initial_state(self, n, generator=None):
        p = self.params
        goals = uniform(n, [p.goal_low] * 6, [p.goal_high] * 6, generator, self.dtype, self.device)
        rest = torch.zeros(n, 3, dtype=self.dtype, device=self.device)    # velocity, clock
        return torch.cat([goals[:, :2], rest, goals], dim=1)

    def safe_state_box(self):
        """(low, high) [11]: moving particles inside the square, any clock (test helper).

        Positions stay in (0.25, 0.75)^2, farther than 0.1 from every electrode, so
        the force clamp never switches there.
        """
        low = [0.25, 0.25, -0.5, -0.5, 0.0] + [0.2] * 6
        high = [0.75, 0.75, 0.5, 0.5, 2 * self.params.segment_time] + [0.8] * 6
        as_t = lambda v: torch.tensor(v, dtype=self.dtype, device=self.device)
        return as_t(low), as_t(high)
