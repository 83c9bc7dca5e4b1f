"""Pareto accuracy-vs-cost of the gradient estimators (paper, Figure 2).

For each initial state and each accuracy setting (BPTT-Euler step dt, CTPG and
Backsolve tolerances) we estimate dL/dtheta and dL/dx0 for one fixed policy and
record the relative errors of dL/dtheta and of [dL/dx0, dL/dtheta] against a
reference gradient, with four costs: oracle evaluations (f, vjp, Jacobians per
sample), MuJoCo simulator calls, wall-clock (one torch thread) and stored floats.
Reference: exact for LQR (Van Loan, envs/lqr.py); otherwise CTPG at rtol = atol =
1e-12 in float64 (dopri5 forward for its quartic dense output, dop853 adjoint),
checked here against central differences of the accurately solved cost: the script
stops with a RuntimeError if they disagree.

    python -m benchmarks.pareto --env lqr [--gain optimal|stiff] [--smoke | --full] [--out DIR]
    python -m benchmarks.pareto --env cartpole --policy RUN_DIR     # a trained policy
    python -m benchmarks.pareto --env diffdrive --full --ray        # the states as Ray tasks
    python -m benchmarks.pareto --env juggler                       # impacts: benchmarks/pareto_contact.py

`--gain stiff` is an LQR whose closed loop has eigenvalues -1 and -500 (a rotated
high-gain affine policy u = -Kx + b, K and b in theta) over T = 2; `--policy` evaluates the
policy saved in a training run directory instead of the built-in one. Both add the
stiff CTPG solvers (Rosenbrock methods) to the sweep. Cost axes also include
`weighted_evals`: f and vjp evaluations plus each Jacobian weighted by what it
costs, 1 for the analytic Jacobians of lqr, diffdrive and quadrotor and d (one
reverse pass or difference per state component) for every other system.

Writes <out>/pareto_<env>[_<gain>].json and .png and prints the floors: at the target
error (1e-3 for LQR, 1e-2 otherwise) how many times fewer oracle calls, seconds,
stored floats (and simulator calls) the best CTPG solver needs than BPTT-Euler, and
whether CTPG is at most as dear as Backsolve, on each cost axis, at every error level
1e-2..1e-6 it reaches. A solve that fails (NaN, step-size collapse, more than
max_steps) is listed under "failures" and left out of the medians. At the LQR
optimum dL/dtheta is ~1e-8 (the infinite-horizon gain is optimal up to e^-2T), so its
relative error measures noise on a vanishing signal; there the floors are read on the
[dL/dx0, dL/dtheta] error instead (both are always reported).
"""
from __future__ import annotations

import dataclasses
import math
import time

import torch

import ctpg
import envs
from benchmarks._common import (AffinePolicy, FeedbackPlusMLP, LinearPolicy, floors, inner_squash,
                                linearised_lqr_gain, median_curves, plot, print_summary, seeded_mlp,
                                solver_floors)
from agents.tasks import SerialRunner
from benchmarks._config import parse_config_and_runner, publish, torch_threads


@dataclasses.dataclass
class Config:
    env: str = "lqr"
    """environment name (envs.names())"""
    gain: str = "perturbed"
    """LQR only: 'perturbed' (the optimal gain + 0.5 N(0,1): a large parameter gradient; the README's headline), 'optimal' (the paper's setting, where dL/dtheta ~ 1e-8 and its relative error is noise) or 'stiff' (eigenvalues -1, -500)"""
    policy: str = ""
    """a training run directory whose checkpoint gives the policy (empty: the built-in policy)"""
    methods: tuple = ("dopri5", "tsit5", "bosh3", "auto")
    """CTPG methods in the sweep (the stiff Rosenbrock methods are added with --gain stiff or --policy)"""
    samples: int = 0
    """initial states, every setting run once per state (0: 1 for --smoke, 3 by default, 8 for --full, 5 for the quadrotor's --full)"""
    seed: int = 0
    """seed of the policy (MLP initialisation, LQR gain perturbation); the initial states use seed + 1"""
    device: str = "cpu"
    """torch device of the system, policy and estimates (cpu, cuda)"""
    out: str = "results/pareto"
    """output folder"""


