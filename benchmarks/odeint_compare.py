"""ctpg.odeint against torchdiffeq on a neural-ODE fit: gradient error vs cost, side by side.

Problem: the FitzHugh-Nagumo fit (benchmarks/fitzhugh_nagumo.py's data: I = 0.5,
`trajectories` initial states, `steps` samples every 0.5, loss = the MSE over every
sample) with a 2-64-64-2 tanh vector field (seeded, then `pretrain_epochs` AdamW
epochs so that it resembles the true dynamics). dL/dtheta is computed at rtol = atol =
each tolerance of the sweep (dopri5 everywhere) by

    ctpg-interpolating, ctpg-backsolve, ctpg-direct     ctpg.odeint's three modes
    torchdiffeq-odeint                                   autograd through torchdiffeq.odeint
    torchdiffeq-adjoint, torchdiffeq-adjoint-seminorm    torchdiffeq.odeint_adjoint (default norm;
                                                         adjoint_options=dict(norm="seminorm"))

Recorded per point: relative error against a reference (ctpg-interpolating at
rtol = atol = 1e-12, checked against central differences along its own and a random
direction, and compared with torchdiffeq-odeint at 1e-12), wall-clock (minimum over
`repeats`), function evaluations (calls of the vector field plus reverse passes through
it, both passes), and floats stored between the passes (ctpg: OdeintInfo.stored_floats;
torchdiffeq: what its autograd graph saved, by ctpg.ode.graph_saved_floats, which
ctpg's direct mode uses too; each storage once, parameters excluded). Peak resident memory of one gradient in a fresh process
(benchmarks._neural_ode.peak_rss_mb) at the first tolerance of the sweep where each
method reaches `target`.

Floors at `target` (1e-4) relative error, along each method's error-vs-cost front
(log-log interpolation): the interpolating mode is faster than torchdiffeq's
odeint_adjoint, and stores at least 10x fewer floats than autograd through
torchdiffeq's odeint; the wall-clock ratio to torchdiffeq's odeint is reported.

    pip install -e .[bench]        # torchdiffeq is an optional extra
    python -m benchmarks.odeint_compare [--smoke | --full] [--out DIR]
"""
from __future__ import annotations

import dataclasses
import sys
import tempfile
import time

import torch

import ctpg
from benchmarks._config import parse_config, publish, torch_threads
from benchmarks._neural_ode import MLPField, central_difference_check, peak_rss_mb, relative_error, train
from benchmarks.fitzhugh_nagumo import Config as FHNConfig
from benchmarks.fitzhugh_nagumo import make_data
from benchmarks.torchdiffeq_compare import VJPTap, cost_at
from ctpg.ode import graph_saved_floats

METHODS = ("ctpg-interpolating", "ctpg-backsolve", "ctpg-direct", "torchdiffeq-odeint", "torchdiffeq-adjoint",
           "torchdiffeq-adjoint-seminorm")
COSTS = ("wall_time", "evals", "stored_floats")


@dataclasses.dataclass
class Config:
    trajectories: int = 16
    """FitzHugh-Nagumo initial states in the batch"""
    steps: int = 80
    """samples per trajectory (every 0.5)"""
    hidden: tuple = (64, 64)
    """hidden widths of the tanh vector field"""
    pretrain_epochs: int = 30
    """AdamW epochs (lr 3e-3, ctpg.odeint at rtol 1e-4) before the comparison"""
    tolerances: tuple = (1e-3, 3e-4, 1e-4, 3e-5, 1e-5, 3e-6, 1e-6, 1e-7, 1e-8)
    """rtol = atol values of the sweep"""
    repeats: int = 3
    """wall-clock is the minimum over this many repeats"""
    target: float = 1e-4
    """relative gradient error of the floors"""
    memory: bool = True
    """measure peak resident memory in subprocesses"""
    fd_directions: int = 2
    """directions of the central-difference check of the reference"""
    seed: int = 0
    """seed of the data and the network"""
    threads: int = 1
    """torch intra-op threads"""
    out: str = "results/odeint_compare"
    """output folder (odeint_compare.json and .png)"""


