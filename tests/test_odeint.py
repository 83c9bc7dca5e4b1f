"""ctpg.odeint: values and gradients against closed forms, central differences and
(optionally) torchdiffeq, in all three gradient modes; errors that say how to fix them.

References: y' = A y has y(t) = expm(A (t - t0)) y0, differentiable in closed form by
autograd through torch.linalg.matrix_exp; y' = k cos(t) y has y(t) = y0 exp(k (sin t -
sin t0)), non-autonomous, with closed-form derivatives in k, y0 and every t_i.
"""
from __future__ import annotations

import pytest
import torch

import ctpg

F64 = torch.float64
MODES = ("interpolating", "backsolve", "direct")
TIGHT = dict(rtol=1e-10, atol=1e-10)


class Linear(torch.nn.Module):
    """y' = A y with A a parameter."""

    def __init__(self, A):
        super().__init__()
        self.A = torch.nn.Parameter(A.clone())

    def forward(self, t, y):
        return y @ self.A.T


class Cosine(torch.nn.Module):
    """y' = k cos(t) y: non-autonomous, y(t) = y0 exp(k (sin t - sin t0))."""

    def __init__(self, k=0.8):
        super().__init__()
        self.k = torch.nn.Parameter(torch.tensor(k, dtype=F64))

    def forward(self, t, y):
        return self.k * torch.cos(t) * y


def mlp_field(seed=0, hidden=16):
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(2, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 2)).double()
    return lambda_module(lambda t, y: net(y), net)


class lambda_module(torch.nn.Module):
    def __init__(self, fn, net):
        super().__init__()
        self.fn, self.net = fn, net

    def forward(self, t, y):
        return self.fn(t, y)


def weights(shape, seed=1):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def linear_case():
    A = torch.tensor([[-0.4, 1.3], [-1.1, -0.2]], dtype=F64)
    y0 = torch.tensor([[1.0, -0.5], [0.3, 0.8], [-0.7, 0.2]], dtype=F64)     # 3 trajectories
    return A, y0, torch.tensor([0.0, 0.4, 1.1, 1.5, 2.5], dtype=F64)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("reverse", [False, True], ids=["increasing", "decreasing"])
def test_linear_ode_gradients_match_the_closed_form(mode, reverse):
    A, y0, t = linear_case()
    if reverse:
        t = t.flip(0)
    W = weights((len(t),) + y0.shape)
    func, y0 = Linear(A), y0.clone().requires_grad_(True)
    ys = ctpg.odeint(func, y0, t, adjoint=mode, **TIGHT)
    grads = torch.autograd.grad((W * ys).sum(), [func.A, y0])
    A_, y0_ = A.clone().requires_grad_(True), y0.detach().clone().requires_grad_(True)
    exact = torch.stack([y0_ @ torch.linalg.matrix_exp(A_ * (ti - t[0])).T for ti in t])
    expected = torch.autograd.grad((W * exact).sum(), [A_, y0_])
    torch.testing.assert_close(ys.detach(), exact.detach(), rtol=1e-8, atol=1e-9)
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-8)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("reverse", [False, True], ids=["increasing", "decreasing"])
def test_non_autonomous_gradients_in_k_y0_and_every_output_time(mode, reverse):
    t = torch.tensor([0.3, 0.9, 1.7, 2.2, 3.0], dtype=F64)
    t = (t.flip(0) if reverse else t).requires_grad_(True)
    y0 = torch.tensor([0.7, -1.2], dtype=F64, requires_grad=True)
    func, W = Cosine(), weights((5, 2))
    ys = ctpg.odeint(func, y0, t, adjoint=mode, **TIGHT)
    grads = torch.autograd.grad((W * ys).sum(), [func.k, y0, t])
    k_, y0_, t_ = (v.detach().clone().requires_grad_(True) for v in (func.k, y0, t))
    exact = y0_ * torch.exp(k_ * (torch.sin(t_) - torch.sin(t_[0])))[:, None]
    expected = torch.autograd.grad((W * exact).sum(), [k_, y0_, t_])
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-8)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("method, options", [("dopri5", None), ("rk4", dict(step_size=0.01))])
def test_scalar_state_and_output_time_gradients_match_central_differences(mode, method, options):
    """A 0-dim y0 (torchdiffeq accepts a scalar state) keeps its shape; dL/dt_i in every
    mode, against central differences of the solver's own output (eps 1e-6) and the
    closed form y = y0 exp(k (sin t - sin t0))."""
    func, y0 = Cosine(), torch.tensor(0.7, dtype=F64, requires_grad=True)
    t = torch.tensor([0.3, 0.9, 1.7, 2.2], dtype=F64, requires_grad=True)
    W = torch.tensor([0.3, -1.0, 2.0, 0.5], dtype=F64)

    def loss(times):
        return (W * ctpg.odeint(func, y0, times, adjoint=mode, method=method, options=options, **TIGHT)).sum()

    assert ctpg.odeint(func, y0, t, method=method, options=options).shape == (4,)
    (g,) = torch.autograd.grad(loss(t), t)
    eye = torch.eye(4, dtype=F64)
    with torch.no_grad():
        fd = torch.stack([(loss(t + 1e-6 * e) - loss(t - 1e-6 * e)) / 2e-6 for e in eye])
    t_ = t.detach().clone().requires_grad_(True)
    (exact,) = torch.autograd.grad((W * y0.detach() * torch.exp(func.k.detach() * (torch.sin(t_) - torch.sin(t_[0]))))
                                   .sum(), t_)
    torch.testing.assert_close(g, exact, rtol=1e-7, atol=1e-8)
    torch.testing.assert_close(g, fd, rtol=1e-6, atol=1e-7)


