"""Action bounds mean the same problem everywhere: the estimators saturate the policy's
action exactly as the gymnasium environment clips it (`ctpg.saturated_policy`).

On every registered gymnasium id (all have finite bounds): a policy that always asks
for more than the bounds allow costs the same through CTPG and through a gym episode
(the clipped action is then constant, so the zero-order hold changes nothing), and a
feedback policy that saturates part of the time agrees within the zero-order-hold
difference, measured as the change of the episode's cost when the control interval is
halved. Horizons are 10 control intervals to keep the file fast.
"""
from __future__ import annotations

import math

import pytest
import torch

import ctpg
import envs
from ctpg.system import saturated_policy
from envs.gym_adapter import GYM_ENVS, ControlEnv

IDS = sorted(GYM_ENVS)
INTERVALS = 10


class Feedback(torch.nn.Module):
    """u = mid + amplitude half tanh(W x + b) (seeded): amplitude > 1 asks for actions
    beyond the bounds whenever |tanh| > 1 / amplitude, inside them otherwise."""

    def __init__(self, system, amplitude: float, state_scale: float = 1.0, seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        d, k = system.state_dim, system.action_dim
        self.W = torch.randn(k, d, generator=gen, dtype=torch.float64) / (math.sqrt(d) * state_scale)
        self.b = 0.5 * torch.randn(k, generator=gen, dtype=torch.float64)
        self.mid = (system.action_high + system.action_low) / 2
        self.half = (system.action_high - system.action_low) / 2
        self.amplitude = amplitude

    def forward(self, x):
        return self.mid + self.amplitude * self.half * torch.tanh(x @ self.W.T + self.b)


def setting(env_id):
    """(envs name, constructor overrides, control interval, horizon) of a gym id."""
    name, defaults = GYM_ENVS[env_id]
    overrides = {k: v for k, v in defaults.items() if k not in ("dt", "drawing")}
    dt = defaults.get("dt", 0.05)
    return name, overrides, dt, INTERVALS * dt


def episode(name, overrides, dt, horizon, policy, x0) -> tuple[float, int]:
    """(minus the return, number of clipped steps) of one gym episode from x0 with the
    policy acting every dt."""
    env = ControlEnv(name, dt=dt, horizon=horizon, **overrides)
    obs, _ = env.reset(options={"state": x0})
    cost, clipped, done = 0.0, 0, False
    while not done:
        with torch.no_grad():
            action = policy(torch.as_tensor(obs)[None])[0].numpy()
        obs, reward, terminated, truncated, info = env.step(action)
        cost, done = cost - reward, terminated or truncated
        clipped += info["action_clipped"]
    return cost, clipped


def episode_cost(*args) -> float:
    return episode(*args)[0]


def estimator_cost(system, policy, x0) -> float:
    loss, _ = ctpg.CTPG(rtol=1e-10, atol=1e-10)(system, policy, x0)
    return loss.item()


def test_saturated_policy_clamps_with_zero_derivative_outside():
    system = envs.make("pendulum")                        # torque in [-5, 5]
    weight = torch.tensor([[2.0, 0.0]], dtype=torch.float64, requires_grad=True)
    policy = saturated_policy(lambda x: x @ weight.T, system)
    x = torch.tensor([[1.0, 0.0], [4.0, 0.0], [-3.0, 0.0]], dtype=torch.float64)
    u = policy(x)
    assert u[:, 0].tolist() == [2.0, 5.0, -5.0]
    u.sum().backward()
    assert weight.grad.tolist() == [[1.0, 0.0]]           # only the unsaturated sample counts
    unbounded = envs.make("lqr")
    plain = torch.nn.Linear(2, 2)
    assert saturated_policy(plain, unbounded) is plain


def test_the_issues_pendulum_example():
    """u = 100 on the pendulum: the estimators now charge the clipped torque 5, as the gym
    environment does, not u = 100 (whose cost, 41,440 over a 5 s episode, is what the
    unbounded pendulum charges)."""
    bounded, unbounded = envs.make("pendulum"), envs.make("pendulum", max_torque=None)
    x0 = bounded.sample_initial_state(1, torch.Generator().manual_seed(0))
    push = lambda x: torch.full((x.shape[0], 1), 100.0, dtype=x.dtype)
    clipped = lambda x: torch.full((x.shape[0], 1), 5.0, dtype=x.dtype)
    assert estimator_cost(bounded, push, x0) == pytest.approx(estimator_cost(bounded, clipped, x0), rel=1e-12)
    assert estimator_cost(unbounded, push, x0) > 100 * estimator_cost(bounded, push, x0)
    gym_cost = episode_cost("pendulum", {}, 0.05, 5.0, push, x0[0].numpy())
    assert gym_cost == pytest.approx(estimator_cost(bounded, push, x0), rel=1e-7)


@pytest.mark.parametrize("env_id", IDS)
def test_always_saturated_policy_costs_the_same_in_both(env_id):
    name, overrides, dt, horizon = setting(env_id)
    system = envs.make(name, horizon=horizon, **overrides)
    assert system.action_low is not None, f"{env_id} must declare finite action bounds"
    x0 = system.sample_initial_state(1, torch.Generator().manual_seed(3))
    beyond = system.action_high + 10 * (system.action_high - system.action_low)
    policy = lambda x: beyond + 1e-3 * torch.tanh(x[:, :1])    # far above every bound, yet feedback
    expected = estimator_cost(system, policy, x0)
    got = episode_cost(name, overrides, dt, horizon, policy, x0[0].numpy())
    assert got == pytest.approx(expected, rel=1e-7, abs=1e-9)


@pytest.mark.parametrize("env_id", IDS)
def test_partly_saturated_feedback_agrees_within_the_zero_order_hold(env_id):
    name, overrides, dt, horizon = setting(env_id)
    system = envs.make(name, horizon=horizon, **overrides)
    x0 = system.sample_initial_state(1, torch.Generator().manual_seed(3))
    policy = Feedback(system, amplitude=3.0, state_scale=max(1.0, x0.abs().max().item()))
    expected = estimator_cost(system, policy, x0)
    coarse, clipped = episode(name, overrides, dt, horizon, policy, x0[0].numpy())
    assert clipped > 0, "the test policy must reach beyond the bounds"
    fine = episode_cost(name, overrides, dt / 2, horizon, policy, x0[0].numpy())
    hold_difference = abs(coarse - fine)        # first order in dt: the coarse error is ~2x this
    assert abs(coarse - expected) <= 3 * hold_difference + 1e-9 * (1 + abs(expected)), (
        f"{env_id}: estimator {expected:.10g}, gym {coarse:.10g} (dt) and {fine:.10g} (dt/2)")
