"""The interface shared by every gradient estimator.

    loss, info = estimator(system, policy, x0, T)
    loss.backward()

`loss` is the batch mean of int_0^T w dt + J(x(T)), with the policy's actions
saturated to the system's bounds (`ctpg.system.saturated_policy`). It carries one autograd node
(`_EstimatorFunction`) whose backward is the estimator's own backward pass, so the
loss composes with any torch code; gradients land in the policy's parameters that
require grad and in x0 if it requires grad. `info` is filled by the forward pass and
completed (backward statistics) when the backward pass runs.
"""
from __future__ import annotations

import dataclasses
import math
import time

import torch

from ctpg.errors import NonFiniteError
from ctpg.system import ControlSystem, saturated_policy


@dataclasses.dataclass
class PassStats:
    """Cost of one pass: oracle counts (see OracleCounter.since), solver steps, seconds."""

    oracle: dict
    steps_accepted: int = 0
    steps_rejected: int = 0
    wall_time: float = 0.0


@dataclasses.dataclass
class EstimateInfo:
    """What one estimate cost and found.

    costs: per-sample cost [N] (detached); forward/backward: PassStats (backward is
    None until loss.backward() runs); stored_floats: floats kept between the passes
    (the memory cost); reconstruction_error: Backsolve only, set by its backward
    pass: per sample, the largest ||x_stored - x_reconstructed|| over its checkpoint
    segments (x0 and each checkpoint against the state solved back to it).
    """

    estimator: str
    costs: torch.Tensor
    forward: PassStats
    backward: PassStats | None = None
    stored_floats: int = 0
    reconstruction_error: torch.Tensor | None = None
    path: object | None = None

    @property
    def oracle_evals(self) -> int:
        """Per-sample f, vjp and Jacobian evaluations of both passes so far."""
        back = self.backward.oracle["total_evals"] if self.backward else 0
        return self.forward.oracle["total_evals"] + back

    def summary(self) -> dict:
        """Flat dict of floats, convenient for logging."""
        out = {"cost": float(self.costs.mean()), "stored_floats": float(self.stored_floats),
               "oracle_evals": float(self.oracle_evals)}
        for name, stats in (("forward", self.forward), ("backward", self.backward)):
            if stats is None:
                continue
            out.update({f"{name}/{k}": float(v) for k, v in stats.oracle.items()})
            out.update({f"{name}/steps_accepted": float(stats.steps_accepted),
                        f"{name}/steps_rejected": float(stats.steps_rejected),
                        f"{name}/wall_time": stats.wall_time})
        if self.reconstruction_error is not None:
            out["reconstruction_error_mean"] = float(self.reconstruction_error.mean())
            out["reconstruction_error_max"] = float(self.reconstruction_error.max())
        return out


def _unique(tensors) -> list:
    seen, out = set(), []
    for t in tensors:
        if id(t) not in seen:
            seen.add(id(t))
            out.append(t)
    return out


# Layers whose output depends on the batch or on chance in training mode: they make
# the right-hand side random or couple the samples, and update state at every stage.
_NONDETERMINISTIC = (torch.nn.modules.batchnorm._BatchNorm, torch.nn.modules.dropout._DropoutNd)


def _check_deterministic(policy, name: str) -> None:
    """Refuse a policy in training mode holding BatchNorm or Dropout layers."""
    if not isinstance(policy, torch.nn.Module):
        return
    bad = sorted({type(m).__name__ for m in policy.modules() if isinstance(m, _NONDETERMINISTIC) and m.training})
    if bad:
        raise ValueError(f"{name}: the policy holds {', '.join(bad)} in training mode, which makes the dynamics "
                         "random or couples the samples (and updates running statistics at every solver "
                         "stage); call policy.eval() before estimating, or use a deterministic policy")


