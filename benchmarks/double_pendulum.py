"""Double pendulum: a Lagrangian neural network learned through ctpg.odeint, against chaos.

True system: envs' double_pendulum (equal masses and lengths, g = 9.8, no torque),
state (theta1, theta2, w1, w2). Data: `train_trajectories` initial states uniform in
theta_i in [-2, 2], w_i in [-1, 1] (regular and chaotic motions), sampled every
dt = 0.05 s over `data_seconds` by scipy's DOP853 at rtol 1e-10.

Chaos: the largest Lyapunov exponent lambda of each test initial state (high energy:
|theta_i| in [1.5, 2] from rest, random signs) by Benettin's method (a
companion trajectory at distance 1e-8, renormalised every 0.1 s, over `lyapunov_seconds`;
tight dop853 solves), the Lyapunov time 1 / lambda, and the divergence
||delta(t)|| of trajectories started 1e-8 apart.

Model: a learned Lagrangian L(q, w) whose Euler-Lagrange equations, formed by
autograd, give the accelerations (benchmarks/_lagrangian.py). `lagrangian`
"mechanical" (default): L = w^T M(q) w / 2 - V(q) with M positive definite by
construction and M, V tanh MLPs of (cos q, sin q); "mlp": a general softplus MLP
L([cos q, sin q, w]) (Cranmer et al.'s LNN), which nothing keeps invertible in w: a
training step whose solve fails (more than `max_steps` steps) is skipped and counted.

Training: windows of the data of a growing length (the curriculum `windows`, in
samples; `iters_per_window` AdamW steps each, batch `batch` windows), the MSE over
every sample of each window, through ctpg.odeint (interpolating adjoint, dopri5,
seminorm adjoint steps). Tracking: from each test state, the learned model and
the true system are integrated side by side; the valid time is the first time the
normalised error ||y_model - y_true|| / RMS ||y_true|| exceeds `threshold` (Pathak et
al. 2018's valid prediction time), reported also in Lyapunov times, next to the same
error between true trajectories started 1e-8 apart. The curriculum stops at windows
of about one Lyapunov time: longer windows of a chaotic system give exploding
gradients (the loss rose 50x at 1.6 s windows in our runs).

    python -m benchmarks.double_pendulum [--smoke | --full] [--out DIR]
"""
from __future__ import annotations

import dataclasses
import math

import torch

import ctpg
import envs
from benchmarks._config import parse_config, publish, torch_threads
from benchmarks._lagrangian import AngleLagrangian, LagrangianField, MechanicalLagrangian
from benchmarks._neural_ode import F64, simulate, train, uniform_box
from ctpg.solvers import solve


LAGRANGIANS = {"mechanical": MechanicalLagrangian, "mlp": AngleLagrangian}


@dataclasses.dataclass
class Config:
    train_trajectories: int = 32
    """training initial states"""
    test_trajectories: int = 6
    """high-energy test initial states (chaos and tracking)"""
    data_seconds: float = 4.0
    """length of each training trajectory [s]"""
    dt: float = 0.05
    """sampling interval [s]"""
    lagrangian: str = "mechanical"
    """learned Lagrangian: mechanical (w^T M(q) w / 2 - V(q)) or mlp (a general MLP of q and w)"""
    hidden: tuple = (64, 64)
    """hidden widths of the Lagrangian's softplus MLPs"""
    windows: tuple = (2, 4, 8)
    """curriculum: training window lengths in samples, shortest first"""
    iters_per_window: tuple = (150, 75, 40)
    """AdamW steps of each curriculum stage (one per window length)"""
    batch: int = 64
    """windows per step"""
    lr: float = 1e-2
    """AdamW learning rate (cosine decay over the whole curriculum)"""
    clip: float = 1.0
    """gradient-norm clipping"""
    rtol: float = 1e-6
    """ctpg.odeint tolerance in training (atol = rtol / 10)"""
    max_steps: int = 2000
    """solver steps per training solve before the step is skipped"""
    track_seconds: float = 6.0
    """how long the learned model and the truth are compared [s]"""
    threshold: float = 0.3
    """normalised error ||y_model - y_true|| / RMS ||y_true|| that ends the valid prediction time"""
    lyapunov_seconds: float = 40.0
    """Benettin integration time per test state [s]"""
    seed: int = 0
    """seed of data, windows and initialisation"""
    threads: int = 1
    """torch intra-op threads"""
    out: str = "results/double_pendulum"
    """output folder (double_pendulum.json and .png)"""


