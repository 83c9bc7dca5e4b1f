"""Build the objects of a run from its TrainConfig: system, estimator, optimiser, schedule.

String names map to classes here and only here (the command line validates against
the same tuples in agents/config.py).
"""
from __future__ import annotations

import torch

from agents.config import ConfigError, TrainConfig


def make_system(config: TrainConfig, **env_kwargs):
    """envs.make(config.env); raises ConfigError listing the known names if unknown."""
    import envs
    try:
        return envs.make(config.env, **env_kwargs)
    except KeyError as err:
        raise ConfigError(err.args[0]) from None


def make_estimator(config: TrainConfig):
    """ctpg.CTPG / ctpg.Backsolve (method, rtol, atol) or ctpg.BPTT (dt)."""
    import ctpg
    if config.estimator == "bptt":
        return ctpg.BPTT(dt=config.dt)
    cls = ctpg.CTPG if config.estimator == "ctpg" else ctpg.Backsolve
    return cls(method=config.method, rtol=config.rtol, atol=config.atol)


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


def _constant(_: int) -> float:
    return 1.0


def make_scheduler(config: TrainConfig, optimizer):
    """A torch LR scheduler stepped once per successful optimiser step.

    cosine anneals to lr * lr_final over `iters`; step multiplies by lr_gamma every
    lr_step iterations; exponential by lr_gamma every iteration.
    """
    sched = torch.optim.lr_scheduler
    if config.schedule == "cosine":
        return sched.CosineAnnealingLR(optimizer, T_max=config.iters, eta_min=config.lr * config.lr_final)
    if config.schedule == "step":
        return sched.StepLR(optimizer, step_size=config.lr_step, gamma=config.lr_gamma)
    if config.schedule == "exponential":
        return sched.ExponentialLR(optimizer, gamma=config.lr_gamma)
    return sched.LambdaLR(optimizer, _constant)