BUDGETS = {  # BPTT-Euler steps, CTPG / Backsolve tolerances; coarse to fine
    "smoke": ([0.1, 0.05], [1e-1, 1e-3]),
    "default": ([0.1, 0.05, 0.02, 0.01, 0.005, 0.002, 0.001, 5e-4], [10.0 ** -e for e in range(1, 8)]),
    "full": ([0.1, 0.05, 0.02, 0.01, 0.005, 0.002, 0.001, 5e-4, 2.5e-4], [10.0 ** -e for e in range(1, 11)]),
}
PRESETS = {"smoke": {}, "full": {}}   # --smoke / --full select the sweeps above and SAMPLES
PRESET_HELP = {"smoke": "1 initial state; BPTT dt 0.1, 0.05; tolerances 1e-1, 1e-3 (seconds)",
               "full": "the README's numbers: 8 initial states (5 for the quadrotor); BPTT dt down to "
                       "2.5e-4, tolerances down to 1e-10 (up to an hour on 2 cores)"}
SAMPLES = {"smoke": 1, "default": 3, "full": 8, "full-quadrotor": 5}   # quadrotor: ~15 min for 5 on 2 cores
BACKSOLVE_MAX_STEPS = 500   # successful Backsolve solves here need < 200; a diverging one would grind on


STIFF_METHODS = ("rodas5p", "ros34pw2", "rosenbrock23")
STIFF_GAIN = 500.0      # the fast closed-loop eigenvalue of --gain stiff
STIFF_HORIZON = 2.0     # long enough for 300+ stability-bound explicit steps
ANALYTIC_JACOBIANS = ("lqr", "diffdrive", "quadrotor")


def is_stiff_setting(cfg: Config) -> bool:
    return cfg.gain == "stiff" or bool(cfg.policy)


def sweeps(cfg: Config, budget: str) -> dict:
    """Estimator label -> list of (setting, estimator), coarse to fine."""
    dts, tols = BUDGETS[budget]
    if cfg.env == "lqr" and budget == "default":
        dts = dts + [2.5e-4]   # at the perturbed gain BPTT-Euler reaches 1e-3 only near dt = 4e-4
    if cfg.env == "lqr" and cfg.gain == "stiff":   # Euler is unstable for dt >= 2 / 500: stable steps only
        finer = [] if budget == "smoke" else [1e-4, 5e-5]
        dts = [dt for dt in dts + finer if dt < 2.0 / STIFF_GAIN] or [1.0 / STIFF_GAIN]
    out = {"BPTT-Euler": [(dt, ctpg.BPTT(dt=dt)) for dt in dts]}
    methods = tuple(cfg.methods) + (STIFF_METHODS if is_stiff_setting(cfg) else ())
    for method in dict.fromkeys(methods):   # 3rd-order bosh3 needs ~60k oracle calls at 1e-10
        low_order = method in ("bosh3", "ros34pw2", "rosenbrock23")
        out[f"CTPG-{method}"] = [(tol, ctpg.CTPG(method=method, rtol=tol, atol=tol))
                                 for tol in tols if not low_order or tol >= 1e-8]
    for label, checkpoints in (("Backsolve", 0), ("Backsolve-ckpt10", 10)):
        out[label] = [(tol, ctpg.Backsolve(rtol=tol, atol=tol, checkpoints=checkpoints,
                                           max_steps=BACKSOLVE_MAX_STEPS)) for tol in tols]
    return out


