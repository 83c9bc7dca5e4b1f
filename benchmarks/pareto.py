"""Pareto accuracy-vs-cost of the gradient estimators (paper, Figure 2).

For each initial state and each accuracy setting (BPTT-Euler step dt, CTPG and
Backsolve tolerances) we estimate dL/dtheta and dL/dx0 for one fixed policy and
record the relative error against a reference gradient together with four costs:
oracle evaluations (f, vjp, Jacobians per sample), MuJoCo simulator calls, wall-clock
and stored floats. Reference: exact for LQR (Van Loan, envs/lqr.py); otherwise a
float64 CTPG solve with dop853 at rtol = atol = 1e-12, checked here against central
differences of the accurately solved cost (the script stops if they disagree).

    python -m benchmarks.pareto --env lqr [--gain perturbed] [--full] [--out DIR]

Writes <out>/pareto_<env>_<gain>.json and .png and prints the floors: at a target
relative parameter-gradient error, how many times fewer oracle calls, seconds and
stored floats CTPG needs than BPTT-Euler, and whether CTPG's curve lies below
Backsolve's.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import pathlib
import statistics
import time

import torch

import ctpg
import envs


@dataclasses.dataclass
class Config:
    env: str = "lqr"
    """environment name (envs.names())"""
    gain: str = "optimal"
    """LQR only: 'optimal' (the paper's setting) or 'perturbed' (large parameter gradient)"""
    samples: int = 3
    """initial states; every setting is run once per state"""
    full: bool = False
    """full sweep: more samples and finer BPTT steps / tighter tolerances"""
    seed: int = 0
    out: str = "results/pareto"
    """output folder"""


def sweeps(cfg: Config) -> dict:
    """Estimator label -> list of (setting, estimator). Coarse to fine."""
    # LQR's floors are read at 1e-3 error, which BPTT-Euler reaches near dt = 5e-4
    dts = [0.1, 0.05, 0.02, 0.01, 0.005, 0.002, 0.001] + ([5e-4, 2.5e-4] if cfg.full or cfg.env == "lqr" else [])
    tols = [1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8] + ([1e-9, 1e-10] if cfg.full else [])
    out = {"BPTT-Euler": [(dt, ctpg.BPTT(dt=dt)) for dt in dts]}
    for method in ("dopri5", "tsit5", "bosh3"):
        out[f"CTPG-{method}"] = [(tol, ctpg.CTPG(method=method, rtol=tol, atol=tol)) for tol in tols]
    out["Backsolve"] = [(tol, ctpg.Backsolve(rtol=tol, atol=tol)) for tol in tols]
    out["Backsolve-ckpt10"] = [(tol, ctpg.Backsolve(rtol=tol, atol=tol, checkpoints=10)) for tol in tols]
    if cfg.env == "cartpole" and not cfg.full:   # finite-differenced MuJoCo: keep the default run short
        out = {k: v[1::2] if k.startswith("Back") else v for k, v in out.items()}
    return out


class LinearPolicy(torch.nn.Module):
    def __init__(self, K):
        super().__init__()
        self.K = torch.nn.Parameter(K.clone())

    def forward(self, x):
        return -x @ self.K.T


def make_policy(system, cfg: Config):
    """LQR: u = -Kx at the optimal or a perturbed gain; otherwise a seeded tanh MLP
    whose output is squashed to 0.9 x the action bounds (MuJoCo clamps at the bounds,
    where finite differences stop being meaningful)."""
    gen = torch.Generator().manual_seed(cfg.seed)
    if cfg.env == "lqr":
        K = system.optimal_gain()
        if cfg.gain == "perturbed":
            K = K + 0.5 * torch.randn(K.shape, generator=gen, dtype=system.dtype)
        return LinearPolicy(K)
    torch.manual_seed(cfg.seed)
    mlp = torch.nn.Sequential(torch.nn.Linear(system.state_dim, 16), torch.nn.Tanh(),
                              torch.nn.Linear(16, system.action_dim)).to(system.dtype)
    if system.action_low is None:
        return mlp
    low, high = system.action_low, system.action_high
    return torch.nn.Sequential(mlp, _Squash(low, high))


class _Squash(torch.nn.Module):
    def __init__(self, low, high):
        super().__init__()
        self.mid, self.half = (high + low) / 2, 0.9 * (high - low) / 2

    def forward(self, y):
        return self.mid + self.half * torch.tanh(y)


def gradient(estimator, system, policy, x0):
    """(flat dL/dtheta, dL/dx0, info) for one estimator on a batch x0."""
    policy.zero_grad(set_to_none=True)
    x = x0.clone().requires_grad_(True)
    loss, info = estimator(system, policy, x)
    loss.backward()
    theta = torch.cat([p.grad.reshape(-1) for p in policy.parameters()])
    return theta, x.grad.reshape(-1), info


def reference_gradient(system, policy, x0, cfg: Config):
    """Exact (LQR) or dop853 at 1e-12, the latter checked against central differences."""
    if cfg.env == "lqr":
        K = policy.K.detach().clone().requires_grad_(True)
        x = x0.clone().requires_grad_(True)
        system.exact_cost(K, x).mean().backward()
        return K.grad.reshape(-1), x.grad.reshape(-1)
    tight = ctpg.CTPG(method="dop853", rtol=1e-12, atol=1e-12)
    theta, gx, _ = gradient(tight, system, policy, x0)
    check_against_finite_differences(tight, system, policy, x0, theta)
    return theta, gx


def check_against_finite_differences(estimator, system, policy, x0, theta, eps=1e-6, rtol=1e-4):
    """Directional derivative along theta's own direction vs central differences of the
    forward cost. Raises RuntimeError if they disagree."""
    params = list(policy.parameters())
    direction = theta / theta.norm()
    chunks = torch.split(direction, [p.numel() for p in params])

    def cost_at(sign):
        with torch.no_grad():
            for p, v in zip(params, chunks):
                p.add_(sign * eps * v.view_as(p))
            loss = float(estimator(system, policy, x0)[0])
            for p, v in zip(params, chunks):
                p.sub_(sign * eps * v.view_as(p))
        return loss

    fd = (cost_at(1.0) - cost_at(-1.0)) / (2 * eps)
    analytic = float(theta.norm())
    if not math.isfinite(fd) or abs(fd - analytic) > rtol * abs(analytic) + 1e-10:
        raise RuntimeError(f"reference gradient disagrees with central differences: directional derivative "
                           f"{analytic:.10g} vs {fd:.10g}; the reference solve is not trustworthy")
    print(f"reference gradient checked: directional derivative {analytic:.8g}, central differences {fd:.8g}")


def run(cfg: Config) -> dict:
    system = envs.make(cfg.env)
    policy = make_policy(system, cfg)
    starts = system.sample_initial_state(cfg.samples, torch.Generator().manual_seed(cfg.seed + 1))
    records = []
    for i in range(cfg.samples):
        x0 = starts[i:i + 1]
        ref_theta, ref_x0 = reference_gradient(system, policy, x0, cfg)
        ref_full = torch.cat([ref_x0, ref_theta])
        for label, points in sweeps(cfg).items():
            for setting, estimator in points:
                system.counter.reset()
                start = time.perf_counter()
                try:
                    theta, gx, info = gradient(estimator, system, policy, x0)
                except (ctpg.SolverError, ctpg.NonFiniteError) as err:
                    print(f"  {label} {setting:g} on sample {i}: failed ({type(err).__name__})")
                    continue
                seconds = time.perf_counter() - start
                full = torch.cat([gx, theta])
                records.append(dict(
                    estimator=label, setting=setting, sample=i,
                    param_error=float((theta - ref_theta).norm() / ref_theta.norm()),
                    full_error=float((full - ref_full).norm() / ref_full.norm()),
                    oracle_evals=info.oracle_evals, sim_calls=system.counter.sim_calls,
                    wall_time=seconds, stored_floats=info.stored_floats))
        print(f"sample {i + 1}/{cfg.samples} done")
    return dict(config=dataclasses.asdict(cfg), records=records, curves=median_curves(records))


def median_curves(records) -> dict:
    """Per estimator and setting, the median over samples of each metric."""
    curves = {}
    for label in dict.fromkeys(r["estimator"] for r in records):
        rows = [r for r in records if r["estimator"] == label]
        points = []
        for setting in dict.fromkeys(r["setting"] for r in rows):
            group = [r for r in rows if r["setting"] == setting]
            points.append({key: statistics.median(r[key] for r in group) for key in
                           ("param_error", "full_error", "oracle_evals", "sim_calls", "wall_time", "stored_floats")}
                          | {"setting": setting})
        curves[label] = points
    return curves


def cheapest_at(curve, target: float, cost: str, error: str = "param_error"):
    """Median cost at which the median error first reaches `target`, interpolated
    log-log between the two settings that bracket it (None if no setting reaches it)."""
    points = sorted(curve, key=lambda p: p[cost])
    if points[0][error] <= target:
        return points[0][cost]
    for prev, cur in zip(points, points[1:]):
        if prev[error] > target >= cur[error]:
            if cur[error] <= 0 or prev[cost] <= 0:
                return cur[cost]
            w = math.log(prev[error] / target) / math.log(prev[error] / cur[error])
            return math.exp((1 - w) * math.log(prev[cost]) + w * math.log(cur[cost]))
    return None


def floors(curves, target: float) -> dict:
    """BPTT / CTPG cost ratios at the target error, and CTPG vs Backsolve."""
    out = {"target_param_error": target}
    ctpg_labels = [k for k in curves if k.startswith("CTPG")]
    for cost in ("oracle_evals", "wall_time", "stored_floats"):
        bptt = cheapest_at(curves["BPTT-Euler"], target, cost)
        best = min((c for c in (cheapest_at(curves[k], target, cost) for k in ctpg_labels) if c is not None),
                   default=None)
        out[f"bptt_over_ctpg_{cost}"] = None if bptt is None or best is None else bptt / best
    levels = [10.0 ** -e for e in range(2, 7)]
    below = []
    for level in levels:
        ctpg_cost = min((c for c in (cheapest_at(curves[k], level, "oracle_evals") for k in ctpg_labels)
                         if c is not None), default=None)
        back = cheapest_at(curves["Backsolve"], level, "oracle_evals")
        if ctpg_cost is not None:
            below.append(back is None or ctpg_cost <= back)
    out["ctpg_below_backsolve_at_1e-2..1e-6"] = all(below) if below else None
    return out


def plot(result, path: pathlib.Path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    axes_spec = [("oracle_evals", "oracle evaluations (f, vjp, Jacobian per sample)"),
                 ("wall_time", "wall-clock [s]"), ("stored_floats", "stored floats")]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    for ax, (cost, xlabel) in zip(axes, axes_spec):
        for label, curve in result["curves"].items():
            rows = [r for r in result["records"] if r["estimator"] == label]
            line, = ax.loglog([p[cost] for p in curve], [p["param_error"] for p in curve], "-o", ms=3, label=label)
            ax.scatter([r[cost] for r in rows], [r["param_error"] for r in rows], s=6, alpha=0.3,
                       color=line.get_color())
        ax.set_xlabel(xlabel)
        ax.set_ylabel("relative error of dL/dtheta")
        ax.grid(True, which="major", alpha=0.3)
    axes[0].legend(fontsize=8)
    cfg = result["config"]
    fig.suptitle(f"Gradient accuracy vs cost: {cfg['env']}" + (f" ({cfg['gain']} gain)" if cfg["env"] == "lqr" else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv=None) -> Config:
    parser = argparse.ArgumentParser(prog="ctpg bench pareto", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    for field in dataclasses.fields(Config):
        help_text = _field_docs().get(field.name, "")
        if field.type == "bool":
            parser.add_argument(f"--{field.name}", action="store_true", help=help_text)
        else:
            parser.add_argument(f"--{field.name}", type=type(field.default), default=field.default,
                                help=f"{help_text} (default: {field.default})")
    args = parser.parse_args(argv)
    if args.env not in envs.names():
        parser.error(f"unknown environment {args.env!r}; choose one of: {', '.join(envs.names())}")
    if args.gain not in ("optimal", "perturbed"):
        parser.error("--gain must be 'optimal' or 'perturbed'")
    cfg = Config(**vars(args))
    if cfg.full and cfg.samples == Config.samples:
        cfg.samples = 8
    return cfg


def _field_docs() -> dict:
    """Field docstrings of Config (the string literal after each field) as --help text."""
    import ast
    import inspect
    tree = ast.parse(inspect.getsource(Config))
    body, docs = tree.body[0].body, {}
    for node, after in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant):
            docs[node.target.id] = after.value.value
    return docs


def main(argv=None) -> dict:
    cfg = parse_args(argv)
    out = pathlib.Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    result = run(cfg)
    target = 1e-3 if cfg.env == "lqr" else 1e-2
    result["floors"] = floors(result["curves"], target)
    stem = f"pareto_{cfg.env}" + (f"_{cfg.gain}" if cfg.env == "lqr" else "")
    (out / f"{stem}.json").write_text(json.dumps(result, indent=1))
    plot(result, out / f"{stem}.png")
    print_summary(result)
    print(f"wrote {out / stem}.json and .png")
    return result


def print_summary(result):
    print(f"{'estimator':18s} {'setting':>9s} {'param err':>10s} {'full err':>10s} {'oracle':>9s} "
          f"{'sim':>8s} {'seconds':>8s} {'floats':>9s}")
    for label, curve in result["curves"].items():
        for p in curve:
            print(f"{label:18s} {p['setting']:9.0e} {p['param_error']:10.2e} {p['full_error']:10.2e} "
                  f"{p['oracle_evals']:9.0f} {p['sim_calls']:8.0f} {p['wall_time']:8.3f} {p['stored_floats']:9.0f}")
    for key, value in result["floors"].items():
        print(f"{key}: {value if not isinstance(value, float) else f'{value:.3g}'}")


if __name__ == "__main__":
    main()
