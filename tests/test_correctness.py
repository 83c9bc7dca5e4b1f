"""No silently wrong number: each test here pins a case where an estimator or a solver
once returned a wrong answer without a word, or failed with a message that blamed
the wrong thing."""
import math

import numpy as np
import pytest
import torch

from ctpg import BPTT, CTPG, Backsolve, ControlSystem, NonFiniteError, finite_difference_jacobians
from ctpg.solvers import solve
from envs.lqr import LQR

DT = torch.float64


class Linear(torch.nn.Module):
    def __init__(self, K):
        super().__init__()
        self.K = torch.nn.Parameter(K.clone())

    def forward(self, x):
        return -x @ self.K.T


def rel(a, b):
    return float((a - b).norm() / b.norm())


# --------------------------------------------------------- black-box dynamics
class NumpyPendulum(ControlSystem):
    """A pendulum whose f is computed in numpy: autograd cannot see through it."""

    state_dim, action_dim, horizon = 2, 1, 2.0

    def f(self, x, u):
        xn, un = x.detach().numpy(), u.detach().numpy()
        out = np.stack([xn[:, 1], -9.8 * np.sin(xn[:, 0]) + un[:, 0]], 1)
        return torch.as_tensor(out, dtype=x.dtype)

    def running_cost(self, x, u):
        return (1 + torch.cos(x[:, 0])) + 0.1 * x[:, 1] ** 2 + 0.01 * u[:, 0] ** 2

    def sample_initial_state(self, n, generator=None):
        return torch.full((n, 2), 0.3, dtype=self.dtype)


class NumpyPendulumFD(NumpyPendulum):
    """The same black box made usable the documented way: finite-difference derivatives."""

    def jacobians(self, x, u):
        fx, fu, _ = finite_difference_jacobians(self.f, x, u)
        return fx, fu

    def vjp(self, x, u, a):
        fx, fu = self.jacobians(x, u)
        return torch.einsum("nd,nde->ne", a, fx), torch.einsum("nd,nde->ne", a, fu)


@pytest.mark.parametrize("estimator", [CTPG(), Backsolve(), BPTT(dt=0.05)], ids=["ctpg", "backsolve", "bptt"])
def test_black_box_f_without_vjp_is_refused_with_the_fix(estimator):
    system = NumpyPendulum()
    policy = torch.nn.Linear(2, 1).double()
    loss, _ = estimator(system, policy, system.sample_initial_state(3))
    with pytest.raises(TypeError, match="without an autograd graph.*finite_difference_jacobians"):
        loss.backward()


def test_black_box_f_with_finite_difference_vjp_gives_the_right_gradient():
    torch.manual_seed(0)
    policy = torch.nn.Linear(2, 1).double()
    grads = []
    for system in (NumpyPendulumFD(), _TorchPendulum()):
        policy.zero_grad()
        loss, _ = CTPG(rtol=1e-9, atol=1e-9)(system, policy, system.sample_initial_state(3))
        loss.backward()
        grads.append(torch.cat([p.grad.reshape(-1) for p in policy.parameters()]))
    assert rel(grads[0], grads[1]) < 1e-6


class _TorchPendulum(NumpyPendulum):
    def f(self, x, u):
        return torch.stack([x[:, 1], -9.8 * torch.sin(x[:, 0]) + u[:, 0]], 1)


# ----------------------------------------------- tolerances are per sample
def _probe_error(others, estimator):
    """Relative error of the probe sample's own gradient dcost/dx0 among `others`."""
    system = LQR()
    K = system.optimal_gain() + 0.3 * torch.tensor([[1.0, -0.5], [0.2, 0.4]], dtype=DT)
    probe = torch.tensor([[1.0, -2.0]], dtype=DT)
    x_ = probe.clone().requires_grad_(True)
    system.exact_cost(K, x_).sum().backward()
    x0 = torch.cat([probe, others]).requires_grad_(True)
    loss, _ = estimator(system, Linear(K), x0)
    loss.backward()
    return rel(x0.shape[0] * x0.grad[0], x_.grad[0])


