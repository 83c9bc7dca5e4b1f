"""Linear-quadratic regulator with an exact finite-horizon cost for affine policies.

    dx/dt = A x + B u,   w(x, u) = x'Qx + u'Ru,   J(x) = x' Qf x,   x0 ~ N(mean, std^2 I).

Defaults are the paper's experiment (Ainsworth et al., Sec. 3 / Fig. 2-3): d = k = 2,
A = 0, B = Q = R = I, Qf = 0, T = 10, and no action bounds: `exact_cost` is the cost of
the unsaturated linear policy, so `envs.make("lqr")` stays unbounded for the exact
gradients. `action_bound=a` bounds every action to [-a, a] (the estimators then saturate
and `exact_cost` no longer applies once the policy reaches a bound); the gymnasium
environment "ctpg/LQR-v0" uses a = 5 (`GYM_ACTION_BOUND`), which the optimal gain
u = -x reaches only from |x_i| > 5, a 5.7e-7 chance per component of an N(0, 1) start. For u = -K x + b the closed loop is linear in
z = [x; 1], so the cost is a quadratic form of z0 whose matrix comes from one matrix
exponential (Van Loan, "Computing integrals involving the matrix exponential", IEEE
TAC 1978), taken over a short step and doubled up to T: a single exponential over
the whole horizon loses about e^(2|lambda|T) in relative accuracy, because its -M'
block grows as fast as the closed loop decays. `exact_cost` is written in torch, so autograd through it gives the exact
gradient in K, b and x0: the ground truth of every estimator test and benchmark.
"""
from __future__ import annotations

import torch

from ctpg.system import ControlSystem
from envs._common import normal

GYM_ACTION_BOUND = 5.0


class LQR(ControlSystem):
    """LQR system; analytic Jacobians (A, B) override the autograd defaults.

    `action_bound` (None, a number or k numbers): symmetric action bounds [-a, a].
    """

    torch_f = True      # f is torch: autograd (and CTPG(compile=True)) may differentiate it too

    def __init__(self, A=None, B=None, Q=None, R=None, Qf=None, horizon: float = 10.0,
                 x0_mean=None, x0_std: float = 1.0, action_bound=None, dtype=torch.float64,
                 device="cpu"):
        super().__init__(dtype, device)
        as_t = lambda m, default: torch.as_tensor(default if m is None else m, dtype=dtype, device=device)
        self.A = as_t(A, torch.zeros(2, 2))
        d = self.A.shape[0]
        self.B = as_t(B, torch.eye(d))
        k = self.B.shape[1]
        self.Q = as_t(Q, torch.eye(d))
        self.R = as_t(R, torch.eye(k))
        self.Qf = as_t(Qf, torch.zeros(d, d))
        self.state_dim, self.action_dim, self.horizon = d, k, float(horizon)
        self.x0_mean = as_t(x0_mean, torch.zeros(d))
        self.x0_std = float(x0_std)
        if action_bound is not None:
            bound = torch.as_tensor(action_bound, dtype=dtype, device=device).expand(k).clone()
            if not bool((bound > 0).all()):
                raise ValueError(f"action_bound must be positive (a number or one per action), got {action_bound}")
            self.action_low, self.action_high = -bound, bound

    def f(self, x, u):
        return x @ self.A.T + u @ self.B.T

    def vjp(self, x, u, a):
        return a @ self.A, a @ self.B

    def jacobians(self, x, u):
        n = x.shape[0]
        return self.A.expand(n, -1, -1).clone(), self.B.expand(n, -1, -1).clone()

    def running_cost(self, x, u):
        return ((x @ self.Q) * x).sum(-1) + ((u @ self.R) * u).sum(-1)

    def terminal_cost(self, x):
        return ((x @ self.Qf) * x).sum(-1)

    def sample_initial_state(self, n, generator=None):
        noise = normal(n, [self.x0_std] * self.state_dim, generator, self.dtype, self.device)
        return self.x0_mean + noise

    def exact_cost(self, K: torch.Tensor, x0: torch.Tensor, bias: torch.Tensor | None = None,
                   horizon: float | None = None) -> torch.Tensor:
        """Exact cost int_0^T w dt + J(x(T)) of u = -K x + bias from each x0 [N,d] -> [N].

        Differentiable in K [k,d], bias [k] and x0. Costs one (2d+2)-square matrix
        exponential and log2(T ||M||) doublings; accurate to a few ulps times that.
        """
        T = self.horizon if horizon is None else horizon
        d, k = self.state_dim, self.action_dim
        bias = torch.zeros(k, dtype=K.dtype, device=K.device) if bias is None else bias
        M = torch.zeros(d + 1, d + 1, dtype=K.dtype, device=K.device)
        M[:d, :d] = self.A - self.B @ K
        M[:d, d] = self.B @ bias
        # w = z' W z with u = [-K, b] z
        G = torch.cat([-K, bias[:, None]], 1)
        W = torch.zeros_like(M)
        W[:d, :d] = self.Q
        W = W + G.T @ self.R @ G
        Phi, running = _van_loan_doubling(M, W, T)
        Qf = torch.zeros_like(M)
        Qf[:d, :d] = self.Qf
        P = running + Phi.T @ Qf @ Phi
        P = 0.5 * (P + P.T)
        z0 = torch.cat([x0, torch.ones_like(x0[:, :1])], 1)
        return ((z0 @ P) * z0).sum(-1)

    def optimal_gain(self) -> torch.Tensor:
        """Infinite-horizon LQR gain K = R^-1 B' P from the continuous algebraic Riccati equation."""
        import scipy.linalg
        P = scipy.linalg.solve_continuous_are(self.A.cpu().numpy(), self.B.cpu().numpy(),
                                              self.Q.cpu().numpy(), self.R.cpu().numpy())
        P = torch.as_tensor(P, dtype=self.dtype, device=self.device)
        return torch.linalg.solve(self.R, self.B.T @ P)


def _van_loan_doubling(M: torch.Tensor, W: torch.Tensor, T: float):
    """(e^{MT}, int_0^T e^{M't} W e^{Mt} dt) for square M and symmetric W.

    Van Loan's block exponential over h = T / 2^m with ||M|| h <= 1/2, then m
    doublings: Phi(2h) = Phi(h)^2 and G(2h) = G(h) + Phi(h)' G(h) Phi(h). Every step
    is well conditioned, unlike one exponential over T.
    """
    import math
    n = M.shape[0]
    norm = float(torch.linalg.matrix_norm(M.detach(), ord=1))
    m = max(0, math.ceil(math.log2(max(T * norm / 0.5, 1.0))))
    h = T / 2 ** m
    C = torch.zeros(2 * n, 2 * n, dtype=M.dtype, device=M.device)
    C[:n, :n] = -M.T
    C[:n, n:] = W
    C[n:, n:] = M
    E = torch.linalg.matrix_exp(C * h)
    Phi = E[n:, n:]
    G = Phi.T @ E[:n, n:]
    for _ in range(m):
        G = G + Phi.T @ G @ Phi
        Phi = Phi @ Phi
    return Phi, G
