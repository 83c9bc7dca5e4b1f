"""Checkpoints that resume a run exactly.

A checkpoint holds everything the next iteration depends on: policy and optimiser
states, the batch generator's and torch's global RNG states, the counters
(iteration, cumulative oracle evaluations, wall-clock, skipped steps) and the config.
The learning rate is a pure function of the iteration (agents.builders.learning_rate),
so no scheduler state is stored. Also kept: `env_kwargs`, the overrides the system was
built with, so the policy can be loaded and evaluated on the same system later.
Files are written to a temporary name and moved into place with os.replace, so a
run killed mid-write leaves the previous checkpoint intact.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from agents.config import ConfigError

CHECKPOINT_NAME = "checkpoint.pt"
ORACLE_KEYS = ("f_evals", "vjp_evals", "jac_evals", "sim_calls", "total_evals")


@dataclass
class Counters:
    """Run-long counters; they survive resumes."""

    step: int = 0
    wall_time: float = 0.0
    skipped: int = 0
    bad_in_row: int = 0
    evaluations: int = 0
    last_eval_step: int = -1
    oracle: dict = field(default_factory=lambda: dict.fromkeys(ORACLE_KEYS, 0))


def checkpoint_path(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / CHECKPOINT_NAME


def save_checkpoint(run_dir, *, policy, optimizer, generator, counters: Counters,
                    config: dict, history: list, env_kwargs: dict | None = None,
                    extra: dict | None = None) -> Path:
    """Write the run's state atomically to run_dir/checkpoint.pt; returns the path.
    `extra` holds more of the training state under its own keys (the actor-critic's).

    Costs one torch.save of the parameters and optimiser moments (a few KB to MB).
    """
    path = checkpoint_path(run_dir)
    payload = {
        "policy": policy.state_dict(),
        "optimizer": optimizer.state_dict(),
        "generator": generator.get_state(),
        "torch_rng": torch.get_rng_state(),
        "counters": dataclasses.asdict(counters),
        "config": dict(config),
        "history": list(history),
        "env_kwargs": dict(env_kwargs or {}),
        **(extra or {}),
    }
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as file:
        torch.save(payload, file)
        file.flush()
        os.fsync(file.fileno())     # on disk before it replaces the last good one
    os.replace(tmp, path)
    return path


class CheckpointError(ConfigError):
    """A checkpoint file that cannot be read back (truncated, corrupted, not ctpg's)."""


PAYLOAD_KEYS = ("policy", "optimizer", "generator", "torch_rng", "counters", "config", "history")


def load_checkpoint(run_dir) -> dict:
    """The payload written by save_checkpoint. Raises FileNotFoundError when absent and
    CheckpointError when the file is truncated, corrupted or lacks a run's state (a
    clear error, never a silent fresh start)."""
    path = checkpoint_path(run_dir)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:        # zip, pickle and EOF errors all mean the same here
        problem = f"cannot be read ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else 'no detail'})"
    else:
        missing = [k for k in PAYLOAD_KEYS if k not in payload] if isinstance(payload, dict) else list(PAYLOAD_KEYS)
        if not missing:
            return payload
        problem = f"is not a ctpg training checkpoint (missing {', '.join(missing)})"
    raise CheckpointError(
        f"{path} {problem}: it is truncated or corrupted (checkpoints are written to {path.name}.tmp and "
        "renamed only when complete, so a run killed while saving leaves the previous one whole; this file "
        "was damaged afterwards or is not ctpg's). Restore it from a copy, or start a new run in another "
        "--logdir; this directory is left as it is")


def restore(payload: dict, *, policy, optimizer, generator) -> tuple[Counters, list]:
    """Load a payload into freshly built objects; returns (counters, eval history)."""
    policy.load_state_dict(payload["policy"])
    optimizer.load_state_dict(payload["optimizer"])
    generator.set_state(payload["generator"])
    torch.set_rng_state(payload["torch_rng"])
    return Counters(**payload["counters"]), list(payload["history"])
