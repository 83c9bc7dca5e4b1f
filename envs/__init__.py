"""Differentiable environments: `envs.make(name)` returns a `ctpg.ControlSystem`.

Importing this package also registers every environment with gymnasium under the
namespace "ctpg/" (for example `gymnasium.make("ctpg/LQR-v0")`) when gymnasium is
installed.
"""
from __future__ import annotations

from typing import Callable

from ctpg.system import ControlSystem

_REGISTRY: dict[str, Callable[..., ControlSystem]] = {}


def register(name: str, factory: Callable[..., ControlSystem], *, overwrite: bool = False) -> None:
    """Make `factory(**overrides)` available as `envs.make(name, **overrides)`."""
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"environment {name!r} is already registered; pass overwrite=True to replace it")
    _REGISTRY[name] = factory


def names() -> list[str]:
    """Registered environment names, sorted."""
    return sorted(_REGISTRY)


def make(name: str, **overrides) -> ControlSystem:
    """Build the environment registered as `name`, passing `overrides` to its constructor.

    The system's `name` attribute is set to `name` (unless the factory set one), so
    agents can pick the environment's defaults and metrics from the instance alone.
    """
    if name not in _REGISTRY:
        raise KeyError(f"unknown environment {name!r}; known environments: {', '.join(names())}")
    system = _REGISTRY[name](**overrides)
    if not getattr(system, "name", None):
        system.name = name
    return system


def _lazy(path: str) -> Callable[..., ControlSystem]:
    """A factory that imports `module:Class` on first use, so that importing `envs`
    does not load MuJoCo or matplotlib for a user who only wants LQR."""
    module_name, class_name = path.split(":")

    def factory(**overrides):
        import importlib
        return getattr(importlib.import_module(module_name), class_name)(**overrides)

    factory.__qualname__ = class_name
    return factory


register("lqr", _lazy("envs.lqr:LQR"))
register("juggler_soft", _lazy("envs.juggler:SoftJuggler"))   # penalty contact: the BPTT baseline
register("diffdrive", _lazy("envs.diffdrive:DiffDrive"))
register("quadrotor", _lazy("envs.quadrotor:Quadrotor"))
register("quadrotor_realistic", _lazy("envs.quadrotor:realistic_quadrotor"))
register("cartpole", _lazy("envs.cartpole:Cartpole"))
register("electric", _lazy("envs.electric:Electric"))
register("pendulum", _lazy("envs.pendulum:Pendulum"))
register("double_pendulum", _lazy("envs.double_pendulum:DoublePendulum"))
register("juggler", _lazy("envs.juggler:Juggler"))
register("hopper", _lazy("envs.hopper:Hopper"))

try:  # gymnasium is an optional layer: the core systems work without it
    import gymnasium as _gymnasium  # noqa: F401
except ImportError:  # pragma: no cover
    pass
else:
    from envs.gym_adapter import register_gym_envs

    register_gym_envs()
