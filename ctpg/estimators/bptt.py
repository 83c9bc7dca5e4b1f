"""Back-propagation through time: autograd through a fixed-step rollout."""
from __future__ import annotations

import math

import torch

from ctpg.estimators.base import Estimator
from ctpg.estimators.closed_loop import closed_loop_rhs
from ctpg.solvers import solve
from ctpg.solvers.options import check_method, check_positive
from ctpg.trajectory import Trajectory


SEMI_IMPLICIT = "semi-implicit-euler"


class BPTT(Estimator):
    """Exact gradient of a fixed-step discretisation (explicit Euler by default).

    The closed loop and its accumulated cost are stepped with `method` at step `dt`
    (each interval between the system's breakpoints is split into equal steps <= dt;
    method "semi-implicit-euler" is the symplectic Euler of mechanical simulators,
    for systems that declare `position_velocity`)
    while autograd records every operation; the backward pass is reverse-mode autograd
    through that graph, with one counted `vjp` per f call (the dynamics enter as
    `system.f_autograd`, which also differentiates the parameters f reads: the system's own
    and, for a torch f, any other, such as a policy parameter read through a closure).

    Stores every intermediate the graph needs: O(T/dt x N x (d + k + policy
    activations)) floats, reported in `info.stored_floats` (distinct storages, so a
    view is not counted twice). Its error against the continuous-time gradient falls
    only at the method's order in dt (first for Euler), so accurate gradients need
    tiny steps; unstable when dt is too large for the closed loop's fastest time scale.
    """

    name = "bptt"
    # BPTT through contact is modelled the way users do it today: a soft contact force
    # (a stiff penalty) in f, no guards; its gradient error at several stiffnesses is
    # what the juggler's benchmark would measure (README, "Events and impacts")
    events_refusal = ("a fixed-step discretisation applies no reset at a located event, and autograd "
                      "through a reset at the first step past the guard misses the event time's dependence "
                      "on the state (the saltation term), a gradient error of order one; model the contact "
                      "as a soft penalty force in f for BPTT")

    def __init__(self, dt: float = 0.01, method: str = "euler", max_steps: int = 10_000_000):
        if isinstance(dt, bool) or not isinstance(dt, (int, float)) or not (math.isfinite(dt) and dt > 0):
            raise ValueError(f"BPTT needs a positive step, e.g. BPTT(dt=0.01); got dt={dt!r}")
        check_method("BPTT", "method", method, extra=(SEMI_IMPLICIT,))
        check_positive("BPTT", "max_steps", max_steps, integer=True, optional=False)
        self.dt, self.method, self.max_steps = dt, method, max_steps

    def _rollout(self, rhs, system, y0, T, path: bool = False):
        """(y(T), steps, the detached path y(t) if `path`, else None) of the rollout;
        method "semi-implicit-euler" is the symplectic Euler of mechanical simulators
        (DiffTaichi): velocities first, then positions with the new velocities, for
        systems that name their position/velocity pairs. The path is the solver's dense
        output (one more f call at the last step), linear between the symplectic steps."""
        if self.method != SEMI_IMPLICIT:
            sol = solve(rhs, y0, 0.0, T, method=self.method, dt=self.dt, max_steps=self.max_steps,
                        tstops=system.breakpoints(T), dense=path)
            kept = Trajectory(sol.times, sol.trajectory.coefs.detach()) if path else None
            return sol.y1, sol.steps_accepted, kept
        if system.position_velocity is None:
            raise ValueError(f"BPTT(method={SEMI_IMPLICIT!r}) needs {type(system).__name__}.position_velocity "
                             "(the indices of positions and of their velocities); use method='euler' otherwise")
        positions, velocities = (list(ix) for ix in system.position_velocity)
        n = max(1, math.ceil(T / self.dt - 1e-9))
        h, y, knots = T / n, y0, [y0.detach()]
        for i in range(n):
            y1 = y + h * rhs(i * h, y)                                 # Euler for everything ...
            moved = y[:, positions] + h * y1[:, velocities]            # ... but positions with v_{n+1}
            y = y1.index_copy(1, torch.tensor(positions, device=y.device), moved)
            knots += [y.detach()] if path else []
        kept = Trajectory.through([i * h for i in range(n + 1)], torch.stack(knots)) if path else None
        return y, n, kept

    def __repr__(self):
        return f"BPTT(dt={self.dt}, method={self.method!r})"

    def _forward(self, problem):
        system, d = problem.system, problem.system.state_dim
        stored = _SavedTensorCounter()
        # The tensors f may read besides x and u: for a torch f (autograd vjp) every
        # parameter, since f can read a policy's parameter through a closure as well as
        # the system's own; the custom op's backward gives lam^T df/dtheta for each (zero
        # where f does not read it), the policy's own path through u being autograd's.
        # Other systems answer df/dtheta for their own tensors only, as in CTPG.
        own = problem.params if system.vjp_by_autograd else problem.system_params
        with torch.enable_grad() if problem.keep_for_backward else torch.no_grad(), \
                torch.autograd.graph.saved_tensors_hooks(stored.pack, stored.unpack):
            x0 = problem.x0.detach().requires_grad_(problem.keep_for_backward)
            y0 = torch.cat([x0, x0.new_zeros(x0.shape[0], 1)], 1)
            rhs = closed_loop_rhs(system, problem.policy, f=lambda x, u: system.f_autograd(x, u, own))
            y1, steps, problem.path = self._rollout(rhs, system, y0, problem.T, problem.keep_path)
            costs = y1[:, d] + system.terminal_cost(y1[:, :d])
        if problem.keep_for_backward:
            problem.saved.update(x0=x0, costs=costs)
        problem.saved.update(steps=steps)
        return costs, steps, 0, stored.floats

    def _backward(self, problem, saved, grad_loss):
        x0, costs, params = saved["x0"], saved["costs"], problem.params
        with torch.enable_grad():   # a custom backward runs with grad mode off
            loss = costs.mean() * grad_loss
            # retain_graph: the rollout's graph lives as long as this node's saved
            # tensors do, so a second backward(retain_graph=True) of the loss works too
            grads = torch.autograd.grad(loss, [x0, *params], allow_unused=True, retain_graph=True)
        grad_params = [torch.zeros_like(p) if g is None else g for g, p in zip(grads[1:], params)]
        grad_x0 = torch.zeros_like(x0) if grads[0] is None else grads[0]
        return (grad_x0, grad_params), (saved["steps"], 0)   # the backward sweep retraces every step


class _SavedTensorCounter:
    """Counts the floats autograd saves for the backward pass, once per storage (views
    of one tensor share it)."""

    def __init__(self):
        self.floats, self._seen = 0, set()

    def pack(self, tensor):
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key not in self._seen:
            self._seen.add(key)
            self.floats += storage.nbytes() // tensor.element_size()
        # detached (same storage): returning the tensor itself would tie an op's output
        # to its own graph node in a reference cycle through C++ that never frees the graph
        return tensor.detach()

    @staticmethod
    def unpack(tensor):
        return tensor
