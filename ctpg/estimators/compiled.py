"""The closed loop's two hot functions under torch.compile: CTPG's forward right-hand
side [f(x, pi(x)), w(x, pi(x))] and its adjoint stage (dlam/dt, dmu/dt).

Why: on small states the cost of a CTPG estimate is the per-operation overhead of
eager torch, not arithmetic. A backward stage in eager mode is a fresh forward of
policy, f and cost recorded by autograd plus a reverse pass, about 120 tensor
operations for a two-layer MLP on the differential drive (0.8 ms at N = 8); compiled,
the same stage is one generated kernel with its reverse written out (0.2 ms). The
numbers are in the README ("Side by side with torchdiffeq").

What it needs: f and the costs written in torch (system.f_differentiable: the
default autograd vjp, or an analytic one with `torch_f = True`; the compiled stage
differentiates f itself, not through a finite-difference vjp) and the policy a
torch.nn.Module whose own parameters are the gradient's parameters (no learnable
system or cost parameters). The functions take the parameters as inputs, so optimiser
updates do not recompile; a new batch size, dtype or device compiles once more
(dynamic shapes after the second size).

Cost: the first call of each function compiles it, several seconds (inductor caches
the generated code on disk, so a later process compiles faster). Fails with a
RuntimeError naming the fix when torch.compile cannot build the code (inductor's CPU
backend needs a C++ compiler). Counts stay honest: each right-hand side call is
counted as one f call on N states and each stage as one vjp, exactly as the eager path
counts them.
"""
from __future__ import annotations

import torch

from ctpg.estimators.closed_loop import clocked
from ctpg.solvers.on_device import CapturedField
from ctpg.system import uncounted
from ctpg.trajectory import evaluate_at_tensor_time


def _clocked_state(system, y, t):
    """y = [x, c] with x's clock snapped to t (closed_loop.clocked); y itself without a clock."""
    if system.clock_index is None:
        return y
    d = system.state_dim
    return torch.cat([clocked(system, y[:, :d], t), y[:, d:]], 1)


def compilable(system, policy, params) -> str | None:
    """None when the closed loop can be compiled, else why not (to raise with)."""
    module = getattr(policy, "policy", policy)          # saturated_policy keeps the module
    if not system.f_differentiable:
        return (f"{type(system).__name__} supplies its own vjp and does not declare its f differentiable "
                "torch code (class attribute torch_f = True), so the compiled stage cannot differentiate f")
    if not isinstance(module, torch.nn.Module):
        return "the policy is not a torch.nn.Module (the compiled stage calls it with explicit parameters)"
    own = {id(p) for p in module.parameters()}
    if any(id(p) not in own for p in params):
        return "gradients are asked for tensors outside the policy (learnable system or cost parameters)"
    return None


def _compile_errors() -> tuple:
    """The exception types torch.compile raises when it cannot build the code (no C++
    compiler for inductor's CPU backend, an unsupported operation)."""
    import torch._dynamo.exc
    found = [torch._dynamo.exc.BackendCompilerFailed]
    try:
        import torch._inductor.exc
        found.append(torch._inductor.exc.InductorError)
    except (ImportError, AttributeError):          # older torch: BackendCompilerFailed only
        pass
    return tuple(found)


def _run(function, *args):
    try:
        return function(*args)
    except _compile_errors() as err:
        raise RuntimeError(f"CTPG(compile=True): torch.compile could not build the closed loop ({err}); "
                           "inductor needs a working C++ compiler on the CPU (install gcc or g++, or set "
                           "CXX), or use compile=False") from err


