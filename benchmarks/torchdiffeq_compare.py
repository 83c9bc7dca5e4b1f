"""Policy gradients from ctpg and from torchdiffeq, side by side: accuracy vs cost.

For a fixed policy and a batch of initial states, dL/dtheta (L the batch mean of
int_0^T w dt + J(x(T))) is computed at rtol = atol = each tolerance of the sweep by
torchdiffeq.odeint_adjoint on the state [x, running cost] (dopri5) with the default
adjoint norm ("adjoint") and with adjoint_options=dict(norm="seminorm"); by autograd
through torchdiffeq.odeint (dopri5, "direct"); and by ctpg.CTPG (dopri5, tsit5). The
"-compiled" variants run the same under torch.compile: ctpg.CTPG(compile=True) (its
forward rhs and backward stage compiled; "-captured": with sync_every=16, whole step
attempts compiled) and torchdiffeq's odeint with a compiled ODE function
(autograd through the compiled graph), the same chance for both; their first call,
which compiles, is a warm-up outside the sweep whose seconds are reported.
Recorded per point: relative error ||g - g_ref|| / ||g_ref||, wall-clock (minimum
over `repeats`) and function evaluations. One convention for the latter: per-sample
evaluations of the closed loop f(x, pi(x)) or of one VJP of it, forward + backward;
a torchdiffeq call of the ODE function on N states counts N (its VJPs are counted by
a tap on the function's output), ctpg reports the same (info.oracle_evals).

Systems: LQR (A = 0, B = Q = R = I), u = -Kx at a perturbed Riccati gain, exact
reference (autograd through LQR.exact_cost); differential drive with a seeded tanh
MLP, reference ctpg.CTPG(dopri5, rtol = atol = 1e-12) checked against central
differences of the cost. Floor check: along each method's error-vs-wall-clock front
(log-log interpolation), is CTPG-dopri5 faster than odeint_adjoint at every relative
error 1e-2 .. 1e-6?

    pip install -e .[bench]        # torchdiffeq is an optional extra
    python -m benchmarks.torchdiffeq_compare [--full] [--out DIR]
"""
from __future__ import annotations

import dataclasses
import math
import sys
import time

import torch
from torch.nn.utils import parameters_to_vector, vector_to_parameters

import ctpg
import envs
from benchmarks._config import parse_config, publish, torch_threads
from ctpg.estimators.compiled import compilable
from ctpg.system import uncounted
from envs.diffdrive import observation_features

METHODS = ("adjoint", "adjoint-seminorm", "direct", "direct-compiled", "ctpg-dopri5", "ctpg-tsit5",
           "ctpg-dopri5-compiled", "ctpg-dopri5-captured")
CTPG_METHODS = ("ctpg-dopri5", "ctpg-tsit5", "ctpg-dopri5-compiled", "ctpg-dopri5-captured")
LEVELS = (1e-2, 1e-3, 1e-4, 1e-5, 1e-6)
EVALS = "per-sample evaluations of f or of one VJP of f, forward + backward (a batched call on N states counts N)"


@dataclasses.dataclass
class Config:
    systems: tuple = ("lqr", "diffdrive")
    """systems to compare on (lqr, diffdrive)"""
    tolerances: tuple = (1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8, 1e-9, 1e-10)
    """rtol = atol values of the sweep"""
    repeats: int = 3
    """wall-clock is the minimum over this many repeats"""
    batch: int = 4
    """initial states per gradient (seeded samples of the system's initial distribution)"""
    lqr_horizon: float = 10.0
    """LQR horizon (the paper's Figure 2 setting)"""
    gain_perturbation: float = 0.3
    """LQR: K = K_riccati + this x a seeded standard normal matrix"""
    reference_method: str = "dopri5"
    """method of the rtol = atol = 1e-12 CTPG reference (diffdrive); dop853 keeps only a cubic Hermite
    spline, which floors its gradient error near 1e-8 here, dopri5 and tsit5 agree to 1e-13"""
    hidden: tuple = (32,)
    """diffdrive: hidden widths of the tanh MLP policy (e.g. 64 64)"""
    fd_directions: int = 2
    """diffdrive: random directions in which the reference is checked by central differences"""
    seed: int = 0
    """seed of the initial states, the LQR perturbation and the MLP"""
    threads: int = 1
    """torch intra-op threads; one is fastest for these tiny tensors and keeps timings steady on a shared machine"""
    device: str = "cpu"
    """torch device of the systems, policies and solves (cpu, cuda; the clock waits for the device)"""
    out: str = "results/torchdiffeq_compare"
    """output folder (torchdiffeq_compare.json and .png)"""
    tag: str = ""
    """suffix of the output files (torchdiffeq_compare_<tag>.json), e.g. to keep runs of several batch sizes"""


