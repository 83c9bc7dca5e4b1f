"""A bouncing ball from chained `ctpg.odeint_event` solves, differentiated through every
impact and checked against central differences.

What it shows: a hybrid trajectory written as a loop in the user's code. The ball falls
under gravity g with linear air drag c (h' = v, v' = -g - c v); each solve stops where the
event function h crosses zero, the restitution reset v+ = -e v- is applied, and the next
solve starts from the event (no nudge off the floor is needed: ctpg reads the event's sign
just after t0). After the k-th bounce a last solve stops at the apex (event v = 0). The
time of the k-th bounce and the apex height after it are differentiable in the drop height
h0, the restitution e, gravity g and drag c: each event time by the implicit function
theorem, the flight in between by the adjoint mode you pick (--adjoint). The drag makes
the flight non-polynomial, so the solver is not exact.

Check (float64, rtol 1e-11, atol 1e-12): the 2 x 4 Jacobian of (t_k, apex) in (h0, e, g, c)
must agree with central differences of the same chain (step 1e-5, relative) to --max-error
relative to each row's largest entry; with --drag 0 the event times and the gradient in
(h0, e, g) must also match the closed form t_k = sqrt(2 h0 / g) (1 + 2 e + ... + 2 e^(k-1)),
apex = e^(2k) h0. Exits 1 otherwise.

Cost: full run (5 bounces, one gradient and 8 perturbed chains) about 3 s on a laptop CPU;
--smoke (2 bounces) about 1.5 s (plus the imports).

    python examples/bouncing_ball.py
    python examples/bouncing_ball.py --adjoint backsolve --bounces 8
    python examples/bouncing_ball.py --drag 0          # also against the closed form
    python examples/bouncing_ball.py --smoke
"""
from __future__ import annotations

import argparse
import math
import sys
import time

import torch

import ctpg

TOL = dict(rtol=1e-11, atol=1e-12)
NAMES = ("h0", "e", "g", "c")


def bounce_chain(h0, e, g, c, bounces: int, adjoint: str):
    """(time of the last bounce, apex height after it, all bounce times) for a ball dropped
    from rest at height h0; every argument a 0-dim float64 tensor."""
    def fall(t, y):
        return torch.stack([y[1], -g - c * y[1]])

    kw = dict(adjoint=adjoint, adjoint_params=(g, c), **TOL)
    t, y = torch.zeros((), dtype=torch.float64), torch.stack([h0, torch.zeros_like(h0)])
    times = []
    for _ in range(bounces):
        t, sol = ctpg.odeint_event(fall, y, t, event_fn=lambda t, y: y[0], **kw)
        y = torch.stack([sol[-1][0], -e * sol[-1][1]])        # restitution at the floor
        times.append(t)
    t_bounce = t
    _, sol = ctpg.odeint_event(fall, y, t, event_fn=lambda t, y: y[1], **kw)   # rise to the apex
    return t_bounce, sol[-1][0], times


def jacobian(inputs, bounces, adjoint):
    """d(t_k, apex)/d(h0, e, g, c) by autograd through the chain: [2, 4]."""
    x = [v.clone().requires_grad_(True) for v in inputs]
    t_k, apex, _ = bounce_chain(*x, bounces, adjoint)
    rows = [torch.autograd.grad(out, x, retain_graph=i == 0) for i, out in enumerate((t_k, apex))]
    return torch.tensor([[float(g) for g in row] for row in rows], dtype=torch.float64)


def central_differences(inputs, bounces, adjoint, rel_step=1e-5):
    columns = []
    for j, v in enumerate(inputs):
        step = rel_step * max(1.0, abs(float(v)))
        values = []
        for sign in (1.0, -1.0):
            shifted = [w + sign * step if i == j else w for i, w in enumerate(inputs)]
            with torch.no_grad():
                t_k, apex, _ = bounce_chain(*shifted, bounces, adjoint)
            values.append(torch.stack([t_k, apex]))
        columns.append((values[0] - values[1]) / (2 * step))
    return torch.stack(columns, dim=1)


