"""Estimators against ground truth: exact LQR gradients (Van Loan), central finite
differences of an accurately solved cost for an MLP on a nonlinear system, the
backsolve failure mode, oracle accounting and clear errors."""
import numpy as np
import pytest
import torch

import ctpg
from ctpg import BPTT, CTPG, Backsolve, ControlSystem, MaxStepsExceeded, NonFiniteError
from ctpg.solvers import solve
from envs.lqr import LQR

DT = torch.float64


class LinearPolicy(torch.nn.Module):
    def __init__(self, K, bias=None):
        super().__init__()
        self.K = torch.nn.Parameter(K.clone())
        self.bias = torch.nn.Parameter(torch.zeros(K.shape[0], dtype=K.dtype) if bias is None else bias.clone())

    def forward(self, x):
        return -x @ self.K.T + self.bias


def lqr_problem(**overrides):
    system = LQR(Qf=0.5 * torch.eye(2), **overrides)       # a terminal cost exercises lam(T)
    gen = torch.Generator().manual_seed(0)
    K = system.optimal_gain() + 0.3 * torch.randn(2, 2, generator=gen, dtype=DT)
    bias = torch.tensor([0.2, -0.1], dtype=DT)
    x0 = system.sample_initial_state(4, gen)
    K_, b_, x_ = (t.clone().requires_grad_(True) for t in (K, bias, x0))
    system.exact_cost(K_, x_, b_).mean().backward()
    return system, K, bias, x0, (K_.grad, b_.grad, x_.grad)


def estimate(estimator, system, K, bias, x0, T=None):
    policy = LinearPolicy(K, bias)
    x = x0.clone().requires_grad_(True)
    loss, info = estimator(system, policy, x, T)
    loss.backward()
    return (policy.K.grad, policy.bias.grad, x.grad), loss, info


def rel(a, b):
    return float((a - b).norm() / b.norm())


def test_ctpg_matches_exact_lqr_gradient_at_tight_tolerance():
    system, K, bias, x0, exact = lqr_problem()
    grads, loss, _ = estimate(CTPG(rtol=1e-12, atol=1e-12), system, K, bias, x0)
    assert loss.item() == pytest.approx(float(system.exact_cost(K, x0, bias).mean()), rel=1e-10)
    for got, want in zip(grads, exact):
        assert rel(got, want) < 1e-7


@pytest.mark.parametrize("method", ["dopri5", "tsit5", "bosh3"])
def test_ctpg_error_shrinks_with_tolerance(method):
    system, K, bias, x0, exact = lqr_problem()
    errors = [rel(estimate(CTPG(method=method, rtol=tol, atol=tol), system, K, bias, x0)[0][0], exact[0])
              for tol in (1e-3, 1e-6, 1e-9)]
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 1e-5


def test_ctpg_fixed_step_rk4_converges_at_fourth_order():
    system, K, bias, x0, exact = lqr_problem()
    dts = [0.2, 0.1, 0.05]
    errors = [rel(estimate(CTPG(method="rk4", dt=dt), system, K, bias, x0)[0][0], exact[0]) for dt in dts]
    assert np.polyfit(np.log(dts), np.log(errors), 1)[0] > 3.5


def test_bptt_error_falls_at_first_order_in_dt():
    system, K, bias, x0, exact = lqr_problem()
    dts = [0.04, 0.02, 0.01]
    errors = [rel(estimate(BPTT(dt=dt), system, K, bias, x0)[0][0], exact[0]) for dt in dts]
    assert np.polyfit(np.log(dts), np.log(errors), 1)[0] == pytest.approx(1.0, abs=0.15)