def make_policy(system, cfg: Config):
    """LQR: u = -Kx at the optimal gain, or that gain plus 0.5 N(0, 1) per entry (seeded).

    Otherwise a seeded tanh MLP (16 hidden units), all of whose weights are theta, with
    - quadrotor: u = u_hover + squash(-K x + mlp(x)), K the LQR gain of the hover
      linearisation (fixed, not in theta), the squash keeping u inside 90 % of the
      action bounds. Without K the MLP's thrust is ~0: the vehicle free-falls and
      tumbles to 0.05 rad of the Euler-angle singularity (pitch = pi/2) within T.
    - cartpole: u = 0.9 tanh(mlp(x)) with the MLP's last layer scaled by 0.2. At full
      scale the cart hits the slider limit (|p| = 4.8) at t ~ 1.5 s, a stiff, non-smooth
      contact where no gradient (reference included) means anything; tanh keeps |u| < 1,
      where MuJoCo clamps the control.
    - diffdrive: the plain MLP (it has no smooth stabilising feedback: Brockett).
    """
    if cfg.policy:
        import agents
        policy = agents.load_policy(cfg.policy, device=cfg.device)
        for p in policy.parameters():
            p.requires_grad_(True)
        return policy
    if cfg.env == "lqr" and cfg.gain == "stiff":
        like = dict(dtype=system.dtype, device=system.device)
        rotation = torch.tensor([[0.8, -0.6], [0.6, 0.8]], **like)
        K = rotation @ torch.diag(torch.tensor([1.0, STIFF_GAIN], **like)) @ rotation.T
        return AffinePolicy(K, torch.tensor([0.5, -0.3], **like))
    if cfg.env == "lqr":
        K = system.optimal_gain()
        if cfg.gain == "perturbed":
            gen = torch.Generator().manual_seed(cfg.seed)
            K = K + 0.5 * torch.randn(K.shape, generator=gen, dtype=system.dtype).to(K.device)
        return LinearPolicy(K)
    mlp = seeded_mlp(system, cfg.seed, scale=0.2 if cfg.env == "cartpole" else 1.0)
    if hasattr(system, "hover_action"):
        x_eq = torch.zeros(system.state_dim, dtype=system.dtype, device=system.device)
        K = linearised_lqr_gain(system, x_eq, system.hover_action)
        # Hover is the middle of the thrust range and the torques' bounds are symmetric,
        # so the squash (unit slope at its centre) adds -Kx + mlp(x) to hover and keeps
        # the action inside the bounds, where the estimators' saturation (a jump in the
        # adjoint's right-hand side) would stall the 1e-12 reference solve.
        assert torch.allclose((system.action_low + system.action_high) / 2, system.hover_action)
        return torch.nn.Sequential(FeedbackPlusMLP(torch.zeros_like(system.hover_action), K, mlp),
                                   inner_squash(system.action_low, system.action_high))
    if system.action_low is not None:
        return torch.nn.Sequential(mlp, inner_squash(system.action_low, system.action_high))
    return mlp


def gradient(estimator, system, policy, x0):
    """(flat dL/dtheta, dL/dx0, info) for one estimator on a batch x0."""
    policy.zero_grad(set_to_none=True)
    x = x0.clone().requires_grad_(True)
    loss, info = estimator(system, policy, x)
    loss.backward()
    theta = torch.cat([p.grad.reshape(-1) for p in policy.parameters()])
    return theta, x.grad.reshape(-1), info


REFERENCE = dict(method="dopri5", rtol=1e-12, atol=1e-12, adjoint_method="dop853")


def reference_gradient(system, policy, x0, cfg: Config):
    """Exact (LQR) or CTPG at 1e-12, the latter checked against central differences."""
    if cfg.env == "lqr" and not cfg.policy:
        K = policy.K.detach().clone().requires_grad_(True)
        bias = getattr(policy, "bias", None)
        bias = None if bias is None else bias.detach().clone().requires_grad_(True)
        x = x0.clone().requires_grad_(True)
        system.exact_cost(K, x, bias).mean().backward()
        theta = K.grad.reshape(-1) if bias is None else torch.cat([K.grad.reshape(-1), bias.grad])
        return theta, x.grad.reshape(-1)
    tight = ctpg.CTPG(**REFERENCE)
    theta, gx, _ = gradient(tight, system, policy, x0)
    check_against_finite_differences(tight, system, policy, x0, theta, gx)
    return theta, gx


