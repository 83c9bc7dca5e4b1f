"""The closed loop u = pi(x) of a control system, as the estimators need it: its
right-hand side with the accrued cost, its Jacobian (stiff solvers), and the control
front end of the shared adjoint (ctpg.adjoint):

    dlam/dt = -( lam^T (f_x + f_u pi_x) + s (w_x + w_u pi_x) )
    dmu/dt  = -( (lam^T f_u + s w_u) pi_theta + lam^T f_theta + s w_theta )
    lam(T) = s J_x(x(T)),   mu(T) = s J_theta(x(T))

per sample, with s the weight of the sample's cost (1: the estimators scale by
dLoss/dcost once at the end, which the linearity of the adjoint allows). theta holds
the policy's parameters and any learnable parameters of the system or its costs.
"""
from __future__ import annotations

import torch

from ctpg.adjoint import flatten
from ctpg.solvers import Linearisation
from ctpg.solvers.jacobian import batched_jacobian


def clocked(system, x: torch.Tensor, t) -> torch.Tensor:
    """x with its clock component (system.clock_index, a state that is time itself)
    set to the solver's t wherever the two agree to 1e-6, straight through: the value
    becomes t, the derivative with respect to the clock state stays 1.

    Why: at a breakpoint the solver evaluates each side just inside that side
    (ctpg.solvers.solve, tstops), but a clock integrated as a state lands a few
    roundoffs either side of the breakpoint; its exact time decides the side. A clock
    that does not follow t (an initial clock other than 0) is left alone."""
    index = system.clock_index
    if index is None:
        return x
    clock = x[:, index]
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    snapped = torch.where((clock - t).abs() <= 1e-6 * torch.clamp(t.abs(), min=1.0), clock + (t - clock).detach(), clock)
    return torch.cat([x[:, :index], snapped[:, None], x[:, index + 1:]], 1)


def closed_loop_rhs(system, policy, f=None):
    """y = [x, c] -> [f(x, pi(x)), w(x, pi(x))]; `f` defaults to the counted system.f."""
    f = system.f if f is None else f
    d = system.state_dim

    def rhs(t, y, rows=None):     # rows: per-sample solves name the samples (unused here)
        x = clocked(system, y[:, :d], t)
        u = policy(x)
        return torch.cat([f(x, u), system.running_cost(x, u)[:, None]], 1)

    return rhs


def closed_loop_matrix(system, policy, x: torch.Tensor, jac=None):
    """(A = f_x + f_u pi_x [N,d,d], total cost gradient w_x + w_u pi_x [N,d]) at x.

    Costs one counted system.jacobians call (finite differences for black boxes), or
    none when `jac` = (f_x, f_u) is given, and autograd through the policy and the
    running cost (not oracle calls)."""
    with torch.enable_grad():
        x_ = x.detach().requires_grad_(True)
        u = policy(x_)
        (cost_x,) = torch.autograd.grad(system.running_cost(x_, u).sum(), x_, allow_unused=True)
    policy_x = batched_jacobian(policy, x.detach())                 # [N, k, d]
    f_x, f_u = system.jacobians(x.detach(), u.detach()) if jac is None else jac
    cost_x = torch.zeros_like(x) if cost_x is None else cost_x
    return f_x + f_u @ policy_x, cost_x


def closed_loop_jacobian(system, policy):
    """jacobian(t, y) -> [N, d+1, d+1] of the closed-loop rhs for y = [x, c]: A in the
    state block, the cost gradient in the last row, zeros in the last column."""
    d = system.state_dim

    def jacobian(t, y):
        A, cost_x = closed_loop_matrix(system, policy, y[:, :d])
        J = y.new_zeros(y.shape[0], d + 1, d + 1)
        J[:, :d, :d] = A
        J[:, d, :d] = cost_x
        return J

    return jacobian


