"""Right-hand sides shared by the estimators: the closed loop with its accumulated
cost, and the adjoint (lam) and accumulated-gradient (mu) dynamics

    dlam/dt = -( lam^T (f_x + f_u pi_x) + s (w_x + w_u pi_x) )
    dmu/dt  = -( lam^T f_u + s w_u ) pi_theta

where s = dLoss/d(cost of one sample) weights the running cost (1/N for a batch mean).
"""
from __future__ import annotations

import torch


def closed_loop_rhs(system, policy, f=None):
    """y = [x, c] -> [f(x, pi(x)), w(x, pi(x))]; `f` defaults to the counted system.f."""
    f = system.f if f is None else f
    d = system.state_dim

    def rhs(t, y):
        x = y[:, :d]
        u = policy(x)
        return torch.cat([f(x, u), system.running_cost(x, u)[:, None]], 1)

    return rhs


def adjoint_derivatives(system, policy, params, x, lam, cost_weight):
    """(dlam/dt [N,d], dmu/dt [P] flat, u) at states x with adjoints lam.

    Costs one counted vjp plus one reverse pass through the policy and the running
    cost (autograd, not oracle calls). A system whose vjp is autograd through its
    torch f (system.vjp_by_autograd) gets both in a single reverse pass over f, the
    policy and the cost together, still counted as one vjp; other systems (analytic
    or finite-difference derivatives) are asked for lam^T f_x, lam^T f_u by
    system.vjp and the policy and cost are differentiated after it.
    """
    with torch.enable_grad():
        x_ = x.detach().requires_grad_(True)
        u = policy(x_)
        total = cost_weight * system.running_cost(x_, u).sum()
        if system.vjp_by_autograd:
            total = total + (lam * system.f_for_vjp(x_, u)).sum()
            a_x = 0.0
        else:
            a_x, a_u = system.vjp(x_.detach(), u.detach(), lam)
            total = total + (a_u * u).sum()
        if total.requires_grad:
            grads = torch.autograd.grad(total, [x_, *params], allow_unused=True)
        else:                            # neither f, cost nor policy depends on x or theta
            grads = [None] * (1 + len(params))
    g_x = grads[0] if grads[0] is not None else torch.zeros_like(x)
    g_theta = [torch.zeros_like(p) if g is None else g for g, p in zip(grads[1:], params)]
    return -(a_x + g_x), -flatten(g_theta, x), u.detach()


def terminal_adjoint(system, xT, cost_weight):
    """lam(T) = s dJ/dx(T)."""
    with torch.enable_grad():
        x_ = xT.detach().requires_grad_(True)
        J = system.terminal_cost(x_).sum()
        if not J.requires_grad:          # a constant terminal cost, e.g. the default zero
            return torch.zeros_like(xT)
        (grad,) = torch.autograd.grad(J, x_, allow_unused=True)
    return torch.zeros_like(xT) if grad is None else cost_weight * grad


def flatten(tensors, like):
    if not tensors:
        return like.new_zeros(0)
    return torch.cat([t.reshape(-1) for t in tensors])


def unflatten(flat, params):
    out, start = [], 0
    for p in params:
        out.append(flat[start:start + p.numel()].view_as(p))
        start += p.numel()
    return out


def num_params(params) -> int:
    return sum(p.numel() for p in params)
