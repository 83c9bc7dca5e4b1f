"""Backsolve fails once the policy stabilises the system (paper, Section 3.3, Figure 3).

LQR with A = 0, B = Q = R = I, horizon T = 25, one initial state x0 = (1, 1). A
2-32-2 tanh MLP policy (float64, seeded, the same initial parameters for both runs)
is trained with Adam twice: once on ctpg.Backsolve's gradient (the neural-ODE adjoint,
which recomputes x(t) by integrating the closed loop backwards from x(T)) and once on
ctpg.CTPG's (which reads x(t) from the spline stored by the forward pass), both with
the same Runge-Kutta method and tolerances.

Measured per iteration: the loss (the forward solve's cost, accurate for both), the
reconstruction error ||x0 - x_rec(0)|| of Backsolve, the gradient norm, the oracle
evaluations (per-sample f and vjp calls, both passes) and the wall-clock of one
estimate. Every `check_every` iterations the gradient is also compared with a tight
CTPG reference at the same parameters (relative error of dL/dtheta).

The optimum is the infinite-horizon LQR cost with the Riccati gain K = I (P = I):
|x0|^2 (1 - e^(-2T)) = 2 (1 - e^-50); it is also computed from LQR.exact_cost.
A solver error of Backsolve (its reverse solve blowing up) ends its run and is
recorded as its point of failure.

    python -m benchmarks.backsolve_failure [--full] [--out DIR]
"""
from __future__ import annotations

import copy
import dataclasses
import math
import time

import torch

import ctpg
from benchmarks._config import parse_config, publish, torch_threads
from envs.lqr import LQR


@dataclasses.dataclass
class Config:
    iters: int = 300
    """Adam iterations per estimator"""
    lr: float = 3e-3
    """Adam learning rate; the paper's 1e-3 (--full) needs ~600 iterations to reach the failure, 3e-3 ~220"""
    horizon: float = 25.0
    """time horizon T"""
    x0: tuple = (1.0, 1.0)
    """the initial state"""
    hidden: int = 32
    """width of the MLP's tanh hidden layer"""
    zero_last_layer: bool = True
    """zero-initialise the last layer (start at u = 0); torch's default init starts at a loss near 3e3 and
    1000 iterations at lr 1e-3 then end far from the stabilising regime where Backsolve fails"""
    method: str = "dopri5"
    """Runge-Kutta method of both estimators"""
    rtol: float = 1e-6
    """relative tolerance of both estimators"""
    atol: float = 1e-8
    """absolute tolerance of both estimators"""
    check_every: int = 20
    """compare the gradient with a tight CTPG reference every this many iterations (0: never)"""
    ref_rtol: float = 1e-9
    """relative tolerance of the reference gradient"""
    ref_atol: float = 1e-11
    """absolute tolerance of the reference gradient"""
    threshold: float = 1e-2
    """reconstruction error ||x0 - x_rec(0)|| reported as the onset of failure"""
    seed: int = 0
    """seed of the policy initialisation"""
    threads: int = 1
    """torch intra-op threads; one is fastest for these tiny tensors and keeps timings steady on a shared machine"""
    device: str = "cpu"
    """torch device of the system, policy and solves (cpu, cuda; one state is far too small to gain on a GPU)"""
    out: str = "results/backsolve_failure"
    """output folder (backsolve_failure.json and .png)"""


PRESETS = {"smoke": dict(iters=3, check_every=2), "full": dict(iters=1000, lr=1e-3)}


def make_policy(cfg: Config) -> torch.nn.Module:
    torch.manual_seed(cfg.seed)
    net = torch.nn.Sequential(torch.nn.Linear(2, cfg.hidden), torch.nn.Tanh(),
                              torch.nn.Linear(cfg.hidden, 2)).to(dtype=torch.float64, device=cfg.device)
    if cfg.zero_last_layer:
        with torch.no_grad():
            net[2].weight.zero_()
            net[2].bias.zero_()
    return net


def optimum(system: LQR, x0: torch.Tensor, horizon: float) -> dict:
    """The optimal cost in closed form and from the exact cost of the Riccati gain."""
    closed_form = float((x0 ** 2).sum()) * (1 - math.exp(-2 * horizon))
    exact = float(system.exact_cost(system.optimal_gain(), x0, horizon=horizon).mean())
    return dict(closed_form=closed_form, exact_cost_riccati_gain=exact)


def flat_grad(grads) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for g in grads])


