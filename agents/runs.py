"""Run directories, the rules of resuming, and what a run returns.

A run directory holds checkpoint.pt, scalars.csv and the TensorBoard event files.
Its default name is runs/<env>__<estimator>__<seed>__<YYYYmmdd-HHMMSS>. A directory
that already holds a checkpoint is never silently overwritten: pass resume=True to
continue it, or choose another directory.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from agents import checkpoint as ckpt
from agents.config import ConfigError, TrainConfig, resolve_config, validate

# Settings a resumed run may change: none of them alters the parameter trajectory.
RESUMABLE = frozenset({"iters", "max_oracle_evals", "max_wall_time", "max_bad_steps", "quiet",
                       "eval_every", "figure_every", "checkpoint_every", "threads", "log_every"})


@dataclass
class TrainResult:
    """What a run produced. `status` is one of completed (all iterations), budget
    (oracle or wall-clock budget spent), stopped (progress_fn returned False),
    interrupted (Ctrl-C or SIGTERM; checkpoint saved) or diverged (too many non-finite steps in a
    row); `message` says which in words."""

    policy: torch.nn.Module
    config: TrainConfig
    run_dir: Path
    status: str
    message: str
    step: int
    history: list = field(default_factory=list)      # one dict per evaluation
    iterations: list = field(default_factory=list)   # one dict per iteration of this session
    oracle_total: int = 0
    wall_time: float = 0.0
    skipped_steps: int = 0
    stop_signal: int | None = None                   # SIGINT or SIGTERM for an interrupted run

    @property
    def final_eval(self) -> dict:
        return self.history[-1] if self.history else {}


# Keys of a history entry that say when an evaluation ran, not what it measured.
BOOKKEEPING = ("step", "oracle_total_cum", "sim_calls_cum", "wall_time")


def report(result: TrainResult) -> None:
    final = ", ".join(f"{k}={v:.4g}" for k, v in result.final_eval.items() if k not in BOOKKEEPING)
    print(f"[ctpg] {result.status}: {result.message}\n"
          f"[ctpg] iterations {result.step}, oracle evaluations {result.oracle_total}, "
          f"wall-clock {result.wall_time:.1f} s, skipped steps {result.skipped_steps}\n"
          f"[ctpg] final evaluation: {final}\n[ctpg] run directory: {result.run_dir}",
          file=sys.stderr)


def interrupted_by(signum: int | None) -> str:
    """"interrupted", naming the signal unless it was Ctrl-C's SIGINT."""
    import signal
    return "interrupted" if signum in (None, signal.SIGINT) else f"interrupted by {signal.Signals(signum).name}"


def interrupted_line(result: TrainResult, nproc: int = 1) -> str:
    """One line: where an interrupted run stopped and the exact command that resumes it
    (with --nproc for a data-parallel run)."""
    import shlex
    procs = f" --nproc {nproc}" if nproc > 1 else ""
    return (f"[ctpg] {interrupted_by(result.stop_signal)} at iteration {result.step} of {result.config.iters}; checkpoint saved "
            f"in {result.run_dir}; resume with: ctpg train --logdir {shlex.quote(str(result.run_dir))} "
            f"--resume{procs}")


def default_run_dir(config: TrainConfig, root: str = "runs") -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path(root) / f"{config.env}__{config.estimator}__{config.seed}__{stamp}"


def prepare_run(env, estimator, logdir, resume: bool, overrides: dict):
    """(run_dir, config, checkpoint payload or None) for a new or resumed run.

    Raises ConfigError when logdir already holds a run and resume is False, when
    resume is True and logdir holds no checkpoint, or when a resumed run is asked to
    change a setting outside RESUMABLE.
    """
    if resume and logdir is None:
        raise ConfigError("resume needs the run directory: pass logdir= (--logdir DIR)")
    if logdir is not None and ckpt.checkpoint_path(logdir).exists():
        if not resume:
            raise ConfigError(f"{logdir} already holds a run (checkpoint.pt); pass resume=True "
                              "(--resume) to continue it or choose another logdir")
        payload = ckpt.load_checkpoint(logdir)
        config = _resumed_config(payload["config"], env, estimator, overrides)
        return Path(logdir), config, payload
    if resume:
        raise ConfigError(f"nothing to resume: {ckpt.checkpoint_path(logdir)} does not exist; check "
                          "--logdir, or drop --resume to start a new run there")
    config = resolve_config(env or "diffdrive", estimator or "ctpg", **overrides)
    run_dir = Path(logdir) if logdir is not None else default_run_dir(config)
    return run_dir, config, None


def _resumed_config(saved: dict, env, estimator, overrides: dict) -> TrainConfig:
    # Fields added since the checkpoint was written take their defaults.
    saved = {**TrainConfig().to_dict(), **saved}
    requested = dict(overrides)
    requested.update({k: v for k, v in (("env", env), ("estimator", estimator)) if v is not None})
    for widths in (saved, requested):
        for key in ("hidden", "critic_hidden"):
            if key in widths:
                widths[key] = tuple(int(w) for w in widths[key])
    changed = sorted(k for k, v in requested.items() if k in saved and saved[k] != v)
    fixed = [k for k in changed if k not in RESUMABLE]
    if fixed:
        details = ", ".join(f"{k}: {saved[k]!r} -> {requested[k]!r}" for k in fixed)
        raise ConfigError(f"a resumed run keeps its checkpoint's settings, but {details} differ; "
                          f"only {', '.join(sorted(RESUMABLE))} may change")
    unknown = sorted(set(requested) - set(saved))
    if unknown:
        raise ConfigError(f"unknown training setting(s) {', '.join(unknown)}")
    config = TrainConfig(**{**saved, **requested})
    validate(config)
    return config