@pytest.mark.parametrize("estimator", [CTPG(rtol=1e-3, atol=1e-3), Backsolve(rtol=1e-3, atol=1e-3)],
                         ids=["ctpg", "backsolve"])
def test_a_samples_accuracy_does_not_depend_on_the_batch(estimator):
    gen = torch.Generator().manual_seed(0)
    alone = _probe_error(torch.zeros(0, 2, dtype=DT), estimator)
    companions = {"15 zeros": torch.zeros(15, 2, dtype=DT),
                  "255 zeros": torch.zeros(255, 2, dtype=DT),
                  "255 random": torch.randn(255, 2, generator=gen, dtype=DT),
                  "outlier x100": torch.tensor([[100.0, 50.0]], dtype=DT)}
    for name, others in companions.items():
        error = _probe_error(others, estimator)
        assert error <= 2 * alone, (name, error, alone)
        if "zeros" in name:       # companions that need no steps change nothing at all
            assert error == pytest.approx(alone, rel=1e-6)


# ----------------------------- parameters shared by policy, dynamics and cost
class LearnableDecay(ControlSystem):
    """x' = -k x + u, w = k x^2 + u^2, J = k x(T)^2 with a learnable k that the
    policy u = -(k + theta) x also reads: k lives in f, w, J and the policy."""

    state_dim, action_dim, horizon = 1, 1, 1.5

    def __init__(self, k):
        super().__init__()
        self.k = k

    def f(self, x, u):
        return -self.k * x + u

    def running_cost(self, x, u):
        return self.k * x[:, 0] ** 2 + u[:, 0] ** 2

    def terminal_cost(self, x):
        return self.k * x[:, 0] ** 2

    def sample_initial_state(self, n, generator=None):
        return torch.linspace(0.5, 1.5, n, dtype=self.dtype)[:, None]


class LearnableDecayExplicitVjp(LearnableDecay):
    """The same system with hand-written derivatives (the unfused adjoint path)."""

    def vjp(self, x, u, a):
        return -self.k.detach() * a, a

    def jacobians(self, x, u):
        n = x.shape[0]
        return -self.k.detach() * torch.ones(n, 1, 1, dtype=x.dtype), torch.ones(n, 1, 1, dtype=x.dtype)


class SharedGainPolicy(torch.nn.Module):
    def __init__(self, k):
        super().__init__()
        self.k = k
        self.theta = torch.nn.Parameter(torch.tensor(0.7, dtype=DT))

    def forward(self, x):
        return -(self.k + self.theta) * x


def _accurate_cost(k_value, theta_value):
    k = torch.tensor(k_value, dtype=DT)
    system = LearnableDecay(k)
    x0 = system.sample_initial_state(3)

    def rhs(t, y):
        x = y[:, :1]
        u = -(k + theta_value) * x
        return torch.cat([system.f(x, u), system.running_cost(x, u)[:, None]], 1)

    y1 = solve(rhs, torch.cat([x0, torch.zeros_like(x0)], 1), 0.0, system.horizon, method="dop853",
               rtol=1e-13, atol=1e-13).y1
    return float((y1[:, 1] + system.terminal_cost(y1[:, :1])).mean())


@pytest.mark.parametrize("system_class,estimator,tol", [
    (LearnableDecay, CTPG(rtol=1e-10, atol=1e-10), 1e-7),
    (LearnableDecayExplicitVjp, CTPG(rtol=1e-10, atol=1e-10), 1e-7),
    (LearnableDecay, CTPG(method="rodas5p", rtol=1e-10, atol=1e-10), 1e-7),
    (LearnableDecayExplicitVjp, CTPG(method="rodas5p", rtol=1e-10, atol=1e-10), 1e-7),
    (LearnableDecay, Backsolve(rtol=1e-10, atol=1e-10), 1e-7),
    (LearnableDecayExplicitVjp, Backsolve(rtol=1e-10, atol=1e-10), 1e-7),
    (LearnableDecay, BPTT(dt=2e-3, method="rk4"), 1e-7),
    (LearnableDecayExplicitVjp, BPTT(dt=2e-3, method="rk4"), 1e-7),
], ids=["ctpg-fused", "ctpg-explicit-vjp", "rodas5p-fused", "rodas5p-explicit-vjp",
        "backsolve-fused", "backsolve-explicit-vjp", "bptt-fused", "bptt-explicit-vjp"])
