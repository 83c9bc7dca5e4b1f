"""Small helpers shared by the environment modules (private to `envs`)."""
from __future__ import annotations

import dataclasses

import torch


def override_params(defaults, overrides: dict, owner: str):
    """`defaults` (a frozen dataclass) with the fields named in `overrides` replaced.

    Unknown names raise a TypeError that lists the valid ones, so a typo in
    `envs.make("quadrotor", mas=2.0)` says what was meant.
    """
    valid = {field.name for field in dataclasses.fields(defaults)}
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise TypeError(f"{owner}: unknown parameter(s) {', '.join(unknown)}; "
                        f"valid overrides are {', '.join(sorted(valid))} (plus horizon, dtype, device)")
    return dataclasses.replace(defaults, **overrides)


def uniform(n: int, low, high, generator, dtype, device) -> torch.Tensor:
    """[n, len(low)] samples of U(low, high), drawn from `generator` only.

    Drawn on the generator's device and then moved, so a CPU generator seeds a
    CUDA system reproducibly.
    """
    low = torch.as_tensor(low, dtype=dtype, device=device)
    high = torch.as_tensor(high, dtype=dtype, device=device)
    unit = torch.rand(n, low.shape[-1], generator=generator, dtype=dtype,
                      device=_draw_device(generator, device)).to(device)
    return low + (high - low) * unit


def normal(n: int, std, generator, dtype, device) -> torch.Tensor:
    """[n, len(std)] samples of N(0, std^2), drawn from `generator` only."""
    std = torch.as_tensor(std, dtype=dtype, device=device)
    noise = torch.randn(n, std.shape[-1], generator=generator, dtype=dtype,
                        device=_draw_device(generator, device)).to(device)
    return std * noise


def _draw_device(generator, device):
    return generator.device if generator is not None else device