def test_bptt_is_the_exact_gradient_of_its_own_discretisation():
    """Autograd through the Euler rollout: compare with central differences of the
    same discrete loss."""
    system, K, bias, x0, _ = lqr_problem()
    est = BPTT(dt=0.05)
    grads, _, _ = estimate(est, system, K, bias, x0)
    direction = torch.randn(2, 2, generator=torch.Generator().manual_seed(3), dtype=DT)
    eps = 1e-6
    with torch.no_grad():
        plus = est(system, LinearPolicy(K + eps * direction, bias), x0)[0]
        minus = est(system, LinearPolicy(K - eps * direction, bias), x0)[0]
    assert float((grads[0] * direction).sum()) == pytest.approx(float(plus - minus) / (2 * eps), rel=1e-7)


def test_backsolve_converges_on_a_short_horizon():
    system, K, bias, x0, exact = lqr_problem(horizon=1.0)
    errors = []
    for tol in (1e-4, 1e-8):
        grads, _, info = estimate(Backsolve(rtol=tol, atol=tol), system, K, bias, x0)
        errors.append(rel(grads[0], exact[0]))
    assert errors[1] < errors[0] / 100 and errors[1] < 1e-6
    assert float(info.reconstruction_error.max()) < 1e-6


def test_backsolve_fails_on_a_strongly_stabilising_loop_where_ctpg_stays_exact():
    """Paper, Section 3.3: reversing a contracting closed loop amplifies every error."""
    system = LQR(horizon=10.0)
    K = 5.0 * torch.eye(2, dtype=DT)
    x0 = torch.tensor([[1.0, 1.0]], dtype=DT)
    K_ = K.clone().requires_grad_(True)
    system.exact_cost(K_, x0).sum().backward()
    back_grads, _, back_info = estimate(Backsolve(rtol=1e-6, atol=1e-8), system, K, torch.zeros(2, dtype=DT), x0)
    ctpg_grads, _, _ = estimate(CTPG(rtol=1e-6, atol=1e-8), system, K, torch.zeros(2, dtype=DT), x0)
    assert float(back_info.reconstruction_error.max()) > 1.0
    assert rel(back_grads[0], K_.grad) > 1.0
    assert rel(ctpg_grads[0], K_.grad) < 1e-5
    # checkpoints bound the drift
    ckpt_grads, _, ckpt_info = estimate(Backsolve(rtol=1e-6, atol=1e-8, checkpoints=20), system, K,
                                        torch.zeros(2, dtype=DT), x0)
    assert float(ckpt_info.reconstruction_error.max()) < float(back_info.reconstruction_error.max())


class ControlledVanDerPol(ControlSystem):
    """x1' = x2, x2' = (1 - x1^2) x2 - x1 + u; a nonlinear test system."""

    state_dim, action_dim, horizon = 2, 1, 2.0

    def f(self, x, u):
        return torch.stack([x[:, 1], (1 - x[:, 0] ** 2) * x[:, 1] - x[:, 0] + u[:, 0]], 1)

    def running_cost(self, x, u):
        return (x ** 2).sum(-1) + 0.1 * (u ** 2).sum(-1) + 0.05 * x[:, 0] ** 3

    def terminal_cost(self, x):
        return (x ** 2).sum(-1)

    def sample_initial_state(self, n, generator=None):
        return torch.rand(n, 2, generator=generator, dtype=self.dtype) * 2 - 1


def accurate_cost(system, policy, x0):
    """Batch-mean cost by a dop853 solve at 1e-12, independent of every estimator."""
    def rhs(t, y):
        x = y[:, :2]
        u = policy(x)
        return torch.cat([system.f(x, u), system.running_cost(x, u)[:, None]], 1)
    y0 = torch.cat([x0, torch.zeros(x0.shape[0], 1, dtype=DT)], 1)
    with torch.no_grad():
        y1 = solve(rhs, y0, 0.0, system.horizon, method="dop853", rtol=1e-12, atol=1e-12).y1
    return float((y1[:, 2] + system.terminal_cost(y1[:, :2])).mean())


@pytest.mark.parametrize("estimator", [CTPG(rtol=1e-10, atol=1e-10), CTPG(method="tsit5", rtol=1e-10, atol=1e-10)],
                         ids=["dopri5", "tsit5"])
