"""The `ctpg` command line: `ctpg train ...`, `ctpg eval ...`, `ctpg sweep ...` and `ctpg bench ...`.

    ctpg train                                   # differential drive, CTPG, per-env defaults
    ctpg train --env lqr --estimator bptt --dt 0.05 --iters 200 --logdir runs/lqr
    ctpg train --logdir runs/lqr --resume --iters 400
    ctpg train --env diffdrive --batch-size 256 --nproc 2        # data-parallel, 2 processes
    ctpg sweep --env lqr --iters 50 --grid lr=1e-2,3e-3 --seeds 0 1 --out runs/sweep [--ray]
    ctpg eval --logdir runs/lqr --episodes 5 --video lqr.gif
    ctpg bench pareto --env lqr --out results/
    ctpg --version                               # also: python -m ctpg

The options of `train` are generated from the fields of agents.config.TrainConfig,
so --help and the Python API never drift apart. Bad names or values exit with code 2
and a two-line message (short usage, reason); a run that diverged, or a data-parallel
run whose other process died, exits with 1; one stopped by Ctrl-C with 130 and one stopped
by SIGTERM with 143, after saving its checkpoint.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import signal
import sys

from agents.config import AC_DEFAULTS, CTPG_DEFAULTS, ENV_DEFAULTS, ConfigError, TrainConfig

EXIT_INTERRUPTED = 130   # the shell's code for a process stopped by SIGINT

BENCHMARKS = {
    "pareto": "benchmarks.pareto",
    "learning": "benchmarks.learning",
    "backsolve-failure": "benchmarks.backsolve_failure",
    "torchdiffeq": "benchmarks.torchdiffeq_compare",
    "throughput": "benchmarks.throughput",
    "stiff-solvers": "benchmarks.stiff_solvers",
    "per-sample": "benchmarks.per_sample",
    "crossover": "benchmarks.crossover",
    "odeint": "benchmarks.odeint_compare",
    "fitzhugh-nagumo": "benchmarks.fitzhugh_nagumo",
    "van-der-pol": "benchmarks.van_der_pol",
    "double-pendulum": "benchmarks.double_pendulum",
    "rl": "benchmarks.rl",
    "rl-integrators": "benchmarks.rl_integrators",
}
# Fields whose option is written by hand (env: checked against the registry).
_SPECIAL = {"env"}


def _widths(text: str) -> tuple[int, ...]:
    """'64,64' -> (64, 64); '' or 'none' -> () (a linear policy)."""
    if text.strip().lower() in ("", "none", "linear"):
        return ()
    try:
        widths = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated widths like 64,64, got {text!r}")
    if any(w <= 0 for w in widths):
        raise argparse.ArgumentTypeError(f"widths must be positive, got {text!r}")
    return widths


def _optional(convert):
    """A type that also accepts 'none'/'off' for settings where None disables a feature."""
    def parse(text: str):
        if text.strip().lower() in ("none", "off"):
            return None
        try:
            return convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {convert.__name__} or 'none', got {text!r}")
    parse.__name__ = convert.__name__
    return parse


def _env_name(text: str) -> str:
    import envs
    if text not in envs.names():
        raise argparse.ArgumentTypeError(f"unknown environment {text!r}; choose from {', '.join(envs.names())}")
    return text


def _per_env_note(name: str) -> str:
    values = [f"{env} {table[name]}" for env, table in ENV_DEFAULTS.items() if name in table]
    values += [f"{env} {table[name]} with ctpg" for env, table in CTPG_DEFAULTS.items() if name in table]
    values += [f"{env} {table[name]} with actor-critic" for env, table in AC_DEFAULTS.items() if name in table]
    return f"; per env: {', '.join(values)}" if values else ""


def _add_field(group, f: dataclasses.Field) -> None:
    flag = "--" + f.name.replace("_", "-")
    default = f.default
    help_text = f"{f.metadata['help']} (default: {default}{_per_env_note(f.name)})"
    kwargs = dict(help=help_text, default=argparse.SUPPRESS, dest=f.name)
    if f.name in ("hidden", "critic_hidden"):
        kwargs.update(type=_widths, metavar="W1,W2")
    elif isinstance(default, bool):
        kwargs.update(action=argparse.BooleanOptionalAction)
    elif f.metadata.get("choices"):
        kwargs.update(choices=f.metadata["choices"])
    elif f.type in ("float | None", "int | None"):
        kwargs.update(type=_optional(float if f.type.startswith("float") else int), metavar="X|none")
    else:
        kwargs.update(type=type(default))
    group.add_argument(flag, **kwargs)


def _train_parser(sub) -> None:
    p = sub.add_parser(
        "train", help="train a policy (no options: differential drive with CTPG)",
        prog="ctpg train", usage="%(prog)s [--env NAME] [--estimator NAME] [--logdir DIR] [--resume] "
                                 "[options]  (--help lists them)",
        description="Train a feedback policy with a continuous-time policy-gradient estimator. "
                    "Unset options take the per-environment defaults of agents/config.py "
                    "(listed after each option). Logs go to TensorBoard event files and "
                    "scalars.csv in the run directory; checkpoint.pt there resumes the run.")
    p.add_argument("--env", type=_env_name, default=argparse.SUPPRESS,
                   help="environment name (default: diffdrive); see envs.names()")
    for f in dataclasses.fields(TrainConfig):
        if f.name not in _SPECIAL:
            _add_field(p, f)
    p.add_argument("--logdir", default=None,
                   help="run directory (default: runs/<env>__<estimator>__<seed>__<time>)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --logdir from its checkpoint (its settings are kept; "
                        "only budgets and logging intervals may change)")
    p.add_argument("--nproc", type=int, default=1, metavar="N",
                   help="train data-parallel in N processes on this machine, each on its shard of "
                        "every batch (gloo on CPU, NCCL on CUDA); under torchrun leave it out: the "
                        "processes are torchrun's (default: 1)")
    p.set_defaults(command_parser=p)


def _sweep_parser(sub) -> None:
    from agents import tasks
    p = sub.add_parser(
        "sweep", help="train over a grid of settings and seeds (serially or as Ray tasks)",
        prog="ctpg sweep", usage="%(prog)s [--env NAME] [--grid KEY=V1,V2 ...] [--seeds S ...] [--out DIR] "
                                 "[--ray | --ray-address ADDRESS] [training options]",
        description="Train one run per grid point and seed, each in <out>/<point>, and write "
                    "<out>/sweep.json and sweep.csv with every point's final evaluation. Training "
                    "options (those of `ctpg train`) hold for every point; --grid varies one of them.")
    p.add_argument("--env", type=_env_name, default="diffdrive", help="environment name (default: diffdrive)")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                   help="a training setting and its values, e.g. lr=1e-2,3e-3 or estimator=ctpg,bptt "
                        "(hidden widths joined by x: hidden=32,64x64); repeat for a product grid")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], metavar="S", help="seeds of every point (default: 0)")
    p.add_argument("--out", default=None, help="folder of the runs and the summary "
                                               "(default: runs/sweep__<env>__<time>)")
    p.add_argument("--resume", action="store_true", help="continue the points that already have a checkpoint in --out")
    tasks.add_arguments(p)
    for f in dataclasses.fields(TrainConfig):
        if f.name not in _SPECIAL | {"seed", "quiet"}:
            _add_field(p, f)
    p.set_defaults(command_parser=p)


def _bench_parser(sub) -> None:
    p = sub.add_parser(
        "bench", help="run a benchmark from benchmarks/", add_help=False, prog="ctpg bench",
        description="Run benchmarks.<name>.main(argv). --env, --out and --full are passed on, "
                    "and so is anything else (e.g. --smoke); `ctpg bench NAME --help` shows "
                    "the benchmark's own options.")
    p.add_argument("name", nargs="?", choices=sorted(BENCHMARKS), help="which benchmark")
    p.add_argument("-h", "--help", action="store_true", help="show this help, or the benchmark's")
    p.add_argument("--env", default=None, help="environment, where the benchmark takes one")
    p.add_argument("--out", default=None, help="output directory of figures and tables")
    p.add_argument("--full", action="store_true", help="the full (slow) version, not the quick one")
    p.set_defaults(command_parser=p)


def _eval_parser(sub) -> None:
    p = sub.add_parser(
        "eval", help="evaluate a trained policy, optionally filming it", prog="ctpg eval",
        usage="%(prog)s --logdir DIR [--episodes N] [--video PATH] [--seed S]",
        description="Load the checkpoint in --logdir, report the held-out evaluation metrics (as "
                    "the trainer computes them) and the returns of gymnasium episodes, and write "
                    "a video of those episodes (.mp4 needs pip install -e '.[video]'; .gif needs imageio).")
    p.add_argument("--logdir", required=True, help="run directory holding checkpoint.pt")
    p.add_argument("--episodes", type=int, default=5, help="gym episodes to run (default: 5)")
    p.add_argument("--video", default=None, metavar="PATH", help="write the episodes as PATH (.mp4 or .gif)")
    p.add_argument("--seed", type=int, default=0, help="reset seed of the first episode (default: 0)")
    p.set_defaults(command_parser=p)


def build_parser() -> argparse.ArgumentParser:
    from ctpg import __version__
    parser = argparse.ArgumentParser(prog="ctpg", usage="ctpg [--version] {train,eval,sweep,bench} ...",
                                     description="Continuous-time policy gradients: train policies, "
                                                 "evaluate them and run benchmarks.")
    parser.add_argument("--version", action="version", version=f"ctpg {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{train,eval,sweep,bench}")
    _train_parser(sub)
    _eval_parser(sub)
    _sweep_parser(sub)
    _bench_parser(sub)
    return parser


def run_train(parser, args) -> int:
    from agents.distributed import PeerFailure, launched_by_torchrun
    from agents.trainer import train
    overrides = {k: v for k, v in vars(args).items()
                 if k not in ("command", "command_parser", "logdir", "resume", "nproc")}
    env, estimator = overrides.pop("env", None), overrides.pop("estimator", None)
    if args.nproc != 1 and launched_by_torchrun():
        parser.error("--nproc with torchrun: torchrun starts the processes (--nproc-per-node); drop --nproc")
    if args.nproc < 1:
        parser.error(f"--nproc must be at least 1, got {args.nproc}")
    try:
        result = train(env, estimator, logdir=args.logdir, resume=args.resume, nproc=args.nproc, **overrides)
    except ConfigError as err:
        parser.error(str(err))
    except PeerFailure as err:          # a process of a data-parallel run died; rank 0 saved
        print(f"[ctpg] {err}", file=sys.stderr)
        return 1
    if result.status == "interrupted":  # the shell's 128 + signal: 130 for Ctrl-C, 143 for SIGTERM
        return 128 + (result.stop_signal or signal.SIGINT)
    return 1 if result.status == "diverged" else 0


def run_eval(parser, args) -> int:
    from agents.replay import evaluate_run, format_report
    if args.episodes < 0:
        parser.error(f"--episodes must be >= 0, got {args.episodes}")
    try:
        out = evaluate_run(args.logdir, episodes=args.episodes, video=args.video, seed=args.seed)
    except FileNotFoundError as err:
        parser.error(f"{err}; is --logdir a run directory of `ctpg train`?")
    except (ConfigError, RuntimeError) as err:
        parser.error(str(err))
    print(format_report(out))
    return 0


def run_sweep(parser, args) -> int:
    import time

    from agents import sweep, tasks
    fixed = {k: v for k, v in vars(args).items() if k in TrainConfig.__dataclass_fields__ and k != "env"}
    try:
        grid = sweep.parse_grid(args.grid)
        runner = tasks.runner_from_args(args, fixed.get("device", "cpu"))
    except (ConfigError, RuntimeError) as err:
        parser.error(str(err))
    out = args.out or f"runs/sweep__{args.env}__{time.strftime('%Y%m%d-%H%M%S')}"
    estimator = fixed.pop("estimator", "ctpg")
    try:
        summary = sweep.sweep(args.env, estimator, fixed, grid, args.seeds, out, runner, resume=args.resume)
    except ConfigError as err:
        parser.error(str(err))
    print(sweep.table(summary))
    print(f"wrote {out}/{sweep.SUMMARY_JSON} and {out}/{sweep.SUMMARY_CSV} ({len(summary['points'])} runs, "
          f"{runner.name}, {summary['wall_time']:.1f} s)")
    return 0 if all(row["status"] in ("completed", "budget") for row in summary["points"]) else 1


def run_bench(parser, args, extra: list[str]) -> int:
    """Import benchmarks.<name> lazily and call its main(argv); exit code 0 unless it
    returns an int (benchmarks return their results dict) or exits by itself."""
    if args.name is None:
        if args.help:
            args.command_parser.print_help()
            return 0
        args.command_parser.error(f"choose a benchmark: {', '.join(sorted(BENCHMARKS))}")
    module_name = BENCHMARKS[args.name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name in (module_name, "benchmarks"):
            parser.error(f"benchmark {args.name!r} is not available: {module_name.replace('.', '/')}.py "
                         "is missing from this installation")
        parser.error(f"benchmark {args.name!r} needs the package {err.name!r}; "
                     "install the extras with: pip install -e '.[bench]'")
    argv = (["--env", args.env] if args.env else []) + (["--out", args.out] if args.out else [])
    argv += (["--full"] if args.full else []) + (["--help"] if args.help else []) + extra
    code = module.main(argv)
    return code if isinstance(code, int) else 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command is None:
        parser.error("choose a command: train, eval, sweep or bench (try `ctpg train --help`)")
    if extra and args.command != "bench":
        args.command_parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        if args.command == "train":
            return run_train(args.command_parser, args)
        if args.command == "eval":
            return run_eval(args.command_parser, args)
        if args.command == "sweep":
            return run_sweep(args.command_parser, args)
        return run_bench(args.command_parser, args, extra)
    except KeyboardInterrupt:   # a second Ctrl-C during training, or one outside the loop
        print("[ctpg] aborted; a training run keeps its last checkpoint (resume with --resume)",
              file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
