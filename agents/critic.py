"""The critic of the actor-critic: a value network, its TD(lambda) targets and its fit.

V_phi(x) estimates the discounted cost-to-go int_0^inf e^{-rho s} w ds from x under the
current policy. Its targets come from the window's forward pass alone: the estimator's
stored path (EstimateInfo.path) gives x(t_k) and the discounted accrued cost c(t_k) at
K + 1 times 0 = t_0 < ... < t_K = H of the window, so the segment costs

    r_k = e^{rho t_k} (c(t_{k+1}) - c(t_k))     (cost of [t_k, t_{k+1}], discounted to t_k)
    g_k = e^{-rho (t_{k+1} - t_k)}              (the segment's discount)

and the TD(lambda) return, by one backward recursion over the window,

    G_K = V'(x(t_K)) (timeout or mid-episode: bootstrap) or 0 (termination: no bootstrap)
    G_k = r_k + g_k ((1 - lambda) V'(x(t_{k+1})) + lambda G_{k+1}),   k = K-1, ..., 0

with V' the target network, cost K + 1 path evaluations and one target-network pass on
N (K + 1) states: no simulation. lambda = 1 gives the Monte-Carlo return of the window
bootstrapped at its end, lambda = 0 one-segment TD.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from agents.policies import FEATURES, MLP


class Critic(nn.Module):
    """V(x) [N] for states x [N,d]: the environment's input features (as the policy's),
    then an MLP with one output."""

    def __init__(self, system, env: str, hidden=(64, 64), activation: str = "tanh"):
        super().__init__()
        self.features = FEATURES[env](system) if env in FEATURES else nn.Identity()
        in_dim = getattr(self.features, "out_dim", system.state_dim)
        self.body = MLP(in_dim, 1, hidden, activation)
        self.to(dtype=system.dtype, device=system.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.features(x))[:, 0]


def frozen_copy(critic: nn.Module) -> nn.Module:
    """A copy of `critic` whose parameters require no gradient: the target network."""
    target = copy.deepcopy(critic)
    for p in target.parameters():
        p.requires_grad_(False)
    return target


@torch.no_grad()
def polyak(target: nn.Module, critic: nn.Module, alpha: float) -> None:
    """target <- alpha target + (1 - alpha) critic, parameter by parameter."""
    for p_t, p in zip(target.parameters(), critic.parameters()):
        p_t.mul_(alpha).add_(p, alpha=1 - alpha)


def td_lambda_targets(costs: torch.Tensor, discounts: torch.Tensor, values: torch.Tensor,
                      lam: float, bootstrap: torch.Tensor) -> torch.Tensor:
    """TD(lambda) returns G [K, N] at the first K of K+1 times (module docstring).

    costs r [K, N], discounts g [K] (or [K, N]), values V'(x(t_k)) [K+1, N], bootstrap
    bool [N]: False where the episode terminated at the window's end (G_K = 0).
    """
    out = torch.empty_like(costs)
    ret = torch.where(bootstrap, values[-1], torch.zeros_like(values[-1]))
    for k in range(costs.shape[0] - 1, -1, -1):
        nxt = values[k + 1] if k + 1 < costs.shape[0] else ret
        ret = costs[k] + discounts[k] * ((1 - lam) * nxt + lam * ret)
        out[k] = ret
    return out


def window_targets(path, times: list[float], value_fn, discount: float, lam: float, bootstrap, d: int):
    """(states x(t_k) [K, N, d], returns G [K, N]) from a window's stored path, whose
    y = [x, s, c] (WindowProblem state plus the accrued discounted cost)."""
    ys = torch.stack([path.evaluate(t) for t in times])            # [K+1, N, d+2]
    states, cost = ys[:, :, :d], ys[:, :, -1]
    t = torch.tensor(times, dtype=ys.dtype, device=ys.device)
    costs = torch.exp(discount * t[:-1, None]) * (cost[1:] - cost[:-1])
    discounts = torch.exp(-discount * (t[1:] - t[:-1]))
    with torch.no_grad():
        values = value_fn(states.reshape(-1, d)).reshape(len(times), -1)
    return states[:-1], td_lambda_targets(costs, discounts, values, lam, bootstrap)


def fit(critic: nn.Module, optimizer, states: torch.Tensor, targets: torch.Tensor, epochs: int,
        minibatches: int, generator: torch.Generator) -> float:
    """Regress critic(states) on targets by mean squared error: `epochs` passes over the
    M pairs in `minibatches` shuffled minibatches (shuffled with `generator`). Costs
    epochs x minibatches optimiser steps on M states. Returns the last epoch's mean loss."""
    m = states.shape[0]
    loss_sum = 0.0
    for _ in range(epochs):
        order = torch.randperm(m, generator=generator, device=generator.device).to(states.device)
        loss_sum = 0.0
        for rows in order.chunk(minibatches):
            optimizer.zero_grad(set_to_none=True)
            loss = torch.mean((critic(states[rows]) - targets[rows]) ** 2)
            loss.backward()
            optimizer.step()
            loss_sum += float(loss.detach()) * rows.shape[0] / m
    return loss_sum


__all__ = ["Critic", "fit", "frozen_copy", "polyak", "td_lambda_targets", "window_targets"]
