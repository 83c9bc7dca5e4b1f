"""Train a policy: `agents.train`, in one process or data-parallel in several.

    result = agents.train(env="diffdrive", estimator="ctpg", iters=300, logdir="runs/dd", seed=0)
    result = agents.train(env="diffdrive", iters=300, batch_size=256, nproc=2)   # 2 processes

`train` settles the run's settings and directory (agents.runs), builds the system,
policy and estimator from them (agents.builders) and runs the loop (agents.loop.Trainer);
with nproc > 1 or under torchrun, every process does so on its shard of each batch
(agents.distributed).
"""
from __future__ import annotations

import sys

import torch

from agents import distributed
from agents.builders import make_system
from agents.config import ConfigError, TrainConfig
from agents.loop import Trainer
from agents.policies import env_name, make_policy
from agents.runs import TrainResult, prepare_run


def train(env: str | None = None, estimator: str | None = None, *, logdir=None,
          resume: bool = False, progress_fn=None, system=None, policy=None,
          env_kwargs: dict | None = None, nproc: int = 1, **overrides) -> TrainResult:
    """Train a policy; keyword overrides are TrainConfig fields (iters=, lr=, seed=, ...).

    `system` / `policy` replace the ones built from the config (any ControlSystem,
    any torch module mapping [N,d] to [N,k]). A `system` given without `env` names the
    environment itself (its `name`, as envs.make sets it); a system of your own runs as
    env "custom": generic defaults, an MLP sized from its dimensions, and metrics that
    assume no environment. `env_kwargs` go to envs.make and are kept in the checkpoint.
    With resume=True an existing checkpoint in `logdir` is continued under its own
    settings (only budgets and logging intervals may change). `nproc` > 1 trains
    data-parallel in that many processes on this machine (agents.distributed; this
    process is rank 0 and returns the result); under torchrun the processes join
    torchrun's group by themselves. Raises agents.config.ConfigError (a ValueError) for
    bad settings, before any work is done.
    """
    if env is None and system is not None and not resume:
        env = env_name(system)
    kwargs = dict(env=env, estimator=estimator, logdir=logdir, resume=resume, system=system, policy=policy,
                  env_kwargs=env_kwargs, **overrides)
    if nproc != 1:
        return _launch(nproc, kwargs, progress_fn)
    group = distributed.from_environment()
    try:
        return train_in_group(group, progress_fn=progress_fn, **kwargs)
    finally:
        group.close()


def _launch(nproc, kwargs: dict, progress_fn) -> TrainResult:
    """Check the settings here, then train in nproc processes (distributed.launch)."""
    if not isinstance(nproc, int) or nproc < 1:
        raise ConfigError(f"nproc must be a positive integer, got {nproc!r}")
    fixed = {k: kwargs[k] for k in ("env", "estimator", "logdir", "resume")}
    overrides = {k: v for k, v in kwargs.items() if k not in (*fixed, "system", "policy", "env_kwargs")}
    run_dir, config, _ = prepare_run(fixed["env"], fixed["estimator"], fixed["logdir"], fixed["resume"], overrides)
    _check_batch(config, nproc)
    return distributed.launch(nproc, dict(kwargs, logdir=run_dir), progress_fn)


def _check_batch(config: TrainConfig, world_size: int) -> None:
    if config.algo == "actor-critic" and world_size > 1:
        raise ConfigError("algo='actor-critic' runs in one process: its carried states and critic are not "
                          "shared among processes yet; drop --nproc (or use algo='full-horizon')")
    if config.batch_size < world_size:
        raise ConfigError(f"batch_size={config.batch_size} cannot be shared among {world_size} processes: "
                          "every process needs at least one initial state; raise --batch-size or lower --nproc")


def train_in_group(group, env=None, estimator=None, *, logdir=None, resume=False, progress_fn=None,
                   system=None, policy=None, env_kwargs=None, **overrides) -> TrainResult:
    """train() in one process of `group` (distributed.Solo for a single process). Rank 0
    prepares the run directory and settles the settings; every rank gets them from it."""
    run_dir, config, payload = group.share(lambda: prepare_run(env, estimator, logdir, resume, overrides))
    _check_batch(config, group.world_size)
    if payload is not None:
        env_kwargs = payload.get("env_kwargs", {}) if env_kwargs is None else env_kwargs
        if not config.quiet and group.is_main:
            print(f"[ctpg] resuming {run_dir} from iteration {payload['counters']['step']} "
                  f"(of {config.iters})", file=sys.stderr)
    threads = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    try:
        torch.manual_seed(config.seed)
        if system is None:
            system = make_system(config, device=group.device(config.device), **(env_kwargs or {}))
        if policy is None:
            policy = build_policy(config, system)
        group.sync_parameters(policy)
        return Trainer(config, system, policy, run_dir, payload, progress_fn, env_kwargs, group).run()
    finally:
        torch.set_num_threads(threads)


def build_policy(config: TrainConfig, system):
    """The policy make_policy builds for this config and system (what a checkpoint's
    `policy` state belongs to, unless the run was given its own policy)."""
    return make_policy(system, env=config.env, hidden=config.hidden, activation=config.activation,
                       features=config.features, last_layer_scale=config.last_layer_scale,
                       squash=config.squash)


__all__ = ["TrainResult", "Trainer", "build_policy", "train", "train_in_group"]
