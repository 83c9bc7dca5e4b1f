"""The user's func(t, y) as the solvers see it: one row [1, M], time running forwards.

`ctpg.odeint` accepts a state of any shape, or a tuple of tensors, and output times
that increase or decrease. Internally everything is one row y [1, M] (so the solver's
per-sample error norm is one RMS over every component, torchdiffeq's norm) and one
increasing time s = sign * t, with F(s, y) = sign * func(sign * s, y) (reversed time
for decreasing output times). `VectorField` is that F, with every evaluation, reverse
pass and Jacobian counted on an `OracleCounter`.
"""
from __future__ import annotations

import math

import torch

from ctpg.adjoint import flatten
from ctpg.solvers.jacobian import batched_jacobian
from ctpg.system import OracleCounter


class Packing:
    """A state (one tensor, or a tuple of tensors) <-> one row [1, M]."""

    def __init__(self, y0):
        self.is_tuple = isinstance(y0, tuple)
        parts = y0 if self.is_tuple else (y0,)
        if not parts or not all(isinstance(p, torch.Tensor) for p in parts):
            raise TypeError("odeint: y0 must be a tensor or a non-empty tuple of tensors, "
                            f"got {type(y0).__name__}")
        first = parts[0]
        if not (first.is_floating_point() and all(p.dtype == first.dtype and p.device == first.device
                                                  for p in parts)):
            kinds = ", ".join(f"{p.dtype} on {p.device}" for p in parts)
            raise TypeError(f"odeint: y0 must be floating point, every part of one dtype and device ({kinds}); "
                            "convert with y0.double() (or .float()) and .to(device)")
        self.shapes = [p.shape for p in parts]
        self.numels = [p.numel() for p in parts]
        self.dtype, self.device = first.dtype, first.device

    @property
    def size(self) -> int:
        return sum(self.numels)

    def parts(self, value) -> tuple:
        return value if self.is_tuple else (value,)

    def pack(self, value) -> torch.Tensor:
        """value (shaped like y0) -> [1, M]."""
        if not self.is_tuple:
            return value.reshape(1, -1)
        return torch.cat([p.reshape(-1) for p in value])[None]

    def unpack(self, row: torch.Tensor, lead: tuple = ()):
        """[*lead, M] -> a tensor (or tuple) shaped like y0 with leading dims `lead`."""
        lead = tuple(lead)       # shapes may be () (a scalar state): reshape takes one tuple
        if not self.is_tuple:
            return row.reshape(lead + tuple(self.shapes[0]))
        chunks = torch.split(row, self.numels, dim=-1)
        return tuple(c.reshape(lead + tuple(s)) for c, s in zip(chunks, self.shapes))

    def check_output(self, out) -> None:
        """Refuse a func(t, y) whose value is not shaped like the state."""
        parts = out if isinstance(out, tuple) else (out,)
        shapes = [tuple(p.shape) if isinstance(p, torch.Tensor) else type(p).__name__ for p in parts]
        if self.is_tuple != isinstance(out, tuple) or shapes != [tuple(s) for s in self.shapes]:
            want = [tuple(s) for s in self.shapes]
            raise ValueError(f"odeint: func(t, y) returned {shapes if self.is_tuple else shapes[0]} for a state of "
                             f"shape {want if self.is_tuple else want[0]}; it must return dy/dt shaped like y "
                             "(a tuple of the same shapes for a tuple state)")