def check_against_finite_differences(estimator, system, policy, x0, theta, gx=None, eps=1e-6, rtol=1e-4,
                                     seed=0):
    """Directional derivatives of the gradient g = [dL/dx0, dL/dtheta] (x0 part if gx is
    given) along g's own direction and along one seeded random direction, each against
    central differences of the forward cost (step eps). Raises RuntimeError if any differs
    by more than rtol ||g||: the first catches an error of g's size, the second an error
    across it. Central differences here are good to ~1e-6 relative."""
    params = list(policy.parameters())
    g = theta if gx is None else torch.cat([gx, theta])
    n_x = 0 if gx is None else gx.numel()
    random = torch.randn(g.shape, generator=torch.Generator().manual_seed(seed), dtype=g.dtype).to(g.device)
    for name, v in (("own", g / g.norm()), ("random", random / random.norm())):
        chunks = torch.split(v[n_x:], [p.numel() for p in params])

        def cost_at(sign):
            with torch.no_grad():
                for p, c in zip(params, chunks):
                    p.add_(sign * eps * c.view_as(p))
                loss = float(estimator(system, policy, x0 + sign * eps * v[:n_x].view(1, -1) if n_x else x0)[0])
                for p, c in zip(params, chunks):
                    p.sub_(sign * eps * c.view_as(p))
            return loss

        fd = (cost_at(1.0) - cost_at(-1.0)) / (2 * eps)
        analytic = float(g @ v)
        if not math.isfinite(fd) or abs(fd - analytic) > rtol * float(g.norm()) + 1e-10:
            raise RuntimeError(f"reference gradient disagrees with central differences along its {name} "
                               f"direction: {analytic:.10g} vs {fd:.10g} (|g| = {float(g.norm()):.4g}); "
                               "the reference solve is not trustworthy")
        print(f"reference gradient checked along its {name} direction: {analytic:.8g} vs central "
              f"differences {fd:.8g}")


def state_records(cfg: Config, budget: str, i: int) -> tuple[list, list]:
    """(records, failures) of every sweep point on initial state i, against that state's
    reference gradient. Builds its own system, policy and starts (all seeded), so the
    states are independent tasks: serial or on Ray, the records are the same (wall-clock
    aside). Runs with one torch thread."""
    with torch_threads(1):   # comparable wall-clock on a shared machine
        system = envs.make(cfg.env, device=cfg.device, **({"horizon": STIFF_HORIZON} if cfg.gain == "stiff" else {}))
        policy = make_policy(system, cfg)
        starts = system.sample_initial_state(cfg.samples, torch.Generator().manual_seed(cfg.seed + 1))
        x0 = starts[i:i + 1]
        ref_theta, ref_x0 = reference_gradient(system, policy, x0, cfg)
        ref_full = torch.cat([ref_x0, ref_theta])
        records, failures = sweep_records(sweeps(cfg, budget), lambda label: system, policy, x0,
                                          (ref_theta, ref_full), i, cfg)
    print(f"state {i + 1}/{cfg.samples} done", flush=True)
    return records, failures


def sweep_records(sweep: dict, system_for, policy, x0, reference, i: int, cfg) -> tuple[list, list]:
    """(records, failures) of every point of `sweep` (label -> [(setting, estimator)],
    coarse to fine) on the start x0 [1, d], each estimator run on `system_for(label)`
    (the same system for every label, except where a benchmark compares model variants)
    and measured against `reference` = (dL/dtheta, [dL/dx0, dL/dtheta]). A failed solve
    (SolverError, NonFiniteError, a non-finite gradient) is a failure, not a record; after
    MaxStepsExceeded the label's finer settings are skipped."""
    ref_theta, ref_full = reference
    records, failures = [], []
    progress = SweepProgress(i, cfg.samples, sum(len(points) for points in sweep.values()))
    for label, points in sweep.items():
        system = system_for(label)
        exhausted = False   # points run coarse to fine: after MaxStepsExceeded the rest need more steps
        for setting, estimator in points:
            if exhausted:
                failures.append(f"{label} {setting:g} on state {i}: skipped (a looser setting exceeded max_steps)")
                progress.point(label, setting)
                continue
            system.counter.reset()
            start = time.perf_counter()
            try:
                theta, gx, info = gradient(estimator, system, policy, x0)
            except (ctpg.SolverError, ctpg.NonFiniteError) as err:
                exhausted = isinstance(err, ctpg.MaxStepsExceeded)
                failures.append(f"{label} {setting:g} on state {i}: {type(err).__name__}")
                progress.point(label, setting)
                continue
            seconds = time.perf_counter() - start
            progress.point(label, setting)
            param_error = float((theta - ref_theta).norm() / ref_theta.norm())
            full_error = float((torch.cat([gx, theta]) - ref_full).norm() / ref_full.norm())
            if not (math.isfinite(param_error) and math.isfinite(full_error)):
                failures.append(f"{label} {setting:g} on state {i}: non-finite gradient")
                continue
            records.append(dict(
                estimator=label, setting=setting, sample=i, param_error=param_error, full_error=full_error,
                oracle_evals=info.oracle_evals, weighted_evals=weighted_evals(system, cfg),
                sim_calls=system.counter.sim_calls,
                wall_time=seconds, stored_floats=info.stored_floats,
                ref_param_norm=float(ref_theta.norm()), ref_full_norm=float(ref_full.norm())))
    return records, failures