def test_ctpg_mlp_gradient_matches_central_differences(estimator):
    torch.manual_seed(0)
    system = ControlledVanDerPol()
    policy = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)).to(DT)
    x0 = system.sample_initial_state(3, torch.Generator().manual_seed(1)).requires_grad_(True)
    loss, _ = estimator(system, policy, x0)
    loss.backward()
    params = list(policy.parameters())
    gen = torch.Generator().manual_seed(2)
    eps = 1e-5
    for _ in range(3):
        directions = [torch.randn(p.shape, generator=gen, dtype=DT) for p in params]
        with torch.no_grad():
            for p, v in zip(params, directions):
                p.add_(eps * v)
            plus = accurate_cost(system, policy, x0.detach())
            for p, v in zip(params, directions):
                p.sub_(2 * eps * v)
            minus = accurate_cost(system, policy, x0.detach())
            for p, v in zip(params, directions):
                p.add_(eps * v)
        fd = (plus - minus) / (2 * eps)
        analytic = sum(float((p.grad * v).sum()) for p, v in zip(params, directions))
        assert analytic == pytest.approx(fd, rel=1e-6, abs=1e-9)
    v = torch.randn(x0.shape, generator=gen, dtype=DT)
    fd_x0 = (accurate_cost(system, policy, x0.detach() + eps * v)
             - accurate_cost(system, policy, x0.detach() - eps * v)) / (2 * eps)
    assert float((x0.grad * v).sum()) == pytest.approx(fd_x0, rel=1e-6)


class VanDerPolExplicitVjp(ControlledVanDerPol):
    """The same system with vjp overridden (by hand-written derivatives), so the
    estimators take the unfused path: system.vjp, then autograd through policy and cost."""

    def vjp(self, x, u, a):
        x1, x2 = x[:, 0], x[:, 1]
        gx = torch.stack([-a[:, 1] * (2 * x1 * x2 + 1), a[:, 0] + a[:, 1] * (1 - x1 ** 2)], 1)
        return gx, a[:, 1:2]


@pytest.mark.parametrize("make", [lambda: CTPG(rtol=1e-8, atol=1e-8), lambda: Backsolve(rtol=1e-8, atol=1e-8)],
                         ids=["ctpg", "backsolve"])
def test_fused_autograd_vjp_equals_explicit_vjp_path_and_counts_the_same(make):
    # Systems whose vjp is autograd through f get f, policy and cost differentiated in
    # one reverse pass; the result and the oracle counts must equal the two-pass path.
    results = []
    for system in (ControlledVanDerPol(), VanDerPolExplicitVjp()):
        torch.manual_seed(0)
        policy = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)).to(DT)
        x0 = system.sample_initial_state(3, torch.Generator().manual_seed(1)).requires_grad_(True)
        loss, info = make()(system, policy, x0)
        loss.backward()
        grads = torch.cat([x0.grad.reshape(-1)] + [p.grad.reshape(-1) for p in policy.parameters()])
        results.append((system.vjp_by_autograd, grads, info.backward.oracle))
    (fused, g_fused, counts_fused), (unfused, g_unfused, counts_unfused) = results
    assert fused and not unfused
    assert torch.allclose(g_fused, g_unfused, rtol=1e-12, atol=1e-14)
    assert counts_fused == counts_unfused and counts_fused["vjp_evals"] > 0


def test_f_for_vjp_counts_one_vjp_and_refuses_overridden_vjp():
    system = ControlledVanDerPol()
    x, u = torch.zeros(5, 2, dtype=DT), torch.zeros(5, 1, dtype=DT)
    system.f_for_vjp(x, u)
    assert (system.counter.vjp_evals, system.counter.f_evals) == (5, 0)
    with pytest.raises(ValueError, match=r"shape \[N, 2\]"):
        system.f_for_vjp(torch.zeros(5, 3, dtype=DT), u)
    with pytest.raises(TypeError, match="overrides vjp"):
        VanDerPolExplicitVjp().f_for_vjp(x, u)


