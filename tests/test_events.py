"""Events: ctpg.solvers.events (location on the dense output, per sample) and
ctpg.odeint_event (torchdiffeq's interface, gradients by the implicit function theorem).

References: a ball under gravity has closed-form impact times; torchdiffeq's bouncing
ball example (chained odeint_event solves with a restitution reset) is differentiated
against central differences in float64 with air drag added, so the solution is not a
polynomial the solver reproduces exactly.
"""
from __future__ import annotations

import math

import pytest
import torch

import ctpg
from ctpg.solvers import solve
from ctpg.solvers.events import Watch, solve_until_event

F64 = torch.float64
MODES = ("interpolating", "backsolve", "direct")
TIGHT = dict(rtol=1e-11, atol=1e-12)


def falling(t, y):
    return torch.stack([y[:, 1], torch.full_like(y[:, 1], -9.8)], 1)


def impact_time(h, v, g=9.8, r=0.0):
    return (v + math.sqrt(v * v + 2 * g * (h - r))) / g


def test_a_batch_stops_at_its_earliest_event_and_every_sample_root_is_located():
    y0 = torch.tensor([[10.0, 0.0], [5.0, 1.0], [3.0, -2.0]], dtype=F64)
    watch = Watch(lambda t, y: y[:, :1], tol=1e-10)
    sol = solve(falling, y0, 0.0, 5.0, method="dopri5", rtol=1e-8, atol=1e-10, event=watch, dense=True)
    exact = [impact_time(h, v) for h, v in y0.tolist()]
    assert sol.event.rows.tolist() == [2] and sol.event.index.tolist() == [0]
    assert 0 <= exact[2] - sol.event.time <= 1e-10               # the near side, within tol
    assert sol.times[-1] == sol.event.time and sol.trajectory.t1 == sol.event.time
    assert float(sol.event.y[2, 0]) >= 0 and abs(float(sol.event.y[2, 0])) < 1e-9
    torch.testing.assert_close(sol.y1[:2, 0], torch.tensor([10 - 4.9 * exact[2] ** 2, 5 + exact[2]
                                                            - 4.9 * exact[2] ** 2], dtype=F64))


@pytest.mark.parametrize("method, kw", [("dopri5", dict(rtol=1e-8, atol=1e-10)), ("rk4", dict(dt=0.1)),
                                        ("dopri8", dict(rtol=1e-8, atol=1e-10))])
def test_solve_until_event_runs_past_the_first_span_forwards_and_backwards(method, kw):
    for direction in (1.0, -1.0):
        watch = Watch(lambda t, y: y[:, :1], tol=1e-11)
        y0 = torch.tensor([[10.0, 0.0]], dtype=F64)
        sol = solve_until_event(falling, y0, 0.0, 0.3 * direction, watch, method=method, **kw)
        assert sol.event.time == pytest.approx(direction * impact_time(10.0, 0.0), abs=1e-10)


def test_a_float32_guard_that_reaches_exactly_zero_closes_the_bracket_there():
    """y' = 0.2 in float32, guard y - 3.5111: below float32's resolution the guard is
    exactly 0 over a stretch of time; the root is taken there, not at the step start
    (which a bracket refusing zeros would return after max_iter)."""
    watch = Watch(lambda t, y: y - 3.5111111, tol=1e-9)
    sol = solve_until_event(lambda t, y: torch.full_like(y, 0.2), torch.tensor([[3.2]]), 1.0, 1.0, watch,
                            method="dopri5", rtol=1e-7, atol=1e-9)
    assert sol.event.time == pytest.approx(1 + 0.3111111 / 0.2, abs=1e-5)


def test_two_guard_elements_the_first_to_cross_wins_and_a_restart_at_zero_does_not_stop():
    """Elements: height and (v + 5): v reaches -5 at t = 5/9.8 before the ground (1.43).
    Restarted at the ground with the velocity reversed, the height element is 0 at t0:
    it is armed once it leaves zero and the next impact is a full flight later."""
    watch = Watch(lambda t, y: torch.stack([y[:, 0], y[:, 1] + 5.0], 1), tol=1e-12)
    sol = solve_until_event(falling, torch.tensor([[10.0, 0.0]], dtype=F64), 0.0, 1.0, watch, method="dopri5",
                            rtol=1e-9, atol=1e-12)
    assert sol.event.index.tolist() == [1] and sol.event.time == pytest.approx(5 / 9.8, abs=1e-11)
    watch = Watch(lambda t, y: y[:, :1], tol=1e-12)
    sol = solve_until_event(falling, torch.tensor([[0.0, 3.0]], dtype=F64), 0.0, 1.0, watch, method="dopri5",
                            rtol=1e-9, atol=1e-12)
    assert sol.event.time == pytest.approx(6 / 9.8, abs=1e-11)


