"""Fit a neural ODE to a spiral with `ctpg.odeint`.

What it shows: the torchdiffeq-style workflow on ctpg's solvers. Data come from the cubic
spiral dy/dt = A y^3 (A = [[-0.1, 2], [-2, -0.1]], y0 = (2, 0); the toy problem of
torchdiffeq's ode_demo), solved tightly once. A small MLP field is then trained with Adam
on short windows of the trajectory, every window's loss differentiated through
`ctpg.odeint` in the adjoint mode you pick: "interpolating" (the default: CTPG's stored
spline), "backsolve" (torchdiffeq's odeint_adjoint) or "direct" (autograd through the steps).

Check: the mean absolute error on 64 fixed windows of the data must drop below the
untrained model's by --factor (10; 2 in the smoke run), and (full run) the error of one
solve from y0 over the whole span, where every small error of the field accumulates as a
phase drift, by --trajectory-factor (2); the script exits 1 otherwise.

Cost: full run (400 iterations of 20 windows on [0, 25]) 20-30 s on a laptop CPU (13 s
with --adjoint direct); --smoke (40 iterations on [0, 10]) a few seconds.

    python examples/spiral_neural_ode.py                      # interpolating adjoint
    python examples/spiral_neural_ode.py --adjoint backsolve --out spiral.png
    python examples/spiral_neural_ode.py --smoke
"""
from __future__ import annotations

import argparse
import sys
import time

import torch

import ctpg

TRUE_A = torch.tensor([[-0.1, 2.0], [-2.0, -0.1]], dtype=torch.float64)


def true_field(t, y):
    return (y ** 3) @ TRUE_A


class Field(torch.nn.Module):
    """dy/dt = net(y^3): the cubic feature makes the spiral easy to represent."""

    def __init__(self, hidden: int = 50):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(2, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 2))

    def forward(self, t, y):
        return self.net(y ** 3)


def windows(ys: torch.Tensor, length: int, batch: int, generator: torch.Generator):
    """A batch of `batch` windows of `length` consecutive samples: starts [B,2], targets [length,B,2]."""
    starts = torch.randint(0, ys.shape[0] - length, (batch,), generator=generator)
    return ys[starts], torch.stack([ys[starts + k] for k in range(length)])


def window_error(field, starts, targets, t) -> float:
    """Mean |prediction - data| over 64 fixed windows of the data (what training fits)."""
    with torch.no_grad():
        return float((ctpg.odeint(field, starts, t, rtol=1e-6, atol=1e-7) - targets).abs().mean())


def trajectory_error(field, y0, t, ys) -> float:
    """Mean |y(t) - data| of one solve from y0 over the whole span (harder: errors accumulate)."""
    with torch.no_grad():
        return float((ctpg.odeint(field, y0, t, rtol=1e-6, atol=1e-6)[:, 0] - ys).abs().mean())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--adjoint", default="interpolating", choices=("interpolating", "backsolve", "direct"))
    p.add_argument("--iters", type=int, default=400)
    p.add_argument("--t1", type=float, default=25.0, help="end of the data's time span")
    p.add_argument("--samples", type=int, default=500, help="data points on [0, t1]")
    p.add_argument("--window", type=int, default=10, help="samples per training window")
    p.add_argument("--batch", type=int, default=20)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--factor", type=float, default=10.0, help="required drop of the window error")
    p.add_argument("--trajectory-factor", type=float, default=2.0,
                   help="required drop of the whole-span error (not checked with --smoke)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="save a PNG of the fitted and true spirals here")
    p.add_argument("--smoke", action="store_true", help="a few seconds: 40 iterations on [0, 10], window factor 2")
    args = p.parse_args(argv)
    if args.smoke:     # smaller defaults; options given explicitly still win
        p.set_defaults(iters=40, t1=10.0, samples=200, factor=2.0)
        args = p.parse_args(argv)
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)

    t = torch.linspace(0.0, args.t1, args.samples, dtype=torch.float64)
    y0 = torch.tensor([[2.0, 0.0]], dtype=torch.float64)
    ys = ctpg.odeint(true_field, y0, t, rtol=1e-10, atol=1e-10)[:, 0]     # [S, 2], the data
    field = Field().double()
    opt = torch.optim.Adam(field.parameters(), lr=args.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.iters, eta_min=args.lr / 20)
    gen = torch.Generator().manual_seed(args.seed)
    fixed = windows(ys, args.window, 64, torch.Generator().manual_seed(12345))
    before = window_error(field, *fixed, t[:args.window]), trajectory_error(field, y0, t, ys)
    print(f"untrained: window error {before[0]:.4f}, trajectory error {before[1]:.4f}")

    start = time.perf_counter()
    for it in range(1, args.iters + 1):
        yb0, target = windows(ys, args.window, args.batch, gen)
        # every window starts at its own sample but the field is autonomous: one time grid serves all
        pred = ctpg.odeint(field, yb0, t[:args.window], rtol=1e-6, atol=1e-7, adjoint=args.adjoint)
        loss = (pred - target).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if it % max(1, args.iters // 10) == 0:
            print(f"iter {it:4d}  window loss {loss.item():.5f}  ({time.perf_counter() - start:.1f} s)")

    after = window_error(field, *fixed, t[:args.window]), trajectory_error(field, y0, t, ys)
    print(f"trained: window error {after[0]:.4f}, trajectory error {after[1]:.4f} "
          f"({args.iters} iterations, adjoint={args.adjoint}, {time.perf_counter() - start:.1f} s)")
    if args.out:
        save_plot(field, y0, t, ys, args.out)
    # the smoke run is too short for the whole-span solve to settle; it checks the windows only
    checks = [("window error", 0, args.factor)]
    checks += [] if args.smoke else [("trajectory error", 1, args.trajectory_factor)]
    for name, i, factor in checks:
        if not after[i] * factor < before[i]:
            print(f"FAIL spiral_neural_ode: the {name} fell only from {before[i]:.4f} to {after[i]:.4f}, "
                  f"less than the required factor {factor:g}", file=sys.stderr)
            return 1
    print(f"PASS spiral_neural_ode: window error {before[0]:.4f} -> {after[0]:.4f}, trajectory "
          f"error {before[1]:.4f} -> {after[1]:.4f}")
    return 0


def save_plot(field, y0, t, ys, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    with torch.no_grad():
        fit = ctpg.odeint(field, y0, t, rtol=1e-6, atol=1e-6)[:, 0]
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot(ys[:, 0], ys[:, 1], "k-", lw=2, label="true")
    ax.plot(fit[:, 0], fit[:, 1], "C1--", lw=1.5, label="neural ODE")
    ax.set(xlabel="y1", ylabel="y2", title="spiral fit")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    print(f"saved {path}")


if __name__ == "__main__":
    sys.exit(main())