class VectorField:
    """F(s, y) = sign * func(sign * s, y) on rows y [1, M].

    func receives t as a 0-dim tensor of the state's dtype (as torchdiffeq passes it)
    and y shaped like y0. `detach_outputs` cuts any graph func builds internally
    (a Lagrangian network differentiates itself) from values the solver keeps; without
    it (autograd through the solver) the reverse passes autograd runs are counted.
    Counts: `counter.f_calls` every evaluation of func (a VJP evaluates it again),
    `vjp_calls` every reverse pass, `jac_calls` every Jacobian (M reverse passes).
    """

    def __init__(self, func, packing: Packing, sign: float, detach_outputs: bool = True):
        self.func, self.packing, self.sign = func, packing, sign
        self.detach_outputs = detach_outputs
        self.counter = OracleCounter()
        self.on_vjp = None          # called after each counted autograd VJP (direct mode)
        self._checked = False

    def time(self, s: float) -> torch.Tensor:
        return torch.tensor(self.sign * s, dtype=self.packing.dtype, device=self.packing.device)

    def evaluate(self, s: float, y: torch.Tensor) -> torch.Tensor:
        """F(s, y) [1, M] with the graph, not counted (the counted entry points call it)."""
        out = self.func(self.time(s), self.packing.unpack(y[0]))
        if not self._checked:
            self.packing.check_output(out)
            self._checked = True
        row = self.packing.pack(out)
        return row if self.sign > 0 else -row

    def __call__(self, s: float, y: torch.Tensor) -> torch.Tensor:
        self.counter.record("f", 1)
        row = self.evaluate(s, y)
        if self.detach_outputs:
            return row.detach()
        return CountVJP.apply(row, self) if row.requires_grad else row

    def vjp(self, s: float, y: torch.Tensor, a: torch.Tensor, params) -> tuple:
        """(F(s, y), a^T dF/dy [1, M], a^T dF/dtheta flat [P]): one evaluation and one
        reverse pass of func (pass -a to get the adjoint's rates)."""
        self.counter.record("f", 1)
        self.counter.record("vjp", 1)
        with torch.enable_grad():
            y_ = y.detach().requires_grad_(True)
            out = self.evaluate(s, y_)
            grads = (torch.autograd.grad(out, [y_, *params], a, allow_unused=True) if out.requires_grad
                     else [None] * (1 + len(params)))
        g_y = torch.zeros_like(y) if grads[0] is None else grads[0]
        g_p = [torch.zeros_like(p) if g is None else g for g, p in zip(grads[1:], params)]
        return out.detach(), g_y, flatten(g_p, y)

    def jacobian(self, s: float, y: torch.Tensor) -> torch.Tensor:
        """dF/dy [1, M, M] by autograd (M reverse passes, vectorised where func allows).
        Without detach_outputs (autograd through the solver) J keeps its graph, so a
        Rosenbrock step is differentiated exactly, J's dependence on y and theta included."""
        self.counter.record("jac", 1)
        if not self.detach_outputs:
            return batched_jacobian(lambda z: self.evaluate(s, z), y)
        with torch.enable_grad():
            return batched_jacobian(lambda z: self.evaluate(s, z), y.detach()).detach()


class TimeGrid:
    """The output times t as floats, the direction sign and s = sign * t (increasing)."""

    def __init__(self, t):
        if not isinstance(t, torch.Tensor):
            t = torch.as_tensor(t, dtype=torch.float64)
        if t.ndim != 1 or t.numel() == 0:
            raise ValueError(f"odeint: t must be a 1-D tensor of output times, got shape {tuple(t.shape)}; "
                             "e.g. t = torch.linspace(0, 1, 11)")
        self.t = t
        self.times = [float(v) for v in t.detach().cpu().tolist()]
        if not all(math.isfinite(v) for v in self.times):
            raise ValueError(f"odeint: t must be finite, got {self.times}")
        self.sign = -1.0 if len(self.times) > 1 and self.times[1] < self.times[0] else 1.0
        self.s = [self.sign * v for v in self.times]
        if any(b <= a for a, b in zip(self.s, self.s[1:])):
            raise ValueError("odeint: t must be strictly increasing or strictly decreasing (no repeated or "
                             f"reversing times), got {self.times}")

    def __len__(self) -> int:
        return len(self.times)

    def to_s(self, times) -> list:
        """Stopping times given in t (options jump_t / step_t) as sorted s values."""
        return sorted(self.sign * float(v) for v in times)


class CountVJP(torch.autograd.Function):
    """Identity whose backward records one reverse pass of func on field.counter (direct
    mode: autograd runs the VJPs, this is how they are counted) and calls field.on_vjp."""

    @staticmethod
    def forward(ctx, row, field):
        ctx.field = field
        return row.view_as(row)

    @staticmethod
    def backward(ctx, grad):
        ctx.field.counter.record("vjp", 1)
        if ctx.field.on_vjp is not None:
            ctx.field.on_vjp()
        return grad, None