def _check_policy_dtype(policy, system, name: str) -> None:
    """Refuse a policy module whose floating parameters or buffers have another dtype
    than the system's (torch would fail deep inside the first solve with a bare
    "mat1 and mat2 must have the same dtype")."""
    if not isinstance(policy, torch.nn.Module):
        return
    dtypes = {t.dtype for t in (*policy.parameters(), *policy.buffers()) if t.is_floating_point()}
    other = sorted(str(d) for d in dtypes - {system.dtype})
    if other:
        short = str(system.dtype).replace("torch.", "")
        raise ValueError(f"{name}: the policy's parameters are {', '.join(other)} but the system uses "
                         f"{system.dtype}; convert the policy with policy.to(torch.{short}), or build the "
                         f"system in the policy's dtype (envs.make(..., dtype={other[0]}))")


def _first(indices: list, shown: int = 5) -> str:
    """'0, 3, 7' or '0, 3, 7, 9, 12, ... (20 in all)'."""
    head = ", ".join(map(str, indices[:shown]))
    return head if len(indices) <= shown else f"{head}, ... ({len(indices)} in all)"


def policy_parameters(policy) -> list[torch.Tensor]:
    """The tensors that receive gradients: a module's parameters with requires_grad."""
    params = policy.parameters() if hasattr(policy, "parameters") else []
    return [p for p in params if p.requires_grad]


class Estimator:
    """Base class: validates inputs, times and counts both passes, builds `info`.

    Subclasses implement `_forward(problem) -> (per-sample costs [N], steps_accepted,
    steps_rejected, stored_floats)` and `_backward(problem, grad_loss) -> (grad_x0,
    [grad per param])`. They may stash what the backward pass needs on `problem`.
    """

    name = "estimator"
    # why this estimator cannot differentiate through a hybrid system's events (None:
    # it can); a system with guards is refused with this reason
    events_refusal = "it has no event handling"

    def __call__(self, system: ControlSystem, policy, x0: torch.Tensor, T: float | None = None,
                 params: list[torch.Tensor] | None = None, keep_path: bool = False):
        """Estimate; `params` (default: the policy's parameters and the system's own,
        `system.parameters()`) are the tensors that receive gradients. keep_path=True
        also returns the forward pass's path in `info.path` (see EstimateInfo): what an
        actor-critic reads its critic targets from, at no extra simulation."""
        T = system.horizon if T is None else float(T)
        self._check(system, x0, T)
        if getattr(system, "has_events", False) and self.events_refusal is not None:
            raise ValueError(f"{self.name}: {type(system).__name__} has guards (impacts or resets), which this "
                             f"estimator refuses: {self.events_refusal}. Use CTPG, which jumps the adjoint by the "
                             "saltation matrix at each event")
        _check_deterministic(policy, self.name)
        _check_policy_dtype(policy, system, self.name)
        params = _unique(policy_parameters(policy) + system.parameters()) if params is None else list(params)
        own = {id(p) for p in system.parameters()}
        problem = Problem(system, saturated_policy(policy, system), x0.detach(), T, params,
                          system_params=[p for p in params if id(p) in own], keep_path=keep_path)
        needs_grad = torch.is_grad_enabled() and (x0.requires_grad or any(p.requires_grad for p in params))
        problem.keep_for_backward = needs_grad
        loss = _EstimatorFunction.apply(self, problem, x0, *params)
        return loss, problem.info

    def _check(self, system, x0, T):
        if not isinstance(x0, torch.Tensor) or x0.ndim != 2 or x0.shape[1] != system.state_dim:
            shape = tuple(x0.shape) if isinstance(x0, torch.Tensor) else type(x0).__name__
            raise ValueError(f"{self.name}: x0 must be a tensor of shape [N, {system.state_dim}], got {shape}; "
                             "use system.sample_initial_state(N) or x0.unsqueeze(0) for one state")
        if x0.dtype != system.dtype:
            raise ValueError(f"{self.name}: x0 has dtype {x0.dtype} but the system uses {system.dtype}; "
                             f"convert with x0.to({system.dtype}) or build the system with dtype={x0.dtype}")
        if x0.shape[0] == 0:
            raise ValueError(f"{self.name}: x0 is an empty batch (shape {tuple(x0.shape)}); "
                             "give at least one initial state")
        bad = (~torch.isfinite(x0)).any(1).nonzero().flatten().tolist()
        if bad:
            raise ValueError(f"{self.name}: x0 contains NaN or Inf in sample(s) {_first(bad)} (of {x0.shape[0]}); "
                             "the initial states must be finite")
        if not (T > 0 and math.isfinite(T)):
            raise ValueError(f"{self.name}: the horizon T must be positive and finite, got {T}; "
                             "for an infinite-horizon cost use a long finite T (or a discount in the cost)")

    def _run(self, problem, pass_name: str, work):
        """Run one pass, timing it, counting oracles and naming the pass in NaN errors."""
        counter = problem.system.counter
        start, snapshot = time.perf_counter(), counter.snapshot()
        try:
            result = work()
        except NonFiniteError as err:
            raise NonFiniteError(f"{self.name} {pass_name} pass: {err}; check the policy output and the "
                                 "dynamics/cost there (a diverging policy or an unbounded action)") from err
        return result, counter.since(snapshot), time.perf_counter() - start

    def _forward(self, problem):
        raise NotImplementedError

    def _backward(self, problem, saved, grad_loss):
        raise NotImplementedError