class SweepProgress:
    """One line per sweep point on stdout: which, elapsed and the ETA. Settings run coarse
    to fine, so the fine ones left cost more than the mean so far: the ETA is a lower
    bound early in an estimator's sweep, and assumes the states left cost what this one does
    when they run one after another (serially; on Ray they overlap)."""

    def __init__(self, state: int, states: int, points: int):
        self.state, self.states, self.points = state, states, points
        self.done, self.start = 0, time.perf_counter()

    def point(self, label: str, setting: float) -> None:
        self.done += 1
        elapsed = time.perf_counter() - self.start
        per_point = elapsed / self.done
        this_state = per_point * (self.points - self.done)
        later = per_point * self.points * (self.states - self.state - 1)
        print(f"[pareto] state {self.state + 1}/{self.states}, point {self.done}/{self.points} ({label} "
              f"{setting:g}): {elapsed:.0f} s, ETA this state {this_state:.0f} s, all states ~{this_state + later:.0f} s",
              flush=True)


def run(cfg: Config, budget: str = "default", runner=None) -> dict:
    """Every state's records (state_records), as independent tasks of `runner`
    (agents.tasks; serial by default), gathered in the order of the states."""
    runner = runner or SerialRunner()
    per_state = runner.map(state_records, [dict(cfg=cfg, budget=budget, i=i) for i in range(cfg.samples)])
    records = [r for rows, _ in per_state for r in rows]
    failures = [f for _, rows in per_state for f in rows]
    return dict(config=dataclasses.asdict(cfg), budget=budget, records=records, failures=failures,
                curves=median_curves(records),
                reference="exact (Van Loan)" if cfg.env == "lqr" else f"CTPG {REFERENCE}, checked by central differences")


def weighted_evals(system, cfg: Config) -> float:
    """f + vjp evaluations plus Jacobians at their cost: 1 each where they are analytic
    (ANALYTIC_JACOBIANS), d each otherwise (d reverse passes or difference columns)."""
    c = system.counter
    weight = 1 if cfg.env in ANALYTIC_JACOBIANS else system.state_dim
    return c.f_evals + c.vjp_evals + weight * c.jac_evals


def parse_args(argv=None) -> tuple[Config, str, object]:
    cfg, budget, runner = parse_config_and_runner(Config, argv, "ctpg bench pareto", __doc__.split("\n\n")[0],
                                                  PRESETS, PRESET_HELP)
    if cfg.env not in envs.names():
        raise SystemExit(f"unknown environment {cfg.env!r}; choose one of: {', '.join(envs.names())}")
    if cfg.gain not in ("optimal", "perturbed", "stiff"):
        raise SystemExit("--gain must be 'optimal', 'perturbed' or 'stiff'")
    if cfg.samples <= 0:
        cfg.samples = SAMPLES.get(f"{budget}-{cfg.env}", SAMPLES[budget])
    return cfg, budget, runner


def main(argv=None) -> dict:
    cfg, budget, runner = parse_args(argv)
    if cfg.env == "juggler":   # impacts: CTPG with saltation against BPTT through soft contact
        from benchmarks import pareto_contact
        return pareto_contact.main(cfg, budget, runner)
    result = run(cfg, budget, runner)
    target = 1e-3 if cfg.env == "lqr" else 1e-2
    costs = ["oracle_evals", "weighted_evals", "wall_time", "stored_floats"]
    if any(r["sim_calls"] for r in result["records"]):
        costs.insert(1, "sim_calls")
    result["primary_error"] = "full_error" if cfg.env == "lqr" and cfg.gain == "optimal" else "param_error"
    result["floors"] = {error: floors(result["curves"], target, error, costs) for error in ("param_error", "full_error")}
    result["solver_floors"] = solver_floors(result["curves"], target, result["primary_error"], costs)
    stem = f"pareto_{cfg.env}" + (f"_{cfg.gain}" if cfg.env == "lqr" else "") + ("_trained" if cfg.policy else "")
    publish(cfg.out, stem, result, lambda res, path: plot(res, path, costs, {"param_error": target,
                                                                          "full_error": target}),
            print_summary)
    return result


if __name__ == "__main__":
    main()