PRESETS = {"smoke": dict(trajectories=2, steps=6, hidden=(8,), pretrain_epochs=1, tolerances=(1e-3, 1e-6),
                         repeats=1, memory=False, fd_directions=1),
           "full": dict(tolerances=tuple(10 ** (-k / 2) for k in range(4, 19)), repeats=3, pretrain_epochs=100)}


def make_problem(trajectories: int, steps: int, hidden, seed: int, state_path: str | None = None) -> dict:
    data = make_data(FHNConfig(train_trajectories=trajectories, test_trajectories=1, steps=steps, extrapolation=1,
                               seed=seed))
    model = MLPField(2, tuple(hidden), seed=seed)
    if state_path:
        model.load_state_dict(torch.load(state_path))
    return dict(model=model, y0=data["train"][0], t=data["t"][:steps + 1], data=data["train"],
                params=list(model.parameters()))


def pretrain(problem: dict, epochs: int) -> None:
    model, y0, t, data = problem["model"], problem["y0"], problem["t"], problem["data"]
    train(lambda e: (((ctpg.odeint(model, y0, t, rtol=1e-4, atol=1e-5) - data) ** 2).mean(), {}),
          problem["params"], epochs, 3e-3, 1.0, label="pretrain", log_every=max(1, epochs // 5))


class Counted(torch.nn.Module):
    """The vector field for torchdiffeq: counts its calls and the reverse passes through it."""

    def __init__(self, model):
        super().__init__()
        self.model, self.calls, self.vjps = model, 0, 0

    def forward(self, t, y):
        self.calls += 1
        return VJPTap.apply(self.model(t, y), self)


def gradient(problem: dict, method: str, tol: float):
    """(flat dL/dtheta, evals, stored floats) of one method at rtol = atol = tol."""
    model, y0, t, data, params = (problem[k] for k in ("model", "y0", "t", "data", "params"))
    if method.startswith("ctpg"):
        ys, info = ctpg.odeint(model, y0, t, rtol=tol, atol=tol, adjoint=method.split("-")[1], return_info=True)
        grads = torch.autograd.grad(((ys - data) ** 2).mean(), params)
        return torch.cat([g.reshape(-1) for g in grads]), info.evals, info.stored_floats
    import torchdiffeq
    func = Counted(model)
    if method == "torchdiffeq-odeint":
        ys = torchdiffeq.odeint(func, y0, t, rtol=tol, atol=tol, method="dopri5")
    else:
        options = dict(norm="seminorm") if method.endswith("seminorm") else None
        ys = torchdiffeq.odeint_adjoint(func, y0, t, rtol=tol, atol=tol, method="dopri5",
                                        adjoint_options=options, adjoint_params=tuple(params))
    stored = graph_saved_floats(ys)
    grads = torch.autograd.grad(((ys - data) ** 2).mean(), params)
    return torch.cat([g.reshape(-1) for g in grads]), func.calls + func.vjps, stored


def memory_probe(trajectories, steps, hidden, seed, state_path, method, tol, tiny=False):
    """For peak_rss_mb: one gradient of `method` at `tol` (tiny: a 1-trajectory warm-up)."""
    torch.set_num_threads(1)
    if tiny:
        trajectories, steps, hidden, state_path = 1, 4, [4], None
    problem = make_problem(trajectories, steps, hidden, seed, state_path)
    return lambda: gradient(problem, method, tol)


def reference(problem: dict, cfg: Config) -> dict:
    ref = gradient(problem, "ctpg-interpolating", 1e-12)[0]
    model, y0, t, data = (problem[k] for k in ("model", "y0", "t", "data"))
    loss = lambda: ((ctpg.odeint(model, y0, t, rtol=1e-12, atol=1e-12, adjoint="direct") - data) ** 2).mean()  # noqa: E731
    fd = central_difference_check(loss, problem["params"], ref, cfg.fd_directions, seed=cfg.seed + 1)
    if max(fd) > 1e-5:
        raise RuntimeError(f"the reference gradient disagrees with central differences: {fd}")
    check = dict(fd_rel_errors=fd)
    if "torchdiffeq" in sys.modules or _has_torchdiffeq():
        check["torchdiffeq_odeint_1e-12_rel_diff"] = relative_error(gradient(problem, "torchdiffeq-odeint", 1e-12)[0],
                                                                     ref)
    return dict(gradient=ref, check=check)


def _has_torchdiffeq() -> bool:
    try:
        import torchdiffeq  # noqa: F401
    except ImportError:
        return False
    return True


def measure(problem: dict, method: str, tol: float, ref: torch.Tensor, repeats: int) -> dict:
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        grad, evals, stored = gradient(problem, method, tol)
        seconds.append(time.perf_counter() - start)
    return dict(method=method, tol=tol, rel_error=relative_error(grad, ref), wall_time=min(seconds), evals=evals,
                stored_floats=stored)


def floors(points: list, target: float) -> dict:
    """Cost of each method at `target` along its front, and the issue's floors."""
    at = {m: {c: cost_at([p for p in points if p["method"] == m], target, c) for c in COSTS} for m in METHODS}
    mine = at["ctpg-interpolating"]

    def ratio(other, cost):
        return None if None in (mine[cost], at[other][cost]) else at[other][cost] / mine[cost]

    out = dict(target=target, cost_at_target=at,
               adjoint_over_interpolating_wall=ratio("torchdiffeq-adjoint", "wall_time"),
               seminorm_over_interpolating_wall=ratio("torchdiffeq-adjoint-seminorm", "wall_time"),
               odeint_over_interpolating_wall=ratio("torchdiffeq-odeint", "wall_time"),
               odeint_over_interpolating_floats=ratio("torchdiffeq-odeint", "stored_floats"))
    faster = out["adjoint_over_interpolating_wall"]
    fewer = out["odeint_over_interpolating_floats"]
    out["faster_than_odeint_adjoint"] = None if faster is None else faster > 1
    out["ten_times_fewer_floats_than_odeint"] = None if fewer is None else fewer >= 10
    return out


def first_reaching(points: list, method: str, target: float):
    """The loosest sweep tolerance at which `method` reaches `target` (None if none)."""
    good = [p["tol"] for p in points if p["method"] == method and p["rel_error"] <= target]
    return max(good) if good else None


def memory(points: list, cfg: Config, state_path: str) -> dict:
    out = {}
    for method in METHODS:
        tol = first_reaching(points, method, cfg.target)
        if tol is None:
            out[method] = None
            continue
        out[method] = dict(tol=tol, **peak_rss_mb("benchmarks.odeint_compare", "memory_probe",
                                                  trajectories=cfg.trajectories, steps=cfg.steps,
                                                  hidden=list(cfg.hidden), seed=cfg.seed, state_path=state_path,
                                                  method=method, tol=tol))
        print(f"  peak RSS {method}: {out[method]['delta_mb']:.1f} MiB at tol {tol:.1e}", flush=True)
    return out


def run(cfg: Config) -> dict:
    problem = make_problem(cfg.trajectories, cfg.steps, cfg.hidden, cfg.seed)
    pretrain(problem, cfg.pretrain_epochs)
    ref = reference(problem, cfg)
    print(f"reference ready: {ref['check']}", flush=True)
    points, failures = [], []
    for method in METHODS:
        for tol in cfg.tolerances:
            try:
                points.append(measure(problem, method, tol, ref["gradient"], cfg.repeats))
            except (RuntimeError, FloatingPointError, AssertionError) as err:
                failures.append(dict(method=method, tol=tol, error=f"{type(err).__name__}: {err}"))
        print(f"  {method} done", flush=True)
    result = dict(config=dataclasses.asdict(cfg), reference_check=ref["check"], points=points, failures=failures,
                  floors=floors(points, cfg.target))
    if cfg.memory:
        with tempfile.NamedTemporaryFile(suffix=".pt") as state:
            torch.save(problem["model"].state_dict(), state.name)
            result["peak_rss"] = memory(points, cfg, state.name)
    return result


LABELS = {"wall_time": "wall-clock [s] (min of repeats)", "evals": "evaluations of f and reverse passes",
          "stored_floats": "floats stored between the passes"}


def plot(result: dict, path):
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    for ax, cost in zip(axes, COSTS):
        for k, method in enumerate(METHODS):
            pts = sorted((p for p in result["points"] if p["method"] == method), key=lambda p: p["tol"], reverse=True)
            style = "-o" if method.startswith("ctpg") else "--s"
            ax.loglog([max(p[cost], 1) if cost != "wall_time" else p[cost] for p in pts],
                      [max(p["rel_error"], 1e-16) for p in pts], style, ms=3, label=method, color=f"C{k}")
        ax.axhline(result["config"]["target"], color="k", ls=":", lw=1)
        ax.set_xlabel(LABELS[cost])
        ax.set_ylabel("relative error of dL/dtheta")
        ax.grid(True, which="major", alpha=0.3)
        ax.xaxis.set_minor_formatter(NullFormatter())
    axes[0].legend(fontsize=8)
    cfg = result["config"]
    fig.suptitle(f"Neural ODE on FitzHugh-Nagumo ({cfg['trajectories']} trajectories x {cfg['steps']} samples, "
                 f"2-{'-'.join(map(str, cfg['hidden']))}-2 tanh), dopri5, sweep rtol = atol; dotted: target")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def print_summary(result: dict):
    print(f"reference check: {result['reference_check']}")
    print(f"{'method':30s} {'tol':>7s} {'rel err':>9s} {'seconds':>9s} {'evals':>7s} {'floats':>10s}")
    for p in result["points"]:
        print(f"{p['method']:30s} {p['tol']:7.0e} {p['rel_error']:9.2e} {p['wall_time']:9.4f} {p['evals']:7d} "
              f"{p['stored_floats']:10d}")
    for f in result["failures"]:
        print(f"{f['method']:30s} {f['tol']:7.0e} failed: {f['error']}")
    fl = result["floors"]
    print(f"at relative error {fl['target']:.0e} (front interpolation):")
    for method, costs in fl["cost_at_target"].items():
        rss = (result.get("peak_rss") or {}).get(method)
        print(f"  {method:30s} " + "  ".join("never" if v is None else f"{k} {v:.4g}" for k, v in costs.items())
              + (f"  peak RSS {rss['delta_mb']:.1f} MiB" if rss else ""))
    for key in ("adjoint_over_interpolating_wall", "seminorm_over_interpolating_wall",
                "odeint_over_interpolating_wall", "odeint_over_interpolating_floats", "faster_than_odeint_adjoint",
                "ten_times_fewer_floats_than_odeint"):
        value = fl[key]
        print(f"  {key}: {value:.3g}" if isinstance(value, float) else f"  {key}: {value}")


def main(argv=None) -> dict:
    cfg, budget = parse_config(Config, argv, "ctpg bench odeint", __doc__.split("\n\n")[0], PRESETS)
    if not _has_torchdiffeq():
        sys.exit("torchdiffeq is not installed; it is an optional extra: pip install -e .[bench] "
                 "(or pip install torchdiffeq)")
    with torch_threads(cfg.threads):
        result = dict(budget=budget, **run(cfg))
    publish(cfg.out, "odeint_compare", result, plot, print_summary)
    return result


if __name__ == "__main__":
    main()