PRESETS = {"smoke": dict(tolerances=(1e-3, 1e-6), repeats=1, batch=2, fd_directions=1),
           "full": dict(tolerances=tuple(10 ** (-k / 2) for k in range(1, 21)), repeats=5, batch=8)}


class FeatureMLP(torch.nn.Sequential):
    """u = MLP([x, sin h, cos h]) for the differential drive."""

    def forward(self, x):
        return super().forward(observation_features(x))


def flat(grads) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for g in grads])


def ctpg_gradient(problem: dict, method: str, tol: float, variant: str = ""):
    """(flat dL/dtheta, per-sample evals, raw counts) from ctpg.CTPG; variant "compiled"
    (compile=True) or "captured" (compile=True, sync_every=16: whole attempts compiled)."""
    options = dict(compiled=dict(compile=True), captured=dict(compile=True, sync_every=16)).get(variant, {})
    estimator = ctpg.CTPG(method=method, rtol=tol, atol=tol, **options)
    loss, info = estimator(problem["system"], problem["policy"], problem["x0"], problem["T"])
    grad = flat(torch.autograd.grad(loss, problem["params"]))
    return grad, info.oracle_evals, dict(forward=info.forward.oracle, backward=info.backward.oracle)


def lqr_problem(cfg: Config) -> dict:
    """u = -Kx = x W' with W = -K a bias-free torch.nn.Linear; exact gradient through exact_cost."""
    system = envs.make("lqr", horizon=cfg.lqr_horizon, device=cfg.device)
    gen = torch.Generator().manual_seed(cfg.seed)
    noise = torch.randn(2, 2, generator=gen, dtype=torch.float64).to(cfg.device)
    K = system.optimal_gain() + cfg.gain_perturbation * noise
    x0 = system.sample_initial_state(cfg.batch, gen)
    policy = torch.nn.Linear(2, 2, bias=False).to(dtype=torch.float64, device=cfg.device)
    with torch.no_grad():
        policy.weight.copy_(-K)
    K = K.clone().requires_grad_(True)
    reference = -torch.autograd.grad(system.exact_cost(K, x0).mean(), K)[0].reshape(-1)   # dL/dW = -dL/dK
    problem = dict(system=system, policy=policy, x0=x0, T=system.horizon, params=[policy.weight],
                   reference=reference)
    tight = ctpg_gradient(problem, cfg.reference_method, 1e-12)[0]
    problem["check"] = dict(reference="exact (autograd through LQR.exact_cost)",
                            tight_ctpg_rel_error=float((tight - reference).norm() / reference.norm()),
                            closed_loop_eigenvalues_real=torch.linalg.eigvals(-K.detach()).real.tolist())
    return problem


def diffdrive_problem(cfg: Config) -> dict:
    system = envs.make("diffdrive", device=cfg.device)
    torch.manual_seed(cfg.seed)
    widths = (7,) + tuple(cfg.hidden)
    layers = [m for a, b in zip(widths[:-1], widths[1:]) for m in (torch.nn.Linear(a, b), torch.nn.Tanh())]
    policy = FeatureMLP(*layers, torch.nn.Linear(widths[-1], 2))
    policy = policy.to(dtype=torch.float64, device=cfg.device)
    x0 = system.sample_initial_state(cfg.batch, torch.Generator().manual_seed(cfg.seed))
    problem = dict(system=system, policy=policy, x0=x0, T=system.horizon, params=list(policy.parameters()))
    problem["reference"] = ctpg_gradient(problem, cfg.reference_method, 1e-12)[0]
    problem["check"] = finite_difference_check(problem, cfg)
    return problem


def finite_difference_check(problem: dict, cfg: Config, eps: float = 1e-5) -> dict:
    """Directional derivatives g_ref . v against central differences of the 1e-12 cost."""
    g, params = problem["reference"], problem["params"]
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    directions = [g] + [torch.randn(g.shape, generator=gen, dtype=g.dtype).to(g.device)
                        for _ in range(cfg.fd_directions - 1)]
    estimator = ctpg.CTPG(method=cfg.reference_method, rtol=1e-12, atol=1e-12)
    theta, errors = parameters_to_vector(params).detach(), []
    for v in directions:
        v, costs = v / v.norm(), []
        with torch.no_grad():
            for sign in (1.0, -1.0):
                vector_to_parameters(theta + sign * eps * v, params)
                costs.append(float(estimator(problem["system"], problem["policy"], problem["x0"], problem["T"])[0]))
            vector_to_parameters(theta, params)
        errors.append(abs((costs[0] - costs[1]) / (2 * eps) - float(g @ v)) / float(g.norm()))
    return dict(reference=f"ctpg.CTPG({cfg.reference_method}, rtol=atol=1e-12)", fd_eps=eps,
                fd_rel_errors=errors, fd_max_rel_error=max(errors))


