"""Throughput: gradient estimates per second against batch size, on the CPU and on CUDA.

For every device (cpu, and cuda where torch sees one), estimator (CTPG and Backsolve with
dopri5 at the environment's training tolerances, BPTT-Euler at its training step) and
batch size N (1, 4, 16, ..., 65536), one gradient estimate is the estimator's forward and
backward pass on N seeded initial states of the environment (default: the differential
drive) for a small MLP policy (agents.make_policy: features, 32-32 tanh, squash into the
bounds; its last layer at torch's default scale, so the closed loop moves from the start),
timed until the gradient is there (on CUDA after synchronising). One untimed warm-up
estimate precedes each point; then estimates repeat until `min_time` seconds or `repeats`
estimates, and the median counts. Reported per point: seconds per estimate, estimates
per second, samples (initial states) per second, oracle evaluations and stored floats per
estimate, and CUDA's peak memory.

Budget: batch sizes grow until an estimate is predicted (linearly in N from the previous
one) to take more than `max_seconds` or to store more than `max_memory_gb`; those points
are listed as skipped with the reason, never guessed. BPTT stores every step (diffdrive at
dt = 0.01: about 43k floats per initial state), so on the CPU it stops first.

    python -m benchmarks.throughput [--smoke | --full] [--devices cpu cuda] [--out DIR]

Writes <out>/throughput_<env>.json and .png.
"""
from __future__ import annotations

import dataclasses
import os
import statistics
import time

import torch

import agents
import envs
from agents.builders import make_estimator
from benchmarks._config import parse_config, publish, torch_threads

ESTIMATORS = ("ctpg", "bptt", "backsolve")
# CTPG variants timed on request (--estimators): its torch.compile'd closed loop, its step
# control kept on the device with a read-back every 16 attempts (for GPUs), and both: whole
# step attempts compiled (capture)
VARIANTS = {"ctpg-compile": dict(compile=True), "ctpg-sync16": dict(sync_every=16),
            "ctpg-capture16": dict(compile=True, sync_every=16)}
LABELS = {"ctpg": "CTPG (dopri5)", "bptt": "BPTT-Euler", "backsolve": "Backsolve (dopri5)",
          "ctpg-compile": "CTPG, compiled", "ctpg-sync16": "CTPG, control on device",
          "ctpg-capture16": "CTPG, attempts compiled"}
COLOURS = {"ctpg": "tab:blue", "bptt": "tab:orange", "backsolve": "tab:green", "ctpg-compile": "tab:purple",
           "ctpg-sync16": "tab:red", "ctpg-capture16": "tab:brown"}


@dataclasses.dataclass
class Config:
    env: str = "diffdrive"
    """environment (envs.names())"""
    horizon: float = 0.0
    """time horizon T (0: the environment's own)"""
    estimators: tuple = ESTIMATORS
    """estimators to time (ctpg, bptt, backsolve) at the environment's training settings, and the CTPG
    variants ctpg-compile (torch.compile'd closed loop), ctpg-sync16 (step control on the device) and
    ctpg-capture16 (both: whole step attempts compiled)"""
    batch_sizes: tuple = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536)
    """batch sizes N, ascending"""
    devices: tuple = ("cpu", "cuda")
    """devices to time on; cuda is skipped (and says so) where torch sees no GPU"""
    threads: int = 1
    """torch intra-op threads on the CPU"""
    last_layer_scale: float = 1.0
    """scale of the policy's last layer at initialisation (the trainer's diffdrive default is 0.1, whose
    nearly idle closed loop CTPG solves in 5 steps)"""
    min_time: float = 1.0
    """seconds of timed estimates per point (at least one estimate)"""
    repeats: int = 5
    """at most this many timed estimates per point"""
    max_seconds: float = 20.0
    """skip a batch size whose estimate is predicted to take longer than this"""
    max_memory_gb: float = 4.0
    """skip a batch size whose estimate is predicted to store more than this (GB of stored floats)"""
    seed: int = 0
    """seed of the policy and of the initial states"""
    out: str = "results/throughput"
    """output folder (throughput_<env>.json and .png)"""


