"""Helpers of the neural-ODE studies (fitzhugh_nagumo, van_der_pol, double_pendulum,
odeint_compare): true vector fields, data from an independent solver, MLP vector
fields, a training loop and the measures the studies report."""
from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import scipy.integrate
import torch

F64 = torch.float64


# --------------------------------------------------------------- true systems
def fitzhugh_nagumo(y: torch.Tensor, current: float, a: float = 0.7, b: float = 0.8,
                    tau: float = 12.5) -> torch.Tensor:
    """(v, w)' = (v - v^3/3 - w + I, (v + a - b w) / tau) on [..., 2] (FitzHugh 1961;
    Nagumo et al. 1962; a, b, tau their standard values)."""
    v, w = y[..., 0], y[..., 1]
    return torch.stack([v - v ** 3 / 3 - w + current, (v + a - b * w) / tau], -1)


def van_der_pol(y: torch.Tensor, mu: float) -> torch.Tensor:
    """(x, v)' = (v, mu (1 - x^2) v - x) on [..., 2] (van der Pol 1926)."""
    x, v = y[..., 0], y[..., 1]
    return torch.stack([v, mu * (1 - x ** 2) * v - x], -1)


def simulate(field, y0: torch.Tensor, times, rtol: float = 1e-10, atol: float = 1e-12) -> torch.Tensor:
    """[len(times), *y0.shape] from scipy's DOP853 (not ctpg's solvers: the data must not
    share the errors of the solver under test); field maps a tensor [..., d] to its
    derivative."""
    shape = y0.shape

    def rhs(_, flat):
        return field(torch.from_numpy(flat).reshape(shape)).reshape(-1).numpy()

    times = np.asarray(times, dtype=np.float64)
    sol = scipy.integrate.solve_ivp(rhs, (times[0], times[-1]), y0.detach().reshape(-1).double().numpy(),
                                    method="DOP853", t_eval=times, rtol=rtol, atol=atol)
    if not sol.success:
        raise RuntimeError(f"reference solve failed: {sol.message}")
    return torch.from_numpy(sol.y.T.copy()).reshape(len(times), *shape).to(y0.dtype)


def uniform_box(n: int, low, high, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    low, high = torch.tensor(low, dtype=F64), torch.tensor(high, dtype=F64)
    return low + (high - low) * torch.rand(n, len(low), generator=gen, dtype=F64)


# --------------------------------------------------------------- models
def mlp(sizes, activation=torch.nn.Tanh, seed: int = 0) -> torch.nn.Sequential:
    """Seeded float64 MLP with `activation` between the layers of `sizes`."""
    torch.manual_seed(seed)
    layers = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(torch.nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(activation())
    return torch.nn.Sequential(*layers).to(F64)


class MLPField(torch.nn.Module):
    """dy/dt = net(y), or net([y, t / time_scale]) with `time_input` (non-autonomous)."""

    def __init__(self, dim: int, hidden, seed: int = 0, time_input: bool = False, time_scale: float = 1.0):
        super().__init__()
        self.time_input, self.time_scale = time_input, time_scale
        self.net = mlp([dim + int(time_input), *hidden, dim], seed=seed)

    def forward(self, t, y):
        if self.time_input:
            y = torch.cat([y, (t / self.time_scale).expand(*y.shape[:-1], 1).to(y.dtype)], -1)
        return self.net(y)


class ResidualRNN(torch.nn.Module):
    """The discrete baseline y_{k+1} = y_k + net(y_k) (a residual RNN whose state is y)."""

    def __init__(self, dim: int, hidden, seed: int = 0):
        super().__init__()
        self.net = mlp([dim, *hidden, dim], seed=seed)

    def rollout(self, y0: torch.Tensor, steps: int) -> torch.Tensor:
        ys = [y0]
        for _ in range(steps):
            ys.append(ys[-1] + self.net(ys[-1]))
        return torch.stack(ys)


def num_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# --------------------------------------------------------------- training
def train(loss_fn, params, epochs: int, lr: float, clip: float, log_every: int = 10, label: str = "",
          weight_decay: float = 0.0):
    """AdamW with cosine decay and gradient-norm clipping; loss_fn(epoch) -> (loss, extra
    dict), loss None to skip the step (a failed solve). Returns the history [{epoch,
    loss, seconds, skipped, ...}] (seconds and skipped steps: cumulative)."""
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(epochs, 1))
    history, start, skipped = [], time.perf_counter(), 0
    for epoch in range(epochs):
        opt.zero_grad()
        loss, extra = loss_fn(epoch)
        if loss is None:
            skipped += 1
            sched.step()
            continue
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()
        sched.step()
        if epoch % log_every == 0 or epoch == epochs - 1:
            history.append(dict(epoch=epoch, loss=float(loss.detach()), seconds=time.perf_counter() - start,
                                skipped=skipped, **extra))
            print(f"  {label} epoch {epoch:4d}  loss {float(loss.detach()):.3e}  {time.perf_counter() - start:6.1f} s",
                  flush=True)
    return history


# --------------------------------------------------------------- measures
def mse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b) ** 2).mean())


