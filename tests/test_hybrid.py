"""CTPG through impacts: hybrid ControlSystems (guards, resets) and the saltation jump of
the adjoint (ctpg.estimators.hybrid).

Reference: the same closed loop solved by scipy's DOP853 at rtol 1e-13 with its own
event location (solve_ivp events, chained across resets), independent of ctpg's
solvers and Watch; gradients of its cost by a fourth-order central difference
(step 1e-3 in float64: truncation ~1e-12, roundoff ~1e-10). The ball has air drag, so
its flight is not a polynomial a solver reproduces exactly, and a linear feedback
policy, so the running cost and the vector field jump at the impact.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

from ctpg.estimators import BPTT, CTPG, Backsolve
from ctpg.estimators.hybrid import GrazingEventError, HybridEvent, check_transversal, solve_hybrid
from ctpg.estimators.closed_loop import closed_loop_rhs
from ctpg.system import ControlSystem
from hybrid_reference import scipy_closed_loop

F64 = torch.float64
DRAG = 0.3


class Ball(ControlSystem):
    """A ball of height h and velocity v, dh/dt = v, dv/dt = -gravity - DRAG v + u, a
    floor at `floor` (guard h - floor, falling) and restitution v+ = -e v-. gravity, e
    and floor are learnable tensors (system.parameters())."""

    state_dim, action_dim, horizon = 2, 1, 1.5
    guard_directions = (-1,)

    def __init__(self, gravity=9.8, e=0.8, floor=0.0):
        super().__init__(F64)
        self.gravity = torch.tensor(gravity, dtype=F64, requires_grad=True)
        self.e = torch.tensor(e, dtype=F64, requires_grad=True)
        self.floor = torch.tensor(floor, dtype=F64, requires_grad=True)

    def f(self, x, u):
        return torch.stack([x[:, 1], -self.gravity - DRAG * x[:, 1] + u[:, 0]], 1)

    def running_cost(self, x, u):
        return (x[:, 0] - 1.0) ** 2 + 0.1 * x[:, 1] ** 2 + 0.5 * u[:, 0] ** 2

    def terminal_cost(self, x):
        return x[:, 0] ** 2

    def guards(self, x):
        return (x[:, 0] - self.floor)[:, None]

    def reset(self, x, index):
        return torch.stack([x[:, 0], -self.e * x[:, 1]], 1)


def make_policy(k=(0.4, -0.3), b=0.2):
    policy = torch.nn.Linear(2, 1).to(F64)
    with torch.no_grad():
        policy.weight.copy_(torch.tensor([k], dtype=F64))
        policy.bias.fill_(b)
    return policy


def reference_cost(x0, gravity, e, floor, k, b, T):
    """Mean cost over the batch by DOP853 at rtol 1e-13, events by solve_ivp, chained."""
    total = 0.0
    for h0, v0 in x0:
        def rhs(t, y):
            u = k[0] * y[0] + k[1] * y[1] + b
            return [y[1], -gravity - DRAG * y[1] + u, (y[0] - 1.0) ** 2 + 0.1 * y[1] ** 2 + 0.5 * u * u]

        def hit(t, y):
            return y[0] - floor
        hit.terminal, hit.direction = True, -1
        t, y = 0.0, np.array([h0, v0, 0.0])
        while True:
            sol = solve_ivp(rhs, (t, T), y, method="DOP853", rtol=1e-13, atol=1e-14, events=hit)
            y = sol.y[:, -1].copy()
            if sol.status != 1:
                break
            t = float(sol.t_events[0][0])
            y = sol.y_events[0][0].copy()
            y[1] = -e * y[1]
        total += y[2] + y[0] ** 2
    return total / len(x0)


def fd(fun, value, step=1e-3):
    """Fourth-order central difference of fun at value."""
    return (-fun(value + 2 * step) + 8 * fun(value + step) - 8 * fun(value - step) + fun(value - 2 * step)) / (
        12 * step)


TIGHT = dict(rtol=1e-11, atol=1e-13, event_tol=1e-12)


def ctpg_gradients(system, policy, x0, T, **kw):
    x0 = x0.clone().requires_grad_(True)
    loss, info = CTPG(**{**TIGHT, **kw})(system, policy, x0, T)
    loss.backward()
    return loss.item(), {"gravity": system.gravity.grad.item(), "e": system.e.grad.item(),
                         "floor": system.floor.grad.item(), "k0": policy.weight.grad[0, 0].item(),
                         "k1": policy.weight.grad[0, 1].item(), "b": policy.bias.grad.item(),
                         "h0": x0.grad[:, 0].sum().item(), "v0": x0.grad[:, 1].sum().item()}


def reference_gradients(x0, gravity, e, floor, k, b, T, names):
    base = dict(gravity=gravity, e=e, floor=floor, k0=k[0], k1=k[1], b=b)

    def cost(**changes):
        p = {**base, **changes}
        shift = np.array([[changes.get("h0", 0.0), changes.get("v0", 0.0)]])
        return reference_cost(x0 + shift, p["gravity"], p["e"], p["floor"], (p["k0"], p["k1"]), p["b"], T)

    out = {}
    for name in names:
        # x0 (h0, v0): every sample moved together, whose derivative of the batch mean is
        # the sum over samples of x0.grad
        out[name] = fd(lambda v: cost(**{name: v}), base.get(name, 0.0))
    return out


def assert_gradients_match(x0, gravity=9.8, e=0.8, floor=0.0, k=(0.4, -0.3), b=0.2, T=1.5, tol=1e-6):
    system, policy = Ball(gravity, e, floor), make_policy(k, b)
    loss, grads = ctpg_gradients(system, policy, torch.tensor(x0, dtype=F64), T)
    assert loss == pytest.approx(reference_cost(np.array(x0), gravity, e, floor, k, b, T), rel=1e-9)
    ref = reference_gradients(np.array(x0), gravity, e, floor, k, b, T, list(grads))
    scale = max(abs(v) for v in ref.values())
    errors = {name: abs(grads[name] - ref[name]) / scale for name in grads}
    assert max(errors.values()) <= tol, (errors, grads, ref)
    return errors


def count_events(x0, T=1.5, **ball):
    system, policy = Ball(**ball), make_policy()
    y0 = torch.cat([torch.tensor(x0, dtype=F64), torch.zeros(len(x0), 1, dtype=F64)], 1)
    with torch.no_grad():
        return solve_hybrid(closed_loop_rhs(system, policy), system, policy, y0, T, event_tol=1e-12,
                            max_events=100, grazing=1e-8, max_steps=10_000, dense=True, method="dopri5",
                            rtol=1e-11, atol=1e-13, autonomous=True)


def test_a_bouncing_ball_gradient_in_gravity_restitution_policy_and_x0_matches_central_differences():
    sol = count_events([[2.0, 0.0]], T=2.0)
    assert len(sol.events) == 2              # two impacts within the horizon
    assert_gradients_match([[2.0, 0.0]], T=2.0)


def test_a_guard_that_depends_on_a_parameter_floor_height():
    sol = count_events([[2.0, 0.5]], floor=0.4)
    assert len(sol.events) >= 1
    errors = assert_gradients_match([[2.0, 0.5]], floor=0.4)
    assert "floor" in errors


def test_two_events_inside_one_step_of_the_forward_mesh():
    """Two samples that hit 1e-3 s apart: the shared step is split at the first, and
    the restart's single step ends at the second (both lay inside one step)."""
    x0 = [[1.5, 0.0], [1.5, -0.01]]
    sol = count_events(x0, T=0.8)
    assert len(sol.events) == 2 and sol.events[1].time - sol.events[0].time < 2e-3
    assert len(sol.pieces[1].times) == 2       # one step between the two events
    assert_gradients_match(x0, T=0.8)


