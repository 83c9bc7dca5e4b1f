"""CTPG with stiff (Rosenbrock) solvers: exact gradients on a stiff LQR, central
differences on nonlinear and black-box systems, the switching method, and the
oracle accounting of Jacobians."""
import pytest
import torch

from ctpg import CTPG
from envs.lqr import LQR
from test_correctness import NumpyPendulumFD, _TorchPendulum
from test_estimators import ControlledVanDerPol, VanDerPolExplicitVjp, accurate_cost

DT = torch.float64


class Affine(torch.nn.Module):
    def __init__(self, K, bias):
        super().__init__()
        self.K = torch.nn.Parameter(K.clone())
        self.bias = torch.nn.Parameter(bias.clone())

    def forward(self, x):
        return -x @ self.K.T + self.bias


def stiff_lqr(n=2, horizon=2.0):
    """Closed-loop eigenvalues -1 and -500 (a rotated high-gain policy with a bias)."""
    system = LQR(horizon=horizon, Qf=0.5 * torch.eye(2, dtype=DT))
    R = torch.tensor([[0.8, -0.6], [0.6, 0.8]], dtype=DT)
    K = R @ torch.diag(torch.tensor([1.0, 500.0], dtype=DT)) @ R.T
    bias = torch.tensor([0.5, -0.3], dtype=DT)
    x0 = system.sample_initial_state(n, torch.Generator().manual_seed(0))
    K_, b_, x_ = (t.clone().requires_grad_(True) for t in (K, bias, x0))
    system.exact_cost(K_, x_, b_).mean().backward()
    return system, K, bias, x0, torch.cat([K_.grad.reshape(-1), b_.grad, x_.grad.reshape(-1)])


def gradient(estimator, system, K, bias, x0):
    policy = Affine(K, bias)
    x = x0.clone().requires_grad_(True)
    loss, info = estimator(system, policy, x)
    loss.backward()
    return torch.cat([policy.K.grad.reshape(-1), policy.bias.grad, x.grad.reshape(-1)]), info


def rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("method,tol,bound", [("rodas5p", 1e-10, 1e-7), ("auto", 1e-10, 1e-7), ("rodas4", 1e-8, 1e-6)])
def test_stiff_ctpg_matches_the_exact_lqr_gradient_at_tight_tolerance(method, tol, bound):
    system, K, bias, x0, exact = stiff_lqr()
    grads, info = gradient(CTPG(method=method, rtol=tol, atol=tol), system, K, bias, x0)
    assert rel(grads, exact) < bound
    if method != "auto":      # at 1e-10 explicit steps are accuracy-bound here: auto may stay explicit
        assert info.forward.oracle["jac_evals"] > 0 and info.backward.oracle["jac_evals"] > 0


@pytest.mark.parametrize("method", ["ros34pw2", "rosenbrock23"])
def test_w_method_ctpg_converges_to_the_exact_gradient(method):
    system, K, bias, x0, exact = stiff_lqr()
    errors = [rel(gradient(CTPG(method=method, rtol=tol, atol=tol), system, K, bias, x0)[0], exact)
              for tol in (1e-3, 1e-6)]
    assert errors[1] < errors[0] / 10 and errors[1] < 1e-4


def test_stiff_ctpg_needs_far_fewer_evaluations_than_explicit_ctpg_on_a_stiff_loop():
    system, K, bias, x0, exact = stiff_lqr()
    explicit_grads, explicit = gradient(CTPG(method="dopri5", rtol=1e-4, atol=1e-4), system, K, bias, x0)
    stiff_grads, stiff = gradient(CTPG(method="rodas5p", rtol=1e-4, atol=1e-4), system, K, bias, x0)
    assert rel(stiff_grads, exact) < 1e-3 and rel(explicit_grads, exact) < 1e-3
    # LQR Jacobians are analytic (one per sample costs what one f does)
    assert stiff.oracle_evals * 5 < explicit.oracle_evals


