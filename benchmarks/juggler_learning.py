"""A short learning check on the juggler: CTPG through the paddle impacts with Adam.

A 32-unit tanh MLP paddle policy (last layer scaled by 0.1, so it starts near a
resting paddle), batches of 16 starts from the juggler's distribution, CTPG at
rtol 1e-6, atol 1e-8, `iterations` Adam steps at learning rate `lr`. Held out: 50
starts (seed 99) solved through their impacts at rtol 1e-8; a start succeeds when it
has at least two impacts and every apex after the first impact (h + v^2/2g just after
the reset) is within 5 % of the 1 m target.

    python -m benchmarks.juggler_learning [--seed 0] [--iterations 80] [--lr 1e-2]

Prints the training loss every 20 iterations and the held-out success rate.
"""
from __future__ import annotations

import argparse
import time

import torch

import ctpg
import envs
from ctpg.estimators.closed_loop import closed_loop_rhs
from ctpg.estimators.hybrid import solve_hybrid
from ctpg.system import saturated_policy


def apex_errors(system, policy, x0):
    """(worst |apex - target| / target after the first impact [N], impacts [N])."""
    pol = saturated_policy(policy, system)
    y0 = torch.cat([x0, x0.new_zeros(len(x0), 1)], 1)
    with torch.no_grad():
        sol = solve_hybrid(closed_loop_rhs(system, pol), system, pol, y0, system.horizon, event_tol=1e-10,
                           max_events=1000, grazing=1e-8, max_steps=100_000, dense=False, method="dopri5",
                           rtol=1e-8, atol=1e-10, autonomous=True)
    target = system.params.target_apex
    worst, count = x0.new_zeros(len(x0)), torch.zeros(len(x0), dtype=torch.long)
    for e in sol.events:
        err = (system.apex(e.x_plus) - target).abs() / target
        later = count[e.rows] >= 1
        worst[e.rows] = torch.where(later, torch.maximum(worst[e.rows], err), worst[e.rows])
        count[e.rows] += 1
    return worst, count


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.juggler_learning", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--iterations", type=int, default=80)
    parser.add_argument("--lr", type=float, default=1e-2)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    system = envs.make("juggler")
    torch.manual_seed(args.seed)
    policy = torch.nn.Sequential(torch.nn.Linear(4, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1)).double()
    with torch.no_grad():
        policy[2].weight.mul_(0.1)
        policy[2].bias.zero_()
    opt = torch.optim.Adam(policy.parameters(), lr=args.lr)
    estimator = ctpg.CTPG(rtol=1e-6, atol=1e-8)
    gen = torch.Generator().manual_seed(1000 + args.seed)
    start = time.time()
    for it in range(args.iterations):
        loss, _ = estimator(system, policy, system.sample_initial_state(16, gen))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if it % 20 == 0 or it == args.iterations - 1:
            print(f"iteration {it}: loss {loss.item():.4f} ({time.time() - start:.0f} s)", flush=True)
    worst, count = apex_errors(system, policy, system.sample_initial_state(50, torch.Generator().manual_seed(99)))
    success = ((worst <= 0.05) & (count >= 2)).double().mean().item()
    print(f"held out: {success:.0%} of 50 starts within 5 % of the target apex; median worst apex error "
          f"{worst.median().item():.3f}, mean impacts {count.double().mean().item():.1f}")
    return success


if __name__ == "__main__":
    main()