class CompiledClosedLoop:
    """Compiled rhs(t, y) and stage(t, x, lam) of one (system, policy module) pair.

    Build it once and keep it (CTPG caches the last one): the compiled code is tied to
    these objects. `parameters()` gives the tuple both functions take, read from the
    module at call time (frozen parameters and buffers included).
    """

    def __init__(self, system, policy, params):
        why = compilable(system, policy, params)
        if why:
            raise ValueError(f"CTPG(compile=True): {why}; use compile=False")
        self.system, self.module = system, getattr(policy, "policy", policy)
        self.keys = self._keys(params)
        d, f = system.state_dim, uncounted(type(system).f)
        low, high = system.action_low, system.action_high
        keys, module, n = self.keys, self.module, len(params)

        def act(values, x):
            u = torch.func.functional_call(module, dict(zip(keys, values)), (x,))
            return u if low is None else torch.clamp(u, low.to(u), high.to(u))

        def rhs(values, y):
            x = y[:, :d]
            u = act(values, x)
            return torch.cat([f(system, x, u), system.running_cost(x, u)[:, None]], 1)

        def stage(values, x, lam):
            def total(x, trained):
                u = act(trained + values[len(trained):], x)
                return system.running_cost(x, u).sum() + (lam * f(system, x, u)).sum()

            g_x, g_theta = torch.func.grad(total, argnums=(0, 1))(x, values[:n])
            return -g_x, -torch.cat([g.reshape(-1) for g in g_theta])

        self._rhs, self._stage = torch.compile(rhs), torch.compile(stage)

        # the same two as pure functions of tensors, for whole attempts compiled around them
        # (capture, ctpg.solvers.on_device): created once, so that compiled attempts are reused
        def forward_field(ctx, t, y):
            return rhs(ctx[0], _clocked_state(system, y, t)), None

        def adjoint_field(ctx, t, lam):
            values, times, coefs = ctx
            x = clocked(system, evaluate_at_tensor_time(times, coefs, t)[:, :d], t)
            return stage(values, x, lam)

        self._fields = {"f": forward_field, "vjp": adjoint_field}
        self._attempts = {"f": {}, "vjp": {}}

    def _keys(self, params):
        """Parameter names: the trained ones first (in `params` order), then the rest
        of the module's tensors (frozen parameters, buffers), passed along unchanged."""
        names = {id(p): n for n, p in self.module.named_parameters()}
        trained = [names[id(p)] for p in params]
        rest = [n for n, _ in self.module.named_parameters() if n not in set(trained)]
        return trained + rest + [n for n, _ in self.module.named_buffers()]

    def matches(self, system, policy, params) -> bool:
        module = getattr(policy, "policy", policy)
        return system is self.system and module is self.module and self._keys(params) == self.keys

    def parameters(self) -> tuple:
        tensors = dict(self.module.named_parameters())
        tensors.update(self.module.named_buffers())
        return tuple(tensors[k].detach() for k in self.keys)

    def rhs(self, values):
        """rhs(t, y) for the solver: one counted f call on N states."""
        system = self.system

        def call(t, y, rows=None):      # the clock is snapped outside: a float t in compiled code recompiles
            y = _clocked_state(system, y, t)
            out = _run(self._rhs, values, y)
            system.counter.record("f", y.shape[0])
            return out

        return call

    def captured(self, kind: str, ctx: tuple) -> CapturedField:
        """The forward ("f": ctx = (values,)) or adjoint ("vjp": ctx = (values, times,
        coefs) of the stored trajectory) field for captured solves, counted as rhs and
        stage count."""
        counter = self.system.counter
        if kind == "vjp":        # the trajectory's length changes from estimate to estimate
            for tensor in ctx[1:]:
                torch._dynamo.maybe_mark_dynamic(tensor, 0)

        def count(calls, rows):
            for _ in range(calls):
                counter.record(kind, rows)

        return CapturedField(self._fields[kind], ctx, count, self._attempts[kind])

    def stage(self, values, t, x, lam):
        """(dlam/dt [N,d], dmu/dt [P] flat) at x = x(t): one counted vjp on N states.
        x is detached: the clock's snap is straight through, so its gradient is the
        unsnapped one."""
        out = _run(self._stage, values, x.detach(), lam)
        self.system.counter.record("vjp", x.shape[0])
        return out
