"""`ctpg sweep`: train over a grid of settings and seeds, one run directory per point.

    ctpg sweep --env lqr --iters 50 --grid lr=1e-2,3e-3 --seeds 0 1 --out runs/sweep
    ctpg sweep ... --grid estimator=ctpg,bptt --grid hidden=32,64x64    # widths joined by x
    ctpg sweep ... --ray                 # the points as Ray tasks on a local Ray
    ctpg sweep ... --ray-address auto    # ... on an existing Ray cluster

Every point is agents.train(env, estimator, seed=s, **fixed settings, **grid values)
in <out>/<env>__<estimator>__<key>=<value>...__seed=<s>. The points are independent
and each is reproducible under its seed, so they run serially or as Ray tasks
(agents.tasks) with the same results; only wall-clock differs. Every point's settings
are checked before any runs. Writes <out>/sweep.json and <out>/sweep.csv: per point its
settings, status, iterations, oracle evaluations, wall-clock and final evaluation.
Costs the sum of the points' trainings (divided among the Ray workers).
"""
from __future__ import annotations

import csv
import dataclasses
import itertools
import json
import math
import time
from pathlib import Path

from agents import checkpoint as ckpt
from agents.config import FIELD_NAMES, ConfigError, TrainConfig, resolve_config
from agents.runs import BOOKKEEPING

SUMMARY_JSON, SUMMARY_CSV = "sweep.json", "sweep.csv"
NOT_IN_GRID = ("seed", "quiet")   # seeds come from --seeds; every point runs quietly
_TYPES = {f.name: f.type for f in dataclasses.fields(TrainConfig)}


def parse_value(key: str, text: str):
    """A grid value from text, by the TrainConfig field's type (hidden: widths joined by
    'x', e.g. 64x64; 'none' for an unset optional setting)."""
    kind, text = _TYPES[key], text.strip()
    if kind.endswith("| None") and text.lower() in ("none", "off"):
        return None
    try:
        if key in ("hidden", "critic_hidden"):
            return () if text.lower() in ("", "none", "linear") else tuple(int(w) for w in text.split("x"))
        if kind == "bool":
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(text)
            return text.lower() in ("true", "1", "yes")
        if kind.startswith("int"):
            return int(text)
        if kind.startswith("float"):
            return float(text)
    except ValueError:
        raise ConfigError(f"--grid {key}: cannot read {text!r} as {kind}") from None
    return text


def parse_grid(items: list[str]) -> dict[str, list]:
    """['lr=1e-2,3e-3', 'batch_size=16,32'] -> {'lr': [0.01, 0.003], 'batch_size': [16, 32]}."""
    grid = {}
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not values.strip():
            raise ConfigError(f"--grid {item!r}: write KEY=V1,V2,... e.g. --grid lr=1e-2,3e-3")
        if key not in FIELD_NAMES or key in NOT_IN_GRID:
            hint = "give the seeds with --seeds" if key == "seed" else f"sweepable: {', '.join(_sweepable())}"
            raise ConfigError(f"--grid {key}: not a setting a sweep can vary; {hint}")
        if key in grid:
            raise ConfigError(f"--grid {key} is given twice; list all its values in one --grid {key}=V1,V2")
        grid[key] = [parse_value(key, v) for v in values.split(",")]
    return grid


def _sweepable() -> list[str]:
    return [name for name in FIELD_NAMES if name not in NOT_IN_GRID]


@dataclasses.dataclass
class Point:
    """One training run of the sweep."""

    name: str
    settings: dict      # the grid's values at this point
    seed: int


def points(env: str, estimator: str, grid: dict, seeds) -> list[Point]:
    """The grid's cartesian product (keys in the order given) times the seeds."""
    keys = list(grid)
    out = []
    for values in itertools.product(*(grid[k] for k in keys)):
        settings = dict(zip(keys, values))
        for seed in seeds:
            parts = [settings.get("env", env), settings.get("estimator", estimator)]
            parts += [f"{k}={_text(v)}" for k, v in settings.items() if k not in ("env", "estimator")]
            out.append(Point("__".join(parts + [f"seed={seed}"]), settings, int(seed)))
    return out