def closed_form(h0, e, g, bounces):
    """Drag-free: the bounce times (the first after sqrt(2 h0/g), then flights of
    2 e^i sqrt(2 h0/g)) and the Jacobian of (t_k, apex = e^(2k) h0) in (h0, e, g, c),
    its c column left NaN (the closed form has no drag)."""
    first = math.sqrt(2 * h0 / g)
    times = [first * (1 + 2 * sum(e ** i for i in range(1, k))) for k in range(1, bounces + 1)]
    k, t_k = bounces, times[-1]
    dt_de = first * 2 * sum(i * e ** (i - 1) for i in range(1, k))
    jac = [[t_k / (2 * h0), dt_de, -t_k / (2 * g), math.nan],
           [e ** (2 * k), 2 * k * e ** (2 * k - 1) * h0, 0.0, math.nan]]
    return times, torch.tensor(jac, dtype=torch.float64)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--h0", type=float, default=1.0, help="drop height (m)")
    p.add_argument("--e", type=float, default=0.8, help="coefficient of restitution")
    p.add_argument("--g", type=float, default=9.81, help="gravity (m/s^2)")
    p.add_argument("--drag", type=float, default=0.3, help="linear drag rate c (1/s)")
    p.add_argument("--bounces", type=int, default=5)
    p.add_argument("--adjoint", default="interpolating", choices=("interpolating", "backsolve", "direct"))
    p.add_argument("--max-error", type=float, default=1e-6, help="allowed relative gradient error")
    p.add_argument("--smoke", action="store_true", help="a couple of seconds: 2 bounces")
    args = p.parse_args(argv)
    if args.smoke:     # smaller defaults; options given explicitly still win
        p.set_defaults(bounces=2)
        args = p.parse_args(argv)
    if args.bounces < 1:
        p.error("--bounces must be at least 1")
    torch.set_num_threads(1)
    inputs = [torch.tensor(v, dtype=torch.float64) for v in (args.h0, args.e, args.g, args.drag)]

    start = time.perf_counter()
    t_k, apex, times = bounce_chain(*inputs, args.bounces, args.adjoint)
    print(f"bounce times {', '.join(f'{float(t):.6f}' for t in times)} s; apex after bounce "
          f"{args.bounces}: {float(apex):.6f} m")
    grad = jacobian(inputs, args.bounces, args.adjoint)
    grad_seconds = time.perf_counter() - start
    fd = central_differences(inputs, args.bounces, args.adjoint)
    errors = ((grad - fd).abs().max(dim=1).values / fd.abs().max(dim=1).values).tolist()
    print(f"{'':>10}" + "".join(f"{'d/d' + n:>24}" for n in NAMES))
    for name, g_row, fd_row in zip(("t_k", "apex"), grad.tolist(), fd.tolist()):
        print(f"{name + ' ad':>10}" + "".join(f"{v:24.12e}" for v in g_row))
        print(f"{name + ' cd':>10}" + "".join(f"{v:24.12e}" for v in fd_row))
    print(f"relative gradient error: t_k {errors[0]:.2e}, apex {errors[1]:.2e} (adjoint={args.adjoint}; "
          f"solve + gradient {grad_seconds:.1f} s, all {time.perf_counter() - start:.1f} s)")

    failures = [f"d{n}/d(h0, e, g, c) differs from central differences by {err:.2e} (> {args.max_error:g})"
                for n, err in zip(("t_k", "apex"), errors) if not err <= args.max_error]
    if args.drag == 0.0:
        exact, exact_jac = closed_form(args.h0, args.e, args.g, args.bounces)
        worst = max(abs(float(t) - x) for t, x in zip(times, exact))
        jac_error = float((grad[:, :3] - exact_jac[:, :3]).abs().max() / exact_jac[:, :3].abs().max())
        print(f"against the closed form: bounce times within {worst:.2e} s, gradient in (h0, e, g) "
              f"within {jac_error:.2e} relative")
        if not worst <= 1e-9:
            failures.append(f"bounce times differ from the closed form by {worst:.2e} s")
        if not jac_error <= args.max_error:
            failures.append(f"the gradient differs from the closed form's by {jac_error:.2e}")
    if failures:
        print("FAIL bouncing_ball: " + "; ".join(failures), file=sys.stderr)
        return 1
    print(f"PASS bouncing_ball: gradients of t_{args.bounces} and the apex match central differences "
          f"to {max(errors):.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
