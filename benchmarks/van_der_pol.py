"""Van der Pol system identification: the three gradient modes of ctpg.odeint compared.

Data: x'' - mu (1 - x^2) x' + x = 0 as (x, v)' = (v, mu (1 - x^2) v - x), for mu = 1
and a stiffer mu = 5 (relaxation oscillations), `trajectories` initial states uniform
in [-2, 2]^2, `outputs` samples over one period (scipy DOP853 at rtol 1e-10). Model: a
2-64-64-2 tanh vector field, fitted by the MSE over every sample with AdamW (cosine
decay, gradient norm clipped), once per gradient mode from the same initialisation,
with a horizon curriculum: the first `curriculum` fraction of the epochs grows the
fitted horizon linearly from 8 samples to the whole period (relaxation oscillations
are not learned from full periods at once). The fit is reported as the final MSE over
the whole period and as that MSE over the data's variance.

Reported per mu and mode: seconds per epoch, function evaluations per epoch (f, VJP)
and floats stored between the passes (averaged over the epochs that fit the whole
period), the final loss, and the peak resident memory of one
gradient in a fresh process; per mu, the relative error of each mode's gradient at the
training tolerance against a tight reference (interpolating, rtol 1e-10) at the
initial and at the trained parameters, the reference itself checked against central
differences of the loss along its own and a random direction.

    python -m benchmarks.van_der_pol [--smoke | --full] [--out DIR]
"""
from __future__ import annotations

import dataclasses
import time

import torch

import ctpg
from benchmarks._config import parse_config, publish, torch_threads
from benchmarks._neural_ode import (F64, MLPField, central_difference_check, flat_grad, peak_rss_mb,
                                    relative_error, simulate, train, uniform_box, van_der_pol)

MODES = ctpg.ode.MODES
PERIOD = {1.0: 6.663, 5.0: 11.612}   # limit-cycle periods, measured (zero crossings of a DOP853 solve)


@dataclasses.dataclass
class Config:
    mus: tuple = (1.0, 5.0)
    """damping parameters mu to fit (5: stiffer, relaxation oscillations)"""
    trajectories: int = 16
    """initial states of the data"""
    outputs: int = 60
    """samples per trajectory over one period"""
    hidden: tuple = (64, 64)
    """hidden widths of the tanh vector field"""
    epochs: int = 30
    """AdamW epochs per mode"""
    lr: float = 1e-2
    """AdamW learning rate (cosine decay)"""
    curriculum: float = 0.6
    """fraction of the epochs over which the fitted horizon grows to the whole period"""
    clip: float = 10.0
    """gradient-norm clipping"""
    method: str = "dopri5"
    """solver of the forward and adjoint passes"""
    rtol: float = 1e-6
    """training tolerance (atol = rtol / 10)"""
    ref_rtol: float = 1e-10
    """tolerance of the reference gradient (atol = rtol / 10)"""
    fd_directions: int = 2
    """directions of the central-difference check of the reference"""
    memory: bool = True
    """measure the peak resident memory of one gradient per mode in a subprocess"""
    seed: int = 0
    """seed of the data and the initialisation"""
    threads: int = 1
    """torch intra-op threads"""
    out: str = "results/van_der_pol"
    """output folder (van_der_pol.json and .png)"""


PRESETS = {"smoke": dict(mus=(1.0,), trajectories=2, outputs=6, hidden=(8,), epochs=2, fd_directions=1,
                         memory=False, ref_rtol=1e-8),
           "full": dict(epochs=300)}


def make_problem(mu: float, trajectories: int, outputs: int, hidden, seed: int):
    """(model, y0 [N, 2], t [outputs], data [outputs, N, 2])."""
    period = PERIOD.get(mu, 6.663)
    t = torch.linspace(0.0, period, outputs, dtype=F64)
    y0 = uniform_box(trajectories, (-2.0, -2.0), (2.0, 2.0), seed=seed)
    data = simulate(lambda y: van_der_pol(y, mu), y0, t)
    return MLPField(2, tuple(hidden), seed=seed), y0, t, data