def test_adjoint_seminorm_keeps_the_gradient_accurate():
    # Step control on lam alone: mu rides along. Checked against the exact LQR
    # gradient at a tolerance where both norms must be accurate.
    system, K, bias, x0, exact = lqr_problem()
    for semi in (False, True):
        grads, _, info = estimate(CTPG(rtol=1e-8, atol=1e-8, adjoint_seminorm=semi), system, K, bias, x0)
        for got, want in zip(grads, exact):
            assert rel(got, want) < 1e-5
    assert "adjoint_seminorm=True" in repr(CTPG(adjoint_seminorm=True))


def test_adjoint_starts_with_the_forward_last_step_and_stays_accurate_without_terminal_cost():
    from ctpg.estimators.ctpg import backward_first_step
    assert backward_first_step([0.0, 0.5, 1.2, 2.0]) == pytest.approx(0.8)
    assert backward_first_step([0.0]) is None
    # lam(T) = 0 without a terminal cost: the case where the generic first-step rule
    # starts tiny; the forward's step must still give an accurate adjoint.
    system = LQR()
    gen = torch.Generator().manual_seed(3)
    K = system.optimal_gain() + 0.3 * torch.randn(2, 2, generator=gen, dtype=DT)
    x0 = system.sample_initial_state(4, gen)
    K_ = K.clone().requires_grad_(True)
    system.exact_cost(K_, x0).mean().backward()
    for tol, bound in ((1e-6, 1e-4), (1e-9, 1e-7)):
        grads, _, info = estimate(CTPG(rtol=tol, atol=tol), system, K, torch.zeros(2, dtype=DT), x0)
        assert rel(grads[0], K_.grad) < bound
        assert info.backward.steps_accepted > 1


def test_loss_composes_with_other_torch_code_and_plain_callables():
    system, K, bias, x0, exact = lqr_problem()
    Kp = K.clone().requires_grad_(True)
    policy = lambda x: -x @ Kp.T + bias                # not a Module: pass params explicitly
    loss, _ = CTPG(rtol=1e-10, atol=1e-10)(system, policy, x0, params=[Kp])
    (3.0 * loss + loss ** 2).backward()
    K_ = K.clone().requires_grad_(True)
    exact_loss = system.exact_cost(K_, x0, bias).mean()
    (3.0 * exact_loss + exact_loss ** 2).backward()
    assert rel(Kp.grad, K_.grad) < 1e-7


def test_oracle_accounting_per_pass():
    system, K, bias, x0, _ = lqr_problem()
    system.counter.reset()
    _, _, info = estimate(CTPG(rtol=1e-6, atol=1e-8), system, K, bias, x0)
    fwd, bwd = info.forward.oracle, info.backward.oracle
    assert fwd["f_evals"] == 4 * fwd["f_calls"] > 0 and fwd["vjp_evals"] == 0
    assert bwd["vjp_evals"] == 4 * bwd["vjp_calls"] > 0 and bwd["f_evals"] == 0
    assert info.oracle_evals == system.counter.total_evals
    assert info.forward.steps_accepted > 0 and info.backward.steps_accepted > 0
    assert info.forward.wall_time > 0 and info.backward.wall_time > 0
    _, _, back = estimate(Backsolve(rtol=1e-6, atol=1e-8), system, K, bias, x0)
    assert back.backward.oracle["f_evals"] == back.backward.oracle["vjp_evals"] > 0
    _, _, bptt = estimate(BPTT(dt=0.01), system, K, bias, x0)
    assert bptt.forward.oracle["f_evals"] == bptt.backward.oracle["vjp_evals"] == 4 * 1000
    summary = bptt.summary()
    assert summary["oracle_evals"] == 8000 and summary["backward/steps_accepted"] == 1000


