"""Accurate evaluation of a policy, independent of the training estimator.

The closed loop dx/dt = f(x, pi(x)) is solved together with the accrued cost
c' = w(x, pi(x)) as one extra state by ctpg.solvers.solve at tight tolerances, under
torch.no_grad (no backward pass, no stored graph). The held-out initial states are
drawn once from a fixed seed, so evaluations are comparable across runs and
estimators. Per-environment metrics read the final states (and, where the task
asks for it, the stored trajectory).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

UPRIGHT_TOLERANCE = math.radians(25.0)


@dataclass
class Rollout:
    """An evaluated closed loop: `states` [S,N,d] on the grid `times` [S], per-sample
    `costs` [N] (running plus terminal) and `final` states [N,d]."""

    times: torch.Tensor
    states: torch.Tensor
    costs: torch.Tensor
    final: torch.Tensor


def heldout_states(system, n: int, seed: int) -> torch.Tensor:
    """n initial states from the system's distribution under a dedicated generator."""
    generator = torch.Generator(device=system.device).manual_seed(seed)
    return system.sample_initial_state(n, generator)


def rollout(system, policy, x0: torch.Tensor, horizon: float, *, method: str = "dopri5",
            rtol: float = 1e-7, atol: float = 1e-9, n_times: int = 101) -> Rollout:
    """Solve the closed loop from x0 [N,d] over [0, horizon] accurately, with the
    policy's actions saturated to the system's bounds as the estimators do.

    Costs one adaptive forward solve (f, policy and running cost at every stage, no
    Jacobians) plus n_times evaluations of the dense output. rtol is raised to 100
    machine epsilons of x0's dtype where it asks for more than the dtype can give
    (float32: 1.2e-5). A hybrid system (guards: the juggler, the hopper) is solved
    through its events (ctpg.estimators.hybrid.solve_hybrid, event_tol 1e-10) and the
    grid read from its pieces. Raises whatever the solver raises when the closed loop
    blows up (step size underflow, max steps; GrazingEventError at a tangential event).
    """
    from ctpg.estimators.closed_loop import closed_loop_rhs
    from ctpg.solvers import solve
    from ctpg.system import saturated_policy
    d = system.state_dim
    closed_loop = closed_loop_rhs(system, saturated_policy(policy, system))

    rtol = max(rtol, 100 * torch.finfo(x0.dtype).eps)
    with torch.no_grad():
        y0 = torch.cat([x0, x0.new_zeros(x0.shape[0], 1)], 1)
        if system.has_events:       # impacts and mode switches: located and reset, as CTPG does
            from ctpg.estimators.hybrid import solve_hybrid
            sol = solve_hybrid(closed_loop, system, saturated_policy(policy, system), y0, float(horizon),
                               event_tol=1e-10, max_events=100_000, grazing=1e-8, max_steps=1_000_000,
                               dense=True, method=method, rtol=rtol, atol=atol, autonomous=True)
            path = sol             # reads each time from its piece between events
        else:
            sol = solve(closed_loop, y0, 0.0, float(horizon), method=method, rtol=rtol, atol=atol,
                        dense=True)
            path = sol.trajectory
        final = sol.y1[:, :d]
        costs = sol.y1[:, d] + system.terminal_cost(final)
        # the grid in Python floats: a float32 linspace rounds T past the stored trajectory
        grid = [float(horizon) * i / (n_times - 1) for i in range(n_times)]
        states = torch.stack([path.evaluate(t)[:, :d] for t in grid])
        times = torch.tensor(grid, dtype=x0.dtype, device=x0.device)
    return Rollout(times, states, costs, final)


def angle_from_upright(theta: torch.Tensor, upright: float = 0.0) -> torch.Tensor:
    """theta - upright wrapped to (-pi, pi]: the signed tilt of a pole from standing up."""
    gap = theta - upright
    return torch.atan2(torch.sin(gap), torch.cos(gap))


def _diffdrive(system, run: Rollout, x0) -> dict:
    return {"final_distance": run.final[:, :2].norm(dim=1).median().item()}


def _upright(index: int, upright: float) -> Callable:
    def metric(system, run: Rollout, x0) -> dict:
        ok = angle_from_upright(run.final[:, index], upright).abs() < UPRIGHT_TOLERANCE
        return {"upright_fraction": ok.double().mean().item()}
    return metric


def _quadrotor(system, run: Rollout, x0) -> dict:
    """Median final position error; largest final tilt (body z axis from vertical), degrees."""
    pitch, roll = run.final[:, 4], run.final[:, 5]
    tilt = torch.arccos((torch.cos(pitch) * torch.cos(roll)).clamp(-1.0, 1.0))
    return {"final_position_error": run.final[:, :3].norm(dim=1).median().item(),
            "max_tilt": math.degrees(tilt.max().item())}


def _lqr(system, run: Rollout, x0) -> dict:
    """Mean eval cost over the mean cost of the optimal stationary gain u = -K x (K from
    the Riccati equation), both over the run's own horizon and from the same starts.

    The reference is exact (LQR.exact_cost at that horizon) for an unbounded system; with
    action bounds it is the accurate rollout of the saturated gain, the problem the
    policy was trained on. Over a finite horizon with no terminal cost the optimum is
    time-varying, so a learned policy may end slightly below 1 (more so the shorter T).
    """
    horizon = float(run.times[-1])
    K = system.optimal_gain()
    if system.action_low is None:
        reference = system.exact_cost(K, x0, horizon=horizon)
    else:
        reference = rollout(system, lambda x: -x @ K.T, x0, horizon, n_times=2).costs
    return {"cost_ratio_lqr": run.costs.mean().item() / reference.mean().item()}


def _electric(system, run: Rollout, x0) -> dict:
    """Root-mean-square distance to the moving goal over [0, T] (the cost is its square)."""
    horizon = float(run.times[-1])
    return {"goal_distance_rms": math.sqrt(max(run.costs.mean().item(), 0.0) / horizon)}


def _hopper(system, run: Rollout, x0) -> dict:
    """Mean forward speed over the second half of the horizon against the target: the
    median relative error and the fraction of starts within 10 % that have not fallen."""
    half = (run.times.numel() - 1) // 2
    speed = (run.final[:, 0] - run.states[half, :, 0]) / (run.times[-1] - run.times[half])
    target = system.params.target_speed
    error = (speed - target).abs() / target
    ok = (error <= 0.1) & system.valid(run.final)
    return {"speed_error": error.median().item(), "speed_fraction": ok.double().mean().item()}


def _generic(system, run: Rollout, x0) -> dict:
    return {"final_state_norm": run.final.norm(dim=1).median().item()}


# Per-environment metrics: name -> fn(system, rollout, x0) -> {metric: float}. Each
# metric is logged as eval/<metric>; agents/logging.py documents the tags.
METRICS: dict[str, Callable] = {
    "diffdrive": _diffdrive,
    "quadrotor": _quadrotor,
    "quadrotor_realistic": _quadrotor,
    "cartpole": _upright(1, 0.0),          # hinge angle, 0 upright
    "pendulum": _upright(0, math.pi),      # angle from hanging, upright at pi
    "lqr": _lqr,
    "electric": _electric,
    "hopper": _hopper,
}


def metrics(env: str, system, run: Rollout, x0: torch.Tensor) -> dict:
    """Mean eval cost plus the environment's own metrics (generic: final state norm)."""
    out = {"cost": run.costs.mean().item()}
    out.update(METRICS.get(env, _generic)(system, run, x0))
    return out
