"""The dynamics' Jacobians along the stored forward trajectory, for a backward pass
that makes no system calls.

For a black-box simulator a vjp costs a full finite-difference Jacobian (2(d+k)
simulator calls per sample, central), and CTPG's backward pass asks for one per stage:
most of its cost. But f_x and f_u depend on t only through x(t), which the forward pass
has already stored. `JacobianSpline` computes them once per forward step, at the mesh
nodes t_0..t_S (one batched system.jacobians call over all nodes and samples), and
interpolates each by the cubic through the four nearest nodes (error O(h^4) in the
forward step h, the order of the stored trajectory itself). The backward pass then
needs the policy and the cost only (autograd, not oracle calls).

Memory: (S+1) N d (d+k) floats. Exact for systems with constant Jacobians (LQR).
"""
from __future__ import annotations

import bisect

import torch

from ctpg.estimators.closed_loop import clocked


class JacobianSpline:
    """(f_x [N,d,d], f_u [N,d,k]) at any t of the forward mesh's span."""

    def __init__(self, times: list[float], f_x: torch.Tensor, f_u: torch.Tensor):
        self.times, self.f_x, self.f_u = times, f_x, f_u

    @classmethod
    def along(cls, system, policy, path) -> "JacobianSpline":
        """Jacobians at the mesh nodes of `path` (a shared-mesh Trajectory): one counted
        system.jacobians call on (S+1) N states."""
        times, d = path.times, system.state_dim
        with torch.no_grad():
            nodes = torch.stack([clocked(system, path.evaluate(t)[:, :d], t) for t in times])   # [S+1, N, d]
            flat = nodes.reshape(-1, d)
            f_x, f_u = system.jacobians(flat, policy(flat))
        n = nodes.shape[1]
        return cls(list(times), f_x.reshape(len(times), n, d, d), f_u.reshape(len(times), n, d, -1))

    @property
    def stored_floats(self) -> int:
        return self.f_x.numel() + self.f_u.numel()

    def evaluate(self, t: float):
        """Cubic Lagrange interpolation through the four nodes around t (fewer at the ends)."""
        times, last = self.times, len(self.times) - 1
        i = min(max(bisect.bisect_right(times, t) - 1, 0), last - 1)
        nodes = list(range(max(0, i - 1), min(last, i + 2) + 1))
        if len(nodes) > 4:
            nodes = nodes[:4]
        weights = [_lagrange(times, nodes, j, t) for j in nodes]
        f_x = sum(w * self.f_x[j] for w, j in zip(weights, nodes))
        f_u = sum(w * self.f_u[j] for w, j in zip(weights, nodes))
        return f_x, f_u


def _lagrange(times, nodes, j, t) -> float:
    """The Lagrange basis polynomial of node j over `nodes`, at t."""
    value = 1.0
    for m in nodes:
        if m != j:
            value *= (t - times[m]) / (times[j] - times[m])
    return value