def test_float32_default_tolerances_do_not_warn_and_unreachable_ones_warn_once():
    """rtol 1e-7 in float32 solves in as many steps as float64 (no warning); rtol 1e-10,
    atol 0 is rounding noise: one warning per call, forward and backward together."""
    import warnings
    func = mlp_field()
    func.float()
    y0 = torch.ones(2, requires_grad=True)
    t = torch.linspace(0, 1, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ctpg.odeint(func, y0, t).sum().backward()
    with pytest.warns(UserWarning, match="below what torch.float32 carries") as record:
        try:
            ctpg.odeint(func, y0, t, rtol=1e-10, atol=0.0).sum().backward()
        except ctpg.SolverError:
            pass
    assert len([w for w in record if "carries" in str(w.message)]) == 1


def central_difference(loss, tensors, directions, eps=1e-6):
    with torch.no_grad():
        for x, v in zip(tensors, directions):
            x.add_(eps * v)
        up = loss()
        for x, v in zip(tensors, directions):
            x.sub_(2 * eps * v)
        down = loss()
        for x, v in zip(tensors, directions):
            x.add_(eps * v)
    return (up - down) / (2 * eps)


@pytest.mark.parametrize("mode", MODES)
def test_mlp_vector_field_gradients_match_central_differences(mode):
    func = mlp_field()
    y0 = torch.tensor([[0.5, -0.3], [1.0, 0.4]], dtype=F64, requires_grad=True)
    t = torch.linspace(0.0, 2.0, 6, dtype=F64)
    W = weights((6, 2, 2), seed=3)
    tensors = [y0, *func.parameters()]

    def loss():
        return (W * torch.tanh(ctpg.odeint(func, y0, t, adjoint=mode, **TIGHT))).sum()

    grads = torch.autograd.grad(loss(), tensors)
    flat = torch.cat([g.reshape(-1) for g in grads])
    gen = torch.Generator().manual_seed(5)
    for direction in (flat / flat.norm(), torch.randn(flat.shape, generator=gen, dtype=F64)):
        parts = torch.split(direction, [x.numel() for x in tensors])
        parts = [p.view_as(x) for p, x in zip(parts, tensors)]
        fd = central_difference(loss, tensors, parts)
        assert abs(float(flat @ direction) - float(fd)) <= 1e-6 * float(flat.norm() * direction.norm())


def test_tuple_state_matches_the_stacked_state():
    A, y0, t = linear_case()
    func = Linear(A)
    stacked = ctpg.odeint(func, y0, t, **TIGHT)

    def split(t, state):
        pos, vel = state
        dy = func(t, torch.stack([pos, vel], -1))
        return dy[:, 0], dy[:, 1]

    parts = tuple(y0[:, i].clone().requires_grad_(True) for i in range(2))
    pos, vel = ctpg.odeint(split, parts, t, adjoint_params=tuple(func.parameters()), **TIGHT)
    torch.testing.assert_close(torch.stack([pos, vel], -1), stacked, rtol=1e-8, atol=1e-9)
    g = torch.autograd.grad((pos ** 2).sum() + vel.sum(), parts)
    assert g[0].shape == (3,) and g[1].shape == (3,)


@pytest.mark.parametrize("mode", MODES)
def test_info_counts_both_passes(mode):
    func = mlp_field()
    y0 = torch.randn(4, 2, dtype=F64, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    ys, info = ctpg.odeint(func, y0, torch.linspace(0, 1, 5, dtype=F64), adjoint=mode, rtol=1e-6, atol=1e-8,
                           return_info=True)
    assert info.adjoint == mode and info.backward is None
    assert info.forward.oracle["f_evals"] > 0 and info.forward.oracle["vjp_evals"] == 0
    assert info.forward.steps_accepted > 0 and info.stored_floats > 0
    ys.sum().backward()
    assert info.backward.oracle["vjp_evals"] > 0 and info.evals > info.forward.oracle["total_evals"]
    if mode == "backsolve":
        assert info.stored_floats == ys.numel() and info.reconstruction_error < 1e-4
    if mode == "interpolating":       # the dense output: 5 coefficients (dopri5) per step and component
        assert info.stored_floats == 5 * 8 * info.forward.steps_accepted + info.forward.steps_accepted + 1


def test_interpolating_stores_far_fewer_floats_than_autograd():
    func = mlp_field(hidden=64)
    y0 = torch.randn(16, 2, dtype=F64, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    t = torch.linspace(0, 3, 4, dtype=F64)
    stored = {}
    for mode in ("interpolating", "direct"):
        ys, info = ctpg.odeint(func, y0, t, adjoint=mode, rtol=1e-6, atol=1e-8, return_info=True)
        stored[mode] = info.stored_floats
    assert stored["direct"] > 10 * stored["interpolating"]


def test_backsolve_fails_on_contracting_dynamics_where_interpolating_does_not():
    """y' = -A y with one fast-decaying mode: solved backwards from y(3) the reconstructed
    path blows up by e^(30 x 3) and the gradient in A with it (paper, Section 3.3)."""
    A = torch.tensor([[30.0, 0.0], [1.0, 1.0]], dtype=F64)
    y0, t = torch.tensor([1.0, 1.0], dtype=F64), torch.tensor([0.0, 3.0], dtype=F64)
    A_ = A.clone().requires_grad_(True)
    (exact,) = torch.autograd.grad((torch.linalg.matrix_exp(-A_ * 3.0) @ y0)[1], A_)
    errors, infos = {}, {}
    for mode in ("interpolating", "backsolve"):
        func = Linear(-A)
        ys, infos[mode] = ctpg.odeint(func, y0, t, adjoint=mode, rtol=1e-6, atol=1e-9, return_info=True)
        (g,) = torch.autograd.grad(ys[-1, 1], func.A)
        errors[mode] = float((-g - exact).norm() / exact.norm())
    assert errors["interpolating"] < 1e-5
    assert errors["backsolve"] > 1.0 and infos["backsolve"].reconstruction_error > 1.0


def test_stiff_method_gradients_match_the_closed_form():
    A = torch.tensor([[-1000.0, 1.0], [0.0, -0.5]], dtype=F64)
    func, y0 = Linear(A), torch.tensor([1.0, 2.0], dtype=F64, requires_grad=True)
    t = torch.tensor([0.0, 0.5, 2.0], dtype=F64)
    ys, info = ctpg.odeint(func, y0, t, method="rodas5p", rtol=1e-8, atol=1e-10, return_info=True)
    grads = torch.autograd.grad(ys.sum(), [func.A, y0])
    A_ = A.clone().requires_grad_(True)
    exact = torch.stack([torch.linalg.matrix_exp(A_ * ti) @ y0 for ti in t])
    expected = torch.autograd.grad(exact.sum(), [A_, y0])
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-9)
    assert info.backward.oracle["jac_evals"] > 0
    _, explicit = ctpg.odeint(func, y0, t, method="dopri5", rtol=1e-8, atol=1e-10, return_info=True)
    assert info.forward.steps_accepted < explicit.forward.steps_accepted / 3      # stability-limited


def test_fixed_step_methods_land_on_the_output_times():
    A, y0, t = linear_case()
    exact = torch.stack([y0 @ torch.linalg.matrix_exp(A * ti).T for ti in t])
    coarse = ctpg.odeint(Linear(A), y0, t, method="rk4", options=dict(step_size=0.1))
    fine = ctpg.odeint(Linear(A), y0, t, method="rk4", options=dict(step_size=0.05))
    err_coarse, err_fine = ((y - exact).abs().max().item() for y in (coarse, fine))
    assert err_fine < 1e-5 and 10 < err_coarse / err_fine < 22          # fourth order: 16x
    plain = ctpg.odeint(Linear(A), y0, t, method="euler")               # one step per output interval
    by_hand = [y0]
    for a, b in zip(t, t[1:]):
        by_hand.append(by_hand[-1] + (b - a) * by_hand[-1] @ A.T)
    torch.testing.assert_close(plain.detach(), torch.stack(by_hand), rtol=1e-12, atol=1e-12)


def test_shapes_single_time_float32_and_no_grad():
    y0 = torch.ones(2, 3, 4)
    ys = ctpg.odeint(lambda t, y: -y, y0, torch.tensor([0.0, 1.0]), rtol=1e-5, atol=1e-7)
    assert ys.shape == (2, 2, 3, 4) and ys.dtype == torch.float32
    torch.testing.assert_close(ys[-1], torch.full_like(y0, torch.e ** -1), rtol=1e-4, atol=1e-5)
    assert ctpg.odeint(lambda t, y: -y, y0, torch.tensor([0.5])).shape == (1, 2, 3, 4)
    with torch.no_grad():
        assert not ctpg.odeint(mlp_field(), torch.ones(2, dtype=F64), torch.tensor([0.0, 1.0])).requires_grad


@pytest.mark.parametrize("kwargs, match", [
    (dict(adjoint="bptt"), "adjoint must be one of"),
    (dict(method="heun3"), "bosh3"),
    (dict(method="nope"), "unknown method"),
    (dict(options=dict(safety=0.8)), "not supported"),
    (dict(options=dict(norm="seminorm")), "seminorm"),
    (dict(adjoint="backsolve", method="rodas5p"), "explicit adjoint_method"),
])
def test_bad_arguments_say_how_to_fix_them(kwargs, match):
    func = mlp_field()
    with pytest.raises(ValueError, match=match):
        ctpg.odeint(func, torch.ones(2, dtype=F64), torch.tensor([0.0, 1.0]), **kwargs)


def test_bad_inputs_say_how_to_fix_them():
    y0, t, func = torch.ones(2, dtype=F64), torch.tensor([0.0, 1.0]), mlp_field()
    with pytest.raises(ValueError, match="strictly increasing or strictly decreasing"):
        ctpg.odeint(func, y0, torch.tensor([0.0, 1.0, 0.5]))
    with pytest.raises(ValueError, match="1-D"):
        ctpg.odeint(func, y0, torch.zeros(2, 2))
    with pytest.raises(ValueError, match="shaped like y"):
        ctpg.odeint(lambda t, y: y[:1], y0, t)
    with pytest.raises(TypeError, match="floating point"):
        ctpg.odeint(func, torch.ones(2, dtype=torch.int64), t)
    W = torch.ones(2, 2, dtype=F64, requires_grad=True)
    with pytest.raises(ValueError, match="adjoint_params"):
        ctpg.odeint(lambda t, y: W @ y, y0.clone().requires_grad_(True), t)
    with pytest.raises(ValueError, match="y0 contains NaN or Inf"):
        ctpg.odeint(func, torch.tensor([1.0, float("nan")], dtype=F64), t)


def test_seminorm_and_adjoint_settings_are_used():
    func = mlp_field(hidden=32)
    y0 = torch.randn(8, 2, dtype=F64, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    t = torch.linspace(0, 2, 3, dtype=F64)
    steps, grads = {}, {}
    for name, kw in (("full", {}), ("seminorm", dict(adjoint_options=dict(norm="seminorm"))),
                     ("loose", dict(adjoint_rtol=1e-3, adjoint_atol=1e-3))):
        ys, info = ctpg.odeint(func, y0, t, rtol=1e-8, atol=1e-8, return_info=True, **kw)
        grads[name] = torch.autograd.grad(ys.pow(2).sum(), list(func.parameters()))[0]
        steps[name] = info.backward.steps_accepted
    assert steps["seminorm"] <= steps["full"] and steps["loose"] < steps["full"]
    torch.testing.assert_close(grads["seminorm"], grads["full"], rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("mode, theirs", [("direct", "odeint"), ("interpolating", "odeint_adjoint"),
                                          ("backsolve", "odeint_adjoint")])
def test_agrees_with_torchdiffeq(mode, theirs):
    torchdiffeq = pytest.importorskip("torchdiffeq")
    func = mlp_field(hidden=32)
    y0 = torch.randn(5, 2, dtype=F64, generator=torch.Generator().manual_seed(2)).requires_grad_(True)
    t = torch.tensor([0.0, 0.3, 1.0, 2.0], dtype=F64)
    W = weights((4, 5, 2))
    results = []
    for solve in (lambda: ctpg.odeint(func, y0, t, adjoint=mode, **TIGHT),
                  lambda: getattr(torchdiffeq, theirs)(func, y0, t, method="dopri5", **TIGHT)):
        ys = solve()
        results.append((ys.detach(), torch.autograd.grad((W * ys).sum(), [y0, *func.parameters()])))
    (ours, g_ours), (ref, g_ref) = results
    torch.testing.assert_close(ours, ref, rtol=1e-8, atol=1e-9)
    for a, b in zip(g_ours, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-8)


def test_saved_float_counts_agree_and_leave_user_hooks_and_torch_func_alone():
    """The graph walk counts what stays reachable from the outputs, the hooks also what dead
    branches saved (the last step's FSAL evaluation): at most that. Direct mode installs no
    hooks, so a user's
    saved-tensor hooks still see every tensor and a func that uses torch.func (here a
    Rosenbrock step's Jacobian) keeps its graph: the stiff direct gradient then matches
    the closed form to the solver's accuracy."""
    func = mlp_field(hidden=8)
    y0 = torch.ones(3, 2, dtype=F64, requires_grad=True)
    with ctpg.ode.saved_floats() as saved:
        ys, info = ctpg.odeint(func, y0, torch.tensor([0.0, 1.0]), adjoint="direct", return_info=True)
    assert 0.8 * saved.floats < info.stored_floats <= saved.floats
    seen = []
    with torch.autograd.graph.saved_tensors_hooks(lambda x: seen.append(1) or x, lambda x: x):
        ctpg.odeint(func, y0, torch.tensor([0.0, 1.0]), adjoint="direct").sum().backward()
    assert seen and y0.grad is not None
    A = torch.tensor([[-50.0, 1.0], [0.0, -0.5]], dtype=F64)
    lin, x0, t = Linear(A), torch.tensor([1.0, 2.0], dtype=F64), torch.tensor([0.0, 0.5, 2.0], dtype=F64)
    ys = ctpg.odeint(lin, x0, t, method="rodas5p", rtol=1e-8, atol=1e-10, adjoint="direct")
    (g,) = torch.autograd.grad(ys.sum(), lin.A)
    A_ = A.clone().requires_grad_(True)
    (exact,) = torch.autograd.grad(torch.stack([torch.linalg.matrix_exp(A_ * ti) @ x0 for ti in t]).sum(), A_)
    torch.testing.assert_close(g, exact, rtol=1e-6, atol=1e-8)


def test_double_backward_is_refused_by_the_adjoint_modes_and_works_directly():
    func = Cosine()
    y0 = torch.tensor([0.5], dtype=F64, requires_grad=True)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    ys = ctpg.odeint(func, y0, t, **TIGHT)
    with pytest.raises(RuntimeError, match="first-order"):
        torch.autograd.grad(ys[-1].sum(), func.k, create_graph=True)
    ys = ctpg.odeint(func, y0, t, adjoint="direct", **TIGHT)
    (g,) = torch.autograd.grad(ys[-1].sum(), func.k, create_graph=True)
    (h,) = torch.autograd.grad(g, func.k)       # y1 = y0 exp(k sin 1): d2/dk2 = y1 sin(1)^2
    assert float(h) == pytest.approx(float(ys[-1].detach()) * torch.sin(torch.tensor(1.0)).item() ** 2, rel=1e-6)


def test_the_readme_example_runs():
    """The README's ctpg.odeint example, executed as written."""
    import pathlib
    text = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
    start = text.index("```python\nimport torch\nfrom ctpg import odeint")
    code = text[start + len("```python\n"):text.index("```", start + 10)]
    exec(compile(code, "README.md", "exec"), {})


def test_graph_walk_and_hooks_count_the_same_floats_on_a_plain_graph():
    """An MLP on 100 points: the saved activations (tanh output [100, 50] and its input
    to exp, the Linear input [100, 3]), counted once each by both methods."""
    x = torch.randn(100, 3, dtype=F64, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    layer = torch.nn.Linear(3, 50).double()
    with ctpg.ode.saved_floats() as saved:
        h = torch.tanh(layer(x * 2.0))
        y = (h * h).sum() + h.exp().sum()
    assert ctpg.ode.graph_saved_floats(y) == saved.floats
    assert saved.floats >= 100 * 50 + 100 * 3          # at least tanh's output and the layer's input