def grid_points(low, high, n: int) -> torch.Tensor:
    """[n*n, 2] points of an n x n grid over the box [low, high]."""
    axes = [torch.linspace(lo, hi, n, dtype=F64) for lo, hi in zip(low, high)]
    return torch.stack(torch.meshgrid(*axes, indexing="xy"), -1).reshape(-1, 2)


def mean_cosine(learned: torch.Tensor, true: torch.Tensor) -> float:
    """Mean over points of cos(angle between the learned and the true vectors)."""
    return float(torch.nn.functional.cosine_similarity(learned, true, dim=-1).mean())


def relative_error(g: torch.Tensor, ref: torch.Tensor) -> float:
    return float((g - ref).norm() / ref.norm())


def flat_grad(loss, params) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)])


def central_difference_check(loss_fn, params, grad: torch.Tensor, directions: int, seed: int,
                             eps: float = 1e-6) -> list:
    """Relative errors |g . v - (L(p + eps v) - L(p - eps v)) / (2 eps)| / |g| along the
    gradient's own direction and `directions - 1` random ones."""
    from torch.nn.utils import parameters_to_vector, vector_to_parameters
    theta = parameters_to_vector(params).detach().clone()
    gen = torch.Generator().manual_seed(seed)
    vectors = [grad] + [torch.randn(grad.shape, generator=gen, dtype=grad.dtype) for _ in range(directions - 1)]
    errors = []
    for v in vectors:
        v = v / v.norm()
        with torch.no_grad():
            values = []
            for sign in (1.0, -1.0):
                vector_to_parameters(theta + sign * eps * v, params)
                values.append(float(loss_fn()))
            vector_to_parameters(theta, params)
        errors.append(abs((values[0] - values[1]) / (2 * eps) - float(grad @ v)) / float(grad.norm()))
    return errors


def peak_rss_mb(module: str, function: str, **kwargs) -> dict:
    """Peak resident memory of one call in a fresh Python process, in MiB.

    The child imports `module` and runs `function(tiny=True, **kwargs)()` once, a tiny
    version of the problem that triggers lazy imports and one-time set-up without
    growing the heap much; then sets the real problem up (`function(**kwargs)` returns
    the callable to measure), resets the kernel's high-water mark
    (/proc/self/clear_refs), reads its resident set, runs the callable and reports the
    high-water mark (VmHWM) minus that baseline. glibc is told to return freed memory
    (small mmap and trim thresholds). Linux only."""
    import json
    import os
    code = ("import gc, json, sys, importlib\n"
            f"build = getattr(importlib.import_module({module!r}), {function!r})\n"
            "def status(key):\n"
            "    return next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith(key)) / 1024\n"
            "build(tiny=True, **json.loads(sys.argv[1]))()\n"
            "work = build(**json.loads(sys.argv[1]))\n"
            "gc.collect()\n"
            "open('/proc/self/clear_refs', 'w').write('5')\n"
            "base = status('VmRSS')\n"
            "work()\n"
            "peak = status('VmHWM')\n"
            "print(json.dumps(dict(baseline_mb=base, peak_mb=peak, delta_mb=max(peak - base, 0.0))))\n")
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="131072")
    out = subprocess.run([sys.executable, "-c", code, json.dumps(kwargs)], capture_output=True, text=True,
                         timeout=1200, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"memory probe failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])
