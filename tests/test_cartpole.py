"""MuJoCo cart-pole: dynamics and finite-difference Jacobians against an independent
analytic model, oracle counting, model-file errors and rendering.

The analytic model is the two-link Lagrangian of a cart (mass M) with a pole (mass m,
centre of mass l from the pivot, pivot inertia I), hinge angle th from upright:

    [ M + m          m l cos th ] [ p''  ]   [ F - b_p p' + m l sin th th'^2 ]
    [ m l cos th     I          ] [ th'' ] = [ m g l sin th - b_th th'        ]

with F = 10 clip(u, -1, 1). Its Jacobians come from torch autograd.
"""
from __future__ import annotations

import math

import mujoco
import numpy as np
import pytest
import torch

from envs.cartpole import Cartpole, load_model

CART_MASS, POLE_MASS, COM, RADIUS, LENGTH = 1.0, 0.1, 0.5, 0.045, 1.0
SLIDER_DAMPING, HINGE_DAMPING, GEAR, GRAVITY = 5e-4, 2e-6, 10.0, 9.81


def capsule_transverse_inertia(mass, radius, length):
    """Inertia of a uniform capsule about a transverse axis through its centre: a
    cylinder plus two hemispherical caps (the decomposition MuJoCo's compiler uses)."""
    v_cyl, v_sph = math.pi * radius ** 2 * length, 4 / 3 * math.pi * radius ** 3
    m_cyl, m_sph = mass * v_cyl / (v_cyl + v_sph), mass * v_sph / (v_cyl + v_sph)
    return (m_cyl * (length ** 2 / 12 + radius ** 2 / 4)
            + m_sph * (2 * radius ** 2 / 5 + length ** 2 / 4 + 3 * length * radius / 8))


# 0.0094246 + 0.1 * 0.5^2 = 0.0344246 about the pivot (parallel-axis theorem)
PIVOT_INERTIA = capsule_transverse_inertia(POLE_MASS, RADIUS, LENGTH) + POLE_MASS * COM ** 2


