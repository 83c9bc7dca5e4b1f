"""Build the objects of a run from its TrainConfig: system, estimator, optimiser, schedule.

String names map to classes here and only here (the command line validates against
the same tuples in agents/config.py).
"""
from __future__ import annotations

import inspect
import math

import torch

from agents.config import ConfigError, TrainConfig


def make_system(config: TrainConfig, device: str | None = None, **env_kwargs):
    """envs.make(config.env) on `device` (default: config.device); raises ConfigError
    listing the known names if the environment is unknown."""
    import envs
    if config.env == "custom":
        raise ConfigError("this run trained a custom system, not one of envs.names(); pass the "
                          "same system again (system=...) to resume or evaluate it")
    if "device" in env_kwargs:
        raise ConfigError("give the device as the training setting device= (--device), not in env_kwargs")
    try:
        return envs.make(config.env, device=device or config.device, **env_kwargs)
    except KeyError as err:
        raise ConfigError(err.args[0]) from None


def make_estimator(config: TrainConfig):
    """ctpg.CTPG / ctpg.Backsolve (method, rtol, atol, or fixed steps solver_dt; per_sample,
    reuse_jacobians, compile and sync_every where the estimator has them) or ctpg.BPTT (dt, bptt_method).
    Raises ConfigError for an option the estimator does not have."""
    import ctpg
    if config.estimator == "bptt":
        return ctpg.BPTT(dt=config.dt, method=config.bptt_method)
    cls = ctpg.CTPG if config.estimator == "ctpg" else ctpg.Backsolve
    kwargs = dict(method=config.method, rtol=config.rtol, atol=config.atol, dt=config.solver_dt)
    for option in ("per_sample", "reuse_jacobians", "compile", "sync_every"):   # CTPG options a Backsolve lacks
        value = getattr(config, option)
        if value is None or value is False:
            continue
        if option not in inspect.signature(cls).parameters:
            flag = f" (--no-{option.replace('_', '-')})" if value is True else ""
            raise ConfigError(f"{option}={value!r} needs ctpg.{cls.__name__}({option}=...), which it does not "
                              f"have; drop it{flag} or use the ctpg estimator")
        kwargs[option] = value
    return cls(**kwargs)


def make_optimizer(config: TrainConfig, params) -> torch.optim.Optimizer:
    params = list(params)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                               weight_decay=config.weight_decay)
    return torch.optim.RMSprop(params, lr=config.lr, momentum=config.momentum,
                               weight_decay=config.weight_decay)


def learning_rate(config: TrainConfig, step: int) -> float:
    """The learning rate of the iteration after `step` completed ones: a pure function
    of the iteration and the settings, so a resumed run uses exactly the rates of an
    uninterrupted one.

    constant: lr. cosine: lr (f + (1 - f) (1 + cos(pi step / iters)) / 2) with
    f = lr_final, from lr down to f lr at the last iteration. step: lr gamma^floor(step /
    lr_step). exponential: lr gamma^step (gamma = lr_gamma). Iterations whose step was
    skipped (non-finite gradient) count too. Extending a run (resume with a larger
    `iters`) recomputes the cosine over the new length: the remaining iterations get
    the rates that a run started with the final `iters` has there, as if it had been
    planned that long from the start (the rate jumps back up to that schedule at the
    resume point); the other schedules do not depend on `iters`.
    """
    if config.schedule == "cosine":
        progress = min(step, config.iters) / config.iters
        return config.lr * (config.lr_final + (1 - config.lr_final) * 0.5 * (1 + math.cos(math.pi * progress)))
    if config.schedule == "step":
        return config.lr * config.lr_gamma ** (step // config.lr_step)
    if config.schedule == "exponential":
        return config.lr * config.lr_gamma ** step
    return config.lr
