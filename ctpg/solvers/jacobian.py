"""Jacobians of a right-hand side by autograd, for the Rosenbrock methods.

The leading dimension of y indexes independent samples, so the Jacobian is one
[m, m] block per sample, [N, m, m] in all: torch.func's jacrev vectorised over the
samples (one batched reverse pass per state component inside vmap), or, where the
function cannot be vmapped (an operation without a batching rule, a Python branch on
values), a loop of m reverse passes over the batch sum.
"""
from __future__ import annotations

import torch

from ctpg.solvers.steppers import Linearisation


def batched_jacobian(f, y: torch.Tensor) -> torch.Tensor:
    """d f(y) / dy [N, m', m] for a batched f: [N, m] -> [N, m'] whose rows do not interact."""
    try:
        return torch.func.vmap(torch.func.jacrev(lambda row: f(row[None])[0]))(y)
    except (RuntimeError, NotImplementedError, TypeError):
        pass
    with torch.enable_grad():
        y_ = y.detach().requires_grad_(True)
        out = f(y_)
        rows = []
        for i in range(out.shape[1]):
            (grad,) = torch.autograd.grad(out[:, i].sum(), y_, retain_graph=True, allow_unused=True)
            rows.append(torch.zeros_like(y) if grad is None else grad)
    return torch.stack(rows, dim=1)


def autograd_jacobian(func, has_quadrature: bool = False):
    """A `jacobian(t, y)` callable for `solve` from the right-hand side `func(t, y)`
    (which returns dy, or (dy, dq) with quadratures): J [N, m, m] by autograd and,
    with quadratures, G v = (dq/dy) v by forward-mode autograd."""
    def y_part(t):
        return (lambda y: func(t, y)[0]) if has_quadrature else (lambda y: func(t, y))

    def jacobian(t, y):
        flat = y.reshape(y.shape[0], -1)
        J = batched_jacobian(lambda z: y_part(t)(z.reshape((-1,) + y.shape[1:])).reshape(z.shape[0], -1), flat)
        if not has_quadrature:
            return J

        def quadrature_jvp(v):
            return torch.func.jvp(lambda z: func(t, z)[1], (y,), (v,))[1]

        return Linearisation(J, quadrature_jvp)

    return jacobian
