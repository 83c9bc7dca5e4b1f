"""One checker over every registered environment (`envs.names()`).

For each system, in float64: shapes and dtypes of the contract methods, Jacobians
against central differences (and against autograd when f is written in torch), vjp
against a^T J, differentiable costs, reproducible initial states, ValueErrors on wrong
shapes, and the oracle counters.

Test states: a system may advertise a box where f is smooth through an optional method
`safe_state_box() -> (low [d], high [d])`; the checker then samples uniformly in it.
Otherwise it uses `sample_initial_state` plus N(0, 0.05^2) noise. Test actions are
uniform in 0.9 x the action bounds, or N(0, 1) when unbounded, so clamps and other
kinks are not straddled by the finite differences.
"""
from __future__ import annotations

import pytest
import torch

import ctpg
import envs

N = 4
STATE_NOISE = 0.05


def states_and_actions(system, n: int = N, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    kw = dict(dtype=system.dtype, device=system.device)
    box = getattr(system, "safe_state_box", None)
    if box is not None:
        low, high = box()
        x = low + (high - low) * torch.rand(n, system.state_dim, generator=gen, **kw)
    else:
        x = system.sample_initial_state(n, gen) + STATE_NOISE * torch.randn(n, system.state_dim,
                                                                             generator=gen, **kw)
    if system.action_low is None:
        u = torch.randn(n, system.action_dim, generator=gen, **kw)
    else:
        mid = 0.5 * (system.action_high + system.action_low)
        half = 0.5 * (system.action_high - system.action_low)
        u = mid + 0.9 * half * (2 * torch.rand(n, system.action_dim, generator=gen, **kw) - 1)
    return x, u


def is_torch_written(system, x, u) -> bool:
    """True when f carries autograd history, so autograd Jacobians are meaningful."""
    with torch.enable_grad():
        out = system.f(x.clone().requires_grad_(True), u.clone().requires_grad_(True))
    return out.requires_grad


def assert_close(actual, expected, rtol, what):
    scale = 1.0 + expected.abs().max().item()
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * scale, msg=lambda m: f"{what}: {m}")


@pytest.fixture(params=envs.names(), ids=envs.names())
def name(request):
    return request.param


@pytest.fixture
def system(name):
    return envs.make(name)


def test_attributes(system):
    assert system.state_dim > 0 and system.action_dim > 0 and system.horizon > 0
    assert system.dtype == torch.float64
    for bound in (system.action_low, system.action_high):
        assert (bound is None) == (system.action_low is None), "set both action bounds or neither"
        if bound is not None:
            assert isinstance(bound, torch.Tensor) and bound.shape == (system.action_dim,)
            assert bound.dtype == system.dtype and bound.device == system.device
    if system.action_low is not None:
        assert bool((system.action_low < system.action_high).all())


def test_shapes_and_dtypes(system):
    x, u = states_and_actions(system)
    d = system.state_dim
    assert system.f(x, u).shape == (N, d) and system.f(x, u).dtype == torch.float64
    assert system.running_cost(x, u).shape == (N,)
    assert system.terminal_cost(x).shape == (N,)
    x0 = system.sample_initial_state(N, torch.Generator().manual_seed(1))
    assert x0.shape == (N, d) and x0.dtype == torch.float64
    assert bool(torch.isfinite(system.f(x, u)).all())


def test_float32(name):
    sys32 = envs.make(name, dtype=torch.float32)
    x0 = sys32.sample_initial_state(N, torch.Generator().manual_seed(0))
    assert x0.dtype == torch.float32
    u = torch.zeros(N, sys32.action_dim, dtype=torch.float32)
    assert sys32.f(x0, u).dtype == torch.float32
    assert sys32.running_cost(x0, u).dtype == torch.float32
    if sys32.action_low is not None:
        assert sys32.action_low.dtype == torch.float32