def test_a_batch_whose_samples_hit_at_different_times():
    x0 = [[2.0, 0.0], [1.0, 1.0], [0.5, -2.0], [3.0, 0.5]]
    sol = count_events(x0, T=2.0)
    times = [e.time for e in sol.events]
    assert len(times) == 14 and times == sorted(times)
    assert all(len(e.rows) == 1 for e in sol.events)           # one sample per event: all at different times
    assert {r for e in sol.events for r in e.rows.tolist()} == {0, 1, 2, 3}
    assert_gradients_match(x0, T=2.0)


def test_no_event_is_the_smooth_estimate():
    """A ball that never reaches the floor: the hybrid path equals the smooth one."""
    errors = assert_gradients_match([[5.0, 2.0]], T=0.5)
    assert max(errors.values()) <= 1e-6


def test_bptt_and_backsolve_refuse_guards_with_the_reason():
    system, policy, x0 = Ball(), make_policy(), torch.tensor([[2.0, 0.0]], dtype=F64)
    with pytest.raises(ValueError, match="saltation term"):
        BPTT(dt=0.01)(system, policy, x0, 1.0)
    with pytest.raises(ValueError, match="inverse of each reset"):
        Backsolve()(system, policy, x0, 1.0)
    with pytest.raises(ValueError, match="one host-side mesh"):
        CTPG(per_sample=True)(system, policy, x0, 1.0, params=list(policy.parameters()))