def test_parameters_shared_by_policy_system_and_cost_get_their_full_gradient(system_class, estimator, tol):
    k = torch.nn.Parameter(torch.tensor(0.8, dtype=DT))
    system, policy = system_class(k), SharedGainPolicy(k)
    loss, _ = estimator(system, policy, system.sample_initial_state(3))
    loss.backward()
    eps = 1e-5
    fd_k = (_accurate_cost(0.8 + eps, 0.7) - _accurate_cost(0.8 - eps, 0.7)) / (2 * eps)
    fd_theta = (_accurate_cost(0.8, 0.7 + eps) - _accurate_cost(0.8, 0.7 - eps)) / (2 * eps)
    assert float(k.grad) == pytest.approx(fd_k, rel=tol)
    assert float(policy.theta.grad) == pytest.approx(fd_theta, rel=tol)


def test_system_parameters_are_found_and_default_to_none():
    k = torch.nn.Parameter(torch.tensor(1.0, dtype=DT))
    assert LearnableDecay(k).parameters() == [k]
    assert LQR().parameters() == []


# ------------------------------------------------------------- bad horizons
@pytest.mark.parametrize("estimator", [CTPG(), Backsolve(), BPTT()], ids=["ctpg", "backsolve", "bptt"])
def test_infinite_horizon_and_empty_batch_are_refused_at_the_call(estimator):
    system = LQR()
    policy = Linear(torch.eye(2, dtype=DT))
    with pytest.raises(ValueError, match="positive and finite"):
        estimator(system, policy, torch.ones(2, 2, dtype=DT), T=math.inf)
    with pytest.raises(ValueError, match="empty batch"):
        estimator(system, policy, torch.zeros(0, 2, dtype=DT))


# ------------------------------------------------------ deterministic policies
@pytest.mark.parametrize("layer", [torch.nn.BatchNorm1d(2), torch.nn.Dropout(0.1)], ids=["batchnorm", "dropout"])
def test_policies_with_batchnorm_or_dropout_must_be_in_eval_mode(layer):
    system = LQR()
    policy = torch.nn.Sequential(layer, torch.nn.Linear(2, 2)).double()
    with pytest.raises(ValueError, match=r"training mode.*policy\.eval\(\)"):
        CTPG()(system, policy, torch.ones(4, 2, dtype=DT))
    policy.eval()
    loss, _ = CTPG()(system, policy, torch.ones(4, 2, dtype=DT))
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in policy.parameters() if p.grad is not None)


# --------------------------------------------------- repeated and 2nd-order backward
@pytest.mark.parametrize("estimator", [CTPG(), Backsolve(), BPTT()], ids=["ctpg", "backsolve", "bptt"])
def test_second_backward_works_with_retain_graph_and_double_backward_is_refused(estimator):
    system = LQR()
    policy = Linear(torch.eye(2, dtype=DT) * 1.3)
    x0 = torch.ones(3, 2, dtype=DT)
    loss, _ = estimator(system, policy, x0)
    loss.backward(retain_graph=True)
    once = policy.K.grad.clone()
    loss.backward()
    assert torch.allclose(policy.K.grad, 2 * once, rtol=1e-12)
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        loss.backward()
    loss, _ = estimator(system, policy, x0)
    with pytest.raises(RuntimeError, match="first-order gradients only"):
        torch.autograd.grad(loss, policy.K, create_graph=True)


