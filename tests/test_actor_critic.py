"""The actor-critic (agents.actor_critic, agents.window, agents.critic): the window
problem's discounted cost against a direct quadrature, its actor gradient (critic as
terminal cost) against central differences for every estimator, the TD(lambda) targets
against a hand computation, carried states and resets, resume bitwise, the command line.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

import agents
import ctpg
import envs
from agents import cli
from agents.actor_critic import ActorCritic, explained_variance
from agents.checkpoint import load_checkpoint
from agents.config import ConfigError, resolve_config
from agents.critic import Critic, frozen_copy, polyak, td_lambda_targets, window_targets
from agents.window import WindowPolicy, WindowProblem
from ctpg.trajectory import Trajectory
from envs.pendulum import Pendulum

H, RHO = 0.8, 0.7


def _setup(seed: int = 0):
    """Pendulum, an affine policy on (cos, sin, rate) (4 parameters, squashed into the
    torque bounds) and a frozen random critic."""
    torch.manual_seed(seed)
    system = envs.make("pendulum")
    policy = agents.make_policy(system, hidden=(), last_layer_scale=3.0)
    critic = frozen_copy(Critic(system, "pendulum", hidden=(8,)))
    problem = WindowProblem(system, critic, H, RHO)
    x = system.sample_initial_state(3, torch.Generator().manual_seed(seed + 1))
    return system, policy, critic, problem, WindowPolicy(policy, 2), problem.start(x)


def _quadrature_costs(system, policy, critic, x0: torch.Tensor) -> np.ndarray:
    """int_0^H e^{-rho s} w ds + e^{-rho H} V(x(H)) per start x0 [N,2], by scipy's DOP853
    at rtol 1e-12 on the un-augmented closed loops (time as scipy's own t), all starts
    in one solve."""
    sat = ctpg.system.saturated_policy(policy, system)
    n = x0.shape[0]

    def rhs(t, z):
        x = torch.tensor(z[:2 * n].reshape(n, 2))
        with torch.no_grad():
            u = sat(x)
            dx = system.f(x, u).numpy().reshape(-1)
            w = system.running_cost(x, u).numpy()
        return np.concatenate([dx, math.exp(-RHO * t) * w])

    z0 = np.concatenate([x0.numpy().reshape(-1), np.zeros(n)])
    sol = solve_ivp(rhs, (0.0, H), z0, method="DOP853", rtol=1e-12, atol=1e-12)
    xH = torch.tensor(sol.y[:2 * n, -1].reshape(n, 2))
    with torch.no_grad():
        return sol.y[2 * n:, -1] + math.exp(-RHO * H) * critic(xH).numpy()


def test_window_cost_is_the_discounted_cost_plus_the_discounted_critic():
    system, policy, critic, problem, wpolicy, x0 = _setup()
    loss, info = ctpg.CTPG(rtol=1e-10, atol=1e-12)(problem, wpolicy, x0, H)
    expected = torch.tensor(_quadrature_costs(system, policy, critic, x0[:, :2]))
    assert torch.allclose(info.costs, expected, rtol=1e-7, atol=1e-9)
    assert critic(x0[:, :2]).abs().min() > 1e-3, "the critic term must matter in this check"


def _central_differences(loss_of, params, eps=1e-6):
    flat = torch.cat([p.detach().reshape(-1) for p in params])
    out = torch.zeros_like(flat)
    for i in range(flat.numel()):
        values = []
        for sign in (1, -1):
            shifted = flat.clone()
            shifted[i] += sign * eps
            torch.nn.utils.vector_to_parameters(shifted, params)
            values.append(loss_of())
        out[i] = (values[0] - values[1]) / (2 * eps)
    torch.nn.utils.vector_to_parameters(flat, params)
    return out


@pytest.mark.parametrize("make", [lambda: ctpg.CTPG(rtol=1e-10, atol=1e-12),
                                  lambda: ctpg.Backsolve(rtol=1e-10, atol=1e-12),
                                  lambda: ctpg.BPTT(dt=0.01)], ids=["ctpg", "backsolve", "bptt"])
def test_actor_gradient_with_the_critic_as_terminal_cost_matches_central_differences(make):
    """dLoss/dtheta of the window problem against central differences: of scipy's
    quadrature (CTPG, Backsolve: the continuous-time gradient) or of the BPTT loss itself
    (BPTT: the exact gradient of its Euler discretisation). The critic gets no gradient."""
    system, policy, critic, problem, wpolicy, x0 = _setup(3)
    params = [p for p in policy.parameters()]
    estimator = make()
    loss, _ = estimator(problem, wpolicy, x0, H, params=params)
    loss.backward()
    grad = torch.cat([p.grad.reshape(-1) for p in params])
    if estimator.name == "bptt":
        reference = _central_differences(lambda: float(estimator(problem, wpolicy, x0, H, params=params)[0].detach()),
                                         params)
        tol = 1e-6
    else:
        reference = _central_differences(
            lambda: float(np.mean(_quadrature_costs(system, policy, critic, x0[:, :2]))),
            params)
        tol = 1e-5
    assert torch.allclose(grad, reference, rtol=tol, atol=tol), (grad, reference)
    assert grad.abs().max() > 1e-3
    assert all(p.grad is None for p in critic.parameters())


def test_the_critic_gradient_flows_into_the_adjoint():
    """With the critic doubled, the gradient changes by exactly the critic term's gradient:
    the terminal adjoint carries e^{-rho H} dV/dx."""
    system, policy, critic, problem, wpolicy, x0 = _setup(5)
    params = list(policy.parameters())

    def grad_with(scale):
        problem.critic = lambda x: scale * critic(x)
        for p in params:
            p.grad = None
        ctpg.CTPG(rtol=1e-8, atol=1e-10)(problem, wpolicy, x0, H, params=params)[0].backward()
        return torch.cat([p.grad.reshape(-1) for p in params])

    g0, g1, g2 = grad_with(0.0), grad_with(1.0), grad_with(2.0)
    assert (g1 - g0).abs().max() > 1e-4
    assert torch.allclose(g2 - g1, g1 - g0, rtol=1e-6, atol=1e-9)


def test_td_lambda_targets_by_hand():
    costs = torch.tensor([[1.0, 2.0], [3.0, 4.0]])       # r [K=2, N=2]
    discounts = torch.tensor([0.5, 0.25])
    values = torch.tensor([[10.0, 20.0], [30.0, 40.0], [50.0, 60.0]])
    lam = 0.6
    G = td_lambda_targets(costs, discounts, values, lam, torch.tensor([True, False]))
    # sample 0 bootstraps: G1 = 3 + 0.25 * 50; G0 = 1 + 0.5 ((1 - lam) 30 + lam G1)
    g1 = 3 + 0.25 * 50
    assert torch.allclose(G[:, 0], torch.tensor([1 + 0.5 * (0.4 * 30 + 0.6 * g1), g1]))
    # sample 1 terminated at the end: G1 = 4 (no bootstrap)
    assert torch.allclose(G[:, 1], torch.tensor([2 + 0.5 * (0.4 * 40 + 0.6 * 4), 4.0]))
    # lambda = 1: the discounted Monte-Carlo return bootstrapped at the end
    G = td_lambda_targets(costs, discounts, values, 1.0, torch.tensor([True, True]))
    assert torch.allclose(G[0], torch.tensor([1 + 0.5 * (3 + 0.25 * 50), 2 + 0.5 * (4 + 0.25 * 60)]))


def test_window_targets_read_the_discounted_cost_off_the_path():
    """A path y = [x, s, c] with c(s) = int_0^s e^{-rho r} dr (w = 1): every segment's
    cost discounted to its start is (1 - e^{-rho dt}) / rho, so with V = 1/rho (the
    exact value of w = 1) the targets are 1/rho at every lambda."""
    rho, times = 0.5, [0.0, 0.5, 1.0, 1.5, 2.0]
    t = torch.tensor(times, dtype=torch.float64)
    c = (1 - torch.exp(-rho * t)) / rho
    ys = torch.stack([torch.ones_like(t), t, c], 1)[:, None, :]        # [5, N=1, d + 2], d = 1
    path = Trajectory.through(times, ys)
    for lam in (0.0, 0.5, 1.0):
        states, G = window_targets(path, times, lambda x: torch.full((x.shape[0],), 1 / rho, dtype=x.dtype),
                                   rho, lam, torch.tensor([True]), 1)
        assert states.shape == (4, 1, 1)
        assert torch.allclose(G, torch.full_like(G, 1 / rho))


def test_polyak_and_explained_variance():
    a, b = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
    before = a.weight.detach().clone()
    polyak(a, b, 0.2)
    assert torch.allclose(a.weight, 0.2 * before + 0.8 * b.weight)
    x = torch.tensor([1.0, 2.0, 3.0])
    assert explained_variance(x, x) == 1.0 and abs(explained_variance(torch.full_like(x, 2.0), x)) < 1e-12


def _ac(tmp_path, name="run", **kw):
    settings = dict(env="pendulum", estimator="ctpg", algo="actor-critic", iters=4, batch_size=8,
                    eval_batch=8, eval_every=2, window=0.5, critic_points=5, critic_epochs=2,
                    critic_minibatches=2, horizon=1.0, quiet=True, figure_every=0, seed=1)
    settings.update(kw)
    return agents.train(logdir=tmp_path / name, **settings)


def test_carried_states_continue_and_reset_at_the_horizon(tmp_path):
    """Windows of 0.5 s, episodes of T = 1 s: after window 1 the states are window 1's
    x(H); after window 2 every episode times out and restarts from a fresh draw."""
    config = resolve_config("pendulum", "ctpg", algo="actor-critic", batch_size=4, window=0.5, critic_points=5,
                            explore_starts=0.0)
    system = envs.make("pendulum")
    torch.manual_seed(0)
    policy = agents.make_policy(system)
    generator = torch.Generator().manual_seed(0)
    ac = ActorCritic(config, system, policy, generator, horizon=1.0)
    estimator = ctpg.CTPG(rtol=1e-6, atol=1e-8)
    start = ac.states.clone()
    loss, info = ac.estimate(estimator)
    scalars = ac.after_window(info)
    assert torch.allclose(ac.states, info.path.evaluate(0.5)[:, :2]) and not torch.equal(ac.states, start)
    assert scalars["window/timeouts"] == 0 and torch.allclose(ac.episode_time, torch.full((4,), 0.5, dtype=torch.float64))
    loss, info = ac.estimate(estimator)
    scalars = ac.after_window(info)
    assert scalars["window/timeouts"] == 4 and scalars["window/episodes"] == 4
    assert torch.equal(ac.episode_time, torch.zeros(4, dtype=torch.float64))
    assert not torch.allclose(ac.states, info.path.evaluate(0.5)[:, :2])
    assert bool(((ac.states[:, 0].abs() <= math.pi / 4) & (ac.states[:, 1].abs() <= 0.5)).all())
    for key in ("critic/loss", "critic/value_mean", "critic/explained_variance"):
        assert math.isfinite(scalars[key])


def test_exploring_starts_draw_restarts_from_the_wider_distribution():
    system = envs.make("pendulum")
    torch.manual_seed(0)
    policy = agents.make_policy(system)
    for p, wide in ((0.0, False), (1.0, True)):
        config = resolve_config("pendulum", "ctpg", algo="actor-critic", batch_size=256, explore_starts=p)
        ac = ActorCritic(config, system, policy, torch.Generator().manual_seed(0), horizon=5.0)
        outside = (ac.states[:, 0].abs() > math.pi / 4) | (ac.states[:, 1].abs() > 0.5)
        assert bool(outside.any()) == wide
        assert bool((ac.states[:, 0].abs() <= math.pi).all() and (ac.states[:, 1].abs() <= 2.0).all())


class _Bounded(Pendulum):
    """A pendulum whose valid region is |theta'| < 0.3: most windows leave it."""

    def valid(self, x):
        return x[:, 1].abs() < 0.3


def test_leaving_the_valid_region_terminates_without_bootstrap():
    config = resolve_config("pendulum", "ctpg", algo="actor-critic", batch_size=6, window=0.5, critic_points=4,
                            explore_starts=0.0)
    system = _Bounded()
    torch.manual_seed(0)
    ac = ActorCritic(config, system, agents.make_policy(system, env="pendulum"), torch.Generator().manual_seed(0), 5.0)
    loss, info = ac.estimate(ctpg.CTPG(rtol=1e-6, atol=1e-8))
    end = info.path.evaluate(0.5)[:, :2]
    out = ~system.valid(end)
    assert 0 < int(out.sum()) < 6
    _, G_end = window_targets(info.path, [0.375, 0.5], ac.target, config.discount, 1.0, ~out, 2)
    y0, y1 = info.path.evaluate(0.375), info.path.evaluate(0.5)
    seg = math.exp(config.discount * 0.375) * (y1[:, -1] - y0[:, -1])
    with torch.no_grad():
        boot = math.exp(-config.discount * 0.125) * ac.target(end)
    assert torch.allclose(G_end[0], torch.where(out, seg, seg + boot))
    scalars = ac.after_window(info)
    assert scalars["window/terminated"] == int(out.sum())
    assert torch.equal(ac.episode_time == 0, out)


def test_actor_critic_resume_is_bitwise_identical_to_an_uninterrupted_run(tmp_path):
    whole = _ac(tmp_path, "whole", checkpoint_every=2)
    part = _ac(tmp_path, "part", checkpoint_every=2, progress_fn=lambda step, m: step < 3)
    assert part.status == "stopped" and part.step == 3
    resumed = agents.train(logdir=tmp_path / "part", resume=True)
    assert resumed.step == 4 and resumed.status == "completed"
    for a, b in zip(whole.policy.parameters(), resumed.policy.parameters()):
        assert torch.equal(a, b)
    saved_whole, saved_resumed = load_checkpoint(whole.run_dir), load_checkpoint(resumed.run_dir)
    for key in ("critic", "target", "optimizer"):
        a, b = saved_whole["actor_critic"][key], saved_resumed["actor_critic"][key]
        for name in a if key != "optimizer" else ():
            assert torch.equal(a[name], b[name]), (key, name)
    assert torch.equal(saved_whole["actor_critic"]["states"], saved_resumed["actor_critic"]["states"])
    assert torch.equal(saved_whole["generator"], saved_resumed["generator"])
    assert saved_whole["counters"]["oracle"] == saved_resumed["counters"]["oracle"]


def test_cli_trains_evaluates_and_loads_an_actor_critic_run(tmp_path, capsys):
    run = tmp_path / "cli"
    assert cli.main(["train", "--env", "pendulum", "--algo", "actor-critic", "--estimator", "bptt",
                     "--iters", "2", "--batch-size", "4", "--eval-batch", "4", "--window", "0.3",
                     "--discount", "0.4", "--critic-hidden", "16,16", "--logdir", str(run), "--quiet",
                     "--figure-every", "0"]) == 0
    saved = load_checkpoint(run)
    assert saved["config"]["algo"] == "actor-critic" and tuple(saved["config"]["critic_hidden"]) == (16, 16)
    rows = (run / "scalars.csv").read_text()
    for tag in ("critic/loss", "critic/value_mean", "critic/explained_variance", "window/episode_time_mean"):
        assert f",{tag}," in rows
    assert cli.main(["eval", "--logdir", str(run), "--episodes", "0"]) == 0
    policy = agents.load_policy(run)
    assert policy(torch.zeros(1, 2, dtype=torch.float64)).shape == (1, 1)


def test_actor_critic_settings_are_checked():
    with pytest.raises(ConfigError, match="td_lambda"):
        resolve_config("pendulum", algo="actor-critic", td_lambda=1.5)
    with pytest.raises(ConfigError, match="window"):
        resolve_config("pendulum", algo="actor-critic", window=-1.0)
    assert resolve_config("pendulum", algo="actor-critic").window == 2.0
    assert resolve_config("cartpole", algo="actor-critic").window == 1.0     # the generic default
    assert resolve_config("pendulum").algo == "full-horizon"
    with pytest.raises(ConfigError, match="one process"):
        agents.train("pendulum", algo="actor-critic", nproc=2, iters=1, batch_size=4)


def test_nan_window_is_skipped_and_restarts_the_actors(tmp_path):
    """A window whose forward pass fails is a counted skip; its actors restart."""
    class Flaky(Pendulum):
        calls = 0

        def running_cost(self, x, u):
            out = super().running_cost(x, u)
            return out * float("nan") if Flaky.calls == 1 else out

        def sample_initial_state(self, n, generator=None):
            return super().sample_initial_state(n, generator)

    system = Flaky()
    system.name = "pendulum"

    def mark(step, metrics):
        Flaky.calls = 1 if step == 1 else 0
        return True

    result = _ac(tmp_path, "flaky", system=system, progress_fn=mark, iters=3, eval_every=0)
    assert result.skipped_steps >= 1 and result.status == "completed"
    restarts = [it for it in result.iterations if "window/restarts" in it]
    assert restarts and restarts[0]["window/restarts"] == 8


@pytest.mark.parametrize("make", [lambda: ctpg.CTPG(rtol=1e-8, atol=1e-10), lambda: ctpg.Backsolve(checkpoints=3),
                                  lambda: ctpg.BPTT(dt=0.05), lambda: ctpg.BPTT(dt=0.05, method="semi-implicit-euler")],
                         ids=["ctpg", "backsolve", "bptt", "bptt-semi-implicit"])
def test_keep_path_returns_the_forward_pass_path(make):
    """info.path ends at the forward pass's x(T) and accrued cost (its per-sample cost here,
    J = 0), starts at x0, and is only kept when asked for."""
    system = envs.make("electric")
    torch.manual_seed(0)
    policy = agents.make_policy(system)
    x0 = system.sample_initial_state(3, torch.Generator().manual_seed(0))
    estimator = make()
    _, info = estimator(system, policy, x0, 0.6, keep_path=True)
    d = system.state_dim
    assert torch.allclose(info.path.evaluate(0.6)[:, d], info.costs - system.terminal_cost(info.path.evaluate(0.6)[:, :d]))
    assert torch.allclose(info.path.evaluate(0.0)[:, :d], x0)
    assert not info.path.coefs.requires_grad
    assert estimator(system, policy, x0, 0.6)[1].path is None