class ClosedLoop(torch.nn.Module):
    """[x, c] -> [f(x, pi(x)), w(x, pi(x))] for torchdiffeq; counts its calls and their
    VJPs. With `compiled`, the function of y runs under torch.compile (compiled once per
    problem and kept in problem["compiled_rhs"], like a user's compiled module)."""

    def __init__(self, system, policy, compiled=None):
        super().__init__()
        self.system, self.policy, self.calls, self.vjps = system, policy, 0, 0
        self.rhs = compiled or self.closed_loop

    def closed_loop(self, y):
        x = y[:, :-1]
        u = self.policy(x)
        f = uncounted(type(self.system).f)      # counted here, per call of this function
        return torch.cat([f(self.system, x, u), self.system.running_cost(x, u)[:, None]], 1)

    def forward(self, t, y):
        self.calls += 1
        return VJPTap.apply(self.rhs(y), self)


class VJPTap(torch.autograd.Function):
    """Identity whose backward counts one VJP of the ODE function (on `module.vjps`)."""

    @staticmethod
    def forward(ctx, out, module):
        ctx.module = module
        return out.view_as(out)

    @staticmethod
    def backward(ctx, grad):
        ctx.module.vjps += 1
        return grad, None


def torchdiffeq_gradient(problem: dict, variant: str, tol: float):
    """(flat dL/dtheta, per-sample evals, raw counts) from torchdiffeq."""
    import torchdiffeq
    system, x0 = problem["system"], problem["x0"]
    compiled = None
    if variant == "direct-compiled":
        if "compiled_rhs" not in problem:
            problem["compiled_rhs"] = torch.compile(ClosedLoop(system, problem["policy"]).closed_loop)
        compiled, variant = problem["compiled_rhs"], "direct"
    func = ClosedLoop(system, problem["policy"], compiled)
    y0 = torch.cat([x0, x0.new_zeros(x0.shape[0], 1)], 1)
    t = torch.tensor([0.0, problem["T"]], dtype=x0.dtype, device=x0.device)
    if variant == "direct":
        yT = torchdiffeq.odeint(func, y0, t, rtol=tol, atol=tol, method="dopri5")[-1]
    else:
        options = dict(norm="seminorm") if variant == "adjoint-seminorm" else None
        yT = torchdiffeq.odeint_adjoint(func, y0, t, rtol=tol, atol=tol, method="dopri5",
                                        adjoint_options=options, adjoint_params=tuple(problem["params"]))[-1]
    loss = (yT[:, -1] + system.terminal_cost(yT[:, :-1])).mean()
    grad = flat(torch.autograd.grad(loss, problem["params"]))
    return grad, (func.calls + func.vjps) * x0.shape[0], dict(f_calls=func.calls, vjp_calls=func.vjps)


def measure(problem: dict, method: str, tol: float, repeats: int) -> dict:
    """One sweep point: relative gradient error, min wall-clock over repeats, evaluations."""
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        if method.startswith("ctpg"):
            _, solver, *variant = method.split("-")         # ctpg-dopri5[-compiled|-captured]
            grad, evals, raw = ctpg_gradient(problem, solver, tol, *variant)
        else:
            grad, evals, raw = torchdiffeq_gradient(problem, method, tol)
        if grad.is_cuda:
            torch.cuda.synchronize(grad.device)
        seconds.append(time.perf_counter() - start)
    ref = problem["reference"]
    return dict(method=method, tol=tol, rel_error=float((grad - ref).norm() / ref.norm()),
                wall_time=min(seconds), evals=evals, raw_counts=raw)