# ------------------------------------------------------------ honest numbers
def test_bptt_stored_floats_count_each_storage_once():
    from ctpg.estimators.bptt import _SavedTensorCounter
    counter = _SavedTensorCounter()
    base = torch.zeros(10, dtype=DT)
    for view in (base, base[2:], base[:5], base.view(2, 5)):
        counter.pack(view)
    assert counter.floats == 10
    counter.pack(torch.zeros(3, dtype=DT))
    assert counter.floats == 13
    # and the rollout's count is the same for BPTT at twice the steps, per step
    system, policy, x0 = LQR(), Linear(torch.eye(2, dtype=DT)), torch.ones(4, 2, dtype=DT)
    coarse = BPTT(dt=0.02)(system, policy, x0)[1].stored_floats
    fine = BPTT(dt=0.01)(system, policy, x0)[1].stored_floats
    assert fine == pytest.approx(2 * coarse, rel=0.01)


class ContractingBurst(ControlSystem):
    """x' = -k(c) x + u with a clock c' = 1 and a decay rate k that bursts to ~20 for
    t in [4, 6] only: reversing time there amplifies every error by e^18."""

    state_dim, action_dim, horizon = 2, 1, 10.0

    def f(self, x, u):
        rate = 1.0 + 20.0 * torch.exp(-((x[:, 1] - 5.0) / 0.5) ** 2)
        return torch.stack([-rate * x[:, 0] + u[:, 0], torch.ones_like(x[:, 1])], 1)

    def running_cost(self, x, u):
        return x[:, 0] ** 2 + u[:, 0] ** 2

    def sample_initial_state(self, n, generator=None):
        return torch.tensor([[1.0, 0.0]], dtype=self.dtype).repeat(n, 1)


def test_backsolve_reconstruction_error_covers_every_checkpoint_segment():
    """The drift is born in the segment [4, 6]; reconstructing x0 from the checkpoint
    at t = 2 is accurate, so an error measured at x0 alone would miss it."""
    system = ContractingBurst()
    policy = lambda x: -0.1 * x[:, :1]
    x0 = system.sample_initial_state(2).requires_grad_(True)
    loss, info = Backsolve(rtol=1e-6, atol=1e-9, checkpoints=4)(system, policy, x0)
    loss.backward()
    assert info.reconstruction_error.shape == (2,)
    assert float(info.reconstruction_error.min()) > 1e-3
    summary = info.summary()
    assert summary["reconstruction_error_max"] == pytest.approx(float(info.reconstruction_error.max()))
    assert summary["reconstruction_error_mean"] == pytest.approx(float(info.reconstruction_error.mean()))


# ------------------------------------------------------- solver edge cases
def test_zero_atol_is_pure_relative_control():
    system = LQR(Qf=0.5 * torch.eye(2, dtype=DT))
    K = system.optimal_gain() + 0.2
    x0 = torch.tensor([[1.0, 0.5], [0.0, 0.0]], dtype=DT)
    x_ = x0.clone().requires_grad_(True)
    system.exact_cost(K, x_).mean().backward()
    x = x0.clone().requires_grad_(True)
    loss, _ = CTPG(rtol=1e-8, atol=0.0)(system, Linear(K), x)
    loss.backward()
    assert rel(x.grad[0], x_.grad[0]) < 1e-5


def test_a_nan_in_a_trial_step_rejects_the_step_and_the_solve_goes_on():
    # y' = -50 (y - 1): an overshooting trial step leaves y < 0, where the rhs is NaN
    # (like a square root or a simulator's invalid region); the solver must shrink
    # the step, not fail.
    def rhs(t, y):
        return torch.where(y < 0, torch.nan, -50.0 * (y - 1.0))

    y0 = torch.full((2, 1), 3.0, dtype=DT)
    sol = solve(rhs, y0, 0.0, 1.0, method="dopri5", rtol=1e-6, atol=1e-9, first_step=0.2)
    assert sol.steps_rejected >= 1
    assert torch.allclose(sol.y1, torch.ones_like(y0), atol=1e-6)


