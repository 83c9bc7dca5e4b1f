"""The ControlSystem contract, oracle counters and derivative helpers.

A control system is dx/dt = f(x, u) with running cost w(x, u) and terminal cost
J(x), all batched over a leading dimension N. The estimators only ever touch a
system through `f`, `vjp`, `jacobians`, `running_cost` and `terminal_cost`, and every
call of the first three is counted on `system.counter` (batched calls and per-sample
evaluations), which makes those counts the hardware-independent cost axis.
"""
from __future__ import annotations

import dataclasses
import functools

import torch

ORACLE_KINDS = ("f", "vjp", "jac")


@dataclasses.dataclass
class OracleCounter:
    """Counts of oracle calls on one system.

    `*_calls` count batched calls, `*_evals` per-sample evaluations (a call on N
    states counts N). `sim_calls` counts calls of an underlying black-box simulator,
    including those that finite-difference Jacobians spend.
    """

    f_calls: int = 0
    f_evals: int = 0
    vjp_calls: int = 0
    vjp_evals: int = 0
    jac_calls: int = 0
    jac_evals: int = 0
    sim_calls: int = 0

    def record(self, kind: str, n: int) -> None:
        setattr(self, f"{kind}_calls", getattr(self, f"{kind}_calls") + 1)
        setattr(self, f"{kind}_evals", getattr(self, f"{kind}_evals") + n)

    @property
    def total_evals(self) -> int:
        """Per-sample evaluations of f, vjp and jacobians together: the paper's 'oracle calls'."""
        return self.f_evals + self.vjp_evals + self.jac_evals

    def snapshot(self) -> dict:
        return dataclasses.asdict(self)

    def since(self, snapshot: dict) -> dict:
        """Counts accrued since `snapshot`, plus their `total_evals`."""
        now = self.snapshot()
        diff = {key: now[key] - snapshot[key] for key in now}
        diff["total_evals"] = diff["f_evals"] + diff["vjp_evals"] + diff["jac_evals"]
        return diff

    def reset(self) -> None:
        for field in dataclasses.fields(self):
            setattr(self, field.name, 0)


def _counted(kind: str, method):
    """Wrap an oracle method so that its outermost call is validated and counted.

    Nested calls (the default `vjp` calling `f`, say) are not counted again: one
    vjp is one oracle call of kind 'vjp'.
    """

    @functools.wraps(method)
    def wrapper(self, x, *args):
        if self._oracle_depth:
            return method(self, x, *args)
        self.check_inputs(x, *args[:1])
        self._oracle_depth += 1
        try:
            out = method(self, x, *args)
        finally:
            self._oracle_depth -= 1
        self.counter.record(kind, x.shape[0])
        return out

    wrapper._ctpg_counted = True
    return wrapper


def uncounted(method):
    """An oracle method without its counting wrapper (`_counted`): for callers that count
    themselves, such as compiled code, where counting would mutate Python state that
    torch.compile guards on."""
    return getattr(method, "__wrapped__", method)