def adjoint_derivatives(system, policy, params, x, lam, cost_weight, system_params=(), jac=None):
    """(dlam/dt [N,d], dmu/dt [P] flat, u) at states x with adjoints lam.

    Costs one counted vjp plus one reverse pass through the policy and the running
    cost (autograd, not oracle calls). A system whose vjp is autograd through its
    torch f (system.vjp_by_autograd) gets both in a single reverse pass over f, the
    policy and the cost together, still counted as one vjp; other systems (analytic
    or finite-difference derivatives) are asked for lam^T f_x, lam^T f_u (and
    lam^T f_theta for their own `system_params`) by system.vjp_with_parameters and the
    policy and cost are differentiated after it. Given `jac` = (f_x, f_u) at x (a
    JacobianSpline's), lam^T f_x and lam^T f_u come from them: no oracle call at all.
    """
    extra = None
    with torch.enable_grad():
        x_ = x.detach().requires_grad_(True)
        u = policy(x_)
        total = cost_weight * system.running_cost(x_, u).sum()
        if jac is not None:
            a_x, a_u = torch.einsum("nd,nde->ne", lam, jac[0]), torch.einsum("nd,nde->ne", lam, jac[1])
            total = total + (a_u * u).sum()
        elif system.vjp_by_autograd:
            total = total + (lam * system.f_for_vjp(x_, u)).sum()
            a_x = 0.0
        else:
            a_x, a_u, extra = system.vjp_with_parameters(x_.detach(), u.detach(), lam, list(system_params))
            total = total + (a_u * u).sum()
        if total.requires_grad:
            grads = torch.autograd.grad(total, [x_, *params], allow_unused=True)
        else:                            # neither f, cost nor policy depends on x or theta
            grads = [None] * (1 + len(params))
    g_x = grads[0] if grads[0] is not None else torch.zeros_like(x)
    g_theta = [torch.zeros_like(p) if g is None else g for g, p in zip(grads[1:], params)]
    if extra:                            # lam^T f_theta of the system's own parameters
        index = {id(p): i for i, p in enumerate(params)}
        for p, g in zip(system_params, extra):
            g_theta[index[id(p)]] = g_theta[index[id(p)]] + g
    return -(a_x + g_x), -flatten(g_theta, x), u.detach()


def terminal_adjoint(system, xT, params, cost_weight):
    """(lam(T) = s dJ/dx(T) [N,d], mu(T) = s dJ/dtheta summed over samples, flat [P])."""
    with torch.enable_grad():
        x_ = xT.detach().requires_grad_(True)
        J = system.terminal_cost(x_).sum()
        grads = (torch.autograd.grad(J, [x_, *params], allow_unused=True) if J.requires_grad
                 else [None] * (1 + len(params)))
    lam = torch.zeros_like(xT) if grads[0] is None else cost_weight * grads[0]
    mu = flatten([torch.zeros_like(p) if g is None else cost_weight * g for g, p in zip(grads[1:], params)], xT)
    return lam, mu


def per_sample_policy_vjp(policy, system, params, x, a_u):
    """(a_u^T pi_x [N, d], a_u^T pi_theta [N, P]) sample by sample, by torch.func (vmap of
    a reverse pass through the policy, saturated to the system's bounds as the
    estimators see it). Needs the policy as a torch.nn.Module holding `params`."""
    module = getattr(policy, "policy", policy)          # saturated_policy keeps the module
    if not isinstance(module, torch.nn.Module):
        raise ValueError("per-sample steps need the policy as a torch.nn.Module (per-sample parameter "
                         "gradients come from torch.func.functional_call); use per_sample=False")
    names = {id(p): name for name, p in module.named_parameters()}
    if any(id(p) not in names for p in params):
        raise ValueError("per-sample steps differentiate the policy's own parameters only (no learnable "
                         "system or cost parameters, no extra tensors); use per_sample=False")
    keys = [names[id(p)] for p in params]
    frozen = {k: v.detach() for k, v in module.named_parameters() if k not in set(keys)}
    frozen.update(dict(module.named_buffers()))
    low, high = system.action_low, system.action_high

    def one(theta, xi, ai):
        u = torch.func.functional_call(module, {**dict(zip(keys, theta)), **frozen}, (xi[None],))[0]
        if low is not None:
            u = torch.clamp(u, low.to(u), high.to(u))
        return (u * ai).sum()

    g_theta, g_x = torch.func.vmap(torch.func.grad(one, argnums=(0, 1)), in_dims=(None, 0, 0))(
        tuple(p.detach() for p in params), x, a_u)
    return g_x, torch.cat([g.reshape(x.shape[0], -1) for g in g_theta], 1) if params else x.new_zeros(x.shape[0], 0)