def loss_of(model, y0, t, data, mode: str, method: str, rtol: float, info: bool = False):
    ys, run = ctpg.odeint(model, y0, t, method=method, rtol=rtol, atol=rtol / 10, adjoint=mode, return_info=True)
    loss = ((ys - data) ** 2).mean()
    return (loss, run) if info else loss


def memory_probe(mu, trajectories, outputs, hidden, seed, mode, method, rtol, tiny=False):
    """Set up one problem (`tiny`: 1 trajectory, 3 outputs, width 4, for the warm-up);
    return the callable whose peak memory peak_rss_mb measures: one loss and gradient."""
    torch.set_num_threads(1)
    if tiny:
        trajectories, outputs, hidden = 1, 3, [4]
    model, y0, t, data = make_problem(mu, trajectories, outputs, hidden, seed)
    return lambda: loss_of(model, y0, t, data, mode, method, rtol).backward()


def gradient_check(model, y0, t, data, cfg: Config, label: str) -> dict:
    """Each mode's gradient at the training tolerance against a checked tight reference."""
    params = list(model.parameters())
    ref = flat_grad(loss_of(model, y0, t, data, "interpolating", cfg.method, cfg.ref_rtol), params)
    fd = central_difference_check(lambda: loss_of(model, y0, t, data, "direct", cfg.method, cfg.ref_rtol),
                                  params, ref, cfg.fd_directions, seed=cfg.seed + 1)
    if max(fd) > 1e-5:
        raise RuntimeError(f"{label}: the reference gradient disagrees with central differences ({fd})")
    errors = {mode: relative_error(flat_grad(loss_of(model, y0, t, data, mode, cfg.method, cfg.rtol), params), ref)
              for mode in MODES}
    return dict(fd_rel_errors=fd, rel_error=errors)