def train(estimator, policy, system, x0, cfg: Config) -> dict:
    """Adam on the estimator's gradient, one row per iteration; a solver error ends the run."""
    params = list(policy.parameters())
    optimiser = torch.optim.Adam(params, lr=cfg.lr)
    reference = ctpg.CTPG(method=cfg.method, rtol=cfg.ref_rtol, atol=cfg.ref_atol)
    rows, failure = [], None
    for it in range(cfg.iters):
        start = time.perf_counter()
        try:
            loss, info = estimator(system, policy, x0, cfg.horizon)
            grad = flat_grad(torch.autograd.grad(loss, params))
        except (ctpg.SolverError, ctpg.NonFiniteError) as err:
            failure = dict(iteration=it, error=f"{type(err).__name__}: {err}")
            print(f"  {estimator.name} failed at iteration {it}: {failure['error']}")
            break
        rec = info.reconstruction_error
        rows.append(dict(iteration=it, loss=float(loss.detach()), grad_norm=float(grad.norm()),
                         reconstruction_error=None if rec is None else float(rec.max()),
                         oracle_evals=info.oracle_evals, steps_forward=info.forward.steps_accepted,
                         steps_backward=info.backward.steps_accepted, wall_time=time.perf_counter() - start))
        if cfg.check_every and it % cfg.check_every == 0:
            try:
                ref = flat_grad(torch.autograd.grad(reference(system, policy, x0, cfg.horizon)[0], params))
                rows[-1]["grad_rel_error"] = float((grad - ref).norm() / ref.norm())
            except (ctpg.SolverError, ctpg.NonFiniteError):
                pass    # no reference at this point
        for p, g in zip(params, torch.split(grad, [p.numel() for p in params])):
            p.grad = g.view_as(p).clone()
        optimiser.step()
    return dict(rows=rows, failure=failure)


def summarise(run: dict, best: float, cfg: Config) -> dict:
    """Gaps to the optimum, when the run got within 2 %, and when reconstruction failed."""
    rows = run["rows"]
    if not rows:
        return dict(iterations_run=0, failure=run["failure"])
    losses = [r["loss"] for r in rows]
    i_best = min(range(len(losses)), key=losses.__getitem__)
    within = [r["iteration"] for r in rows if r["loss"] <= 1.02 * best]
    recs = [r["reconstruction_error"] for r in rows if r["reconstruction_error"] is not None]
    over = [r["iteration"] for r in rows if (r["reconstruction_error"] or 0.0) > cfg.threshold]
    checks = [r["grad_rel_error"] for r in rows if "grad_rel_error" in r]
    return dict(iterations_run=len(rows), final_loss=losses[-1], final_gap=losses[-1] / best - 1,
                best_loss=losses[i_best], best_iteration=rows[i_best]["iteration"],
                best_gap=losses[i_best] / best - 1, first_within_2pct=within[0] if within else None,
                final_within_2pct=losses[-1] <= 1.02 * best,
                max_reconstruction_error=max(recs) if recs else None,
                final_reconstruction_error=recs[-1] if recs else None,
                first_reconstruction_error_over_threshold=over[0] if over else None,
                max_grad_rel_error=max(checks) if checks else None,
                final_grad_rel_error=checks[-1] if checks else None,
                total_oracle_evals=sum(r["oracle_evals"] for r in rows),
                total_wall_time=sum(r["wall_time"] for r in rows), failure=run["failure"])


