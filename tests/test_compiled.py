"""CTPG(compile=True): the torch.compile'd closed loop gives the eager gradient (and the
exact one on LQR), counts the same oracle calls, follows parameter updates without
going stale, handles a clock with breakpoints, and refuses what it cannot compile."""
import pickle

import pytest
import torch

import envs
from agents import make_policy
from ctpg import CTPG, ControlSystem
from envs.lqr import LQR
from test_estimators import LinearPolicy, lqr_problem, rel


def gradient(estimator, system, policy, x0):
    x = x0.clone().requires_grad_(True)
    loss, info = estimator(system, policy, x)
    params = [p for p in policy.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params + [x])
    return torch.cat([g.reshape(-1) for g in grads]), info


class AutogradLQR(LQR):
    """LQR with the default autograd vjp (the other way a system's f is differentiable)."""

    vjp = ControlSystem.vjp


@pytest.mark.parametrize("system_class", [LQR, AutogradLQR])
def test_compiled_ctpg_matches_the_exact_lqr_gradient(system_class):
    """LQR's own vjp is analytic (torch_f = True says f is torch); AutogradLQR's is autograd's."""
    _, K, bias, x0, exact = lqr_problem()
    system = system_class(Qf=0.5 * torch.eye(2))              # lqr_problem's system
    policy = LinearPolicy(K, bias)
    got, _ = gradient(CTPG(rtol=1e-10, atol=1e-10, compile=True), system, policy, x0)
    want = torch.cat([g.reshape(-1) for g in exact])
    assert rel(got, want) < 1e-7


@pytest.mark.parametrize("env", ["diffdrive", "electric", "quadrotor"])
def test_compiled_equals_eager_and_follows_parameter_updates(env):
    """Same gradient to roundoff and the same counts as the eager path, on the trainer's
    policy (features, MLP, squash; electric: a clock state and breakpoints; quadrotor: an
    analytic vjp, f differentiated by the compiled stage), before and
    after an in-place parameter update (an optimiser step must not leave the compiled
    code reading stale weights)."""
    system = envs.make(env, horizon=1.0) if env == "electric" else envs.make(env)
    torch.manual_seed(0)
    policy = make_policy(system)
    x0 = system.sample_initial_state(4, torch.Generator().manual_seed(1))
    compiled, eager = CTPG(rtol=1e-5, atol=1e-5, compile=True), CTPG(rtol=1e-5, atol=1e-5)
    for update in range(2):
        got, info_c = gradient(compiled, system, policy, x0)
        want, info_e = gradient(eager, system, policy, x0)
        assert rel(got, want) < 1e-9
        assert info_c.forward.oracle == info_e.forward.oracle
        assert info_c.backward.oracle == info_e.backward.oracle
        with torch.no_grad():
            for p in policy.parameters():
                p.add_(0.05 * torch.randn_like(p))
    assert compiled._compiled is not None and compiled._compiled.module is policy
    restored = pickle.loads(pickle.dumps(compiled))          # Ray and multiprocessing pickle estimators
    assert restored.compile and restored._compiled is None


class AnalyticDecay(ControlSystem):
    """dx/dt = -x + u with a hand-written vjp: nothing torch.compile could trace."""

    state_dim, action_dim, horizon = 1, 1, 1.0

    def f(self, x, u):
        return -x + u

    def vjp(self, x, u, a):
        return -a, a

    def running_cost(self, x, u):
        return (x ** 2).sum(-1)

    def sample_initial_state(self, n, generator=None):
        return torch.ones(n, 1, dtype=self.dtype)


def test_what_cannot_be_compiled_is_refused_with_the_fix():
    policy = torch.nn.Linear(1, 1).double()
    x0 = torch.ones(2, 1, dtype=torch.float64)
    with pytest.raises(ValueError, match="supplies its own vjp.*torch_f = True.*compile=False"):
        CTPG(compile=True)(AnalyticDecay(), policy, x0)
    system = AutogradLQR()
    system.Q = torch.nn.Parameter(system.Q.clone())          # a learnable cost weight
    with pytest.raises(ValueError, match="outside the policy.*compile=False"):
        CTPG(compile=True)(system, torch.nn.Linear(2, 2).double(), system.sample_initial_state(2))
    with pytest.raises(ValueError, match="not a torch.nn.Module"):
        CTPG(compile=True)(AutogradLQR(), lambda x: -x, torch.ones(2, 2, dtype=torch.float64))
    for option in ("per_sample", "reuse_jacobians"):
        with pytest.raises(ValueError, match="per_sample=False and reuse_jacobians=False"):
            CTPG(compile=True, **{option: True})


def test_a_machine_without_a_cpp_compiler_gets_the_fix(tmp_path):
    """inductor's CPU backend needs a C++ compiler; without one the error says so."""
    import os
    import subprocess
    import sys
    code = ("import envs, ctpg\n"
            "from agents import make_policy\n"
            "s = envs.make('diffdrive')\n"
            "ctpg.CTPG(compile=True)(s, make_policy(s), s.sample_initial_state(2))\n")
    env = dict(os.environ, CXX=str(tmp_path / "no-such-g++"), TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "cache"))
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode != 0
    assert "RuntimeError: CTPG(compile=True): torch.compile could not build" in done.stderr
    assert "C++ compiler" in done.stderr and "compile=False" in done.stderr


@pytest.mark.parametrize("env", ["diffdrive", "electric"])
def test_captured_attempts_give_the_same_gradient_and_counts(env):
    """compile=True with sync_every: whole step attempts compiled (capture). The gradient
    of the host-controlled compiled estimate to roundoff, and the counts of the eager
    device-side loop (which may attempt a step past T that the host loop does not);
    electric over 9 s crosses its breakpoint at 7.68 s (a stop in both passes). A new
    tolerance reuses the compiled attempts (tolerances are inputs, not constants)."""
    system = envs.make(env, horizon=9.0) if env == "electric" else envs.make(env)
    torch.manual_seed(0)
    policy = make_policy(system)
    x0 = system.sample_initial_state(4, torch.Generator().manual_seed(1))
    assert system.breakpoints(system.horizon) == ([7.68] if env == "electric" else [])
    captured = CTPG(rtol=1e-5, atol=1e-5, compile=True, sync_every=8)
    got, info_c = gradient(captured, system, policy, x0)
    want, _ = gradient(CTPG(rtol=1e-5, atol=1e-5, compile=True), system, policy, x0)
    assert rel(got, want) < 1e-9
    _, info_d = gradient(CTPG(rtol=1e-5, atol=1e-5, sync_every=8), system, policy, x0)
    assert info_c.forward.oracle == info_d.forward.oracle and info_c.backward.oracle == info_d.backward.oracle
    captured.rtol = captured.adjoint_rtol = 1e-4
    gradient(captured, system, policy, x0)
    assert [len(captured._compiled._attempts[kind]) for kind in ("f", "vjp")] == [1, 1]