def fit_mode(mu: float, mode: str, cfg: Config) -> dict:
    """Train with one gradient mode; per-epoch costs are averaged over the epochs that fit
    the whole period (after the curriculum)."""
    model, y0, t, data = make_problem(mu, cfg.trajectories, cfg.outputs, cfg.hidden, cfg.seed)
    stats, clock = [], []

    def loss_fn(epoch):
        clock.append(time.perf_counter())
        n = max(min(8, len(t)), round(len(t) * min(1.0, (epoch + 1) / max(1.0, cfg.curriculum * cfg.epochs))))
        loss, info = loss_of(model, y0, t[:n], data[:n], mode, cfg.method, cfg.rtol, info=True)
        stats.append((n, info))
        return loss, dict(outputs=n, forward_steps=info.forward.steps_accepted, stored_floats=info.stored_floats)

    history = train(loss_fn, list(model.parameters()), cfg.epochs, cfg.lr, cfg.clip, label=f"mu={mu} {mode}",
                    log_every=max(1, cfg.epochs // 10))
    clock.append(time.perf_counter())
    full = [k for k, (n, _) in enumerate(stats) if n == len(t)] or list(range(len(stats)))
    mean = lambda values: sum(values) / len(values)  # noqa: E731
    with torch.no_grad():
        final = float(loss_of(model, y0, t, data, mode, cfg.method, cfg.rtol))
    infos = [stats[k][1] for k in full]
    out = dict(history=history, final_loss=final, final_relative_mse=final / float(data.var()),
               full_horizon_epochs=len(full), seconds_per_epoch=mean([clock[k + 1] - clock[k] for k in full]),
               f_evals_per_epoch=mean([s.forward.oracle["f_evals"] + s.backward.oracle["f_evals"] for s in infos]),
               vjp_evals_per_epoch=mean([s.forward.oracle["vjp_evals"] + s.backward.oracle["vjp_evals"]
                                         for s in infos]),
               stored_floats_per_epoch=mean([s.stored_floats for s in infos]),
               max_stored_floats=max(s.stored_floats for s in infos))
    return out, model


def run(cfg: Config) -> dict:
    result = dict(config=dataclasses.asdict(cfg), mus={})
    for mu in cfg.mus:
        model, y0, t, data = make_problem(mu, cfg.trajectories, cfg.outputs, cfg.hidden, cfg.seed)
        entry = dict(check_initial=gradient_check(model, y0, t, data, cfg, f"mu={mu} initial"), modes={})
        trained = None
        for mode in MODES:
            entry["modes"][mode], fitted = fit_mode(mu, mode, cfg)
            trained = fitted if mode == "interpolating" else trained
            if cfg.memory:
                entry["modes"][mode]["peak_rss"] = peak_rss_mb(
                    "benchmarks.van_der_pol", "memory_probe", mu=mu, trajectories=cfg.trajectories,
                    outputs=cfg.outputs, hidden=list(cfg.hidden), seed=cfg.seed, mode=mode, method=cfg.method,
                    rtol=cfg.rtol)
        entry["check_trained"] = gradient_check(trained, y0, t, data, cfg, f"mu={mu} trained")
        result["mus"][str(mu)] = entry
    return result


def plot(result: dict, path):
    import matplotlib.pyplot as plt
    mus = list(result["mus"])
    fig, axes = plt.subplots(len(mus), 3, figsize=(14, 3.8 * len(mus)), squeeze=False)
    for row, mu in zip(axes, mus):
        entry = result["mus"][mu]
        for mode in MODES:
            h = entry["modes"][mode]["history"]
            row[0].semilogy([p["epoch"] for p in h], [p["loss"] for p in h], label=mode)
        row[0].set_xlabel("epoch")
        row[0].set_ylabel("training MSE")
        row[0].set_title(f"mu = {mu}: training loss per mode")
        row[0].legend(fontsize=8)
        modes = [m for m in MODES]
        for ax, key, label in ((row[1], "seconds_per_epoch", "seconds per epoch"),
                               (row[2], "max_stored_floats", "floats stored between passes (max)")):
            ax.bar(modes, [entry["modes"][m][key] for m in modes], color=["C0", "C1", "C2"])
            ax.set_ylabel(label)
            if key == "max_stored_floats":
                ax.set_yscale("log")
            ax.set_title(f"mu = {mu}: {label}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def print_summary(result: dict):
    for mu, entry in result["mus"].items():
        print(f"\nmu = {mu}: reference vs central differences {entry['check_initial']['fd_rel_errors']}")
        for when in ("check_initial", "check_trained"):
            errs = ", ".join(f"{m} {e:.2e}" for m, e in entry[when]["rel_error"].items())
            print(f"  gradient rel. error at training tolerance ({when.split('_')[1]} params): {errs}")
        print(f"  {'mode':14s} {'s/epoch':>8s} {'f/epoch':>8s} {'vjp/epoch':>9s} {'floats':>10s} "
              f"{'peak RSS MiB':>12s} {'final loss':>11s} {'/ variance':>10s}")
        for mode, s in entry["modes"].items():
            rss = s.get("peak_rss", {}).get("delta_mb")
            print(f"  {mode:14s} {s['seconds_per_epoch']:8.3f} {s['f_evals_per_epoch']:8.0f} "
                  f"{s['vjp_evals_per_epoch']:9.0f} {s['max_stored_floats']:10.0f} "
                  f"{'-' if rss is None else f'{rss:.1f}':>12s} {s['final_loss']:11.3e} "
                  f"{s['final_relative_mse']:10.3g}")


def main(argv=None) -> dict:
    cfg, budget = parse_config(Config, argv, "ctpg bench van-der-pol", __doc__.split("\n\n")[0], PRESETS)
    with torch_threads(cfg.threads):
        result = dict(budget=budget, **run(cfg))
    publish(cfg.out, "van_der_pol", result, plot, print_summary)
    return result


if __name__ == "__main__":
    main()