@dataclasses.dataclass
class Problem:
    """One estimate in flight: its inputs, what the forward pass kept, and `info`."""

    system: ControlSystem
    policy: object
    x0: torch.Tensor
    T: float
    params: list
    system_params: list = dataclasses.field(default_factory=list)
    keep_for_backward: bool = True
    keep_path: bool = False     # the forward pass sets `path` (EstimateInfo.path)
    path: object | None = None
    info: EstimateInfo | None = None
    # what the backward pass needs: tensors go through ctx.save_for_backward, so torch
    # frees them after the backward pass unless retain_graph=True, as for any node
    saved: dict = dataclasses.field(default_factory=dict)


class _EstimatorFunction(torch.autograd.Function):
    """Autograd node whose forward/backward are the estimator's own passes.

    First-order only: a backward with create_graph=True (double backward,
    Hessian-vector products) raises. A second backward works with retain_graph=True
    and raises torch's own message without it, like any other node.
    """

    @staticmethod
    def forward(ctx, estimator, problem, x0, *params):
        (costs, accepted, rejected, stored), oracle, seconds = estimator._run(
            problem, "forward", lambda: estimator._forward(problem))
        problem.info = EstimateInfo(estimator.name, costs.detach(),
                                    PassStats(oracle, accepted, rejected, seconds), stored_floats=stored,
                                    path=problem.path)
        ctx.estimator, ctx.problem = estimator, problem
        keys = [k for k, v in problem.saved.items() if isinstance(v, torch.Tensor)]
        ctx.save_for_backward(*(problem.saved.pop(k) for k in keys))
        ctx.tensor_keys = keys
        return costs.detach().mean()

    @staticmethod
    def backward(ctx, grad_loss):
        estimator, problem = ctx.estimator, ctx.problem
        if not problem.keep_for_backward:
            raise RuntimeError(f"{estimator.name}: backward was called on a loss computed without gradients")
        if torch.is_grad_enabled():
            raise RuntimeError(f"{estimator.name}: the estimators give first-order gradients only; "
                               "backward(create_graph=True) (double backward, Hessian-vector products) "
                               "is not supported")
        saved = dict(problem.saved, **dict(zip(ctx.tensor_keys, ctx.saved_tensors)))
        (grads, (accepted, rejected)), oracle, seconds = estimator._run(
            problem, "backward", lambda: estimator._backward(problem, saved, grad_loss))
        problem.info.backward = PassStats(oracle, accepted, rejected, seconds)
        grad_x0, grad_params = grads
        grad_x0 = grad_x0 if ctx.needs_input_grad[2] else None
        return (None, None, grad_x0, *grad_params)