def test_nan_everywhere_still_fails_clearly():
    with pytest.raises(NonFiniteError, match="NaN or Inf at t=0.*shrinking the step"):
        solve(lambda t, y: y * torch.nan, torch.ones(1, 1, dtype=DT), 0.0, 1.0, method="dopri5",
              rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("horizon", [1.1, 2.2, 3.3])
@pytest.mark.parametrize("estimator", [CTPG(rtol=1e-4, atol=1e-5), BPTT(dt=0.01), Backsolve(rtol=1e-4, atol=1e-5)],
                         ids=["ctpg", "bptt", "backsolve"])
def test_float32_at_horizons_that_float32_cannot_represent(estimator, horizon):
    """T = 1.1 is not a float32 number: time stays in Python floats, so the solves end
    exactly at T and the float32 gradient matches the float64 one of the same
    estimator to float32 accuracy."""
    grads = []
    for dtype in (torch.float32, torch.float64):
        system = LQR(dtype=dtype, horizon=horizon)
        policy = Linear(torch.eye(2, dtype=dtype) * 1.5)
        x0 = system.sample_initial_state(4, torch.Generator().manual_seed(0))
        loss, info = estimator(system, policy, x0)
        loss.backward()
        assert loss.dtype == dtype and policy.K.grad.dtype == dtype
        grads.append(policy.K.grad.double())
    assert rel(grads[0], grads[1]) < 2e-3


def test_rtol_below_the_dtype_precision_warns():
    with pytest.warns(UserWarning, match="below what torch.float32 carries"):
        solve(lambda t, y: -y, torch.ones(1, 1), 0.0, 1.0, method="dopri5", rtol=1e-9, atol=1e-9)


# ------------------------------------------------------------ per-sample steps
def test_per_sample_steps_make_a_samples_result_independent_of_its_batch():
    system = LQR(Qf=0.5 * torch.eye(2, dtype=DT))
    K = system.optimal_gain() + 0.3 * torch.tensor([[1.0, -0.5], [0.2, 0.4]], dtype=DT)
    probe = torch.tensor([[1.0, -2.0]], dtype=DT)
    gen = torch.Generator().manual_seed(0)
    results = []
    for others in (torch.zeros(0, 2, dtype=DT), 10 * torch.randn(40, 2, generator=gen, dtype=DT),
                   torch.zeros(255, 2, dtype=DT)):
        x0 = torch.cat([probe, others]).requires_grad_(True)
        loss, _ = CTPG(rtol=1e-4, atol=1e-4, per_sample=True)(system, Linear(K), x0)
        loss.backward()
        results.append(x0.shape[0] * x0.grad[0])
    # the same steps exactly: equal but for the rounding of the batch mean's 1/N
    assert all(torch.allclose(r, results[0], rtol=1e-14, atol=0) for r in results)


def test_per_sample_ctpg_matches_the_exact_gradient_and_the_shared_one():
    system = LQR(Qf=0.5 * torch.eye(2, dtype=DT))
    K = system.optimal_gain() + 0.3 * torch.tensor([[1.0, -0.5], [0.2, 0.4]], dtype=DT)
    x0 = system.sample_initial_state(5, torch.Generator().manual_seed(0))
    K_, x_ = K.clone().requires_grad_(True), x0.clone().requires_grad_(True)
    system.exact_cost(K_, x_).mean().backward()
    policy, x = Linear(K), x0.clone().requires_grad_(True)
    loss, info = CTPG(rtol=1e-10, atol=1e-10, per_sample=True)(system, policy, x)
    loss.backward()
    assert rel(policy.K.grad, K_.grad) < 1e-7 and rel(x.grad, x_.grad) < 1e-7
    assert info.stored_floats > 0 and info.backward.steps_accepted > 0


@pytest.mark.parametrize("system_class", ["fused", "explicit-vjp", "black-box"])
def test_per_sample_mlp_gradient_equals_the_shared_steps_gradient(system_class):
    from test_estimators import ControlledVanDerPol, VanDerPolExplicitVjp
    system = {"fused": ControlledVanDerPol, "explicit-vjp": VanDerPolExplicitVjp,
              "black-box": NumpyPendulumFD}[system_class]()
    torch.manual_seed(0)
    policy = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)).double()
    x0 = system.sample_initial_state(4, torch.Generator().manual_seed(1))
    grads = []
    for per_sample in (False, True):
        policy.zero_grad()
        x = x0.clone().requires_grad_(True)
        loss, _ = CTPG(rtol=1e-10, atol=1e-10, per_sample=per_sample)(system, policy, x)
        loss.backward()
        grads.append(torch.cat([p.grad.reshape(-1) for p in policy.parameters()] + [x.grad.reshape(-1)]))
    assert rel(grads[1], grads[0]) < 1e-7


