"""The cost of a shared mesh through impacts: a batch whose samples hit at different times.

CTPG on a hybrid system splits the batch's shared step at the earliest event of any
sample and restarts there (ctpg.estimators.hybrid), so every sample pays a step
boundary at every other sample's impacts. This measures that price on the juggler
(envs.juggler) under a fixed seeded MLP paddle policy, from N starts with heights
drawn from U(0.6, 1.4) (all impacts at different times): the batch's forward and
backward steps (accepted + rejected) and per-sample f and vjp evaluations, against
the same N starts estimated one at a time (the sum over samples, and the mean steps
of one). The overhead of batching is batch steps / mean solo steps (= per-sample
evaluations of the batch over the sum of the solo ones, up to rejected steps): 1 means
free, N means the batch costs as much as N solo meshes laid side by side.

    python -m benchmarks.events_batching [--smoke | --full] [--out DIR]

Writes <out>/events_batching.json and .png and prints the table.
"""
from __future__ import annotations

import dataclasses

import torch

import ctpg
import envs
from benchmarks._config import parse_config, publish, torch_threads


@dataclasses.dataclass
class Config:
    batches: tuple = (1, 4, 16, 64)
    """batch sizes N"""
    rtol: float = 1e-8
    """rtol of both passes (atol = rtol / 100)"""
    horizon: float = 3.0
    """T"""
    seed: int = 0
    """seed of the policy and the starts"""
    out: str = "results/events_batching"
    """output folder"""


PRESETS = {"smoke": {"batches": (1, 4), "horizon": 1.0}, "full": {"batches": (1, 4, 16, 64, 256)}}


def policy_for(system, seed):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(system.state_dim, 16), torch.nn.Tanh(),
                               torch.nn.Linear(16, 1)).double()


def estimate(system, policy, x0, cfg):
    """(forward steps, backward steps, events-free info summary) of one CTPG estimate."""
    loss, info = ctpg.CTPG(rtol=cfg.rtol, atol=cfg.rtol / 100, event_tol=1e-10)(system, policy, x0, cfg.horizon)
    loss.backward()
    fwd = info.forward.steps_accepted + info.forward.steps_rejected
    bwd = info.backward.steps_accepted + info.backward.steps_rejected
    return fwd, bwd, info.oracle_evals


def run(cfg: Config) -> dict:
    system = envs.make("juggler", horizon=cfg.horizon)
    policy = policy_for(system, cfg.seed)
    rows = []
    for n in cfg.batches:
        x0 = system.sample_initial_state(n, torch.Generator().manual_seed(cfg.seed + 1))
        fwd, bwd, evals = estimate(system, policy, x0, cfg)
        solo = [estimate(system, policy, x0[i:i + 1], cfg) for i in range(n)]
        solo_fwd = sum(s[0] for s in solo) / n
        solo_bwd = sum(s[1] for s in solo) / n
        solo_evals = sum(s[2] for s in solo)
        rows.append(dict(batch=n, forward_steps=fwd, backward_steps=bwd, oracle_evals=evals,
                         solo_forward_steps_mean=solo_fwd, solo_backward_steps_mean=solo_bwd,
                         solo_oracle_evals_sum=solo_evals, forward_overhead=fwd / solo_fwd,
                         backward_overhead=bwd / solo_bwd, evals_ratio=evals / solo_evals))
    return {"config": dataclasses.asdict(cfg), "rows": rows}


def print_summary(result):
    print(f"{'N':>5} {'fwd steps':>10} {'solo fwd':>9} {'overhead':>9} {'bwd steps':>10} {'solo bwd':>9} "
          f"{'overhead':>9} {'evals batch/solo':>17}")
    for r in result["rows"]:
        print(f"{r['batch']:>5} {r['forward_steps']:>10} {r['solo_forward_steps_mean']:>9.1f} "
              f"{r['forward_overhead']:>9.2f} {r['backward_steps']:>10} {r['solo_backward_steps_mean']:>9.1f} "
              f"{r['backward_overhead']:>9.2f} {r['evals_ratio']:>17.2f}")


def plot(result, path):
    import matplotlib.pyplot as plt
    rows = result["rows"]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    n = [r["batch"] for r in rows]
    ax.loglog(n, [r["forward_overhead"] for r in rows], "o-", label="forward")
    ax.loglog(n, [r["backward_overhead"] for r in rows], "s-", label="backward")
    ax.loglog(n, n, "k:", label="N (no sharing at all)")
    ax.set_xlabel("batch size N")
    ax.set_ylabel("batch steps / mean solo steps")
    ax.set_title("juggler: shared mesh split at every impact")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> dict:
    cfg, _ = parse_config(Config, argv, "python -m benchmarks.events_batching", __doc__.split("\n\n")[0], PRESETS)
    with torch_threads(1):
        result = run(cfg)
    publish(cfg.out, "events_batching", result, plot, print_summary)
    return result


if __name__ == "__main__":
    main()
