"""Feedback policies u = pi(x): input maps, linear and MLP bodies, bounded outputs.

A policy is any torch callable from states [N,d] to actions [N,k]; the trainer and
every estimator accept any nn.Module. The pieces here compose with nn.Sequential:

    features (sin/cos of angles)  ->  MLP or Linear  ->  Squash into [low, high]
                                                        (or Offset by a nominal action)

`make_policy(system_or_name)` assembles them with the per-environment defaults of
agents/config.py. Policies take the system's dtype (float64 by default) so that
tight solver tolerances are not spoilt by float32 round-off.
"""
from __future__ import annotations

import functools
from typing import Callable

import torch
from torch import nn

from agents.config import resolve_config

_ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "elu": nn.ELU, "softplus": nn.Softplus,
                "silu": nn.SiLU}


class FeatureMap(nn.Module):
    """A fixed (parameter-free) input map x [N,d] -> [N,out_dim] from a pure function."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], out_dim: int, name: str = ""):
        super().__init__()
        self.fn, self.out_dim, self.name = fn, int(out_dim), name or getattr(fn, "__name__", "fn")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)

    def extra_repr(self) -> str:
        return f"{self.name} -> {self.out_dim}"


class AngleFeatures(nn.Module):
    """Replace each angle component of the state by (cos, sin), keeping the order.

    A state [x, theta, xdot, thetadot] with angle_indices=(1,) maps to
    [x, cos theta, sin theta, xdot, thetadot], so the policy is 2 pi-periodic in theta.
    """

    def __init__(self, state_dim: int, angle_indices):
        super().__init__()
        self.state_dim, self.angles = int(state_dim), tuple(sorted(int(i) for i in angle_indices))
        self.out_dim = self.state_dim + len(self.angles)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pieces, start = [], 0
        for i in self.angles:
            pieces += [x[:, start:i], torch.cos(x[:, i:i + 1]), torch.sin(x[:, i:i + 1])]
            start = i + 1
        pieces.append(x[:, start:])
        return torch.cat(pieces, 1)

    def extra_repr(self) -> str:
        return f"angles={self.angles} -> {self.out_dim}"


class MLP(nn.Module):
    """Fully connected network in_dim -> hidden... -> out_dim, linear output.

    `last_layer_scale` multiplies the last layer's initial weights and bias; 0 makes
    the initial policy output exactly 0 (a common start for stabilisation tasks, as
    the gradient still reaches the last layer). With hidden=() this is a linear policy.
    """

    def __init__(self, in_dim: int, out_dim: int, hidden=(32, 32), activation: str = "tanh",
                 last_layer_scale: float = 1.0):
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; use one of {', '.join(_ACTIVATIONS)}")
        widths = [int(in_dim), *map(int, hidden), int(out_dim)]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(widths) - 2:
                layers.append(_ACTIVATIONS[activation]())
        with torch.no_grad():
            layers[-1].weight.mul_(last_layer_scale)
            layers[-1].bias.mul_(last_layer_scale)
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Linear(MLP):
    """Affine policy u = W x + b (an MLP with no hidden layer)."""

    def __init__(self, in_dim: int, out_dim: int, last_layer_scale: float = 1.0):
        super().__init__(in_dim, out_dim, hidden=(), last_layer_scale=last_layer_scale)


class Squash(nn.Module):
    """Map unbounded z smoothly into (low, high) with unit slope at a centre c:

        u = c + s tanh(z / s),   s = high - c for z >= 0,  s = c - low for z < 0

    c defaults to the midpoint (then s is the half-width on both sides and the map is
    smooth); a nominal action such as hover thrust may be the centre instead (the map
    is then twice continuously differentiable at z = 0). Near z = 0 the action is
    c + z, as without bounds, so wide physical limits leave a small policy's
    learning unchanged and only compress actions as they approach a bound.
    """

    def __init__(self, low: torch.Tensor, high: torch.Tensor, centre: torch.Tensor | None = None):
        super().__init__()
        low, high = torch.as_tensor(low), torch.as_tensor(high)
        if torch.any(high <= low):
            raise ValueError(f"action bounds must satisfy low < high, got low={low}, high={high}")
        centre = (low + high) / 2 if centre is None else torch.as_tensor(centre).to(low)
        if torch.any(centre <= low) or torch.any(centre >= high):
            raise ValueError(f"the centre {centre} must lie strictly inside the bounds [{low}, {high}]")
        self.register_buffer("low", low.clone())
        self.register_buffer("high", high.clone())
        self.register_buffer("centre", centre.clone(), persistent=False)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        scale = torch.where(z >= 0, self.high - self.centre, self.centre - self.low)
        return self.centre + scale * torch.tanh(z / scale)


class Offset(nn.Module):
    """Add a fixed nominal action: u = nominal + z, so z = 0 is e.g. hover thrust."""

    def __init__(self, nominal: torch.Tensor):
        super().__init__()
        self.register_buffer("nominal", torch.as_tensor(nominal).clone())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z + self.nominal


def _diffdrive_features(system) -> nn.Module:
    from envs.diffdrive import observation_features
    return FeatureMap(observation_features, system.state_dim + 2, "diffdrive.observation_features")


def _electric_features(system) -> nn.Module:
    from envs.electric import observation_features
    features = functools.partial(observation_features, segment_time=system.params.segment_time)
    return FeatureMap(features, 8, "electric.observation_features")


def _hopper_features(system) -> nn.Module:
    from envs.hopper import observation_features
    return FeatureMap(observation_features, 7, "hopper.observation_features")


# Input maps per environment name: a factory from the system to a module with `out_dim`.
# Angles go through (cos, sin) so that the policy sees a heading of 0 and 2 pi alike.
FEATURES: dict[str, Callable[[object], nn.Module]] = {
    "diffdrive": _diffdrive_features,
    "electric": _electric_features,
    "hopper": _hopper_features,
    "cartpole": lambda s: AngleFeatures(s.state_dim, (1,)),   # (x, theta, xdot, thetadot)
    "pendulum": lambda s: AngleFeatures(s.state_dim, (0,)),   # (theta, thetadot)
    "double_pendulum": lambda s: AngleFeatures(s.state_dim, (0, 1)),   # (theta1, theta2, w1, w2)
}


# Nominal actions per environment: the centre of the Squash (or, for unbounded actions,
# an Offset), so that a quadrotor whose network starts near zero starts near hover,
# not in free fall.
NOMINAL: dict[str, Callable[[object], torch.Tensor]] = {
    "quadrotor": lambda s: s.hover_action,
    "quadrotor_realistic": lambda s: s.hover_action,
}


CUSTOM = "custom"


def env_name(system) -> str:
    """The registry name of a system: its `name` attribute (set by envs.make), else the
    module name of a class from the envs package (envs.quadrotor -> "quadrotor"), else
    "custom": a system of your own gets generic defaults, never another environment's."""
    name = getattr(system, "name", None)
    if name:
        return name
    module = type(system).__module__
    return module.rsplit(".", 1)[-1] if module.startswith("envs.") else CUSTOM