PRESETS = {"smoke": dict(train_trajectories=4, test_trajectories=2, data_seconds=0.5, hidden=(8,), windows=(2, 4),
                         iters_per_window=(1, 1), batch=4, track_seconds=0.5, lyapunov_seconds=1.0),
           "full": dict(windows=(2, 4, 8, 16), iters_per_window=(600, 400, 200, 100))}


def true_field(system):
    zero = torch.zeros(1, system.action_dim, dtype=F64)
    return lambda y: system.f(y.reshape(-1, 4), zero.expand(y.reshape(-1, 4).shape[0], -1)).reshape(y.shape)


def test_states(cfg: Config) -> torch.Tensor:
    """High-energy starts: |theta_i| in [1.5, 2] with random signs, at rest (inside the
    training box, chaotic)."""
    gen = torch.Generator().manual_seed(cfg.seed + 7)
    size = 1.5 + 0.5 * torch.rand(cfg.test_trajectories, 2, generator=gen, dtype=F64)
    sign = torch.where(torch.rand(cfg.test_trajectories, 2, generator=gen) < 0.5, -1.0, 1.0).to(F64)
    return torch.cat([size * sign, torch.zeros_like(size)], 1)


def lyapunov(system, x0: torch.Tensor, seconds: float, interval: float = 0.1, delta: float = 1e-8):
    """(lambda per state [n], log10 of the linearised separation [steps, n]) by Benettin's
    method: a companion at distance delta, renormalised every `interval` seconds; the
    separation is delta times the accumulated growth (what it would be without the
    renormalisation if the dynamics stayed linear)."""
    field = lambda t, y: true_field(system)(y)  # noqa: E731
    gen = torch.Generator().manual_seed(0)
    direction = torch.randn(x0.shape, generator=gen, dtype=F64)
    pair = torch.cat([x0, x0 + delta * direction / direction.norm(dim=1, keepdim=True)])
    n, total, logs = x0.shape[0], torch.zeros(x0.shape[0], dtype=F64), []
    for k in range(int(round(seconds / interval))):
        pair = solve(field, pair, k * interval, (k + 1) * interval, method="dop853", rtol=1e-11, atol=1e-12).y1
        gap = pair[n:] - pair[:n]
        total += torch.log(gap.norm(dim=1) / delta)
        logs.append((total + math.log(delta)) / math.log(10))
        pair = torch.cat([pair[:n], pair[:n] + delta * gap / gap.norm(dim=1, keepdim=True)])
    return total / seconds, torch.stack(logs)


def divergence(system, x0: torch.Tensor, t: torch.Tensor, delta: float = 1e-8) -> torch.Tensor:
    """||x(t) - x'(t)|| [len(t), n] of true trajectories started delta apart (no renormalisation)."""
    direction = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0), dtype=F64)
    pair = torch.cat([x0, x0 + delta * direction / direction.norm(dim=1, keepdim=True)])
    path = simulate(true_field(system), pair, t, rtol=1e-12, atol=1e-13)
    return (path[:, x0.shape[0]:] - path[:, :x0.shape[0]]).norm(dim=2)


def make_data(system, cfg: Config) -> dict:
    steps = int(round(cfg.data_seconds / cfg.dt))
    t = torch.arange(steps + 1, dtype=F64) * cfg.dt
    y0 = uniform_box(cfg.train_trajectories, (-2.0, -2.0, -1.0, -1.0), (2.0, 2.0, 1.0, 1.0), seed=cfg.seed)
    return dict(t=t, train=simulate(true_field(system), y0, t))


def windows_batch(data: dict, length: int, batch: int, gen) -> torch.Tensor:
    """[length + 1, batch, 4]: random windows of `length` steps from random trajectories."""
    train_data = data["train"]
    starts = torch.randint(0, train_data.shape[0] - length, (batch,), generator=gen)
    which = torch.randint(0, train_data.shape[1], (batch,), generator=gen)
    offsets = torch.arange(length + 1)
    return train_data[starts[None] + offsets[:, None], which[None]]