PRESETS = {"smoke": dict(batch_sizes=(1, 4), horizon=0.5, min_time=0.0, repeats=1, max_seconds=5.0),
           "full": dict(min_time=3.0, repeats=20, max_seconds=60.0)}


def setup(cfg: Config, estimator: str, device: str, n: int):
    """(system, policy, estimator, x0) of one point; the policy and states are seeded, so
    every point of a device times the same policy on the first n of the same states."""
    system = envs.make(cfg.env, device=device, **({"horizon": cfg.horizon} if cfg.horizon else {}))
    torch.manual_seed(cfg.seed)
    policy = agents.make_policy(system, last_layer_scale=cfg.last_layer_scale).eval()
    settings = agents.resolve_config(cfg.env, estimator.split("-")[0], **VARIANTS.get(estimator, {}))
    x0 = system.sample_initial_state(n, torch.Generator().manual_seed(cfg.seed))
    return system, policy, make_estimator(settings), x0


def estimate_once(system, policy, estimator, x0) -> tuple[float, object]:
    """(seconds, info) of one forward and backward pass, the clock stopped once the
    gradient is in place (CUDA: after synchronising the device)."""
    policy.zero_grad(set_to_none=True)
    if x0.is_cuda:
        torch.cuda.synchronize(x0.device)
    start = time.perf_counter()
    loss, info = estimator(system, policy, x0)
    loss.backward()
    if x0.is_cuda:
        torch.cuda.synchronize(x0.device)
    return time.perf_counter() - start, info


def measure(cfg: Config, estimator: str, device: str, n: int) -> dict:
    """One point: warm-up, then timed estimates until min_time or repeats."""
    system, policy, est, x0 = setup(cfg, estimator, device, n)
    if x0.is_cuda:
        torch.cuda.reset_peak_memory_stats(x0.device)
    estimate_once(system, policy, est, x0)
    times, spent = [], 0.0
    while not times or (spent < cfg.min_time and len(times) < cfg.repeats):
        seconds, info = estimate_once(system, policy, est, x0)
        times.append(seconds)
        spent += seconds
    median = statistics.median(times)
    return dict(device=device, estimator=estimator, batch=n, seconds=median, seconds_all=times,
                estimates_per_second=1.0 / median, samples_per_second=n / median,
                oracle_evals=info.oracle_evals, stored_floats=info.stored_floats,
                stored_gb=info.stored_floats * x0.element_size() / 1e9,
                steps_forward=info.forward.steps_accepted,
                peak_cuda_gb=torch.cuda.max_memory_allocated(x0.device) / 1e9 if x0.is_cuda else None)


def too_big(cfg: Config, last: dict | None, n: int) -> str | None:
    """Why batch size n is skipped after the point `last` (None: it is measured)."""
    if last is None:
        return None
    scale = n / last["batch"]
    if last["seconds"] * scale > cfg.max_seconds:
        return f"predicted {last['seconds'] * scale:.3g} s per estimate > max_seconds {cfg.max_seconds:g}"
    if last["stored_gb"] * scale > cfg.max_memory_gb:
        return f"predicted {last['stored_gb'] * scale:.3g} GB stored > max_memory_gb {cfg.max_memory_gb:g}"
    return None


def sweep(cfg: Config, device: str) -> tuple[list, list]:
    """(points, skipped) of every estimator on one device, batch sizes ascending."""
    points, skipped = [], []
    for estimator in cfg.estimators:
        last = None
        for n in sorted(cfg.batch_sizes):
            reason = too_big(cfg, last, n)
            if reason:
                skipped.append(dict(device=device, estimator=estimator, batch=n, reason=reason))
                continue
            last = measure(cfg, estimator, device, n)
            points.append(last)
            print(f"{device:5s} {estimator:10s} N={n:6d}: {last['seconds']:.4g} s per estimate, "
                  f"{last['samples_per_second']:.4g} samples/s", flush=True)
    return points, skipped