def test_memory_bptt_grows_with_steps_ctpg_with_solver_steps():
    system, K, bias, x0, _ = lqr_problem()
    coarse = estimate(BPTT(dt=0.02), system, K, bias, x0)[2].stored_floats
    fine = estimate(BPTT(dt=0.01), system, K, bias, x0)[2].stored_floats
    assert fine == pytest.approx(2 * coarse, rel=0.05)
    ctpg_info = estimate(CTPG(rtol=1e-6, atol=1e-8), system, K, bias, x0)[2]
    assert ctpg_info.stored_floats == ctpg_info.forward.steps_accepted * 5 * 4 * 3 + ctpg_info.forward.steps_accepted + 1
    assert estimate(Backsolve(), system, K, bias, x0)[2].stored_floats == 4 * 2


@pytest.mark.parametrize("estimator", [CTPG(rtol=1e-5, atol=1e-6), BPTT(dt=0.05), Backsolve(rtol=1e-5, atol=1e-6)],
                         ids=["ctpg", "bptt", "backsolve"])
def test_float32_works(estimator):
    system = LQR(dtype=torch.float32, horizon=2.0)
    policy = LinearPolicy(torch.eye(2))
    loss, info = estimator(system, policy, system.sample_initial_state(3))
    loss.backward()
    assert loss.dtype == torch.float32 and policy.K.grad.dtype == torch.float32
    assert torch.isfinite(policy.K.grad).all() and info.backward is not None


def test_no_grad_forward_keeps_nothing():
    system, K, bias, x0, _ = lqr_problem()
    with torch.no_grad():
        loss, info = CTPG()(system, LinearPolicy(K, bias), x0)
    assert info.stored_floats == 0 and loss.grad_fn is None


class NaNAfter(ControlSystem):
    """LQR-like system whose dynamics (or vjp) turn NaN beyond |x1| > 1.5."""

    state_dim, action_dim, horizon = 2, 2, 1.0

    def __init__(self, bad_vjp=False):
        super().__init__()
        self.bad_vjp = bad_vjp

    def f(self, x, u):
        out = u + x
        if not self.bad_vjp:
            out = torch.where(x[:, :1].abs() > 1.5, torch.nan, out)
        return out

    def vjp(self, x, u, a):
        return (a * torch.nan, a) if self.bad_vjp else (a, a)

    def running_cost(self, x, u):
        return (x ** 2).sum(-1)

    def sample_initial_state(self, n, generator=None):
        return torch.ones(n, 2, dtype=self.dtype)


@pytest.mark.parametrize("estimator", [CTPG(), Backsolve(), BPTT(dt=0.01)], ids=["ctpg", "backsolve", "bptt"])
def test_nan_from_dynamics_names_estimator_pass_and_time(estimator):
    system = NaNAfter()
    with pytest.raises(NonFiniteError, match=rf"{estimator.name} forward pass: .*NaN or Inf at t="):
        estimator(system, lambda x: torch.zeros_like(x), system.sample_initial_state(2))


@pytest.mark.parametrize("estimator", [CTPG(), Backsolve()], ids=["ctpg", "backsolve"])
def test_nan_in_backward_pass_is_named(estimator):
    system = NaNAfter(bad_vjp=True)
    x0 = system.sample_initial_state(2).requires_grad_(True)
    loss, _ = estimator(system, lambda x: -x, x0)
    with pytest.raises(NonFiniteError, match=rf"{estimator.name} backward pass"):
        loss.backward()


def test_nan_from_policy_is_caught():
    system = LQR()
    with pytest.raises(NonFiniteError, match="ctpg forward pass"):
        CTPG()(system, lambda x: x * torch.nan, system.sample_initial_state(2))