def plot(result: dict, path):
    import matplotlib.pyplot as plt
    best = result["optimum"]["closed_form"]
    fig, axes = plt.subplots(1, 2, figsize=(13, 5), sharey=True, gridspec_kw=dict(wspace=0.35))
    errors = [v for run in result["runs"].values() for r in run["rows"]
              for v in (r["reconstruction_error"], r.get("grad_rel_error")) if v]
    limits = (1e-17, 10 * max(errors, default=1.0))
    for ax, name in zip(axes, ("backsolve", "ctpg")):
        rows, summary = result["runs"][name]["rows"], result["summary"][name]
        its = [r["iteration"] for r in rows]
        ax.semilogy(its, [r["loss"] for r in rows], color="tab:blue", label="loss")
        ax.axhline(best, color="k", ls="--", lw=1, label=f"optimum {best:.4g}")
        ax.set_xlabel("iteration")
        ax.set_ylabel("loss", color="tab:blue")
        twin = ax.twinx()
        twin.set_yscale("log")
        if name == "backsolve":
            twin.plot(its, [max(r["reconstruction_error"], 1e-16) for r in rows], color="tab:red",
                      label="||x0 - x_rec(0)||")
            twin.axhline(result["config"]["threshold"], color="tab:red", ls=":", lw=1)
        checked = [r for r in rows if "grad_rel_error" in r]
        twin.plot([r["iteration"] for r in checked], [max(r["grad_rel_error"], 1e-16) for r in checked], "o",
                  ms=3, color="tab:orange", label="rel. gradient error vs tight CTPG")
        twin.set_ylim(*limits)
        twin.set_ylabel("error (floored at 1e-16)", color="tab:red")
        if summary["failure"]:
            ax.axvline(summary["failure"]["iteration"], color="k", lw=2, label="solver failure")
        title = {"backsolve": "Backsolve (neural-ODE adjoint)", "ctpg": "CTPG (stored spline)"}[name]
        ax.set_title(f"{title}: final loss {summary.get('final_loss', float('nan')):.4g}")
        handles = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
        ax.legend(handles, [h.get_label() for h in handles], fontsize=8, ncol=2, loc="upper center",
                  bbox_to_anchor=(0.5, -0.12))
    cfg = result["config"]
    fig.suptitle(f"LQR T={cfg['horizon']:g}, {cfg['method']} rtol={cfg['rtol']:g} atol={cfg['atol']:g}, "
                 f"Adam lr={cfg['lr']:g}")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def print_summary(result: dict):
    runs, every = result["runs"], max(1, result["config"]["iters"] // 10)
    print(f"{'iter':>5s} | {'Backsolve loss':>14s} {'||x0-x_rec||':>12s} {'grad norm':>10s} | "
          f"{'CTPG loss':>10s} {'grad norm':>10s}")
    longest = max(len(runs["backsolve"]["rows"]), len(runs["ctpg"]["rows"]))
    for i in sorted(set(range(0, longest, every)) | {longest - 1}):
        b = runs["backsolve"]["rows"][i] if i < len(runs["backsolve"]["rows"]) else None
        c = runs["ctpg"]["rows"][i] if i < len(runs["ctpg"]["rows"]) else None
        left = f"{b['loss']:14.6g} {b['reconstruction_error']:12.3e} {b['grad_norm']:10.3g}" if b else " " * 38
        right = f"{c['loss']:10.6g} {c['grad_norm']:10.3g}" if c else ""
        print(f"{i:5d} | {left} | {right}")
    opt = result["optimum"]
    print(f"optimum: |x0|^2 (1 - e^-2T) = {opt['closed_form']:.12g}; "
          f"exact_cost(optimal_gain) = {opt['exact_cost_riccati_gain']:.12g}")
    for name, s in result["summary"].items():
        fail = s["failure"]
        if not s["iterations_run"]:
            print(f"{name:9s}: failed at the first iteration: {fail['error']}")
            continue
        print(f"{name:9s}: final loss {s['final_loss']:.6g} (gap {100 * s['final_gap']:+.2f} %), best "
              f"{s['best_loss']:.6g} at {s['best_iteration']} (gap {100 * s['best_gap']:+.2f} %), within 2 % "
              f"first at {s['first_within_2pct']}, max rel. gradient error {s['max_grad_rel_error'] or 0:.3g}"
              + (f", failed at {fail['iteration']}" if fail else ""))
    s = result["summary"]["backsolve"]
    if s["iterations_run"]:
        print(f"backsolve: reconstruction error first > {result['config']['threshold']:g} at iteration "
              f"{s['first_reconstruction_error_over_threshold']}, max {s['max_reconstruction_error']:.3g}, "
              f"final {s['final_reconstruction_error']:.3g}")


def run(cfg: Config) -> dict:
    """Both training runs from the same initial policy, and their summaries."""
    system = LQR(horizon=cfg.horizon, device=cfg.device)
    x0 = torch.tensor([cfg.x0], dtype=torch.float64, device=cfg.device)
    policy = make_policy(cfg)
    best = optimum(system, x0, cfg.horizon)
    runs = {}
    for estimator in (ctpg.Backsolve(method=cfg.method, rtol=cfg.rtol, atol=cfg.atol),
                      ctpg.CTPG(method=cfg.method, rtol=cfg.rtol, atol=cfg.atol)):
        print(f"training with {estimator!r} for {cfg.iters} iterations")
        runs[estimator.name] = train(estimator, copy.deepcopy(policy), system, x0, cfg)
    summary = {name: summarise(run, best["closed_form"], cfg) for name, run in runs.items()}
    return dict(config=dataclasses.asdict(cfg), optimum=best, summary=summary, runs=runs)


def main(argv=None) -> dict:
    cfg, budget = parse_config(Config, argv, "ctpg bench backsolve-failure", __doc__.split("\n\n")[0], PRESETS)
    with torch_threads(cfg.threads):
        result = dict(budget=budget, **run(cfg))
    publish(cfg.out, "backsolve_failure", result, plot, print_summary)
    return result


if __name__ == "__main__":
    main()
