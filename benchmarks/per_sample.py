"""Shared against per-sample adaptive steps on a batch that mixes easy and hard starts.

The pendulum under a fixed (seeded) tanh MLP policy, from N starts: half near the
bottom at rest (easy: small, slow swings) and half near the top (hard: they fall
through the bottom fast and need small steps). For each tolerance, CTPG estimates
the gradient of the batch-mean cost with shared steps and with per-sample steps; the
accuracy measure is the worst per-sample error, max over samples of the relative
error of the sample's own gradient N dL/dx0_n against a reference (the same
estimator at rtol = atol = 1e-11 on that sample alone). Costs: per-sample oracle
evaluations (f and vjp per sample), batched calls, wall-clock (one thread, minimum
of `repeats`), on each requested device.

    python -m benchmarks.per_sample [--smoke | --full] [--devices cpu cuda] [--out DIR]

Writes <out>/per_sample.json and .png and prints, at worst-sample errors 1e-3 and
1e-5, per-sample steps' cost over shared steps' on each axis (below 1: per-sample wins).
"""
from __future__ import annotations

import dataclasses
import math
import time

import torch

import ctpg
import envs
from benchmarks._common import cheapest_at
from benchmarks._config import parse_config, publish, torch_threads


@dataclasses.dataclass
class Config:
    batch: int = 64
    """starts in the batch (half easy, half hard)"""
    exponents: tuple = (2, 3, 4, 5, 6, 7)
    """tolerances rtol = atol = 10^-e"""
    repeats: int = 3
    """timed repeats per point (the minimum counts)"""
    devices: tuple = ("cpu",)
    """torch devices to measure on (cuda where available)"""
    seed: int = 0
    """seed of the policy and the starts"""
    out: str = "results/per_sample"
    """output folder"""


PRESETS = {"smoke": {"batch": 4, "exponents": (3,), "repeats": 1},
           "full": {"batch": 256, "exponents": (2, 3, 4, 5, 6, 7, 8), "repeats": 3}}
LEVELS = (1e-3, 1e-5)


def problem(cfg: Config, device: str):
    """(system, policy, x0): easy starts near hanging, hard starts near upright."""
    system = envs.make("pendulum", horizon=3.0, device=device)
    torch.manual_seed(cfg.seed)
    policy = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1)).double().to(device)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    half = cfg.batch // 2
    easy = torch.cat([0.2 * torch.rand(half, 1, generator=gen) - 0.1, torch.zeros(half, 1)], 1)
    hard = torch.cat([math.pi - 0.2 * torch.rand(cfg.batch - half, 1, generator=gen), torch.zeros(cfg.batch - half, 1)], 1)
    return system, policy, torch.cat([easy, hard]).double().to(device)


def per_sample_gradients(estimator, system, policy, x0):
    """(N dL/dx0 [N, d] = each sample's own dcost/dx0, seconds, oracle evaluations, calls)."""
    x = x0.clone().requires_grad_(True)
    system.counter.reset()
    start = time.perf_counter()
    loss, info = estimator(system, policy, x)
    loss.backward()
    if x.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    c = system.counter
    return x.shape[0] * x.grad, seconds, info.oracle_evals, c.f_calls + c.vjp_calls


def reference(system, policy, x0):
    tight = ctpg.CTPG(rtol=1e-11, atol=1e-11)
    return torch.cat([per_sample_gradients(tight, system, policy, x0[i:i + 1])[0] for i in range(x0.shape[0])])


def run(cfg: Config) -> dict:
    rows = []
    for device in cfg.devices:
        if device == "cuda" and not torch.cuda.is_available():
            print("cuda: not available here, skipped")
            continue
        system, policy, x0 = problem(cfg, device)
        ref = reference(system, policy, x0)
        for e in cfg.exponents:
            tol = 10.0 ** -e
            for per_sample in (False, True):
                estimator = ctpg.CTPG(rtol=tol, atol=tol, per_sample=per_sample)
                runs = [per_sample_gradients(estimator, system, policy, x0) for _ in range(cfg.repeats)]
                grads = runs[0][0]
                errors = ((grads - ref).norm(dim=1) / ref.norm(dim=1)).cpu()
                rows.append(dict(device=device, tol=tol, mode="per-sample" if per_sample else "shared",
                                 worst_error=float(errors.max()), median_error=float(errors.median()),
                                 oracle_evals=runs[0][2], calls=runs[0][3],
                                 wall_time=min(r[1] for r in runs)))
                r = rows[-1]
                print(f"{device} tol {tol:.0e} {r['mode']:10s} worst error {r['worst_error']:.2e} "
                      f"oracle {r['oracle_evals']:8d} calls {r['calls']:6d} {r['wall_time']:.3f} s", flush=True)
    return dict(config=dataclasses.asdict(cfg), rows=rows, ratios=ratios(rows))


def ratios(rows) -> dict:
    """Per device and worst-sample error level: per-sample cost over shared cost."""
    out = {}
    for device in dict.fromkeys(r["device"] for r in rows):
        curves = {m: [dict(r, setting=r["tol"]) for r in rows if r["device"] == device and r["mode"] == m]
                  for m in ("shared", "per-sample")}
        for level in LEVELS:
            entry = {}
            for cost in ("oracle_evals", "calls", "wall_time"):
                shared, _ = cheapest_at(curves["shared"], level, cost, "worst_error")
                mine, _ = cheapest_at(curves["per-sample"], level, cost, "worst_error")
                entry[cost] = None if shared is None or mine is None else mine / shared
            out[f"{device}@{level:g}"] = entry
    return out


def plot(result, path):
    import matplotlib.pyplot as plt
    costs = (("oracle_evals", "oracle evaluations (per sample)"), ("wall_time", "wall-clock [s]"))
    devices = list(dict.fromkeys(r["device"] for r in result["rows"]))
    fig, axes = plt.subplots(len(devices), 2, figsize=(10, 4 * len(devices)), squeeze=False)
    for row, device in zip(axes, devices):
        for ax, (cost, label) in zip(row, costs):
            for mode in ("shared", "per-sample"):
                pts = sorted((r[cost], r["worst_error"]) for r in result["rows"]
                             if r["device"] == device and r["mode"] == mode)
                ax.loglog(*zip(*pts), "-o", ms=3, label=f"{mode} steps")
            ax.set_xlabel(label)
            ax.set_ylabel("worst per-sample gradient error")
            ax.set_title(f"pendulum, {result['config']['batch']} starts (half easy, half hard), {device}")
            ax.grid(True, alpha=0.3)
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def print_summary(result):
    for key, entry in result["ratios"].items():
        text = ", ".join(f"{k} {v:.2f}x" if v is not None else f"{k} n/a" for k, v in entry.items())
        print(f"per-sample over shared at worst-sample error {key}: {text}")


def main(argv=None) -> dict:
    cfg, _ = parse_config(Config, argv, "ctpg bench per-sample", __doc__.split("\n\n")[0], PRESETS)
    with torch_threads(1):
        result = run(cfg)
    publish(cfg.out, "per_sample", result, plot, print_summary)
    return result


if __name__ == "__main__":
    main()