def cost_at(points: list, level: float, cost: str = "wall_time"):
    """Cost at which a method's error-vs-cost front reaches relative error `level`,
    interpolated log-log between the bracketing front points; None if it never does."""
    front, cheapest = [], math.inf
    for p in sorted(points, key=lambda p: p["rel_error"]):       # most accurate first
        if p[cost] < cheapest:
            front.append(p)
            cheapest = p[cost]
    if not front or front[0]["rel_error"] > level:
        return None
    if front[-1]["rel_error"] <= level:
        return front[-1][cost]
    for a, b in zip(front, front[1:]):
        if a["rel_error"] <= level <= b["rel_error"]:
            w = math.log(level / max(a["rel_error"], 1e-300)) / math.log(b["rel_error"] / max(a["rel_error"], 1e-300))
            return math.exp((1 - w) * math.log(a[cost]) + w * math.log(b[cost]))


def floor_check(points: list) -> dict:
    """Wall-clock of each method at each error level, and whether CTPG-dopri5 is below odeint_adjoint.

    Per level, below is True when CTPG reaches the level faster or the other never
    reaches it, False when the other is faster or only the other reaches it, None when
    neither reaches it within the sweep; `holds` means no level is False.
    """
    walls, evals = ({m: [cost_at([p for p in points if p["method"] == m], e, cost) for e in LEVELS] for m in METHODS}
                    for cost in ("wall_time", "evals"))
    out = dict(levels=list(LEVELS), wall_at_level=walls, evals_at_level=evals)
    for adjoint in ("adjoint", "adjoint-seminorm"):
        verdicts = []
        for e, mine, theirs in zip(LEVELS, walls["ctpg-dopri5"], walls[adjoint]):
            below = None if mine is None and theirs is None else (
                mine is not None and (theirs is None or mine < theirs))
            verdicts.append(dict(level=e, ctpg=mine, other=theirs, below=below,
                                 ratio=None if None in (mine, theirs) else theirs / mine))
        out[f"ctpg-dopri5_below_{adjoint}"] = dict(holds=all(v["below"] is not False for v in verdicts),
                                                   per_level=verdicts)
    # the faster-backward floor: CTPG >= 1.3x faster than autograd through odeint at 1e-4 and 1e-6;
    # reported for eager CTPG, for the best CTPG (compiled included) and against a compiled odeint
    def best(methods):
        return [min((w for w in ws if w is not None), default=None) for ws in zip(*(walls[m] for m in methods))]

    for key, theirs_method, ours in (("direct_over_ctpg_wall", "direct", best(CTPG_METHODS)),
                                     ("direct_over_eager_ctpg_wall", "direct", best(CTPG_METHODS[:2])),
                                     ("compiled_direct_over_ctpg_wall", "direct-compiled", best(CTPG_METHODS))):
        speedup = {f"{e:g}": None if None in (mine, theirs) else theirs / mine
                   for e, mine, theirs in zip(LEVELS, ours, walls[theirs_method])}
        out[key] = dict(per_level=speedup, holds=all(
            speedup[k] is not None and speedup[k] >= 1.3 for k in ("0.0001", "1e-06")))
    return out