def test_odeint_event_matches_torchdiffeq_and_the_closed_form():
    torchdiffeq = pytest.importorskip("torchdiffeq")
    func = lambda t, y: torch.stack([y[1], -9.8 * torch.ones_like(y[1])])          # noqa: E731
    event_fn = lambda t, y: y[0] - 0.2                                               # noqa: E731
    y0, t0 = torch.tensor([10.0, 0.5], dtype=F64), torch.tensor(0.0, dtype=F64)
    ours = ctpg.odeint_event(func, y0, t0, event_fn=event_fn, adjoint_params=(), **TIGHT)
    theirs = torchdiffeq.odeint_event(func, y0, t0, event_fn=event_fn, rtol=1e-11, atol=1e-12)
    assert ours[1].shape == theirs[1].shape == (2, 2)
    assert float(ours[0]) == pytest.approx(impact_time(10.0, 0.5, r=0.2), abs=1e-11)
    torch.testing.assert_close(ours[1], theirs[1], rtol=1e-8, atol=1e-8)
    assert float(ours[0]) == pytest.approx(float(theirs[0]), abs=1e-8)


class BouncingBall(torch.nn.Module):
    """torchdiffeq's bouncing-ball example with air drag: state (pos, vel), dpos = vel,
    dvel = -gravity - drag vel |vel|; event: pos = radius (a parameter of the event
    function itself, not of the state); reset: vel -> -(1 - absorption) vel."""

    def __init__(self, gravity=9.8, drag=0.02, radius=0.2, absorption=0.2):
        super().__init__()
        self.gravity = torch.nn.Parameter(torch.tensor(gravity, dtype=F64))
        self.drag = torch.nn.Parameter(torch.tensor(drag, dtype=F64))
        self.radius = torch.nn.Parameter(torch.tensor(radius, dtype=F64))
        self.absorption = torch.nn.Parameter(torch.tensor(absorption, dtype=F64))

    def forward(self, t, state):
        pos, vel = state
        return vel, -self.gravity - self.drag * vel * vel.abs()

    def event_fn(self, t, state):
        return state[0] - self.radius

    def bounce(self, state):
        pos, vel = state
        return pos, -(1 - self.absorption) * vel

    def event_times(self, pos0, vel0, t0, bounces=3, **kw):
        times, state = [], (pos0, vel0)
        for _ in range(bounces):
            t0, solution = ctpg.odeint_event(self, state, t0, event_fn=self.event_fn, **kw)
            times.append(t0)
            state = self.bounce(tuple(s[-1] for s in solution))
        return torch.stack(times), state


@pytest.mark.parametrize("mode", MODES)
def test_bouncing_ball_gradients_match_central_differences(mode):
    """Three chained bounces. d(sum of weighted event times + final velocity) by the
    implicit function theorem against central differences (eps 1e-5, float64) in the
    initial height, velocity and time, gravity and drag (func), absorption (the reset)
    and radius (event_fn): <= 1e-6 relative."""
    ball = BouncingBall()
    pos0 = torch.tensor(10.0, dtype=F64, requires_grad=True)
    vel0 = torch.tensor(0.5, dtype=F64, requires_grad=True)
    t0 = torch.tensor(0.1, dtype=F64, requires_grad=True)
    W = torch.tensor([1.0, -0.7, 0.4], dtype=F64)
    inputs = [pos0, vel0, t0, *ball.parameters()]

    def loss():
        times, (pos, vel) = ball.event_times(pos0, vel0, t0, adjoint=mode, **TIGHT)
        return (W * times).sum() + 0.3 * vel

    grads = torch.autograd.grad(loss(), inputs)
    for x, g in zip(inputs, grads):
        with torch.no_grad():
            x += 1e-5
            up = loss()
            x -= 2e-5
            down = loss()
            x += 1e-5
        fd = (up - down) / 2e-5
        assert abs(float(g) - float(fd)) <= 1e-6 * max(abs(float(fd)), 1.0), (mode, float(g), float(fd))


def test_event_function_parameters_get_gradients_in_every_mode_alike():
    ball = BouncingBall(drag=0.0)
    pos0 = torch.tensor(10.0, dtype=F64)
    results = []
    for mode in MODES:
        times, _ = ball.event_times(pos0, torch.tensor(0.0, dtype=F64), torch.tensor(0.0, dtype=F64), bounces=2,
                                    adjoint=mode, **TIGHT)
        results.append(torch.autograd.grad(times[-1], [ball.radius, ball.absorption, ball.gravity]))
    for other in results[1:]:
        torch.testing.assert_close(torch.stack(other), torch.stack(results[0]), rtol=1e-8, atol=1e-10)
    first = impact_time(10.0, 0.0, r=0.2)             # closed form: dt1/dr = -1 / v_impact
    assert float(results[0][0]) < 0 and abs(first - float(times[0].detach())) < 1e-10