class ControlSystem:
    """Base class of every differentiable control system.

    Subclasses set `state_dim`, `action_dim`, `horizon` (and optionally
    `action_low` / `action_high` tensors of shape [k]) and define

        f(x [N,d], u [N,k]) -> dx/dt [N,d]
        running_cost(x, u) -> [N]          (torch-differentiable)
        terminal_cost(x) -> [N]            (torch-differentiable)
        sample_initial_state(n, generator=None) -> [n,d]

    `vjp` and `jacobians` default to autograd through `f`, which needs `f` written
    in torch; a system with analytic derivatives or a black-box simulator overrides
    them (see `finite_difference_jacobians`). Overridden oracle methods are counted
    automatically.

    Action bounds are a saturation, not advice: the estimators evaluate f and the
    running cost at clamp(pi(x), action_low, action_high) (see `saturated_policy`),
    exactly what the gymnasium environment does to an out-of-range action, so `f`
    and `running_cost` themselves never see an action outside the bounds.
    """

    state_dim: int
    action_dim: int
    horizon: float
    action_low: torch.Tensor | None = None
    action_high: torch.Tensor | None = None
    # index of a state component that is time itself (d clock/dt = 1, 0 at t = 0), if
    # any: the estimators hand it the solver's exact time, so that breakpoints in it
    # resolve on the right side (see estimators.closed_loop.clocked)
    clock_index: int | None = None
    # (position indices, their velocity indices) for a mechanical system, if any: what
    # BPTT's "semi-implicit-euler" (the symplectic Euler of simulators) needs
    position_velocity: tuple | None = None
    # True when f is written in differentiable torch operations although `vjp` is
    # overridden (analytic derivatives that are only faster): autograd and torch.compile
    # may then differentiate f itself (CTPG(compile=True) does). A system whose vjp is
    # the default autograd one is differentiable anyway (see `f_differentiable`).
    torch_f: bool = False

    def __init__(self, dtype: torch.dtype = torch.float64, device: str | torch.device = "cpu"):
        self.dtype = dtype
        self.device = torch.device(device)
        self.counter = OracleCounter()
        self._oracle_depth = 0

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for name, kind in (("f", "f"), ("vjp", "vjp"), ("jacobians", "jac")):
            method = cls.__dict__.get(name)
            if method is not None and not getattr(method, "_ctpg_counted", False):
                setattr(cls, name, _counted(kind, method))

    # ----------------------------------------------------------------- contract
    def f(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must define f(x, u) -> dx/dt")

    def running_cost(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must define running_cost(x, u) -> [N]")

    def terminal_cost(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(x.shape[0])

    def breakpoints(self, horizon: float) -> list[float]:
        """Times in (0, horizon) where f, the cost or the policy's input jump (a goal
        that switches, say). The solvers land on them in both passes instead of
        rejecting steps across the jump. Default: none."""
        return []

    def valid(self, x: torch.Tensor) -> torch.Tensor:
        """bool [N]: whether each state lies in the system's valid region (an episode
        that leaves it terminates; agents.actor_critic resets it without bootstrapping).
        Default: every state is valid."""
        return torch.ones(x.shape[0], dtype=torch.bool, device=x.device)

    def sample_exploration_state(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """[n,d] states from a wider distribution than the initial one, covering the
        states a good policy passes through (the upright pendulum, say): where an
        actor-critic may restart some episodes so that its critic learns their value
        (exploring starts). Default: sample_initial_state."""
        return self.sample_initial_state(n, generator)

    def sample_initial_state(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must define sample_initial_state(n, generator)")

    # ------------------------------------------------------ events (hybrid systems)
    # A hybrid system (impacts, resets, mode switches) sets `guard_directions`, one entry
    # per guard element: -1 (an event where g_i falls through zero), +1 (rises through
    # zero) or 0 (either), and defines `guards` and `reset`. The default, no guards,
    # leaves a system smooth. Only CTPG differentiates through events (the adjoint jumps
    # by the transposed saltation matrix, ctpg.estimators.hybrid); BPTT and Backsolve
    # refuse systems with guards.
    guard_directions: tuple = ()

    @property
    def has_events(self) -> bool:
        """True when the system declares guards (guard_directions is not empty)."""
        return len(self.guard_directions) > 0

    def guards(self, x: torch.Tensor) -> torch.Tensor:
        """g(x [N,d]) -> [N, E], E = len(guard_directions): an event where element i
        crosses zero in direction guard_directions[i]. Torch-differentiable in x and in
        any learnable system parameter it uses (a floor height, say)."""
        raise NotImplementedError(f"{type(self).__name__} declares guard_directions and must define "
                                  "guards(x) -> [N, E]")

    def reset(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """x+ = r_i(x-) for pre-event states x [k,d] whose guard element index [k] (long)
        fired: a restitution, a velocity jump, a mode change (a mode kept as a state
        component that f reads). Torch-differentiable in x and in the system's learnable
        parameters. Default: the identity (a guard that only marks a switch in f)."""
        return x

    def vjp(self, x: torch.Tensor, u: torch.Tensor, a: torch.Tensor):
        """(a^T df/dx [N,d], a^T df/du [N,k]) by autograd through `f`."""
        with torch.enable_grad():
            x_ = x.detach().requires_grad_(True)
            u_ = u.detach().requires_grad_(True)
            out = require_graph(self, self.f(x_, u_), x_, u_)
            gx, gu = torch.autograd.grad(out, (x_, u_), a, allow_unused=True)
        gx = torch.zeros_like(x) if gx is None else gx
        gu = torch.zeros_like(u) if gu is None else gu
        return gx, gu

    def jacobians(self, x: torch.Tensor, u: torch.Tensor):
        """(df/dx [N,d,d], df/du [N,d,k]) by autograd, one backward pass per state component."""
        return autograd_jacobians(lambda x_, u_: require_graph(self, self.f(x_, u_), x_, u_), x, u)

    def parameters(self) -> list[torch.Tensor]:
        """Learnable tensors of the system (dynamics or cost): the parameters of every
        torch.nn.Module attribute and every tensor attribute that requires grad. The
        estimators differentiate the loss with respect to these as well as the
        policy's, so a learnable model inside f, w or J is trained with the policy."""
        if isinstance(self, torch.nn.Module):     # a system that is also a torch module
            return [p for p in torch.nn.Module.parameters(self) if p.requires_grad]
        found, seen = [], set()
        for value in vars(self).values():
            tensors = value.parameters() if isinstance(value, torch.nn.Module) else (
                [value] if isinstance(value, torch.Tensor) else [])
            for t in tensors:
                if t.requires_grad and id(t) not in seen:
                    seen.add(id(t))
                    found.append(t)
        return found

    # ------------------------------------------------------------------ helpers
    def check_inputs(self, x: torch.Tensor, u: torch.Tensor | None = None) -> None:
        """Raise a ValueError naming the expected shapes if x or u do not fit."""
        name = type(self).__name__
        if x.ndim != 2 or x.shape[1] != self.state_dim:
            raise ValueError(
                f"{name}: state must have shape [N, {self.state_dim}], got {tuple(x.shape)}; "
                "add a batch dimension with x.unsqueeze(0) for a single state")
        if u is not None and (u.ndim != 2 or u.shape != (x.shape[0], self.action_dim)):
            raise ValueError(
                f"{name}: action must have shape [{x.shape[0]}, {self.action_dim}] to match the "
                f"state batch, got {tuple(u.shape)}")

    @property
    def vjp_by_autograd(self) -> bool:
        """True when `vjp` is the default autograd pass through `f` (f written in torch)."""
        return getattr(type(self).vjp, "__wrapped__", None) is _default_vjp

    @property
    def f_differentiable(self) -> bool:
        """True when autograd may differentiate f itself: its vjp is the autograd default,
        or the system declares `torch_f` (f in torch, vjp analytic)."""
        return self.vjp_by_autograd or self.torch_f

    def vjp_with_parameters(self, x, u, a, params):
        """(a^T df/dx, a^T df/du, [a^T df/dtheta for theta in params]).

        Systems with vjp_by_autograd get all three from one reverse pass through f;
        others from their own `vjp` plus, when f depends on `params`, a reverse pass
        through f for those alone (an extra counted f evaluation). Counted as one vjp.
        """
        if not params:
            return (*self.vjp(x, u, a), [])
        with torch.enable_grad():
            x_ = x.detach().requires_grad_(self.vjp_by_autograd)
            u_ = u.detach().requires_grad_(self.vjp_by_autograd)
            if self.vjp_by_autograd:
                out = self.f_for_vjp(x_, u_)
                grads = torch.autograd.grad(out, [x_, u_, *params], a, allow_unused=True)
                gx, gu, gp = grads[0], grads[1], list(grads[2:])
            else:
                gx, gu = self.vjp(x, u, a)
                out = self.f(x_, u_)
                gp = (list(torch.autograd.grad(out, params, a, allow_unused=True)) if out.requires_grad
                      else [None] * len(params))
        gx = torch.zeros_like(x) if gx is None else gx
        gu = torch.zeros_like(u) if gu is None else gu
        return gx, gu, [torch.zeros_like(p) if g is None else g for g, p in zip(gp, params)]

    def f_for_vjp(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """f(x, u) left in the autograd graph for one reverse pass by the caller, which
        may fuse it with its own (policy, cost). Counted as one vjp, not as an f
        evaluation: it stands for exactly the vjp the caller would otherwise call.
        Only for systems with vjp_by_autograd; raises TypeError otherwise."""
        if not self.vjp_by_autograd:
            raise TypeError(f"{type(self).__name__} overrides vjp; call system.vjp instead of f_for_vjp")
        self.check_inputs(x, u)
        self._oracle_depth += 1         # the nested f is part of this vjp, not an f call
        try:
            out = require_graph(self, self.f(x, u), x, u)
        finally:
            self._oracle_depth -= 1
        self.counter.record("vjp", x.shape[0])
        return out

    def f_autograd(self, x: torch.Tensor, u: torch.Tensor, params=()) -> torch.Tensor:
        """f as a torch op whose backward calls `vjp` (`vjp_with_parameters` for the
        system's own learnable `params`), so autograd (BPTT) works on any system,
        black-box simulators included, and each backward is counted as a vjp."""
        return _DynamicsFunction.apply(self, x, u, *params)


def saturated_policy(policy, system: ControlSystem):
    """The policy as the system sees it: x -> clamp(policy(x), action_low, action_high).

    Returns `policy` itself when the system has no action bounds. Otherwise the
    wrapper clamps with torch.clamp, whose derivative is 1 inside the bounds (bounds
    included) and 0 outside, so the estimators differentiate the saturated closed loop
    dx/dt = f(x, sat(pi(x))) with running cost w(x, sat(pi(x))): the problem a
    gymnasium environment poses when it clips the action. Costs one clamp per policy
    call. A policy that already maps into the bounds (a tanh squash) is unchanged.
    """
    if system.action_low is None:
        return policy

    def saturated(x: torch.Tensor) -> torch.Tensor:
        u = policy(x)
        return torch.clamp(u, system.action_low.to(u), system.action_high.to(u))

    saturated.policy = policy
    return saturated


class _DynamicsFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, system, x, u, *params):
        ctx.system = system
        ctx.save_for_backward(x, u, *params)
        return system.f(x.detach(), u.detach())

    @staticmethod
    def backward(ctx, grad_out):
        x, u, *params = ctx.saved_tensors
        gx, gu, gp = ctx.system.vjp_with_parameters(x, u, grad_out, params)
        return (None, gx, gu, *gp)


def require_graph(system, out: torch.Tensor, *inputs: torch.Tensor) -> torch.Tensor:
    """`out` = f(*inputs); when an input requires grad, raise if autograd cannot see
    through f (numpy inside, .detach(), a simulator): the default vjp and Jacobians
    would silently be zero there."""
    if not out.requires_grad and any(t.requires_grad for t in inputs):
        name = type(system).__name__
        raise TypeError(
            f"{name}.f returned a tensor without an autograd graph from inputs that require grad, so "
            f"its derivatives cannot come from autograd (is f computed outside torch, e.g. in numpy "
            f"or a simulator?). Override {name}.vjp and {name}.jacobians, for example with "
            "ctpg.finite_difference_jacobians (see envs/cartpole.py); if f truly does not depend on "
            "x and u, override vjp to return zeros")
    return out


def autograd_jacobians(f, x: torch.Tensor, u: torch.Tensor):
    """Jacobians of a batched torch function f(x, u) -> [N,d'] by reverse-mode autograd.

    Costs one forward and d' backward passes; samples must not interact in f.
    """
    with torch.enable_grad():
        x_ = x.detach().requires_grad_(True)
        u_ = u.detach().requires_grad_(True)
        out = f(x_, u_)
        rows_x, rows_u = [], []
        for i in range(out.shape[1]):
            gx, gu = torch.autograd.grad(out[:, i].sum(), (x_, u_), retain_graph=True,
                                         allow_unused=True)
            rows_x.append(torch.zeros_like(x) if gx is None else gx)
            rows_u.append(torch.zeros_like(u) if gu is None else gu)
    return torch.stack(rows_x, dim=1), torch.stack(rows_u, dim=1)


def finite_difference_jacobians(f, x: torch.Tensor, u: torch.Tensor, eps: float = 1e-6,
                                scheme: str = "central"):
    """Jacobians of a batched black-box f(x [N,d], u [N,k]) -> [N,d'] by finite differences.

    The step for component j is eps * max(1, |z_j|). All perturbed states go to `f`
    in one batched call of N * 2(d+k) samples (central) or N * (d+k+1) (forward), so a
    simulator wrapped in `f` sees one big batch.

    Returns (df/dx [N,d',d], df/du [N,d',k], number of per-sample f evaluations).
    Accuracy: central O(eps^2) truncation, forward O(eps), plus round-off
    O(precision / eps); both are meaningless across a kink or jump of f (contact
    switching, clamped controls).
    """
    if scheme not in ("central", "forward"):
        raise ValueError(f"unknown finite-difference scheme {scheme!r}; use 'central' or 'forward'")
    z = torch.cat([x, u], 1)
    n, d, m = x.shape[0], x.shape[1], z.shape[1]
    steps = eps * torch.clamp(z.abs(), min=1.0)                 # [N, m]
    delta = steps[:, :, None] * torch.eye(m, dtype=z.dtype, device=z.device)
    plus = (z[:, None, :] + delta).reshape(n * m, m)
    other = (z[:, None, :] - delta).reshape(n * m, m) if scheme == "central" else z
    batch = torch.cat([plus, other], 0)
    out = f(batch[:, :d], batch[:, d:])
    f_plus = out[: n * m].reshape(n, m, -1)
    if scheme == "central":
        jac = (f_plus - out[n * m:].reshape(n, m, -1)) / (2 * steps[:, :, None])
    else:
        jac = (f_plus - out[n * m:, None, :]) / steps[:, :, None]
    jac = jac.transpose(1, 2)                                   # [N, d', m]
    return jac[:, :, :d], jac[:, :, d:], batch.shape[0]


# The base class's own default oracles are counted like overrides are.
_default_vjp = ControlSystem.vjp
ControlSystem.vjp = _counted("vjp", ControlSystem.vjp)
ControlSystem.jacobians = _counted("jac", ControlSystem.jacobians)
