"""CTPG gradients on every registered environment against finite differences.

For each system: a small float64 MLP policy, a batch of 3 initial states, horizon 0.5.
The CTPG gradient (dopri5 at rtol = atol = 1e-9) with respect to the policy parameters
and x0 is compared along two directions (the gradient itself and a random one) with
central differences of a reference cost. The reference integrates the closed loop with
a fixed-step RK4 loop written here (100 steps), independent of ctpg's solvers: a fixed
step sequence makes the discrete cost smooth in the parameters, so its differences are
clean, and its O(dt^4) error is far below the tolerance.
"""
from __future__ import annotations

import pytest
import torch

import ctpg
import envs


F64 = torch.float64
T, BATCH, RK4_STEPS, EPS, RTOL = 0.5, 3, 100, 1e-5, 1e-5
# Fraction of the action range the test policy spans: 0.9, except for the realistic
# quadrotor, whose 5-gram-square-metre inertia turns 90% of its torque range into
# ~100 rad/s^2: a random policy tumbles it through the Euler-angle singularity within T,
# where no gradient means anything. 5% (~5 rad/s^2) keeps its attitude within ~0.5 rad.
RANGE = {"quadrotor_realistic": 0.05}


class MLPPolicy(torch.nn.Module):
    """d -> 16 -> k with tanh; squashed into `fraction` x the action bounds (about
    their midpoint) when there are any, so neither the estimators' saturation nor a
    clamp inside the system (MuJoCo's ctrlrange) is ever reached."""

    def __init__(self, system, seed: int = 0, fraction: float = 0.9):
        super().__init__()
        with torch.random.fork_rng():           # seeded weights, global RNG left alone
            torch.manual_seed(seed)
            self.net = torch.nn.Sequential(torch.nn.Linear(system.state_dim, 16), torch.nn.Tanh(),
                                           torch.nn.Linear(16, system.action_dim)).to(F64)
        self.low, self.high, self.fraction = system.action_low, system.action_high, fraction

    def forward(self, x):
        out = self.net(x)
        if self.low is None:
            return out
        mid, half = 0.5 * (self.high + self.low), 0.5 * (self.high - self.low)
        return mid + self.fraction * half * torch.tanh(out)


@torch.no_grad()
def reference_loss(system, policy, x0) -> float:
    """Batch-mean cost by fixed-step RK4 of [x, accumulated running cost]."""
    d, dt = system.state_dim, T / RK4_STEPS

    def rhs(y):
        x = y[:, :d]
        u = policy(x)
        return torch.cat([system.f(x, u), system.running_cost(x, u)[:, None]], 1)

    y = torch.cat([x0, x0.new_zeros(x0.shape[0], 1)], 1)
    for _ in range(RK4_STEPS):
        k1 = rhs(y)
        k2 = rhs(y + 0.5 * dt * k1)
        k3 = rhs(y + 0.5 * dt * k2)
        k4 = rhs(y + dt * k3)
        y = y + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return (y[:, d] + system.terminal_cost(y[:, :d])).mean().item()


def directional_difference(system, policy, x0, direction) -> float:
    """Central difference of `reference_loss` along direction = (d params, d x0), flat."""
    params = torch.nn.utils.parameters_to_vector(policy.parameters()).detach().clone()
    n = params.numel()
    values = []
    for sign in (1.0, -1.0):
        torch.nn.utils.vector_to_parameters(params + sign * EPS * direction[:n], policy.parameters())
        values.append(reference_loss(system, policy, x0 + sign * EPS * direction[n:].view_as(x0)))
    torch.nn.utils.vector_to_parameters(params, policy.parameters())
    return (values[0] - values[1]) / (2 * EPS)


@pytest.mark.parametrize("name", envs.names(), ids=envs.names())
def test_ctpg_gradient_matches_finite_differences(name):
    system = envs.make(name)
    if system.has_events:     # this reference steps through impacts; tests/test_hybrid.py checks those
        pytest.skip(f"{name} has impacts: its gradients are checked in tests/test_hybrid.py and tests/test_hopper.py")
    if name == "juggler_soft":   # its damper's force jumps at contact onset: see below
        pytest.skip("juggler_soft's contact force jumps at onset (the damper), which a fixed-step reference and "
                    "any smooth adjoint miss alike; its contact is checked in tests/test_hybrid.py and its "
                    "gradients against the hybrid juggler's in benchmarks/pareto_contact.py")
    policy = MLPPolicy(system, fraction=RANGE.get(name, 0.9))
    x0 = system.sample_initial_state(BATCH, torch.Generator().manual_seed(0)).requires_grad_(True)
    loss, _ = ctpg.CTPG(method="dopri5", rtol=1e-9, atol=1e-9)(system, policy, x0, T)
    assert loss.item() == pytest.approx(reference_loss(system, policy, x0.detach()), rel=1e-6)
    loss.backward()
    grad = torch.cat([p.grad.reshape(-1) for p in policy.parameters()] + [x0.grad.reshape(-1)])
    random = torch.randn(grad.shape, generator=torch.Generator().manual_seed(1), dtype=F64)
    for direction in (grad / grad.norm(), random / random.norm()):
        estimate = (grad * direction).sum().item()
        reference = directional_difference(system, policy, x0.detach(), direction)
        assert abs(estimate - reference) <= RTOL * grad.norm().item(), (
            f"{name}: CTPG directional derivative {estimate:.10g} vs central differences {reference:.10g}")
