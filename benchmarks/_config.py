"""Command line of a benchmark from its config dataclass, and writing and reporting its results.

A benchmark declares its settings as a dataclass whose field docstrings (the string
literal under each field) are the --help text, and named budgets (`presets`: field
values that --smoke and --full switch to). Precedence: field default < preset <
flags given on the command line.
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import inspect
import json
import math
import pathlib

import torch


def field_docs(cls) -> dict:
    """{field name: its docstring} read from the class source."""
    body = ast.parse(inspect.getsource(cls)).body[0].body
    return {node.target.id: after.value.value for node, after in zip(body, body[1:])
            if isinstance(node, ast.AnnAssign) and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)}


PRESET_HELP = {"smoke": "a tiny budget that only checks the script runs (seconds; the smoke tests use it)",
               "full": "the budget of the README's numbers (minutes to an hour on 2 cores)"}


def parse_config(cls, argv, prog: str, doc: str, presets: dict, preset_help: dict | None = None):
    """Build `cls` from argv; `presets` maps 'smoke' / 'full' to field overrides, and
    `preset_help` to what the budget means where the overrides do not say it all."""
    cfg, budget, _ = _parse(cls, argv, prog, doc, presets, preset_help, with_runner=False)
    return cfg, budget


def parse_config_and_runner(cls, argv, prog: str, doc: str, presets: dict, preset_help: dict | None = None):
    """parse_config plus --ray / --ray-address: (config, budget, runner), the runner an
    agents.tasks one (serial unless asked) for the benchmark's independent runs. The
    options are not config fields, so the results JSON is the same either way. Exits
    with the install command when Ray is asked for but not installed."""
    return _parse(cls, argv, prog, doc, presets, preset_help, with_runner=True)


def _parse(cls, argv, prog, doc, presets, preset_help, with_runner: bool):
    from agents import tasks
    from agents.config import ConfigError, validate_device
    parser = argparse.ArgumentParser(prog=prog, description=doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    if with_runner:
        tasks.add_arguments(parser)
    docs = field_docs(cls)
    for name, values in presets.items():
        text = (preset_help or {}).get(name) or PRESET_HELP.get(name, f"budget '{name}'")
        if values:
            text += "; sets " + ", ".join(f"{k}={v}" for k, v in values.items())
        parser.add_argument(f"--{name}", action="store_true", help=text.replace("%", "%%"))
    for field in dataclasses.fields(cls):
        flag, default = f"--{field.name.replace('_', '-')}", field.default
        text = f"{docs.get(field.name, '')} (default: {default})"
        if isinstance(default, bool):
            parser.add_argument(flag, dest=field.name, action=argparse.BooleanOptionalAction,
                                default=argparse.SUPPRESS, help=text)
        elif isinstance(default, tuple):
            parser.add_argument(flag, dest=field.name, nargs="+", type=type(default[0]),
                                default=argparse.SUPPRESS, help=text)
        else:
            parser.add_argument(flag, dest=field.name, type=type(default), default=argparse.SUPPRESS,
                                help=text)
    given = vars(parser.parse_args(argv))
    ray, address = (given.pop("ray"), given.pop("ray_address")) if with_runner else (False, None)
    chosen = [name for name in presets if given.pop(name)]
    if len(chosen) > 1:
        parser.error(f"choose at most one of {', '.join('--' + c for c in chosen)}")
    values = dict(presets[chosen[0]]) if chosen else {}
    values.update({k: tuple(v) if isinstance(v, list) else v for k, v in given.items()})
    cfg = cls(**values)
    device = getattr(cfg, "device", "cpu")
    if not address:             # a remote cluster may have the GPUs this machine lacks
        try:
            validate_device(device)
        except ConfigError as err:
            parser.error(str(err))
    runner = None
    if with_runner:
        try:
            runner = tasks.make_runner(ray, address, device)
        except RuntimeError as err:
            parser.error(str(err))
    return cfg, (chosen[0] if chosen else "default"), runner


@contextlib.contextmanager
def torch_threads(n: int):
    """Run the block with n torch intra-op threads, then restore the previous number."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def finite_or_none(value):
    """JSON has no NaN/Inf: non-finite floats are written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    return value


def write_results(out: str, stem: str, result: dict, plot) -> tuple[pathlib.Path, pathlib.Path]:
    """Write <out>/<stem>.json and, through plot(result, path), <out>/<stem>.png."""
    folder = pathlib.Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    json_path, png_path = folder / f"{stem}.json", folder / f"{stem}.png"
    json_path.write_text(json.dumps(finite_or_none(result), indent=1, allow_nan=False))
    import matplotlib
    matplotlib.use("Agg")
    plot(result, png_path)
    return json_path, png_path


def publish(out: str, stem: str, result: dict, plot, print_summary) -> None:
    """A benchmark's last step: write its JSON and PNG (write_results), print its
    summary table, then say where the files went."""
    json_path, png_path = write_results(out, stem, result, plot)
    print_summary(result)
    print(f"wrote {json_path} and {png_path}")
