"""The closed loop of a hybrid system for scipy's solve_ivp: the independent reference that
tests/test_hybrid.py and tests/test_hopper.py chain across resets themselves."""
from __future__ import annotations

import numpy as np
import torch

F64 = torch.float64


def scipy_closed_loop(system, policy):
    """(rhs, events): rhs(t, y) of y = [x, accumulated running cost] under the torch
    `policy`, and one terminal solve_ivp event per guard element, in its direction."""
    d = system.state_dim

    def rhs(t, y):
        with torch.no_grad():
            x = torch.tensor(y[None, :d], dtype=F64)
            u = policy(x)
            return np.concatenate([system.f(x, u)[0].numpy(), system.running_cost(x, u).numpy()])

    def element(i):
        def hit(t, y):
            with torch.no_grad():
                return float(system.guards(torch.tensor(y[None, :d], dtype=F64))[0, i])
        hit.terminal, hit.direction = True, system.guard_directions[i]
        return hit

    return rhs, [element(i) for i in range(len(system.guard_directions))]