@pytest.mark.parametrize("system_class", [ControlledVanDerPol, VanDerPolExplicitVjp], ids=["fused", "explicit-vjp"])
@pytest.mark.parametrize("method", ["rodas5p", "auto"])
def test_stiff_ctpg_mlp_gradient_matches_central_differences(system_class, method):
    torch.manual_seed(0)
    system = system_class()
    policy = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)).to(DT)
    x0 = system.sample_initial_state(3, torch.Generator().manual_seed(1))
    loss, _ = CTPG(method=method, rtol=1e-10, atol=1e-10)(system, policy, x0)
    loss.backward()
    params = list(policy.parameters())
    gen = torch.Generator().manual_seed(2)
    directions = [torch.randn(p.shape, generator=gen, dtype=DT) for p in params]
    eps = 1e-5
    with torch.no_grad():
        for p, v in zip(params, directions):
            p.add_(eps * v)
        plus = accurate_cost(system, policy, x0)
        for p, v in zip(params, directions):
            p.sub_(2 * eps * v)
        minus = accurate_cost(system, policy, x0)
        for p, v in zip(params, directions):
            p.add_(eps * v)
    analytic = sum(float((p.grad * v).sum()) for p, v in zip(params, directions))
    assert analytic == pytest.approx((plus - minus) / (2 * eps), rel=1e-6)


def test_stiff_ctpg_on_a_black_box_with_finite_difference_jacobians():
    torch.manual_seed(0)
    policy = torch.nn.Linear(2, 1).double()
    grads = []
    for system in (NumpyPendulumFD(), _TorchPendulum()):
        policy.zero_grad()
        system.counter.reset()
        loss, info = CTPG(method="rodas5p", rtol=1e-9, atol=1e-9)(system, policy, system.sample_initial_state(3))
        loss.backward()
        grads.append(torch.cat([p.grad.reshape(-1) for p in policy.parameters()]))
        assert system.counter.jac_evals > 0
    assert rel(grads[0], grads[1]) < 1e-5


def test_auto_switches_on_the_stiff_loop_and_stays_explicit_on_a_smooth_one():
    system, K, bias, x0, _ = stiff_lqr()
    _, stiff = gradient(CTPG(method="auto", rtol=1e-4, atol=1e-4), system, K, bias, x0)
    assert stiff.forward.oracle["jac_evals"] > 0
    smooth = LQR(horizon=2.0)
    gentle = torch.eye(2, dtype=DT)
    _, auto = gradient(CTPG(method="auto", rtol=1e-6, atol=1e-6), smooth, gentle, torch.zeros(2, dtype=DT), x0)
    _, tsit5 = gradient(CTPG(method="tsit5", rtol=1e-6, atol=1e-6), smooth, gentle, torch.zeros(2, dtype=DT), x0)
    assert auto.forward.oracle["jac_evals"] == 0 and auto.backward.oracle["jac_evals"] == 0
    assert auto.oracle_evals == tsit5.oracle_evals


# ------------------------------------------------- reused (interpolated) Jacobians
def test_reused_jacobians_are_exact_when_the_jacobians_are_constant_and_cost_no_backward_call():
    system, K, bias, x0, exact = stiff_lqr()
    grads, info = gradient(CTPG(method="rodas5p", rtol=1e-10, atol=1e-10, reuse_jacobians=True), system, K, bias, x0)
    assert rel(grads, exact) < 1e-7
    assert info.backward.oracle["total_evals"] == 0


def test_reused_jacobians_converge_on_a_nonlinear_black_box():
    torch.manual_seed(0)
    system = NumpyPendulumFD()
    policy = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)).double()
    x0 = system.sample_initial_state(3)
    params = list(policy.parameters())

    def grad(estimator):
        system.counter.reset()
        loss, info = estimator(system, policy, x0)
        return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)]), info

    reference, _ = grad(CTPG(rtol=1e-11, atol=1e-11))
    errors = []
    for tol in (1e-5, 1e-8):
        g, info = grad(CTPG(rtol=tol, atol=tol, reuse_jacobians=True))
        errors.append(rel(g, reference))
        assert info.backward.oracle["sim_calls"] == 0 and info.backward.oracle["total_evals"] == 0
        assert info.forward.oracle["jac_evals"] == 3 * (info.forward.steps_accepted + 1)
    assert errors[1] < errors[0] / 100 and errors[1] < 1e-6
    with pytest.raises(ValueError, match="one mesh for the batch"):
        CTPG(per_sample=True, reuse_jacobians=True)
