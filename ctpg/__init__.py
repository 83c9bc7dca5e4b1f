"""ctpg: continuous-time policy gradients for learning feedback policies.

    import ctpg
    loss, info = ctpg.CTPG(rtol=1e-6, atol=1e-8)(system, policy, x0, T)
    loss.backward()
"""
from ctpg.system import (ControlSystem, OracleCounter, autograd_jacobians,
                         finite_difference_jacobians)

__all__ = ["ControlSystem", "OracleCounter", "autograd_jacobians", "finite_difference_jacobians"]
