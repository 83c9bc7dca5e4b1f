"""Device-side adaptive step control (solve(sync_every=k), CTPG(sync_every=k)): the
same accuracy as the host-controlled loop, the host reads the control back at most
once per k attempts, and what it cannot do is refused."""
import contextlib

import pytest
import torch

from ctpg import CTPG
from ctpg.errors import MaxStepsExceeded
from ctpg.solvers import solve
from test_estimators import estimate, lqr_problem, rel

A = torch.tensor([[0.0, 1.0], [-4.0, -0.3]], dtype=torch.float64)      # a damped oscillator
Y0 = torch.tensor([[1.0, 0.0], [0.5, -2.0], [3.0, 1.0]], dtype=torch.float64)


def linear(t, y):
    return y @ A.T


def exact(t):
    return Y0 @ torch.linalg.matrix_exp(A * t).T


@contextlib.contextmanager
def counting_reads():
    """Count tensor -> Python reads (bool, float, int, item, tolist): on a GPU each is a
    synchronisation of the host with the device."""
    count = {"reads": 0}
    names = ("__bool__", "__float__", "__int__", "item", "tolist")
    saved = {name: getattr(torch.Tensor, name) for name in names}

    def counted(original):
        def read(self, *args):
            count["reads"] += 1
            return original(self, *args)
        return read

    for name in names:
        setattr(torch.Tensor, name, counted(saved[name]))
    try:
        yield count
    finally:
        for name, original in saved.items():
            setattr(torch.Tensor, name, original)


@pytest.mark.parametrize("method", ["dopri5", "tsit5", "bosh3"])
@pytest.mark.parametrize("sync_every", [1, 8])
def test_device_side_control_is_as_accurate_as_the_host_loop(method, sync_every):
    kwargs = dict(method=method, rtol=1e-7, atol=1e-9, dense=True, tstops=[2.5])
    host = solve(linear, Y0, 0.0, 6.0, **kwargs)
    device = solve(linear, Y0, 0.0, 6.0, sync_every=sync_every, **kwargs)
    # the same controller; a tensor step size only reorders roundings in the error estimate
    assert abs(device.steps_accepted - host.steps_accepted) <= 0.05 * host.steps_accepted + 2
    assert device.times[0] == 0.0 and device.times[-1] == 6.0 and 2.5 in device.times
    assert all(a < b for a, b in zip(device.times, device.times[1:]))
    assert len(device.times) == device.steps_accepted + 1
    error = lambda sol: float((sol.y1 - exact(6.0)).abs().max())           # noqa: E731
    assert error(device) < 3 * error(host) + 1e-12
    for t in (0.3, 2.5, 4.44):
        assert float((device.trajectory.evaluate(t) - exact(t)).abs().max()) < 1e-6
    # attempts past t1 are computed and discarded: few, the last block is sized to the steps left
    per_attempt = 6 if method != "bosh3" else 3
    assert device.func_calls - host.func_calls <= 2 * 2 * per_attempt + 0.05 * host.func_calls


def test_the_host_reads_the_control_once_per_sync_every_attempts():
    kwargs = dict(method="dopri5", rtol=1e-8, atol=1e-10)
    with counting_reads() as host_reads:
        host = solve(linear, Y0, 0.0, 20.0, **kwargs)
    with counting_reads() as device_reads:
        device = solve(linear, Y0, 0.0, 20.0, sync_every=16, **kwargs)
    attempts = device.steps_accepted + device.steps_rejected
    assert host_reads["reads"] >= host.steps_accepted + host.steps_rejected      # one per step at least
    # one per block of 16 attempts, a few shorter blocks sized to the steps left before t1,
    # the first step's rule and the final read-back of the step log
    assert device_reads["reads"] <= attempts / 16 + 16
    assert float((device.y1 - host.y1).abs().max()) < 1e-7


def test_ctpg_with_device_side_control_matches_the_exact_lqr_gradient():
    system, K, bias, x0, exact_grads = lqr_problem()
    grads, _, info = estimate(CTPG(rtol=1e-9, atol=1e-9, sync_every=8), system, K, bias, x0)
    for got, want in zip(grads, exact_grads):
        assert rel(got, want) < 1e-6
    assert info.backward.steps_accepted > 0


def test_what_device_side_control_cannot_do_is_refused():
    for bad in (dict(sync_every=0), dict(sync_every=2.5), dict(sync_every=4, dt=0.1),
                dict(sync_every=4, per_sample=True)):
        with pytest.raises(ValueError, match="sync_every"):
            solve(linear, Y0, 0.0, 1.0, method="dopri5", rtol=1e-6, atol=1e-8, **bad)
    with pytest.raises(ValueError, match="explicit Runge-Kutta"):
        solve(linear, Y0, 0.0, 1.0, method="rodas5p", rtol=1e-6, atol=1e-8, sync_every=4)
    with pytest.raises(MaxStepsExceeded):
        solve(linear, Y0, 0.0, 100.0, method="dopri5", rtol=1e-10, atol=1e-12, sync_every=4, max_steps=20)