def test_a_grazing_event_names_its_time_and_sample():
    system, policy = Ball(gravity=0.0), make_policy((0.0, 0.0), 0.0)
    x = torch.tensor([[0.0, 0.0]], dtype=F64)         # at the floor with zero velocity: g_x f = 0
    event = HybridEvent(0.25, torch.tensor([3]), torch.tensor([0]), x, x)
    with pytest.raises(GrazingEventError, match=r"t=0\.25 in sample\(s\) \[3\]"):
        check_transversal(system, policy, event, 1e-8)


def test_zeno_bounces_fail_loudly():
    system, policy = Ball(e=0.5), make_policy((0.0, 0.0), 0.0)
    with pytest.raises(GrazingEventError, match="sample"):
        CTPG(max_events=30)(system, policy, torch.tensor([[1.0, 0.0]], dtype=F64), 5.0)


def test_a_watch_direction_ignores_crossings_the_other_way():
    """The falling ball crosses h = 1 downwards: watched for a rise (+1) it is no event,
    for a fall (-1) or either (0) it is."""
    from ctpg.solvers import solve
    from ctpg.solvers.events import Watch

    def falling(t, y):
        return torch.stack([y[:, 1], torch.full_like(y[:, 1], -9.8)], 1)

    y0 = torch.tensor([[2.0, 0.0]], dtype=F64)
    for direction, fires in ((1, False), (-1, True), (0, True)):
        watch = Watch(lambda t, y: y[:, :1] - 1.0, tol=1e-10, directions=(direction,))
        sol = solve(falling, y0, 0.0, 1.0, method="dopri5", rtol=1e-9, atol=1e-11, event=watch)
        assert (sol.event is not None) == fires
    with pytest.raises(ValueError, match="directions must be"):
        Watch(lambda t, y: y, tol=1e-10, directions=(2,))


def system_reference_cost(system, policy, x0, T):
    """Mean cost of any hybrid system under a torch policy by DOP853 at rtol 1e-13, with
    solve_ivp's event location on each guard element in its direction, chained."""
    d = system.state_dim
    torch_rhs, events = scipy_closed_loop(system, policy)
    total = 0.0
    for row in x0:
        t, y = 0.0, np.concatenate([row, [0.0]])
        while True:
            sol = solve_ivp(torch_rhs, (t, T), y, method="DOP853", rtol=1e-13, atol=1e-14,
                            events=events)
            y = sol.y[:, -1].copy()
            if sol.status != 1:
                break
            i = next(i for i, times in enumerate(sol.t_events) if len(times))
            t, y = float(sol.t_events[i][0]), sol.y_events[i][0].copy()
            with torch.no_grad():
                y[:d] = system.reset(torch.tensor(y[None, :d], dtype=F64), torch.tensor([i]))[0].numpy()
        with torch.no_grad():
            total += y[d] + float(system.terminal_cost(torch.tensor(y[None, :d], dtype=F64))[0])
    return total / len(x0)