def test_bad_inputs_raise_clear_errors():
    system = LQR()
    policy = LinearPolicy(torch.eye(2, dtype=DT))
    with pytest.raises(ValueError, match=r"x0 must be a tensor of shape \[N, 2\]"):
        CTPG()(system, policy, torch.zeros(2, dtype=DT))
    with pytest.raises(ValueError, match=r"action must have shape \[3, 2\]"):
        CTPG()(system, lambda x: x[:, :1], torch.zeros(3, 2, dtype=DT))
    with pytest.raises(ValueError, match="dtype"):
        CTPG()(system, policy, torch.zeros(3, 2, dtype=torch.float32))
    with pytest.raises(ValueError, match="horizon T must be positive"):
        CTPG()(system, policy, torch.zeros(3, 2, dtype=DT), T=0.0)
    with pytest.raises(MaxStepsExceeded, match="max_steps=3"):
        CTPG(rtol=1e-10, atol=1e-10, max_steps=3)(system, policy, torch.ones(3, 2, dtype=DT))
    with pytest.raises(ValueError, match="unknown estimator 'adjoint'; choose one of: ctpg, bptt, backsolve"):
        ctpg.make_estimator("adjoint")
    with pytest.raises(ValueError, match="positive step"):
        BPTT(dt=0.0)


@pytest.mark.parametrize("make, match", [
    (lambda: CTPG(rtol=-1), "CTPG: rtol must be a finite number >= 0"),
    (lambda: CTPG(atol=float("nan")), "CTPG: atol must be"),
    (lambda: CTPG(rtol=0, atol=0), "both 0"),
    (lambda: CTPG(adjoint_rtol=-1e-3), "CTPG: adjoint_rtol must be"),
    (lambda: CTPG(method="dopri45"), "CTPG: method='dopri45': unknown solver method"),
    (lambda: CTPG(adjoint_method="rk5"), "CTPG: adjoint_method='rk5'"),
    (lambda: CTPG(dt=-0.1), "CTPG: dt must be a positive number"),
    (lambda: CTPG(method="rk4"), "CTPG: method='rk4' has no error estimate, so it needs a fixed step"),
    (lambda: Backsolve(method="explicit_adams"), "Backsolve: method='explicit_adams' has no error estimate"),
    (lambda: CTPG(max_steps=0), "CTPG: max_steps must be a positive integer"),
    (lambda: CTPG(sync_every=0), "CTPG: sync_every must be a positive integer"),
    (lambda: Backsolve(rtol=-1), "Backsolve: rtol must be"),
    (lambda: Backsolve(method="nope"), "Backsolve: method='nope'"),
    (lambda: Backsolve(checkpoints=1.5), "Backsolve: checkpoints must be an integer"),
    (lambda: BPTT(method="nope"), "BPTT: method='nope'.*semi-implicit-euler"),
    (lambda: BPTT(dt=float("inf")), "positive step"),
])
def test_estimators_check_every_option_at_construction(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_valid_options_are_accepted_at_construction():
    tensor_tol = torch.tensor([1e-6, 1e-6, 1e-8], dtype=DT)      # per component
    for estimator in (CTPG(method="rodas5p"), CTPG(method="auto:dopri5+rosenbrock23", rtol=0, atol=1e-8),
                      CTPG(rtol=tensor_tol, atol=tensor_tol), CTPG(dt=0.01, method="rk4"),
                      Backsolve(method="tsit5", checkpoints=2), BPTT(method="semi-implicit-euler"),
                      CTPG(dt=0.01, adjoint_method="rk4"),               # the adjoint inherits dt
                      CTPG(method="explicit_adams", dt=0.01), CTPG(method="dopri8"),
                      BPTT(dt=0.05, method="rk4")):
        assert isinstance(estimator, ctpg.Estimator)


def test_a_policy_of_another_dtype_is_refused_with_the_fix():
    system = LQR()                                                   # float64
    policy = torch.nn.Linear(2, 2)                                   # float32
    with pytest.raises(ValueError, match=r"policy's parameters are torch.float32 but the system uses "
                                         r"torch.float64; convert the policy with policy.to\(torch.float64\)"):
        CTPG()(system, policy, system.sample_initial_state(3))


def test_nan_in_x0_names_the_samples():
    system = LQR()
    x0 = system.sample_initial_state(8)
    x0[3, 1] = torch.nan
    x0[6, 0] = torch.inf
    with pytest.raises(ValueError, match=r"x0 contains NaN or Inf in sample\(s\) 3, 6 \(of 8\)"):
        BPTT()(system, LinearPolicy(torch.eye(2, dtype=DT)), x0)


class PendulumReadingPolicyParameter(ControlSystem):
    """x0' = x1, x1' = -k sin(x0) - 0.1 x1 + u, where k is read through a closure from
    `holder` (a parameter registered on the policy, not on the system)."""

    state_dim, action_dim, horizon = 2, 1, 1.5

    def __init__(self, holder):
        super().__init__()
        self.k_of = lambda: holder.k      # a closure: k is not an attribute of the system

    def f(self, x, u):
        return torch.stack([x[:, 1], -self.k_of() * torch.sin(x[:, 0]) - 0.1 * x[:, 1] + u[:, 0]], 1)

    def running_cost(self, x, u):
        return (x ** 2).sum(-1) + 0.1 * (u ** 2).sum(-1)

    def terminal_cost(self, x):
        return x[:, 0] ** 2

    def sample_initial_state(self, n, generator=None):
        return torch.rand(n, 2, generator=generator, dtype=self.dtype) * 2 - 1


class GainPolicy(torch.nn.Module):
    """u = -(w . x) - (k if `uses_k`) x0: k is a parameter of the policy that the
    dynamics may read too."""

    def __init__(self, uses_k):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor([0.7, 0.4], dtype=DT))
        self.k = torch.nn.Parameter(torch.tensor(1.3, dtype=DT))
        self.uses_k = uses_k

    def forward(self, x):
        u = -(x * self.w).sum(-1, keepdim=True)
        return u - self.k * x[:, :1] if self.uses_k else u