def run(cfg: Config) -> dict:
    load_before = load_average()
    points, skipped, devices = [], [], {}
    for device in cfg.devices:
        if device.startswith("cuda") and not torch.cuda.is_available():
            devices[device] = "skipped: torch sees no CUDA device"
            continue
        devices[device] = torch.cuda.get_device_name(device) if device.startswith("cuda") else cpu_name()
        found, left = sweep(cfg, device)
        points += found
        skipped += left
    return dict(config=dataclasses.asdict(cfg), devices=devices, torch=torch.__version__,
                threads=cfg.threads, cpu_count=os.cpu_count(), load_average=[load_before, load_average()],
                points=points, skipped=skipped)


def load_average():
    """The machine's 1-minute load average (None where the OS has none): on a shared
    machine, CPU timings mean little without it."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux) and the cores torch may use."""
    try:
        with open("/proc/cpuinfo") as handle:
            model = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), "")
    except OSError:
        model = ""
    return f"{model or 'CPU'} ({torch.get_num_threads()} torch thread(s))"


def plot(result: dict, path):
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    styles = {"cpu": "-o", "cuda": "--s"}
    for device in dict.fromkeys(p["device"] for p in result["points"]):
        for estimator in result["config"]["estimators"]:
            rows = [p for p in result["points"] if p["device"] == device and p["estimator"] == estimator]
            if not rows:
                continue
            label = f"{LABELS[estimator]}, {device}"
            n = [p["batch"] for p in rows]
            style = styles.get(device.split(":")[0], "-")
            axes[0].loglog(n, [p["samples_per_second"] for p in rows], style, ms=4, color=COLOURS[estimator],
                           label=label)
            axes[1].loglog(n, [p["estimates_per_second"] for p in rows], style, ms=4, color=COLOURS[estimator],
                           label=label)
    axes[0].set_ylabel("initial states per second (N x estimates/s)")
    axes[1].set_ylabel("gradient estimates per second")
    for ax in axes:
        ax.set_xlabel("batch size N")
        ax.grid(True, which="major", alpha=0.3)
    axes[0].legend(fontsize=8)
    cfg = result["config"]
    fig.suptitle(f"Throughput on {cfg['env']} (forward + backward pass), "
                 + "; ".join(f"{d}: {name}" for d, name in result["devices"].items()), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def print_summary(result: dict):
    print(f"{'device':6s} {'estimator':10s} {'N':>6s} {'s/estimate':>11s} {'estimates/s':>12s} "
          f"{'samples/s':>11s} {'oracle evals':>13s} {'stored GB':>10s}")
    for p in result["points"]:
        print(f"{p['device']:6s} {p['estimator']:10s} {p['batch']:6d} {p['seconds']:11.4g} "
              f"{p['estimates_per_second']:12.4g} {p['samples_per_second']:11.4g} {p['oracle_evals']:13d} "
              f"{p['stored_gb']:10.3g}")
    for s in result["skipped"]:
        print(f"skipped {s['device']} {s['estimator']} N={s['batch']}: {s['reason']}")
    for device, name in result["devices"].items():
        print(f"{device}: {name}")
    print(f"load average (1 min) before and after: {result['load_average']} on {result['cpu_count']} CPUs")


def main(argv=None) -> dict:
    cfg, budget = parse_config(Config, argv, "ctpg bench throughput", __doc__.split("\n\n")[0], PRESETS)
    if cfg.env not in envs.names():
        raise SystemExit(f"unknown environment {cfg.env!r}; choose one of: {', '.join(envs.names())}")
    unknown = sorted(set(cfg.estimators) - set(ESTIMATORS) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"unknown estimator(s) {', '.join(unknown)}; choose from "
                         f"{', '.join(ESTIMATORS + tuple(VARIANTS))}")
    if any(n < 1 for n in cfg.batch_sizes):
        raise SystemExit(f"batch sizes must be positive, got {cfg.batch_sizes}")
    with torch_threads(cfg.threads):
        result = dict(budget=budget, **run(cfg))
    publish(cfg.out, f"throughput_{cfg.env}", result, plot, print_summary)
    return result


if __name__ == "__main__":
    main()