def plot(result: dict, path):
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter
    systems = list(result["systems"])
    fig, axes = plt.subplots(len(systems), 2, figsize=(12, 4.4 * len(systems)), squeeze=False)
    for row, name in zip(axes, systems):
        points = result["systems"][name]["points"]
        for ax, (cost, label) in zip(row, (("wall_time", "wall-clock [s] (min of repeats)"),
                                           ("evals", "function evaluations (per sample: f or VJP, fwd + bwd)"))):
            for m in METHODS:
                pts = sorted((p for p in points if p["method"] == m), key=lambda p: p["tol"], reverse=True)
                ax.loglog([p[cost] for p in pts], [max(p["rel_error"], 1e-16) for p in pts], "-o", ms=3,
                          label=m if m.startswith("ctpg") else f"torchdiffeq {m}")
            ax.axhspan(1e-6, 1e-2, color="0.9", zorder=0)
            ax.set_xlabel(label)
            ax.set_ylabel("relative error of dL/dtheta")
            ax.set_title(f"{name}")
            ax.grid(True, which="major", alpha=0.3)
            ax.xaxis.set_minor_formatter(NullFormatter())    # labelled minor ticks collide
        row[0].legend(fontsize=8)
    fig.suptitle("ctpg vs torchdiffeq, dopri5 unless named; sweep rtol = atol; shaded: floor-check band")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def print_summary(result: dict):
    for name, res in result["systems"].items():
        print(f"\n{name}: reference check {res['check']}\n{'method':17s} {'tol':>7s} {'rel err':>9s} "
              f"{'seconds':>9s} {'evals':>9s}")
        for p in res["points"]:
            print(f"{p['method']:17s} {p['tol']:7.0e} {p['rel_error']:9.2e} {p['wall_time']:9.4f} {p['evals']:9d}")
        for f in res["failures"]:
            print(f"{f['method']:17s} {f['tol']:7.0e} failed: {f['error']}")
        print(f"{'wall-clock [s] / evals at':26s}" + "".join(f"{e:>16.0e}" for e in LEVELS))
        for m, walls in res["floor"]["wall_at_level"].items():
            print(f"  {m:24s}" + "".join(f"{'never':>16s}" if w is None else f"{w:9.4f} /{n:5.0f}"
                                         for w, n in zip(walls, res["floor"]["evals_at_level"][m])))
        for adjoint in ("adjoint", "adjoint-seminorm"):
            check = res["floor"][f"ctpg-dopri5_below_{adjoint}"]
            where = {flag: ", ".join(f"{v['level']:.0e}" for v in check["per_level"] if v["below"] is flag)
                     for flag in (False, None)}
            ratios = " ".join("-" if v["ratio"] is None else f"{v['ratio']:.2g}" for v in check["per_level"])
            print(f"  CTPG-dopri5 below odeint_adjoint ({adjoint}) at 1e-2..1e-6: "
                  + ("holds" if check["holds"] else f"does NOT hold at {where[False]}")
                  + (f"; neither reaches {where[None]}" if where[None] else "")
                  + f"; wall-clock ratio {adjoint}/ctpg per level: {ratios}")
        for key, label in (("direct_over_ctpg_wall", "autograd through odeint over the best CTPG"),
                           ("direct_over_eager_ctpg_wall", "autograd through odeint over the best eager CTPG"),
                           ("compiled_direct_over_ctpg_wall", "autograd through compiled odeint over the best CTPG")):
            direct = res["floor"][key]
            print(f"  {label}, wall-clock per level: "
                  + " ".join(f"{k} {'-' if v is None else f'{v:.2f}'}" for k, v in direct["per_level"].items())
                  + f"; >= 1.3 at 1e-4 and 1e-6: {'holds' if direct['holds'] else 'does NOT hold'}")
        print("  first call of the compiled variants (compilation included; untimed warm-up): "
              + (", ".join(f"{m} {v:.1f} s" for m, v in res["warmup_seconds"].items()) or "none"))


def run(cfg: Config) -> dict:
    """Every method at every tolerance on every system, and the floor check."""
    builders = {"lqr": lqr_problem, "diffdrive": diffdrive_problem}
    unknown = [s for s in cfg.systems if s not in builders]
    if unknown:
        sys.exit(f"unknown system(s) {unknown}; choose from {', '.join(builders)}")
    result = dict(config=dataclasses.asdict(cfg), evals_convention=EVALS, systems={})
    for name in cfg.systems:
        problem = builders[name](cfg)
        print(f"{name}: reference ready ({problem['check']})")
        points, failures, warmup = [], [], {}
        not_compilable = compilable(problem["system"], problem["policy"], problem["params"])
        for method in METHODS:
            for tol in cfg.tolerances:
                compiled = method.endswith(("-compiled", "-captured"))
                if method.startswith("ctpg") and compiled and not_compilable:
                    failures.append(dict(method=method, tol=tol, error=f"not compilable: {not_compilable}"))
                    continue
                try:
                    if compiled and method not in warmup:     # compile outside the sweep
                        warmup[method] = measure(problem, method, tol, 1)["wall_time"]
                    points.append(measure(problem, method, tol, cfg.repeats))
                except (RuntimeError, FloatingPointError, AssertionError) as err:   # solver failures
                    failures.append(dict(method=method, tol=tol, error=f"{type(err).__name__}: {err}"))
            print(f"  {method} done")
        result["systems"][name] = dict(check=problem["check"], points=points, failures=failures, warmup_seconds=warmup,
                                       floor=floor_check(points), batch=cfg.batch, horizon=problem["T"])
    return result


def main(argv=None) -> dict:
    cfg, budget = parse_config(Config, argv, "ctpg bench torchdiffeq", __doc__.split("\n\n")[0], PRESETS)
    try:
        import torchdiffeq  # noqa: F401
    except ImportError:
        sys.exit("torchdiffeq is not installed; it is an optional extra: pip install -e .[bench] "
                 "(or pip install torchdiffeq)")
    with torch_threads(cfg.threads):
        result = dict(budget=budget, **run(cfg))
    publish(cfg.out, "torchdiffeq_compare" + (f"_{cfg.tag}" if cfg.tag else ""), result, plot, print_summary)
    return result


if __name__ == "__main__":
    main()