@pytest.mark.parametrize("reader", ["f", "policy", "both"])
@pytest.mark.parametrize("estimator", [BPTT(dt=0.01), CTPG(rtol=1e-10, atol=1e-10),
                                       Backsolve(rtol=1e-10, atol=1e-10)], ids=["bptt", "ctpg", "backsolve"])
def test_parameter_read_by_f_through_a_closure_gets_its_gradient(estimator, reader):
    """dL/dk for a policy parameter k read by f only, by the policy only, or by both,
    against central differences: of the estimator's own loss for BPTT (the exact
    gradient of its discretisation) and of a dop853 solve at 1e-12 for the others."""
    policy = GainPolicy(uses_k=reader != "f")
    holder = policy if reader != "policy" else torch.nn.Module()
    if reader == "policy":
        holder.k = torch.tensor(1.3, dtype=DT)      # f reads a fixed k of its own
    system = PendulumReadingPolicyParameter(holder)
    x0 = system.sample_initial_state(3, torch.Generator().manual_seed(0))
    loss, _ = estimator(system, policy, x0)
    loss.backward()

    def cost():
        if isinstance(estimator, BPTT):
            with torch.no_grad():
                return float(estimator(system, policy, x0)[0])
        return accurate_cost(system, policy, x0)

    eps = 1e-6
    for p in policy.parameters():
        for i in range(p.numel()):
            with torch.no_grad():
                p.view(-1)[i] += eps
                plus = cost()
                p.view(-1)[i] -= 2 * eps
                minus = cost()
                p.view(-1)[i] += eps
            assert float(p.grad.view(-1)[i]) == pytest.approx((plus - minus) / (2 * eps), rel=1e-6, abs=1e-8)
    assert abs(float(policy.k.grad)) > 1e-3     # k matters in every case (not a zero match)