def test_per_sample_steps_land_on_breakpoints_and_refuse_what_they_cannot_do():
    import envs
    system = envs.make("electric", horizon=9.0)           # one goal turn at 7.68 inside
    torch.manual_seed(0)
    policy = torch.nn.Sequential(torch.nn.Linear(11, 8), torch.nn.Tanh(), torch.nn.Linear(8, 8)).double()
    x0 = system.sample_initial_state(3, torch.Generator().manual_seed(1))
    grads = []
    for per_sample in (False, True):
        policy.zero_grad()
        loss, _ = CTPG(rtol=1e-9, atol=1e-9, per_sample=per_sample)(system, policy, x0)
        loss.backward()
        grads.append(torch.cat([p.grad.reshape(-1) for p in policy.parameters()]))
    assert rel(grads[1], grads[0]) < 1e-6
    with pytest.raises(ValueError, match="explicit Runge-Kutta"):
        CTPG(method="rodas5p", per_sample=True)(LQR(), Linear(torch.eye(2, dtype=DT)), torch.ones(2, 2, dtype=DT))
    k = torch.nn.Parameter(torch.tensor(0.8, dtype=DT))
    with pytest.raises(ValueError, match="policy's own parameters only"):
        CTPG(per_sample=True)(LearnableDecay(k), SharedGainPolicy(k), torch.ones(2, 1, dtype=DT))


def test_bptt_frees_its_rollout_graph():
    """The storage counter's hook must not tie the rollout's tensors to their own graph
    nodes (a cycle through C++ that Python's collector cannot break): after the
    estimate and its backward pass, no tensor of the rollout stays alive."""
    import gc

    def live():
        gc.collect()
        return sum(1 for o in gc.get_objects() if type(o) is torch.Tensor)

    system, policy = LQR(), torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(),
                                               torch.nn.Linear(8, 2)).double()
    x0 = torch.ones(4, 2, dtype=DT)
    BPTT(dt=0.01)(system, policy, x0)[0].backward()      # warm-up: lazily created tensors
    before = live()
    for _ in range(3):
        loss, info = BPTT(dt=0.01)(system, policy, x0)
        loss.backward()
        del loss, info
    assert live() - before < 50      # a leaked rollout would keep thousands


def test_electric_breakpoints_save_steps_and_keep_the_gradient():
    # The goal's velocity jumps at segment_time: landing there (system.breakpoints) spares
    # the solver its rejections around the jump, forward and backward.
    import envs
    from agents.policies import make_policy

    system = envs.make("electric")
    torch.manual_seed(0)
    policy = make_policy(system).double()
    x0 = system.sample_initial_state(16, torch.Generator().manual_seed(1))

    class NoBreakpoints(type(system)):
        def breakpoints(self, horizon):
            return []

    def estimate(s, tol):
        policy.zero_grad()
        loss, info = CTPG(rtol=tol, atol=tol)(s, policy, x0.clone())
        loss.backward()
        steps = sum(p.steps_accepted + p.steps_rejected for p in (info.forward, info.backward))
        return steps, info.oracle_evals, torch.cat([p.grad.flatten() for p in policy.parameters()])

    assert system.breakpoints(system.horizon) == [pytest.approx(7.68)]
    reference = estimate(system, 1e-11)[2]
    (steps, evals, grad), (steps_none, evals_none, grad_none) = estimate(system, 1e-6), estimate(NoBreakpoints(), 1e-6)
    error = lambda g: float((g - reference).norm() / reference.norm())
    assert steps < 0.75 * steps_none and evals < 0.75 * evals_none
    # measured: 3e-8 with the stops against 1.7e-4 stepping across the jump
    assert error(grad) < 1e-6 < error(grad_none)