def fit(model, system, data: dict, cfg: Config) -> tuple[list, list]:
    """(training history, held-out acceleration error at the end of each curriculum stage)."""
    if len(cfg.iters_per_window) != len(cfg.windows):
        raise SystemExit(f"iters_per_window needs one count per window length: {len(cfg.windows)} values")
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    ends = [sum(cfg.iters_per_window[:k + 1]) for k in range(len(cfg.windows))]
    stage_errors = []

    def loss_fn(it):
        if it in ends:                                  # the first step of the next stage
            stage_errors.append(acceleration_error(model, system, cfg))
        length = cfg.windows[next(k for k, end in enumerate(ends) if it < end)]
        target = windows_batch(data, length, cfg.batch, gen)
        t = torch.arange(length + 1, dtype=F64) * cfg.dt
        try:
            pred = ctpg.odeint(model, target[0], t, rtol=cfg.rtol, atol=cfg.rtol / 10,
                               options=dict(max_num_steps=cfg.max_steps),
                               adjoint_options=dict(norm="seminorm", max_num_steps=cfg.max_steps))
        except (ctpg.SolverError, FloatingPointError, torch.linalg.LinAlgError):
            return None, {}
        return ((pred - target) ** 2).mean(), dict(window=length)

    history = train(loss_fn, list(model.parameters()), ends[-1], cfg.lr, cfg.clip, label="LNN",
                    log_every=max(1, ends[-1] // 40))
    return history, stage_errors + [acceleration_error(model, system, cfg)]


@torch.no_grad()
def track(model, system, x0: torch.Tensor, cfg: Config) -> dict:
    """Learned model against the truth from x0: the normalised error ||y_model - y_true|| /
    RMS ||y_true|| (over all test trajectories and times, one constant) and the valid
    time, the first time it exceeds cfg.threshold (Pathak et al. 2018's valid prediction
    time); also the divergence of true trajectories started 1e-8 apart."""
    t = torch.arange(int(round(cfg.track_seconds / cfg.dt)) + 1, dtype=F64) * cfg.dt
    truth = simulate(true_field(system), x0, t)
    learned = ctpg.odeint(model, x0, t, rtol=1e-9, atol=1e-10, method="dopri5")
    scale = float(truth.norm(dim=2).pow(2).mean().sqrt())
    error = (learned - truth).norm(dim=2) / scale                # [T, n]
    over = error > cfg.threshold
    first = torch.where(over.any(0), over.float().argmax(0), torch.full((x0.shape[0],), len(t) - 1))
    return dict(t=t.tolist(), error=error.T.tolist(), valid_time=(t[first]).tolist(), state_scale=scale,
                divergence=(divergence(system, x0, t) / scale).T.tolist(),
                learned=learned[:, 0].tolist(), truth=truth[:, 0].tolist())


@torch.no_grad()
def acceleration_error(model, system, cfg: Config) -> float:
    """||w'_model - w'_true|| / ||w'_true|| over 256 held-out states of the data's box."""
    x = uniform_box(256, (-2.0, -2.0, -1.0, -1.0), (2.0, 2.0, 1.0, 1.0), seed=cfg.seed + 99)
    true = system.f(x, torch.zeros(x.shape[0], system.action_dim, dtype=F64))[:, 2:]
    learned = model(None, x)[:, 2:].detach()
    return float((learned - true).norm() / true.norm())


def run(cfg: Config) -> dict:
    system = envs.make("double_pendulum")
    x_test = test_states(cfg)
    lam, separation = lyapunov(system, x_test, cfg.lyapunov_seconds)
    print(f"Lyapunov exponents {[round(v, 3) for v in lam.tolist()]} 1/s", flush=True)
    data = make_data(system, cfg)
    if cfg.lagrangian not in LAGRANGIANS:
        raise SystemExit(f"unknown lagrangian {cfg.lagrangian!r}; choose from {', '.join(LAGRANGIANS)}")
    model = LagrangianField(LAGRANGIANS[cfg.lagrangian](2, cfg.hidden, seed=cfg.seed), 2)
    history, stage_errors = fit(model, system, data, cfg)
    tracking = track(model, system, x_test, cfg)
    lyap_time = [1 / v if v > 0 else math.inf for v in lam.tolist()]
    valid = tracking["valid_time"]
    ratio = [v / lt for v, lt in zip(valid, lyap_time)]
    summary = dict(lyapunov_exponent=lam.tolist(), lyapunov_time=lyap_time,
                   median_lyapunov_time=_median(lyap_time), valid_time=valid, median_valid_time=_median(valid),
                   valid_time_in_lyapunov_times=ratio, median_valid_in_lyapunov_times=_median(ratio),
                   energy_test=system.energy(x_test).tolist(), final_loss=history[-1]["loss"],
                   acceleration_rel_error=stage_errors[-1], acceleration_rel_error_per_stage=stage_errors,
                   true_pair_valid_time=_first_over(tracking["divergence"], tracking["t"], cfg.threshold),
                   train_seconds=history[-1]["seconds"])
    return dict(config=dataclasses.asdict(cfg), summary=summary, history=history, tracking=tracking,
                separation=dict(t=[0.1 * (k + 1) for k in range(separation.shape[0])],
                                log10=separation.T.tolist()))


def _first_over(errors, t, threshold) -> list:
    """Per trajectory, the first time its error exceeds threshold (the last time if never)."""
    return [next((ti for ti, e in zip(t, row) if e > threshold), t[-1]) for row in errors]


def _median(values):
    values = sorted(values)
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else 0.5 * (values[mid - 1] + values[mid])


def plot(result: dict, path):
    import matplotlib.pyplot as plt
    import numpy as np
    s, tr, sep = result["summary"], result["tracking"], result["separation"]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.4))
    ax = axes[0]
    for row in sep["log10"]:
        ax.plot(sep["t"], row, lw=0.8)
    lam = np.median(s["lyapunov_exponent"])
    ax.plot(sep["t"], [-8 + lam * t / np.log(10) for t in sep["t"]], "k--", lw=1,
            label=f"slope of median lambda = {lam:.2f}/s")
    ax.set_xlabel("t [s]")
    ax.set_ylabel("log10 linearised separation")
    ax.set_title("true system: Benettin's method, companions 1e-8 apart")
    ax.legend(fontsize=8)
    ax = axes[1]
    for k, (row, pair) in enumerate(zip(tr["error"], tr["divergence"])):
        ax.semilogy(tr["t"], np.maximum(row, 1e-16), lw=1, color=f"C{k}")
        ax.semilogy(tr["t"], np.maximum(pair, 1e-16), lw=0.8, ls="--", color=f"C{k}", alpha=0.6)
    ax.axhline(result["config"]["threshold"], color="k", ls=":", lw=1, label="threshold")
    if s["median_lyapunov_time"] is not None and math.isfinite(s["median_lyapunov_time"]):
        ax.axvline(s["median_lyapunov_time"], color="k", ls="--", lw=1, label="median Lyapunov time")
    ax.plot([], [], "k-", lw=1, label="LNN vs truth")
    ax.plot([], [], "k--", lw=0.8, label="truth vs truth started 1e-8 apart")
    ax.set_xlabel("t [s]")
    ax.set_ylabel("||y - y_true|| / RMS ||y_true||")
    ax.set_title(f"learned vs true: median valid time {s['median_valid_time']:.2f} s "
                 f"= {s['median_valid_in_lyapunov_times']:.2f} Lyapunov times", fontsize=9)
    ax.legend(fontsize=8)
    ax = axes[2]
    t = tr["t"]
    ax.plot(t, [y[0] for y in tr["truth"]], "k", lw=1.5, label="theta1 true")
    ax.plot(t, [y[0] for y in tr["learned"]], "C1", lw=1, label="theta1 LNN")
    ax.plot(t, [y[1] for y in tr["truth"]], "k--", lw=1.5, label="theta2 true")
    ax.plot(t, [y[1] for y in tr["learned"]], "C2--", lw=1, label="theta2 LNN")
    ax.set_xlabel("t [s]")
    ax.set_ylabel("angle [rad], first test state")
    ax.legend(fontsize=8)
    fig.suptitle("Double pendulum: chaos of the true system and how long a Lagrangian neural network tracks it")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def print_summary(result: dict):
    s = result["summary"]
    print(f"Lyapunov exponents [1/s]: {', '.join(f'{v:.3f}' for v in s['lyapunov_exponent'])}; "
          f"median Lyapunov time {s['median_lyapunov_time']:.3f} s")
    print(f"acceleration error after each curriculum stage: "
          f"{', '.join(f'{v:.3g}' for v in s['acceleration_rel_error_per_stage'])}")
    print(f"true trajectories 1e-8 apart stay within the threshold for "
          f"{', '.join(f'{v:.2f}' for v in s['true_pair_valid_time'])} s")
    print(f"valid prediction time [s] (normalised error < {result['config']['threshold']}): "
          f"{', '.join(f'{v:.2f}' for v in s['valid_time'])}; median {s['median_valid_time']:.2f} s = "
          f"{s['median_valid_in_lyapunov_times']:.2f} Lyapunov times")
    print(f"final training loss {s['final_loss']:.3e} after {s['train_seconds']:.0f} s; relative error of the "
          f"learned accelerations on held-out states {s['acceleration_rel_error']:.3g}")


def main(argv=None) -> dict:
    cfg, budget = parse_config(Config, argv, "ctpg bench double-pendulum", __doc__.split("\n\n")[0], PRESETS)
    with torch_threads(cfg.threads):
        result = dict(budget=budget, **run(cfg))
    publish(cfg.out, "double_pendulum", result, plot, print_summary)
    return result


if __name__ == "__main__":
    main()