def test_reverse_time_scalar_state_and_grazing_error():
    """y' = 1 from y(0) = 0 backwards until y = -0.5: t* = -0.5 - y0, dt*/dy0 = -1 (a 0-dim
    state); an event function whose rate vanishes at its root, (t - 1)^3, is refused by
    name."""
    y0 = torch.tensor(0.0, dtype=F64, requires_grad=True)
    t_event, sol = ctpg.odeint_event(lambda t, y: torch.ones_like(y), y0, torch.tensor(0.0, dtype=F64),
                                     event_fn=lambda t, y: y + 0.5, reverse_time=True, adjoint_params=(), **TIGHT)
    assert float(t_event.detach()) == pytest.approx(-0.5, abs=1e-11) and sol.shape == (2,)
    (g,) = torch.autograd.grad(t_event, y0)
    assert float(g) == pytest.approx(-1.0, abs=1e-9)
    with pytest.raises(ValueError, match="t=1 is grazing"):
        ctpg.odeint_event(lambda t, y: -y, torch.tensor([1.0], dtype=F64), torch.tensor(0.0, dtype=F64),
                          event_fn=lambda t, y: (t - 1.0) ** 3 + 0 * y.sum(), adjoint_params=(), **TIGHT)


def test_odeint_event_takes_torchdiffeq_odeint_as_its_interface():
    """odeint_interface=torchdiffeq.odeint: its event solve, our implicit-function-theorem
    step, so the event function's own parameter gets a gradient there too."""
    torchdiffeq = pytest.importorskip("torchdiffeq")
    radius = torch.tensor(0.2, dtype=F64, requires_grad=True)
    func = lambda t, y: torch.stack([y[1], -9.8 * torch.ones_like(y[1])])          # noqa: E731
    y0 = torch.tensor([10.0, 0.5], dtype=F64, requires_grad=True)
    grads = []
    for interface in (torchdiffeq.odeint, ctpg.odeint):
        extra = {} if interface is torchdiffeq.odeint else dict(adjoint_params=())
        t_event, _ = ctpg.odeint_event(func, y0, torch.tensor(0.0, dtype=F64), event_fn=lambda t, y: y[0] - radius,
                                       odeint_interface=interface, rtol=1e-11, atol=1e-12, **extra)
        grads.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(t_event, [y0, radius])]))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-7, atol=1e-9)
    v = math.sqrt(0.25 + 2 * 9.8 * 9.8)                # impact speed: dt*/dradius = -1 / v
    assert float(grads[1][2]) == pytest.approx(-1 / v, rel=1e-8)


@pytest.mark.parametrize("method", ["euler", "rk4", "explicit_adams", "implicit_adams"])
def test_fixed_step_events_take_torchdiffeqs_options(method):
    """options=dict(step_size=..., interp="cubic") as torchdiffeq's event tests pass them:
    y' = 0.2 from 3.2 at t = 1 reaches 3.5 at t = 2.5 (exact for every method)."""
    t_event, ys = ctpg.odeint(lambda t, y: 0.2 + 0 * y, torch.tensor(3.2, dtype=F64),
                              torch.tensor([1.0, 2.0], dtype=F64), event_fn=lambda t, y: y - 3.5, method=method,
                              options=dict(step_size=0.01, interp="cubic"))
    assert float(t_event) == pytest.approx(2.5, abs=1e-9) and float(ys[-1]) == pytest.approx(3.5, abs=1e-9)


def test_odeint_event_bad_arguments_say_how_to_fix_them():
    func = lambda t, y: -y                                                          # noqa: E731
    with pytest.raises(ValueError, match="step_size"):
        ctpg.odeint_event(func, torch.ones(1), torch.tensor(0.0), event_fn=lambda t, y: y - 0.5, method="rk4",
                          adjoint_params=())
    with pytest.raises(ValueError, match="2 times"):
        ctpg.odeint(func, torch.ones(1), torch.linspace(0, 1, 3), event_fn=lambda t, y: y - 0.5)
    with pytest.raises(ctpg.MaxStepsExceeded, match="no event"):
        ctpg.odeint_event(func, torch.ones(1, dtype=F64), torch.tensor(0.0), event_fn=lambda t, y: y + 1.0,
                          options=dict(max_num_steps=200), adjoint_params=())
