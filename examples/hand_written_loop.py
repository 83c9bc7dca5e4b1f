"""A ctpg estimator inside a hand-written torch training loop, then the policy in gymnasium.

What it shows: the estimators are plain torch. `loss, info = estimator(system, policy, x0)`
returns a scalar whose backward pass is CTPG's adjoint solve, so the loop is the usual
zero_grad / backward / step with any optimiser. The system trained on is the one inside
the registered gymnasium environment "ctpg/LQR-v0" (`env.unwrapped.system`: the paper's
LQR, dx/dt = u, cost int |x|^2 + |u|^2 dt over T = 10, actions bounded to +-5, which the
estimator saturates exactly as the environment clips), so the gym episodes afterwards score
the same cost: an episode's return is minus the cost of the sampled-and-held policy.

Check: the trained policy's mean gym return over --episodes seeded episodes must beat the
untrained policy's, and (full run) come within 5 % of the return of the infinite-horizon
LQR gain u = -K x (K from the Riccati equation, here K = I). Exits 1 otherwise.

Cost: full run (100 iterations of 32 starts, 10 episodes per policy) about half a minute
on a laptop CPU; --smoke (10 iterations, 2 episodes) a few seconds.

    python examples/hand_written_loop.py
    python examples/hand_written_loop.py --estimator bptt --iters 200
    python examples/hand_written_loop.py --smoke
"""
from __future__ import annotations

import argparse
import sys
import time

import gymnasium
import torch

import ctpg
import envs  # noqa: F401  (registers the "ctpg/..." gymnasium ids)


def make_policy(d: int, k: int) -> torch.nn.Module:
    net = torch.nn.Sequential(torch.nn.Linear(d, 32), torch.nn.Tanh(), torch.nn.Linear(32, k)).double()
    with torch.no_grad():          # start near u = 0, a harmless untrained policy
        net[2].weight.mul_(0.1)
        net[2].bias.zero_()
    return net


def episode_returns(env, policy, episodes: int) -> list[float]:
    """Undiscounted returns of seeded episodes (seeds 0..episodes-1), the action held over
    each 0.05 s interval."""
    returns = []
    for seed in range(episodes):
        obs, _ = env.reset(seed=seed)
        total, done = 0.0, False
        while not done:
            with torch.no_grad():
                action = policy(torch.as_tensor(obs, dtype=torch.float64)[None])[0].numpy()
            obs, reward, terminated, truncated, _ = env.step(action)
            total, done = total + reward, terminated or truncated
        returns.append(total)
    return returns


def make_estimator(name: str):
    if name == "bptt":
        return ctpg.BPTT(dt=0.02)
    return ctpg.CTPG(method="dopri5", rtol=1e-5, atol=1e-6)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--estimator", default="ctpg", choices=("ctpg", "bptt"))
    p.add_argument("--iters", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--episodes", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true", help="a few seconds: 10 iterations, 2 episodes")
    args = p.parse_args(argv)
    if args.smoke:     # smaller defaults; options given explicitly still win
        p.set_defaults(iters=10, episodes=2)
        args = p.parse_args(argv)
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)

    env = gymnasium.make("ctpg/LQR-v0")
    system = env.unwrapped.system                  # the ControlSystem the environment steps
    policy = make_policy(system.state_dim, system.action_dim)
    untrained = episode_returns(env, policy, args.episodes)

    estimator = make_estimator(args.estimator)
    optimiser = torch.optim.Adam(policy.parameters(), lr=args.lr)
    generator = torch.Generator().manual_seed(args.seed)
    start = time.perf_counter()
    for it in range(1, args.iters + 1):
        x0 = system.sample_initial_state(args.batch_size, generator)
        loss, info = estimator(system, policy, x0)     # batch mean of int w dt + J(x(T))
        optimiser.zero_grad()
        loss.backward()                                # the estimator's own backward pass
        optimiser.step()
        if it % max(1, args.iters // 10) == 0:
            print(f"iter {it:4d}  cost {loss.item():8.4f}  oracle evals {info.oracle_evals:7d}  "
                  f"({time.perf_counter() - start:.1f} s)")

    trained = episode_returns(env, policy, args.episodes)
    K = system.optimal_gain()
    riccati = episode_returns(env, lambda x: -x @ K.T, args.episodes)
    mean = lambda r: sum(r) / len(r)
    print(f"mean gym return over {args.episodes} episodes: untrained {mean(untrained):.3f}, "
          f"trained {mean(trained):.3f}, Riccati gain {mean(riccati):.3f} "
          f"({args.iters} iterations of {args.estimator}, {time.perf_counter() - start:.1f} s)")
    if not mean(trained) > mean(untrained):
        print(f"FAIL hand_written_loop: trained return {mean(trained):.3f} is not above the untrained "
              f"{mean(untrained):.3f}", file=sys.stderr)
        return 1
    if not args.smoke and not mean(trained) > 1.05 * mean(riccati):    # returns are negative
        print(f"FAIL hand_written_loop: trained return {mean(trained):.3f} is not within 5 % of the "
              f"Riccati gain's {mean(riccati):.3f}", file=sys.stderr)
        return 1
    print(f"PASS hand_written_loop: gym return {mean(untrained):.3f} -> {mean(trained):.3f} "
          f"(Riccati gain {mean(riccati):.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
