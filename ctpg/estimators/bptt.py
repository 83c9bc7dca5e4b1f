"""Back-propagation through time: autograd through a fixed-step rollout."""
from __future__ import annotations

import torch

from ctpg.estimators.adjoint import closed_loop_rhs
from ctpg.estimators.base import Estimator
from ctpg.solvers import solve


class BPTT(Estimator):
    """Exact gradient of a fixed-step discretisation (explicit Euler by default).

    The closed loop and its accumulated cost are stepped with `method` at step `dt`
    (the horizon is split into ceil(T/dt) equal steps) while autograd records every
    operation; the backward pass is reverse-mode autograd through that graph, with one
    counted `vjp` per f call (the dynamics enter as `system.f_autograd`).

    Stores every intermediate the graph needs: O(T/dt x N x (d + k + policy
    activations)) floats, reported in `info.stored_floats`. Its error against the
    continuous-time gradient falls only at the method's order in dt (first for Euler),
    so accurate gradients need tiny steps; unstable when dt is too large for the
    closed loop's fastest time scale.
    """

    name = "bptt"

    def __init__(self, dt: float = 0.01, method: str = "euler", max_steps: int = 10_000_000):
        if not dt > 0:
            raise ValueError(f"BPTT needs a positive step, e.g. BPTT(dt=0.01); got dt={dt}")
        self.dt, self.method, self.max_steps = dt, method, max_steps

    def __repr__(self):
        return f"BPTT(dt={self.dt}, method={self.method!r})"

    def _forward(self, problem):
        system, d = problem.system, problem.system.state_dim
        stored = _SavedTensorCounter()
        with torch.enable_grad() if problem.keep_for_backward else torch.no_grad(), \
                torch.autograd.graph.saved_tensors_hooks(stored.pack, stored.unpack):
            x0 = problem.x0.detach().requires_grad_(problem.keep_for_backward)
            y0 = torch.cat([x0, x0.new_zeros(x0.shape[0], 1)], 1)
            rhs = closed_loop_rhs(system, problem.policy, f=system.f_autograd)
            sol = solve(rhs, y0, 0.0, problem.T, method=self.method, dt=self.dt, max_steps=self.max_steps)
            costs = sol.y1[:, d] + system.terminal_cost(sol.y1[:, :d])
        problem.saved.update(x0=x0, costs=costs, steps=sol.steps_accepted)
        return costs, sol.steps_accepted, 0, stored.floats

    def _backward(self, problem, grad_loss):
        x0, costs, params = problem.saved["x0"], problem.saved["costs"], problem.params
        steps = problem.saved["steps"]
        with torch.enable_grad():   # a custom backward runs with grad mode off
            loss = costs.mean() * grad_loss
            grads = torch.autograd.grad(loss, [x0, *params], allow_unused=True)
        problem.saved.clear()
        grad_params = [torch.zeros_like(p) if g is None else g for g, p in zip(grads[1:], params)]
        grad_x0 = torch.zeros_like(x0) if grads[0] is None else grads[0]
        return (grad_x0, grad_params), (steps, 0)   # the backward sweep retraces every step


class _SavedTensorCounter:
    """Counts the distinct floats autograd saves for the backward pass."""

    def __init__(self):
        self.floats, self._seen = 0, set()

    def pack(self, tensor):
        key = (tensor.data_ptr(), tensor.numel(), tensor.dtype)
        if key not in self._seen:
            self._seen.add(key)
            self.floats += tensor.numel()
        return tensor

    @staticmethod
    def unpack(tensor):
        return tensor
