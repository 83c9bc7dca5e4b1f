"""The `ctpg` command line: `ctpg train ...`, `ctpg eval ...` and `ctpg bench ...`.

    ctpg train                                   # differential drive, CTPG, per-env defaults
    ctpg train --env lqr --estimator bptt --dt 0.05 --iters 200 --logdir runs/lqr
    ctpg train --logdir runs/lqr --resume --iters 400
    ctpg eval --logdir runs/lqr --episodes 5 --video lqr.gif
    ctpg bench pareto --env lqr --out results/
    ctpg --version                               # also: python -m ctpg

The options of `train` are generated from the fields of agents.config.TrainConfig,
so --help and the Python API never drift apart. Bad names or values exit with code 2
and a two-line message (short usage, reason); a run that diverged exits with 1, one
stopped by Ctrl-C with 130 after saving its checkpoint.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import sys

from agents.config import ENV_DEFAULTS, ConfigError, TrainConfig

EXIT_INTERRUPTED = 130   # the shell's code for a process stopped by SIGINT

BENCHMARKS = {
    "pareto": "benchmarks.pareto",
    "learning": "benchmarks.learning",
    "backsolve-failure": "benchmarks.backsolve_failure",
    "torchdiffeq": "benchmarks.torchdiffeq_compare",
    "odeint": "benchmarks.odeint_compare",
    "fitzhugh-nagumo": "benchmarks.fitzhugh_nagumo",
    "van-der-pol": "benchmarks.van_der_pol",
    "double-pendulum": "benchmarks.double_pendulum",
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
    return f"; per env: {', '.join(values)}" if values else ""


def _add_field(group, f: dataclasses.Field) -> None:
    flag = "--" + f.name.replace("_", "-")
    default = f.default
    help_text = f"{f.metadata['help']} (default: {default}{_per_env_note(f.name)})"
    kwargs = dict(help=help_text, default=argparse.SUPPRESS, dest=f.name)
    if f.name == "hidden":
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
    parser = argparse.ArgumentParser(prog="ctpg", usage="ctpg [--version] {train,eval,bench} ...",
                                     description="Continuous-time policy gradients: train policies, "
                                                 "evaluate them and run benchmarks.")
    parser.add_argument("--version", action="version", version=f"ctpg {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{train,eval,bench}")
    _train_parser(sub)
    _eval_parser(sub)
    _bench_parser(sub)
    return parser


def run_train(parser, args) -> int:
    from agents.trainer import train
    overrides = {k: v for k, v in vars(args).items()
                 if k not in ("command", "command_parser", "logdir", "resume")}
    env, estimator = overrides.pop("env", None), overrides.pop("estimator", None)
    try:
        result = train(env, estimator, logdir=args.logdir, resume=args.resume, **overrides)
    except ConfigError as err:
        parser.error(str(err))
    if result.status == "interrupted":
        return EXIT_INTERRUPTED
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
        parser.error("choose a command: train, eval or bench (try `ctpg train --help`)")
    if extra and args.command != "bench":
        args.command_parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        if args.command == "train":
            return run_train(args.command_parser, args)
        if args.command == "eval":
            return run_eval(args.command_parser, args)
        return run_bench(args.command_parser, args, extra)
    except KeyboardInterrupt:   # a second Ctrl-C during training, or one outside the loop
        print("[ctpg] aborted; a training run keeps its last checkpoint (resume with --resume)",
              file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