def test_the_juggler_gradient_through_paddle_impacts_matches_central_differences():
    """The juggler's guard h - p couples ball and paddle and its reset reads the paddle's
    velocity (a saltation matrix with off-diagonal terms); an MLP paddle policy. The
    gradient along a random direction of the policy's parameters and along x0."""
    import envs

    system = envs.make("juggler", horizon=1.2)
    torch.manual_seed(0)
    policy = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)).to(F64)
    x0 = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.7, 0.5, 0.05, 0.0]], dtype=F64)
    x0_ = x0.clone().requires_grad_(True)
    loss, _ = CTPG(**TIGHT)(system, policy, x0_, 1.2)
    loss.backward()
    count = solve_hybrid(
        closed_loop_rhs(system, policy), system, policy, torch.cat([x0, torch.zeros(2, 1, dtype=F64)], 1), 1.2,
        event_tol=1e-12, max_events=100, grazing=1e-8, max_steps=10_000, dense=False, method="dopri5",
        rtol=1e-9, atol=1e-11, autonomous=True)
    assert {r for e in count.events for r in e.rows.tolist()} == {0, 1} and len(count.events) >= 3
    assert loss.item() == pytest.approx(system_reference_cost(system, policy, x0.numpy(), 1.2), rel=1e-9)
    flat = torch.nn.utils.parameters_to_vector(policy.parameters()).detach().clone()
    grad = torch.nn.utils.parameters_to_vector([p.grad for p in policy.parameters()])
    gen = torch.Generator().manual_seed(1)
    direction = torch.randn(flat.numel() + x0.numel(), generator=gen, dtype=F64)
    estimate = float(direction[:flat.numel()] @ grad + direction[flat.numel():] @ x0_.grad.flatten())

    def cost(s):
        torch.nn.utils.vector_to_parameters(flat + s * direction[:flat.numel()], policy.parameters())
        return system_reference_cost(system, policy, (x0 + s * direction[flat.numel():].view_as(x0)).numpy(), 1.2)

    reference = fd(cost, 0.0, step=1e-3)
    torch.nn.utils.vector_to_parameters(flat, policy.parameters())
    print("juggler events", len(count.events), "relative error", abs(estimate - reference) / abs(reference))
    assert abs(estimate - reference) <= 1e-6 * abs(reference), (estimate, reference)


def test_the_gym_juggler_bounces_the_ball_inside_a_control_interval():
    """ctpg/Juggler-v0 with the paddle at rest: the ball dropped from 0.5 m hits at
    t = sqrt(2 0.5 / 9.8) = 0.319 s (inside the 7th 0.05 s interval) and leaves the
    paddle at e times the impact speed; it never goes below the paddle."""
    import math

    import gymnasium
    import envs  # noqa: F401  (registers the ids)

    env = gymnasium.make("ctpg/Juggler-v0").unwrapped
    env.reset(options={"state": [0.5, 0.0, 0.0, 0.0]})
    heights = []
    for _ in range(8):
        obs, *_ = env.step([0.0])
        heights.append(obs[0])
    assert min(heights) >= -1e-9
    t = 0.4
    t_hit = math.sqrt(2 * 0.5 / 9.8)
    v_out = 0.8 * 9.8 * t_hit
    assert obs[1] == pytest.approx(v_out - 9.8 * (t - t_hit), rel=1e-6)
    assert obs[0] == pytest.approx(v_out * (t - t_hit) - 4.9 * (t - t_hit) ** 2, rel=1e-6)


@pytest.mark.parametrize("restitution", [0.5, 0.8, 0.95])
def test_the_soft_juggler_contact_bounces_with_the_calibrated_restitution(restitution):
    """envs.juggler.SoftJuggler (the penalty contact BPTT runs on): a ball dropped from
    0.5 m on a paddle at rest leaves it, solved tightly by scipy, at e times the impact
    speed up to gravity's share during the short contact (~pi / sqrt(k) s), which vanishes
    as k grows; above the paddle the contact force is exactly 0."""
    import envs

    v_in = np.sqrt(2 * 9.8 * 0.5)
    ratios = []
    for k in (1e4, 1e6):
        system = envs.make("juggler_soft", contact_stiffness=k, restitution=restitution)
        zero = torch.zeros(1, 1, dtype=F64)

        def rhs(t, y):
            return system.f(torch.tensor(y[None]), zero)[0].numpy()

        def rising_through_paddle(t, y):   # falling through it at t = 0.319 s is not this direction
            return y[0] - y[2]
        rising_through_paddle.terminal, rising_through_paddle.direction = True, 1
        sol = solve_ivp(rhs, (0, 0.6), [0.5, 0, 0, 0], rtol=1e-11, atol=1e-12, max_step=0.05 / np.sqrt(k),
                        events=rising_through_paddle)
        ratios.append(sol.y_events[0][0][1] / v_in)
    # 5e-3: the unclamped damping exp(-zeta pi / w_d) would miss by 8e-3 (e = 0.8) to 4e-2 (e = 0.5)
    assert abs(ratios[1] - restitution) < 5e-3 and abs(ratios[1] - restitution) < abs(ratios[0] - restitution)
    above = torch.tensor([[0.3, -1.0, 0.1, 0.5]], dtype=F64)
    assert float(system.contact_force(above)) == 0.0
    with pytest.raises(ValueError, match="restitution in \\(0, 1\\)"):
        envs.make("juggler_soft", restitution=1.0)
