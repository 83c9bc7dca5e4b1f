"""The actor-critic's window problem: a ControlSystem that any estimator differentiates.

A window [t, t+H] of the discounted infinite-horizon problem

    min  int_0^H e^{-rho s} w(x(s), u(s)) ds + e^{-rho H} V(x(H)),   x(0) = the carried state

is an ordinary control problem once the window's own time s is a state: the
`WindowProblem` state is [x, s] (d + 1 components, s' = 1, s(0) = 0, declared as the
system's clock so the estimators hand it the solver's exact time), its running cost
is e^{-rho s} w(x, u) and its terminal cost e^{-rho s} V(x), s = H at the end. So CTPG,
BPTT and Backsolve differentiate it unchanged: the critic V enters only through the
terminal adjoint lam(H) = e^{-rho H} dV/dx, and V's own parameters receive no gradient
(`parameters()` is empty, the critic is a frozen copy). The accrued cost the forward
pass stores is the discounted c(s) = int_0^s e^{-rho r} w dr, which is what the critic
targets read (agents.critic).

Cost: one f (vjp, Jacobian) of the wrapped system per call, counted on both systems'
counters (the Trainer reads the wrapped system's), plus one exp per cost call.
"""
from __future__ import annotations

import torch
from torch import nn

from ctpg.system import ControlSystem


class WindowProblem(ControlSystem):
    """[x, s] -> the discounted window problem of `system` with terminal cost `critic`.

    `critic` maps x [N,d] to values [N]; it is used as given (the caller passes a
    frozen target network). The system's own terminal cost J and its breakpoints are
    not used: a window ends at a critic, not at the episode's end, and breakpoints are
    times of the episode, which the window does not know (an adaptive solver steps
    over such a jump by rejecting steps).
    """

    def __init__(self, system: ControlSystem, critic, horizon: float, discount: float):
        super().__init__(system.dtype, system.device)
        if not horizon > 0 or not discount >= 0:
            raise ValueError(f"a window needs horizon H > 0 and discount rho >= 0, got H={horizon}, rho={discount}")
        self.system, self.critic = system, critic
        self.horizon, self.discount = float(horizon), float(discount)
        self.state_dim, self.action_dim = system.state_dim + 1, system.action_dim
        self.action_low, self.action_high = system.action_low, system.action_high
        self.clock_index = system.state_dim
        self.position_velocity = system.position_velocity
        self.torch_f = system.f_differentiable

    def parameters(self) -> list[torch.Tensor]:
        return []       # the critic is held fixed in the actor step

    def weight(self, s: torch.Tensor) -> torch.Tensor:
        """The discount e^{-rho s} [N] at window times s [N]."""
        return torch.exp(-self.discount * s)

    def f(self, x, u):
        d = self.system.state_dim
        return torch.cat([self.system.f(x[:, :d], u), torch.ones_like(x[:, d:])], 1)

    def vjp(self, x, u, a):
        d = self.system.state_dim
        gx, gu = self.system.vjp(x[:, :d], u, a[:, :d])
        return torch.cat([gx, torch.zeros_like(x[:, d:])], 1), gu

    def jacobians(self, x, u):
        d = self.system.state_dim
        f_x, f_u = self.system.jacobians(x[:, :d], u)
        n = x.shape[0]
        J_x = x.new_zeros(n, d + 1, d + 1)
        J_x[:, :d, :d] = f_x
        return J_x, torch.cat([f_u, f_u.new_zeros(n, 1, f_u.shape[2])], 1)

    def running_cost(self, x, u):
        d = self.system.state_dim
        return self.weight(x[:, d]) * self.system.running_cost(x[:, :d], u)

    def terminal_cost(self, x):
        d = self.system.state_dim
        return self.weight(x[:, d]) * self.critic(x[:, :d])

    def sample_initial_state(self, n, generator=None):
        return self.start(self.system.sample_initial_state(n, generator))

    def start(self, x: torch.Tensor) -> torch.Tensor:
        """The window's initial state [x, 0] from states x [N,d] (detached)."""
        return torch.cat([x.detach(), x.new_zeros(x.shape[0], 1)], 1)


class WindowPolicy(nn.Module):
    """The policy on the window's state [x, s]: pi(x), the window time ignored. Its
    parameters are the policy's own, so gradients land there."""

    def __init__(self, policy: nn.Module, state_dim: int):
        super().__init__()
        self.policy, self.state_dim = policy, int(state_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.policy(x[:, :self.state_dim])


__all__ = ["WindowPolicy", "WindowProblem"]
