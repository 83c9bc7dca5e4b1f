"""Define your own `ctpg.ControlSystem` and train a policy on it with `agents.train`.

What it shows: a system of your own is a small torch class (dimensions, horizon, action
bounds, f, running and terminal cost, initial states); autograd supplies the Jacobians
CTPG needs, and the Trainer runs it as env "custom" (an MLP policy squashed into the
action bounds, held-out evaluation, TensorBoard logs and a checkpoint in the run directory).
The system is a cart on a rail with viscous and smoothed Coulomb friction, pushed by a
bounded force towards the origin: nonlinear (the friction), and the force limit is below
what a linear controller would ask for from far starts.

Check: the trained policy's held-out cost (64 fixed starts, accurate dopri5 solve, the
Trainer's own evaluation) must be below --factor (0.5) times the untrained policy's and
(full run) below that of a PD controller, u = -2p - 2v saturated. Exits 1 otherwise.

Cost: full run (150 iterations of 32 starts) 30-50 s on a laptop CPU; --smoke (6
iterations of 8 starts, 16 held-out starts) a few seconds.

    python examples/custom_system.py
    python examples/custom_system.py --estimator bptt --logdir runs/cart_bptt
    python examples/custom_system.py --smoke
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile

import torch

import agents
import ctpg
from agents.evaluation import heldout_states, rollout


@dataclasses.dataclass(frozen=True)
class CartParams:
    mass: float = 1.0
    viscous: float = 0.2          # N s/m
    coulomb: float = 0.3          # N, the dry friction force, smoothed by tanh(v / slip)
    slip: float = 0.05            # m/s
    max_force: float = 1.0        # N
    horizon: float = 5.0          # s
    position_range: float = 2.0   # p0 ~ U(-2, 2) m
    velocity_range: float = 0.5   # v0 ~ U(-0.5, 0.5) m/s


class FrictionCart(ctpg.ControlSystem):
    """x = (p, v), u = force; w = p^2 + 0.1 v^2 + 0.01 u^2, J = 5 (p^2 + v^2)."""

    state_dim, action_dim = 2, 1

    def __init__(self, params: CartParams = CartParams(), dtype=torch.float64):
        super().__init__(dtype)
        self.p = params
        self.horizon = params.horizon
        self.action_low = torch.tensor([-params.max_force], dtype=dtype)
        self.action_high = torch.tensor([params.max_force], dtype=dtype)

    def f(self, x, u):
        p = self.p
        v = x[:, 1]
        friction = p.viscous * v + p.coulomb * torch.tanh(v / p.slip)
        return torch.stack([v, (u[:, 0] - friction) / p.mass], dim=1)

    def running_cost(self, x, u):
        return x[:, 0] ** 2 + 0.1 * x[:, 1] ** 2 + 0.01 * u[:, 0] ** 2

    def terminal_cost(self, x):
        return 5.0 * (x ** 2).sum(dim=1)

    def sample_initial_state(self, n, generator=None):
        scale = torch.tensor([self.p.position_range, self.p.velocity_range], dtype=self.dtype)
        return (2 * torch.rand(n, 2, generator=generator, dtype=self.dtype) - 1) * scale


def pd_cost(system, config) -> float:
    """Held-out cost of u = -2p - 2v (saturated by rollout, as the estimators do)."""
    x0 = heldout_states(system, config.eval_batch, config.eval_seed)
    gains = torch.tensor([[2.0, 2.0]], dtype=system.dtype)
    return rollout(system, lambda x: -x @ gains.T, x0, system.horizon).costs.mean().item()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--estimator", default="ctpg", choices=("ctpg", "bptt", "backsolve"))
    p.add_argument("--iters", type=int, default=150)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--factor", type=float, default=0.5, help="required ratio trained/untrained cost")
    p.add_argument("--eval-batch", type=int, default=64, help="held-out starts of the evaluation")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--logdir", default=None, help="run directory (default: a fresh one under runs/)")
    p.add_argument("--smoke", action="store_true",
                   help="a few seconds: 6 iterations of 8 starts, 16 held-out starts, a temporary run directory")
    args = p.parse_args(argv)
    if args.smoke:     # smaller defaults; options given explicitly still win
        p.set_defaults(iters=6, batch_size=8, eval_batch=16)
        args = p.parse_args(argv)
    if args.smoke and args.logdir is None:       # leave no run directory behind
        with tempfile.TemporaryDirectory(prefix="custom_system_") as logdir:
            return train_and_check(args, logdir)
    return train_and_check(args, args.logdir)


def train_and_check(args, logdir) -> int:
    system = FrictionCart()
    result = agents.train(system=system, estimator=args.estimator, iters=args.iters,
                          batch_size=args.batch_size, lr=args.lr, seed=args.seed, logdir=logdir,
                          hidden=(32, 32), last_layer_scale=0.1, rtol=1e-3, atol=1e-4,
                          eval_batch=args.eval_batch,
                          eval_every=max(1, args.iters // 5), log_every=max(1, args.iters // 10))
    before, after = result.history[0]["cost"], result.final_eval["cost"]
    reference = pd_cost(system, result.config)
    print(f"held-out cost: untrained {before:.4f}, trained {after:.4f} ({after / before:.3f}x), "
          f"PD controller {reference:.4f}; {result.step} iterations, {result.oracle_total} oracle "
          f"evaluations, {result.wall_time:.1f} s; run directory {result.run_dir}")
    if result.status != "completed":
        print(f"FAIL custom_system: the run ended {result.status}: {result.message}", file=sys.stderr)
        return 1
    if not after < args.factor * before:
        print(f"FAIL custom_system: trained cost {after:.4f} is not below {args.factor} x the untrained "
              f"{before:.4f}", file=sys.stderr)
        return 1
    if not args.smoke and not after < reference:
        print(f"FAIL custom_system: trained cost {after:.4f} is not below the PD controller's {reference:.4f}",
              file=sys.stderr)
        return 1
    print(f"PASS custom_system: held-out cost {before:.4f} -> {after:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
