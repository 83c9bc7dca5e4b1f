"""Figures of evaluation trajectories (matplotlib, no display needed).

One drawing function per kind of task: x-y paths for vehicles, angle and position
over time for poles, every state component over time otherwise. Each returns a
matplotlib Figure built without pyplot, so no backend or global figure state is
touched; TensorBoard renders it with its own Agg canvas.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from matplotlib.figure import Figure

from agents.evaluation import angle_from_upright

MAX_PATHS = 16  # more paths make the figure unreadable and slow to draw


def _xy_paths(ax, states, ix: int = 0, iy: int = 1, target=(0.0, 0.0)):
    for i in range(min(states.shape[1], MAX_PATHS)):
        ax.plot(states[:, i, ix], states[:, i, iy], lw=1)
        ax.plot(states[0, i, ix], states[0, i, iy], "o", ms=3, color="gray")
    if target is not None:
        ax.plot([target[0]], [target[1]], "k*", ms=10)
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.set_aspect("equal", adjustable="datalim")


def _vs_time(ax, times, values, label: str):
    ax.plot(times.cpu(), values[:, :MAX_PATHS], lw=1)   # a rollout on cuda keeps its grid there
    ax.set_xlabel("t")
    ax.set_ylabel(label)


def plane_figure(run, title: str, position=(0, 1), target=(0.0, 0.0)):
    """x-y paths from grey start dots, with the target as a star (None: no fixed target)."""
    fig = Figure(figsize=(5, 5))
    ax = fig.subplots()
    _xy_paths(ax, run.states.cpu(), *position, target=target)
    ax.set_title(title)
    return fig


def quadrotor_figure(run, title: str):
    """x-y paths (the target is the origin) and altitude -z over time (z points down)."""
    fig = Figure(figsize=(10, 4.5))
    axes = fig.subplots(1, 2)
    states = run.states.cpu()
    _xy_paths(axes[0], states)
    _vs_time(axes[1], run.times, -states[:, :, 2], "altitude -z")
    fig.suptitle(title)
    return fig


def _continuous_tilt(theta, upright: float):
    """Degrees from upright [S,N], unwrapped along time (no jumps at +-180) and shifted
    by whole turns so that the final value lies in [-180, 180], where the 25-degree
    band of the upright metric is drawn."""
    unwrapped = np.unwrap((theta - upright).numpy(), axis=0)
    final = angle_from_upright(torch.as_tensor(unwrapped[-1]), 0.0).numpy()
    return np.degrees(unwrapped - (unwrapped[-1] - final))


def pole_figure(run, title: str, angle: int, position: int | None, upright: float = 0.0):
    """Angle from upright (wrapped, degrees) over time, and the cart position if any."""
    panels = 1 if position is None else 2
    fig = Figure(figsize=(5 * panels, 4))
    axes = fig.subplots(1, panels, squeeze=False)
    states = run.states.cpu()
    _vs_time(axes[0, 0], run.times, _continuous_tilt(states[:, :, angle], upright),
             "angle from upright [deg]")
    for limit in (-25, 25):
        axes[0, 0].axhline(limit, color="gray", ls=":")
    if position is not None:
        _vs_time(axes[0, 1], run.times, states[:, :, position], "position")
    fig.suptitle(title)
    return fig


def states_figure(run, title: str):
    d = run.states.shape[2]
    cols = min(d, 3)
    rows = math.ceil(d / cols)
    fig = Figure(figsize=(4 * cols, 3 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for j in range(d):
        _vs_time(axes[j // cols, j % cols], run.times, run.states[:, :, j].cpu(), f"x[{j}]")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


FIGURES = {
    "diffdrive": lambda run, title: plane_figure(run, title),
    "quadrotor": quadrotor_figure,
    "quadrotor_realistic": quadrotor_figure,
    "electric": lambda run, title: plane_figure(run, title, target=None),
    "cartpole": lambda run, title: pole_figure(run, title, angle=1, position=0),
    "pendulum": lambda run, title: pole_figure(run, title, angle=0, position=None, upright=math.pi),
}


def trajectory_figure(env: str, run, title: str = ""):
    """The figure of an evaluation Rollout for `env` (generic state-vs-time if unknown)."""
    return FIGURES.get(env, states_figure)(run, title)