def analytic_f(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """dx/dt [N,4] of the analytic cart-pole, differentiable in x and u."""
    th, dp, dth = x[:, 1], x[:, 2], x[:, 3]
    ml = POLE_MASS * COM
    force = GEAR * u[:, 0].clamp(-1, 1)
    a, b, d = torch.full_like(th, CART_MASS + POLE_MASS), ml * torch.cos(th), torch.full_like(th, PIVOT_INERTIA)
    r1 = force - SLIDER_DAMPING * dp + ml * torch.sin(th) * dth ** 2
    r2 = ml * GRAVITY * torch.sin(th) - HINGE_DAMPING * dth
    det = a * d - b * b
    return torch.stack([dp, dth, (d * r1 - b * r2) / det, (a * r2 - b * r1) / det], 1)


def analytic_jacobians(x, u):
    jx = torch.func.vmap(torch.func.jacrev(lambda xi, ui: analytic_f(xi[None], ui[None])[0], (0, 1)))
    return jx(x, u)


def random_states(n: int, seed: int = 0):
    """States well inside the slider limits (|p| < 4) and actions with |u| < 0.9."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.tensor([4.0, 2 * math.pi, 5.0, 10.0], dtype=torch.float64)
    x = (2 * torch.rand(n, 4, generator=g, dtype=torch.float64) - 1) * scale
    u = (2 * torch.rand(n, 1, generator=g, dtype=torch.float64) - 1) * 0.9
    return x, u


@pytest.fixture(scope="module")
def system():
    return Cartpole()


def test_model_constants_match_the_specification(system):
    m = system.model
    np.testing.assert_allclose(m.body_mass[1:], [CART_MASS, POLE_MASS])
    np.testing.assert_allclose(m.jnt_range[0], [-4.8, 4.8])
    np.testing.assert_allclose(m.dof_damping, [SLIDER_DAMPING, HINGE_DAMPING])
    np.testing.assert_allclose(m.actuator_gear[0, 0], GEAR)
    np.testing.assert_allclose(m.body_inertia[2, 0] + POLE_MASS * COM ** 2, PIVOT_INERTIA, rtol=1e-12)
    assert m.opt.timestep == 0.01


def test_f_matches_analytic_model(system):
    assert abs(PIVOT_INERTIA - 0.0344246) < 1e-7
    x, u = random_states(200)
    torch.testing.assert_close(system.f(x, u), analytic_f(x, u), rtol=0, atol=1e-10)


@pytest.mark.parametrize("scheme, tol", [("central", 1e-6), ("forward", 1e-4)])
def test_fd_jacobians_match_analytic(scheme, tol):
    system = Cartpole(fd_scheme=scheme)
    x, u = random_states(50, seed=1)
    jx, ju = system.jacobians(x, u)
    ax, au = analytic_jacobians(x, u)
    scale = torch.cat([ax.flatten(1), au.flatten(1)], 1).abs().amax(1)
    err = torch.cat([(jx - ax).flatten(1), (ju - au).flatten(1)], 1).abs().amax(1)
    assert (err / scale).max() < tol


def test_vjp_is_a_transpose_j_and_autograd_works(system):
    x, u = random_states(5, seed=2)
    a = torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    jx, ju = system.jacobians(x, u)
    gx, gu = system.vjp(x, u, a)
    torch.testing.assert_close(gx, torch.einsum("nd,nde->ne", a, jx))
    torch.testing.assert_close(gu, torch.einsum("nd,nde->ne", a, ju))
    xg, ug = x.clone().requires_grad_(), u.clone().requires_grad_()
    (system.f_autograd(xg, ug) * a).sum().backward()
    torch.testing.assert_close(xg.grad, gx)


@pytest.mark.parametrize("scheme, per_sample", [("central", 10), ("forward", 6)])
def test_oracle_and_simulator_calls_are_counted(scheme, per_sample):
    system = Cartpole(fd_scheme=scheme)
    x, u = random_states(3)
    system.f(x, u)
    assert (system.counter.f_calls, system.counter.f_evals, system.counter.sim_calls) == (1, 3, 3)
    system.jacobians(x, u)
    assert (system.counter.jac_calls, system.counter.sim_calls) == (1, 3 + 3 * per_sample)
    system.vjp(x, u, torch.ones_like(x))
    assert system.counter.vjp_evals == 3 and system.counter.jac_calls == 1
    assert system.counter.sim_calls == 3 + 6 * per_sample


def test_batch_and_loop_backends_agree_bitwise():
    x, u = random_states(20, seed=3)
    batched, looped = Cartpole(), Cartpole()
    looped.simulator.use_batch = False
    assert torch.equal(batched.f(x, u), looped.f(x, u))


def test_control_is_clamped_by_mujoco(system):
    """Documented kink: MuJoCo clamps ctrl to [-1, 1], so f is flat in u outside."""
    x, _ = random_states(4, seed=4)
    ones = torch.ones(4, 1, dtype=torch.float64)
    torch.testing.assert_close(system.f(x, 3 * ones), system.f(x, ones), rtol=0, atol=0)
    _, ju = system.jacobians(x, 2 * ones)
    assert ju.abs().max() == 0


def test_bad_rows_give_nan_without_touching_others(system):
    x, u = random_states(3, seed=5)
    x[1, 0] = float("nan")
    u[2, 0] = 1e12
    out = system.f(x, u)
    assert torch.isnan(out[1:, 2:]).all() and torch.isfinite(out[0]).all()
    torch.testing.assert_close(out[0], system.f(x[:1], u[:1])[0])


def test_initial_states_and_cost(system):
    x = system.sample_initial_state(1000, torch.Generator().manual_seed(0))
    assert x[:, 0].abs().max() <= 0.1 and (x[:, 1] - math.pi).abs().max() <= 0.1
    assert (x[:, 2:] == 0).all()
    again = system.sample_initial_state(1000, torch.Generator().manual_seed(0))
    assert torch.equal(x, again)
    probe = torch.tensor([[2.0, 0.0, 1.0, 1.0], [0.0, math.pi, 0.0, 0.0]], dtype=torch.float64)
    cost = system.running_cost(probe, torch.zeros(2, 1, dtype=torch.float64))
    torch.testing.assert_close(cost, torch.tensor([-1 + 0.04, 1.0], dtype=torch.float64))
    assert system.horizon == 3.0 and system.terminal_cost(probe).abs().max() == 0


def test_missing_model_file_says_how_to_fix(tmp_path):
    missing = tmp_path / "nope.xml"
    with pytest.raises(FileNotFoundError, match="model_path=") as info:
        Cartpole(model_path=missing)
    assert str(missing) in str(info.value)


def test_corrupt_model_file_says_how_to_fix(tmp_path):
    corrupt = tmp_path / "cartpole.xml"
    corrupt.write_text("<mujoco><worldbody><body>")
    with pytest.raises(ValueError, match="reinstall") as info:
        load_model(corrupt)
    assert str(corrupt) in str(info.value)
    other = tmp_path / "other.xml"
    other.write_text("<mujoco><worldbody><body><joint/><geom size='1'/></body></worldbody></mujoco>")
    with pytest.raises(ValueError, match="not the cart-pole"):
        load_model(other)


def test_render_returns_a_non_black_image(system):
    image = system.render(torch.tensor([0.5, 0.3, 0.0, 0.0]), width=160, height=120)
    assert image.shape == (120, 160, 3) and image.dtype == np.uint8
    assert image.max() > 50 and image.std() > 5
    upright = system.render(torch.tensor([0.5, 0.0, 0.0, 0.0]), width=160, height=120)
    assert not np.array_equal(image, upright)  # the pose is drawn, not a fixed picture


def test_fd_eps_and_scheme_are_validated():
    with pytest.raises(ValueError, match="central"):
        Cartpole(fd_scheme="backward")


def test_mujoco_gl_is_set_for_headless_rendering():
    import os
    assert os.environ.get("MUJOCO_GL") in ("egl", "osmesa")
    assert mujoco.__version__