def make_policy(system_or_name, *, env: str | None = None, hidden=None, activation=None,
                last_layer_scale=None, features: bool = True, squash: bool = True) -> nn.Module:
    """A policy for `system_or_name` (a ControlSystem or an envs name) with its defaults.

    Unset options take the per-environment values of agents/config.py. The result is
    nn.Sequential(features?, MLP, Squash or Offset?) in the system's dtype and device;
    Squash is added when the system has action bounds (centred at the environment's
    nominal action in NOMINAL, else at the midpoint), Offset by the nominal action
    otherwise. A system that is not a registered environment (env "custom") gets the
    generic defaults: an MLP from state_dim to action_dim.
    """
    if isinstance(system_or_name, str):
        import envs
        env, system = env or system_or_name, envs.make(system_or_name)
    else:
        system = system_or_name
    env = env or env_name(system)
    defaults = resolve_config(env, "ctpg")
    hidden = defaults.hidden if hidden is None else hidden
    activation = activation or defaults.activation
    last_layer_scale = defaults.last_layer_scale if last_layer_scale is None else last_layer_scale
    layers: list[nn.Module] = []
    in_dim = system.state_dim
    if features and env in FEATURES:
        layers.append(FEATURES[env](system))
        in_dim = layers[-1].out_dim
    layers.append(MLP(in_dim, system.action_dim, hidden, activation, last_layer_scale))
    nominal = NOMINAL[env](system) if env in NOMINAL else None
    if squash and system.action_low is not None:
        layers.append(Squash(system.action_low, system.action_high, nominal))
    elif nominal is not None:
        layers.append(Offset(nominal))
    return nn.Sequential(*layers).to(dtype=system.dtype, device=system.device)
