"""Training configuration and the per-environment defaults, kept in one place.

`TrainConfig` lists every setting of a training run; the `help` text of each field
is also the command line's --help text (agents/cli.py builds its options from these
fields). `ENV_DEFAULTS` holds the settings that differ per environment; `resolve_config`
layers them: field default < environment < what the caller passed.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

ESTIMATORS = ("ctpg", "bptt", "backsolve")
ALGOS = ("full-horizon", "actor-critic")
OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
SCHEDULES = ("constant", "cosine", "step", "exponential")
CLIP_MODES = ("norm", "value")
ACTIVATIONS = ("tanh", "relu", "elu", "softplus", "silu")
BPTT_METHODS = ("euler", "semi-implicit-euler", "midpoint", "rk4")
# solver methods of the ctpg/backsolve solves: explicit, Rosenbrock (stiff) and switching
# (every name of ctpg.solvers.method_names(), tests/test_agents_usage.py checks it)
METHODS = ("euler", "midpoint", "heun", "rk4", "bosh3", "dopri5", "tsit5", "dop853", "dopri8", "fehlberg2",
           "explicit_adams", "implicit_adams", "rosenbrock23", "ros34pw2", "rodas4", "rodas5p", "auto",
           "auto:dopri5+rosenbrock23", "auto:tsit5+ros34pw2")


def _opt(default, help, **extra):
    """A dataclass field whose metadata carries the --help text (and CLI extras)."""
    return field(default=default, metadata={"help": help, **extra})


@dataclass
class TrainConfig:
    """Every setting of one training run. Unset (None) budgets mean 'no limit'."""

    env: str = _opt("diffdrive", "environment name, one of envs.names()")
    estimator: str = _opt("ctpg", "gradient estimator", choices=ESTIMATORS)
    algo: str = _opt("full-horizon", "full-horizon: the estimator's gradient of the whole horizon's cost from "
                                     "fresh starts; actor-critic: windows of --window seconds from carried "
                                     "states with a learned critic as terminal cost (agents.actor_critic)",
                     choices=ALGOS)
    iters: int = _opt(1000, "number of optimiser iterations (total, including any resumed part)")
    batch_size: int = _opt(32, "initial states sampled per iteration")
    horizon: float | None = _opt(None, "time horizon T (none: the environment's own)")
    method: str = _opt("dopri5", "solver of the ctpg/backsolve solves: explicit Runge-Kutta, Rosenbrock "
                                 "(stiff closed loops) or auto (switches while stiff)", choices=METHODS)
    rtol: float = _opt(1e-3, "relative tolerance of the ctpg/backsolve adaptive solves")
    atol: float = _opt(1e-4, "absolute tolerance of the ctpg/backsolve adaptive solves")
    dt: float = _opt(0.01, "fixed Euler step of bptt")
    bptt_method: str = _opt("euler", "fixed-step scheme of bptt (semi-implicit-euler: the symplectic Euler of "
                                     "simulators, for systems with position_velocity)", choices=BPTT_METHODS)
    solver_dt: float | None = _opt(None, "fixed step of the ctpg/backsolve solves instead of adaptive "
                                         "steps at rtol/atol (none: adaptive)")
    per_sample: bool = _opt(False, "ctpg/backsolve: every sample takes its own adaptive steps (needs an "
                                   "estimator with a per_sample option), so a sample's gradient does "
                                   "not depend on the batch it shares")
    reuse_jacobians: bool = _opt(False, "ctpg: compute the dynamics' Jacobians once per forward step and "
                                        "interpolate them backward (no system calls in the backward pass: "
                                        "for finite-difference simulators such as the cartpole)")
    compile: bool = _opt(False, "ctpg: run the closed loop's right-hand side and adjoint stage under "
                                "torch.compile (small systems; the first iteration compiles for seconds; "
                                "systems whose vjp is autograd through f)")
    sync_every: int | None = _opt(None, "ctpg: keep the adaptive step control on the device and read it back "
                                        "every this many step attempts instead of every step (GPUs; explicit "
                                        "methods)")
    window: float | None = _opt(None, "actor-critic: window length H in seconds (none: the environment's default)")
    discount: float = _opt(0.5, "actor-critic: discount rate rho (1/s) of the running cost e^{-rho s} w")
    td_lambda: float = _opt(0.95, "actor-critic: lambda of the critic's TD(lambda) targets")
    critic_points: int = _opt(20, "actor-critic: target times per window the critic is fitted at "
                                  "(read from the stored path; backsolve: its checkpoints)")
    critic_hidden: tuple[int, ...] = _opt((64, 64), "actor-critic: hidden widths of the critic MLP")
    critic_lr: float = _opt(1e-3, "actor-critic: Adam learning rate of the critic")
    critic_epochs: int = _opt(5, "actor-critic: passes over each window's targets")
    critic_minibatches: int = _opt(4, "actor-critic: minibatches per pass")
    explore_starts: float = _opt(0.0, "actor-critic: fraction of episode restarts drawn from the system's wider "
                                      "sample_exploration_state (exploring starts) instead of its initial states")
    target_alpha: float = _opt(0.2, "actor-critic: Polyak factor of the target critic, "
                                    "target <- alpha target + (1 - alpha) critic after each window")
    optimizer: str = _opt("adam", "torch optimiser", choices=OPTIMIZERS)
    lr: float = _opt(1e-3, "learning rate")
    momentum: float = _opt(0.9, "momentum of sgd (and rmsprop)")
    weight_decay: float = _opt(0.0, "weight decay of the optimiser")
    schedule: str = _opt("constant", "learning-rate schedule over `iters` (an extended run follows "
                                     "the schedule of its new length)", choices=SCHEDULES)
    lr_final: float = _opt(0.1, "cosine: final lr as a fraction of lr")
    lr_step: int = _opt(1000, "step: multiply lr by lr_gamma every this many iterations")
    lr_gamma: float = _opt(0.5, "step/exponential: decay factor (exponential: per iteration)")
    clip: float | None = _opt(None, "gradient clipping threshold; none to disable")
    clip_mode: str = _opt("norm", "clip the global gradient norm or each element", choices=CLIP_MODES)
    hidden: tuple[int, ...] = _opt((32, 32), "hidden widths of the MLP policy, e.g. 64,64; empty for linear")
    activation: str = _opt("tanh", "hidden activation of the MLP policy", choices=ACTIVATIONS)
    last_layer_scale: float = _opt(1.0, "scale of the last layer's initial weights; 0 zero-initialises it")
    features: bool = _opt(True, "feed the environment's observation features (sin/cos of angles)")
    squash: bool = _opt(True, "squash actions into the environment's bounds with a scaled tanh")
    eval_every: int = _opt(50, "evaluate every this many iterations (0: only at start and end)")
    eval_batch: int = _opt(64, "held-out initial states used for evaluation")
    eval_seed: int = _opt(1234, "seed of the held-out initial states (fixed across runs)")
    eval_rtol: float = _opt(1e-7, "relative tolerance of the accurate evaluation solve")
    eval_atol: float = _opt(1e-9, "absolute tolerance of the accurate evaluation solve")
    figure_every: int = _opt(5, "draw evaluation trajectories every this many evaluations (0: never)")
    checkpoint_every: int = _opt(100, "write a checkpoint every this many iterations (and at the end)")
    max_oracle_evals: int | None = _opt(None, "stop after this many training oracle evaluations")
    max_wall_time: float | None = _opt(None, "stop after this many seconds of wall-clock time")
    max_bad_steps: int = _opt(10, "stop after this many non-finite losses or gradients in a row")
    seed: int = _opt(0, "seed of the policy initialisation and the training batches")
    device: str = _opt("cpu", "torch device of the system, policy and solves: cpu, cuda or cuda:N "
                              "(with several processes, cuda gives each process cuda:LOCAL_RANK)")
    threads: int = _opt(1, "torch CPU threads during the run (0: torch's default); small policies "
                           "run fastest on one, and far slower on a shared, busy machine with more")
    log_every: int | None = _opt(None, "when stderr is not a terminal (CI, nohup, a pipe): print a "
                                       "progress line every this many iterations (none: 20 lines a run)")
    quiet: bool = _opt(False, "no progress bar or lines and no end-of-run summary")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# Settings that differ per environment (estimator settings included: rtol/atol for
# ctpg and backsolve, dt for bptt). Tuned so that the default CTPG run of each
# environment learns within the budgets named in the README; tests/test_training_slow.py
# checks the floors.
ENV_DEFAULTS: dict[str, dict] = {
    "diffdrive": dict(
        iters=400, batch_size=16, rtol=1e-3, atol=1e-4, lr=1e-2, schedule="cosine",
        lr_final=0.05, hidden=(32, 32), last_layer_scale=0.1, clip=10.0, clip_mode="value",
        eval_every=25, dt=0.01,
    ),
    "lqr": dict(
        iters=200, batch_size=32, rtol=1e-5, atol=1e-6, lr=1e-2, hidden=(32,),
        last_layer_scale=0.0, eval_every=25, dt=0.01,
    ),
    "quadrotor": dict(
        iters=200, batch_size=32, rtol=1e-3, atol=1e-4, lr=3e-3, schedule="cosine",
        hidden=(64, 64), last_layer_scale=0.1, clip=1.0, eval_every=25, dt=0.005,
    ),
    "quadrotor_realistic": dict(   # runs; no learning floor measured or claimed yet
        iters=200, batch_size=32, rtol=1e-3, atol=1e-4, lr=3e-4, schedule="cosine",
        hidden=(64, 64), last_layer_scale=0.0, clip=1.0, eval_every=25, dt=0.002,
    ),
    "cartpole": dict(
        iters=120, batch_size=32, rtol=1e-3, atol=1e-4, lr=1e-2, hidden=(64, 64),
        last_layer_scale=0.1, clip=1.0, eval_every=20, dt=0.01,
    ),
    "pendulum": dict(
        iters=500, batch_size=32, rtol=1e-3, atol=1e-4, lr=3e-3, hidden=(32, 32),
        last_layer_scale=0.1, clip=1.0, eval_every=25, dt=0.01,
    ),
    "electric": dict(
        iters=200, batch_size=16, rtol=1e-3, atol=1e-4, lr=1e-2, hidden=(32, 32),
        last_layer_scale=0.1, clip=1.0, eval_every=25, dt=0.03,
    ),
    # hybrid (touchdowns, lift-offs): CTPG only; every event of any sample splits the
    # batch's mesh, so small batches; 32 held-out starts at rtol 1e-6 (about 20 s an
    # evaluation through some 400 events); lr 5e-3: 84/88/88 % of held-out starts within
    # 10 % of the target speed on seeds 0/1/2, where lr 1e-2 gave 84/28 % on seeds 0/1
    "hopper": dict(
        iters=150, batch_size=8, rtol=1e-4, atol=1e-6, lr=5e-3, schedule="cosine",
        hidden=(32, 32), last_layer_scale=0.1, clip=1.0, eval_every=50, eval_batch=32,
        eval_rtol=1e-6, eval_atol=1e-8,
    ),
}

# Settings of the actor-critic, per environment (layered over ENV_DEFAULTS when
# algo="actor-critic"); README, "Which algorithm", says how they were chosen.
AC_DEFAULTS: dict[str, dict] = {
    # swing-up: windows of 2 s (about one swing), a discount horizon 1/rho = 10 s (longer
    # than the 5 s episode, so swinging up pays against hanging: 2/rho), every restart on
    # the whole circle (exploring starts) so that the critic learns the upright value
    "pendulum": dict(window=2.0, discount=0.1, explore_starts=1.0, iters=600),
}
AC_GENERIC = dict(window=1.0)

FIELD_NAMES = tuple(f.name for f in dataclasses.fields(TrainConfig))


# Settings of the ctpg estimator alone, per environment: the best measured CTPG setting
# (README, Learning efficiency). On the cart-pole the balancing policy makes the loop
# stiff and every Jacobian costs 10 MuJoCo calls: switching to a Rosenbrock-W method with
# Jacobians read back from the forward pass learned on 4/5 seeds with 0.32-0.41x BPTT's
# simulator calls per run, where dopri5 learned on 3/5 with about BPTT's.
CTPG_DEFAULTS: dict[str, dict] = {
    "cartpole": dict(method="auto:dopri5+rosenbrock23", reuse_jacobians=True),
}


def env_defaults(env: str, estimator: str = "ctpg", algo: str = "full-horizon") -> dict:
    """A copy of the per-environment settings of `env` (with the ctpg estimator's own where
    `estimator` is ctpg, and the actor-critic's where `algo` is actor-critic); {} for an
    unlisted env."""
    values = dict(ENV_DEFAULTS.get(env, {}), **(CTPG_DEFAULTS.get(env, {}) if estimator == "ctpg" else {}))
    if algo == "actor-critic":
        values.update(AC_GENERIC, **AC_DEFAULTS.get(env, {}))
    return values


class ConfigError(ValueError):
    """A training setting is unknown, out of range or not allowed here; the message says which."""


def resolve_config(env: str = "diffdrive", estimator: str = "ctpg", **overrides) -> TrainConfig:
    """Build a TrainConfig from the layered defaults and explicit `overrides`.

    An override of None is explicit too (clip=None turns clipping off). Raises
    ConfigError naming the bad key or value, so the Python API and the command line
    report mistakes the same way.
    """
    unknown = sorted(set(overrides) - set(FIELD_NAMES))
    if unknown:
        raise ConfigError(f"unknown training setting(s) {', '.join(unknown)}; "
                          f"known: {', '.join(FIELD_NAMES)}")
    if estimator not in ESTIMATORS:
        raise ConfigError(f"unknown estimator {estimator!r}; choose one of {', '.join(ESTIMATORS)}")
    values = env_defaults(env, estimator, overrides.get("algo", "full-horizon"))
    values.update(overrides)
    for name in ("hidden", "critic_hidden"):
        if name in values:
            values[name] = tuple(int(w) for w in values[name])
    config = TrainConfig(env=env, estimator=estimator, **values)
    validate(config)
    return config


def validate(config: TrainConfig) -> None:
    """Raise ConfigError for a setting outside its range or choices."""
    for f in dataclasses.fields(config):
        choices = f.metadata.get("choices")
        value = getattr(config, f.name)
        if choices and value not in choices:
            raise ConfigError(f"{f.name}={value!r} is not one of {', '.join(choices)}")
    positive = ("iters", "batch_size", "lr", "rtol", "atol", "dt", "eval_batch",
                "eval_rtol", "eval_atol", "checkpoint_every", "max_bad_steps", "critic_points",
                "critic_lr", "critic_epochs", "critic_minibatches")
    for name in positive:
        if not getattr(config, name) > 0:
            raise ConfigError(f"{name} must be positive, got {getattr(config, name)!r}")
    for name in ("eval_every", "figure_every", "weight_decay", "momentum", "last_layer_scale",
                 "threads"):
        if getattr(config, name) < 0:
            raise ConfigError(f"{name} must be >= 0, got {getattr(config, name)!r}")
    for name in ("discount",):
        if getattr(config, name) < 0:
            raise ConfigError(f"{name} must be >= 0, got {getattr(config, name)!r}")
    for name in ("td_lambda", "target_alpha", "explore_starts"):
        if not 0 <= getattr(config, name) <= 1:
            raise ConfigError(f"{name} must lie in [0, 1], got {getattr(config, name)!r}")
    if config.algo == "actor-critic" and config.window is None:
        raise ConfigError("algo='actor-critic' needs a window length: pass window=1.0 (--window 1.0)")
    if any(w <= 0 for w in config.critic_hidden):
        raise ConfigError(f"critic_hidden widths must be positive, got {config.critic_hidden}")
    for name in ("horizon", "clip", "max_oracle_evals", "max_wall_time", "log_every", "solver_dt", "window"):
        value = getattr(config, name)
        if value is not None and not value > 0:
            raise ConfigError(f"{name} must be positive (or unset), got {value!r}")
    if any(w <= 0 for w in config.hidden):
        raise ConfigError(f"hidden widths must be positive, got {config.hidden}")
    validate_device(config.device)


def validate_device(device: str) -> None:
    """Raise ConfigError unless `device` names a torch device this machine has."""
    import torch
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device={device!r} is not a torch device; use cpu, cuda or cuda:N") from None
    if parsed.type not in ("cpu", "cuda"):
        raise ConfigError(f"device={device!r}: training runs on cpu or cuda, not {parsed.type}")
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={device!r} but torch sees no CUDA device (torch {torch.__version__}); "
                          "install a CUDA build of torch on a GPU machine, or use device=cpu")
    if parsed.type == "cuda" and parsed.index is not None and parsed.index >= torch.cuda.device_count():
        raise ConfigError(f"device={device!r} but this machine has {torch.cuda.device_count()} CUDA device(s)")