def _text(value) -> str:
    if isinstance(value, tuple):
        return "x".join(map(str, value)) or "linear"
    return f"{value:g}" if isinstance(value, float) else str(value)


def run_point(run_dir: str, env: str, estimator: str, settings: dict, seed: int, resume: bool) -> dict:
    """Train one point (quietly) and summarise it; a module-level function, so it runs
    as a Ray task too."""
    from agents.trainer import train
    values = dict(settings)
    env, estimator = values.pop("env", env), values.pop("estimator", estimator)
    result = train(env, estimator, logdir=run_dir, resume=resume and ckpt.checkpoint_path(run_dir).exists(),
                   seed=seed, quiet=True, **values)
    final = {k: v for k, v in result.final_eval.items() if k not in BOOKKEEPING}
    return dict(status=result.status, iterations=result.step, oracle_total=result.oracle_total,
                wall_time=result.wall_time, skipped_steps=result.skipped_steps, final=final)


def check(env: str, estimator: str, fixed: dict, plan: list[Point], out: Path, resume: bool) -> None:
    """Every point's settings resolve, and no point would overwrite a finished run."""
    for point in plan:
        values = {**fixed, **point.settings, "seed": point.seed}
        resolve_config(values.pop("env", env), values.pop("estimator", estimator), **values)
    taken = [p.name for p in plan if ckpt.checkpoint_path(out / p.name).exists()]
    if taken and not resume:
        raise ConfigError(f"{out} already holds run(s) of this sweep ({', '.join(taken[:3])}"
                          f"{', ...' if len(taken) > 3 else ''}); pass --resume to continue them "
                          "or choose another --out")


def sweep(env: str, estimator: str, fixed: dict, grid: dict, seeds, out, runner, resume: bool = False) -> dict:
    """Run every point with `runner` (agents.tasks) and write the summary; returns it."""
    out = Path(out)
    plan = points(env, estimator, grid, seeds)
    check(env, estimator, fixed, plan, out, resume)
    start = time.perf_counter()
    tasks = [dict(run_dir=str(out / p.name), env=env, estimator=estimator, settings={**fixed, **p.settings},
                  seed=p.seed, resume=resume) for p in plan]
    results = runner.map(run_point, tasks)
    rows = [dict(name=p.name, run_dir=str(out / p.name), seed=p.seed, settings=p.settings, **r)
            for p, r in zip(plan, results)]
    summary = dict(env=env, estimator=estimator, fixed=fixed, grid=grid, seeds=list(seeds), runner=runner.name,
                   wall_time=time.perf_counter() - start, points=rows)
    write(out, summary)
    return summary


def write(out: Path, summary: dict) -> tuple[Path, Path]:
    """sweep.json (non-finite numbers as null) and sweep.csv (one row per point)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / SUMMARY_JSON).write_text(json.dumps(_finite(summary), indent=1, allow_nan=False))
    keys = list(summary["grid"])
    metrics = list(dict.fromkeys(k for row in summary["points"] for k in row["final"]))
    with open(out / SUMMARY_CSV, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["name", "seed", *keys, "status", "iterations", "oracle_total", "wall_time",
                         "skipped_steps", *metrics])
        for row in summary["points"]:
            writer.writerow([row["name"], row["seed"], *(_text(row["settings"][k]) for k in keys), row["status"],
                             row["iterations"], row["oracle_total"], f"{row['wall_time']:.3f}",
                             row["skipped_steps"], *(row["final"].get(m, "") for m in metrics)])
    return out / SUMMARY_JSON, out / SUMMARY_CSV


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def table(summary: dict) -> str:
    """The lines `ctpg sweep` prints: one per point, final eval cost first."""
    lines = [f"{'point':60s} {'status':10s} {'iters':>6s} {'oracle evals':>13s} {'wall [s]':>9s}  final"]
    for row in summary["points"]:
        final = ", ".join(f"{k} {v:.4g}" for k, v in row["final"].items())
        lines.append(f"{row['name']:60s} {row['status']:10s} {row['iterations']:6d} {row['oracle_total']:13,d} "
                     f"{row['wall_time']:9.1f}  {final}")
    return "\n".join(lines)
