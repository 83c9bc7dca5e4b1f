"""Lagrangian neural networks (Cranmer et al., "Lagrangian Neural Networks", 2020):
a learned scalar L(q, w) whose Euler-Lagrange equations, formed by autograd, give
the accelerations

    d/dt dL/dw = dL/dq   =>   w' = (d2L/dw2)^-1 (dL/dq - (d2L/dw dq) w).

Each evaluation costs one forward and three reverse passes of L (its gradient and the
two rows of the 2 x 2 Hessian blocks, built with create_graph so that the result can
be differentiated again, by ctpg.odeint's adjoint or by autograd).
"""
from __future__ import annotations

import torch

from benchmarks._neural_ode import mlp


def euler_lagrange(lagrangian, q: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Accelerations [N, n] from lagrangian(q [N, n], w [N, n]) -> [N] (samples independent).

    q and w must be part of a graph (requires_grad) or leaves; the result carries a graph
    to them and to the Lagrangian's parameters. Raises where d2L/dw2 is singular."""
    with torch.enable_grad():
        q = q if q.requires_grad else q.detach().requires_grad_(True)
        w = w if w.requires_grad else w.detach().requires_grad_(True)
        g_q, g_w = torch.autograd.grad(lagrangian(q, w).sum(), (q, w), create_graph=True)
        rows = [torch.autograd.grad(g_w[:, i].sum(), (w, q), create_graph=True) for i in range(w.shape[1])]
        H_ww = torch.stack([r[0] for r in rows], 1)        # [N, n, n]: d2L / dw_i dw_j
        H_wq = torch.stack([r[1] for r in rows], 1)        # [N, n, n]: d2L / dw_i dq_j
        rhs = g_q - (H_wq @ w[:, :, None])[:, :, 0]
        return torch.linalg.solve(H_ww, rhs)


class LagrangianField(torch.nn.Module):
    """y' = (w, w') for y = [q, w] [N, 2n] with w' from `lagrangian` by Euler-Lagrange."""

    def __init__(self, lagrangian, n: int):
        super().__init__()
        self.lagrangian, self.n = lagrangian, n

    def forward(self, t, y):
        q, w = y[:, :self.n], y[:, self.n:]
        return torch.cat([w, euler_lagrange(self.lagrangian, q, w)], 1)


class AngleLagrangian(torch.nn.Module):
    """L(q, w) = net([cos q, sin q, w]): a general softplus MLP, periodic in the angles q
    (Cranmer et al.'s LNN). Nothing keeps d2L/dw2 invertible: from a random
    initialisation the accelerations can be huge or undefined."""

    def __init__(self, n: int, hidden, seed: int = 0):
        super().__init__()
        self.net = mlp([3 * n, *hidden, 1], activation=torch.nn.Softplus, seed=seed)

    def forward(self, q, w):
        return self.net(torch.cat([torch.cos(q), torch.sin(q), w], 1))[:, 0]


class MechanicalLagrangian(torch.nn.Module):
    """L(q, w) = w^T M(q) w / 2 - V(q), the form of every mechanical Lagrangian, with
    M(q) = C C^T + eps I (C lower-triangular, positive diagonal) and V learned by
    tanh MLPs of (cos q, sin q) (the structure of Lutter et al.'s Deep Lagrangian
    Networks, 2019; tanh learned the double pendulum's accelerations about twice as
    fast as softplus in our trials). d2L/dw2 = M(q) is positive definite by
    construction, so the Euler-Lagrange equations always have a solution."""

    def __init__(self, n: int, hidden, seed: int = 0, eps: float = 1e-2):
        super().__init__()
        self.n, self.eps = n, eps
        self.rows, self.cols = torch.tril_indices(n, n)
        self.mass_net = mlp([2 * n, *hidden, len(self.rows)], seed=seed)
        self.potential_net = mlp([2 * n, *hidden, 1], seed=seed + 1)

    def mass_matrix(self, q: torch.Tensor) -> torch.Tensor:
        features = torch.cat([torch.cos(q), torch.sin(q)], 1)
        entries = self.mass_net(features)
        entries = torch.where(self.rows == self.cols, torch.nn.functional.softplus(entries), entries)
        C = q.new_zeros(q.shape[0], self.n * self.n).index_copy(1, self.rows * self.n + self.cols, entries)
        C = C.reshape(-1, self.n, self.n)
        return C @ C.transpose(1, 2) + self.eps * torch.eye(self.n, dtype=q.dtype, device=q.device)

    def forward(self, q, w):
        kinetic = 0.5 * (w[:, None, :] @ self.mass_matrix(q) @ w[:, :, None])[:, 0, 0]
        return kinetic - self.potential_net(torch.cat([torch.cos(q), torch.sin(q)], 1))[:, 0]