def test_jacobians_match_finite_differences(system):
    x, u = states_and_actions(system)
    jx, ju = system.jacobians(x, u)
    assert jx.shape == (N, system.state_dim, system.state_dim)
    assert ju.shape == (N, system.state_dim, system.action_dim)
    fx, fu, _ = ctpg.finite_difference_jacobians(system.f, x, u, eps=1e-6)
    assert_close(jx, fx, 1e-5, "df/dx vs central differences")
    assert_close(ju, fu, 1e-5, "df/du vs central differences")


def test_jacobians_match_autograd(system):
    x, u = states_and_actions(system)
    if not is_torch_written(system, x, u):
        pytest.skip("f is not written in torch (black-box simulator); checked by finite differences")
    ax, au = ctpg.autograd_jacobians(system.f, x, u)
    jx, ju = system.jacobians(x, u)
    assert_close(jx, ax, 1e-10, "df/dx vs autograd")
    assert_close(ju, au, 1e-10, "df/du vs autograd")


def test_vjp_is_a_transpose_jacobian(system):
    x, u = states_and_actions(system)
    a = torch.randn(N, system.state_dim, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    gx, gu = system.vjp(x, u, a)
    jx, ju = system.jacobians(x, u)
    assert gx.shape == x.shape and gu.shape == u.shape
    assert_close(gx, torch.einsum("ni,nij->nj", a, jx), 1e-8, "vjp wrt x")
    assert_close(gu, torch.einsum("ni,nij->nj", a, ju), 1e-8, "vjp wrt u")


def cost_sum(system, x, u):
    return system.running_cost(x, u).sum() + system.terminal_cost(x).sum()


def test_costs_are_differentiable(system):
    x, u = states_and_actions(system)
    xg, ug = x.clone().requires_grad_(True), u.clone().requires_grad_(True)
    gx, gu = torch.autograd.grad(cost_sum(system, xg, ug), (xg, ug), allow_unused=True)
    gx = torch.zeros_like(x) if gx is None else gx
    gu = torch.zeros_like(u) if gu is None else gu
    assert bool(torch.isfinite(gx).all() and torch.isfinite(gu).all())
    # the autograd gradient is the true one: compare with central differences
    per_sample = lambda xs, us: (system.running_cost(xs, us) + system.terminal_cost(xs))[:, None]
    fx, fu, _ = ctpg.finite_difference_jacobians(per_sample, x, u, eps=1e-6)
    assert_close(gx, fx[:, 0], 1e-5, "cost gradient wrt x vs central differences")
    assert_close(gu, fu[:, 0], 1e-5, "cost gradient wrt u vs central differences")


def test_initial_state_reproducible(system):
    first = system.sample_initial_state(N, torch.Generator().manual_seed(7))
    torch.rand(10)  # the global RNG must not matter
    second = system.sample_initial_state(N, torch.Generator().manual_seed(7))
    torch.testing.assert_close(first, second, rtol=0, atol=0,
                               msg="sample_initial_state must draw from its generator only")


def test_wrong_shapes_raise(system):
    x, u = states_and_actions(system)
    a = torch.ones_like(x)
    for bad_x in (x[:, :-1], x[0]):
        with pytest.raises(ValueError):
            system.f(bad_x, u)
        with pytest.raises(ValueError):
            system.jacobians(bad_x, u)
    with pytest.raises(ValueError):
        system.vjp(x[:, :-1], u, a[:, :-1])
    with pytest.raises(ValueError):
        system.f(x, u[:, :-1] if system.action_dim > 1 else u[:-1])


def test_oracle_counter(system):
    x, u = states_and_actions(system)
    system.counter.reset()
    system.f(x, u)
    system.vjp(x, u, torch.ones_like(x))
    system.jacobians(x, u)
    system.jacobians(x[:2], u[:2])
    c = system.counter
    assert (c.f_calls, c.f_evals) == (1, N), "nested f calls inside vjp/jacobians must not count"
    assert (c.vjp_calls, c.vjp_evals) == (1, N)
    assert (c.jac_calls, c.jac_evals) == (2, N + 2)
    assert c.total_evals == 3 * N + 2