def adjoint_derivatives_per_sample(system, policy, params, x, lam):
    """(dlam/dt [N,d], dmu/dt [N,P]): as adjoint_derivatives, with the parameter
    gradient kept per sample (for per-sample step sizes). Costs the same counted vjp,
    one reverse pass through f and the cost, and a per-sample (vmapped) reverse pass
    through the policy."""
    with torch.no_grad():
        u = policy(x)
    with torch.enable_grad():
        x_ = x.detach().requires_grad_(True)
        u_ = u.detach().requires_grad_(True)
        total = system.running_cost(x_, u_).sum()
        if system.vjp_by_autograd:
            total = total + (lam * system.f_for_vjp(x_, u_)).sum()
            a_x, a_u = 0.0, 0.0
        else:
            a_x, a_u = system.vjp(x.detach(), u.detach(), lam)
        g_x, g_u = torch.autograd.grad(total, [x_, u_], allow_unused=True)
    g_x = (torch.zeros_like(x) if g_x is None else g_x) + a_x
    g_u = (torch.zeros_like(u) if g_u is None else g_u) + a_u
    pol_x, pol_theta = per_sample_policy_vjp(policy, system, params, x.detach(), g_u)
    return -(g_x + pol_x), -pol_theta


class ControlAdjoint:
    """The control front end of ctpg.adjoint: the adjoint field of the closed loop,
    reading x(t) from the forward pass's stored trajectory `path`. Per-sample costs
    weigh 1. With per_sample, derivatives(t, lam, rows) reads each sample's own time
    and keeps the parameter gradient per sample ([N, P])."""

    def __init__(self, system, policy, params, system_params, path, per_sample: bool = False, jacobians=None,
                 stage=None):
        self.system, self.policy, self.params = system, policy, params
        self.system_params, self.path, self.per_sample = system_params, path, per_sample
        self.jacobians = jacobians        # a JacobianSpline: f_x, f_u without system calls
        self.stage = stage                # stage(t, x, lam) -> (dlam, dmu): a compiled adjoint_derivatives

    def _jac(self, t):
        return None if self.jacobians is None else self.jacobians.evaluate(t)

    def state(self, t, rows=None):
        return clocked(self.system, self.path.evaluate(t, rows)[:, :self.system.state_dim], t)

    def derivatives(self, t, lam, rows=None):
        if self.per_sample:
            return adjoint_derivatives_per_sample(self.system, self.policy, self.params, self.state(t, rows), lam)
        if self.stage is not None:
            return self.stage(t, self.state(t), lam)
        dlam, dmu, _ = adjoint_derivatives(self.system, self.policy, self.params, self.state(t), lam,
                                           1.0, self.system_params, self._jac(t))
        return dlam, dmu

    def linearisation(self, t, lam) -> Linearisation:
        """J = -A(x(t))^T per sample, and G v = -(v^T f_u pi_theta + v^T f_theta): one
        system.jacobians call now, one vjp per application of G."""
        x, jac = self.state(t), self._jac(t)
        A, _ = closed_loop_matrix(self.system, self.policy, x, jac)

        def quadrature_jvp(v):
            return adjoint_derivatives(self.system, self.policy, self.params, x, v, 0.0, self.system_params, jac)[1]

        return Linearisation(-A.transpose(1, 2), quadrature_jvp)
