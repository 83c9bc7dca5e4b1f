"""ctpg: continuous-time policy gradients for learning feedback policies.

    import ctpg
    loss, info = ctpg.CTPG(rtol=1e-6, atol=1e-8)(system, policy, x0, T)
    loss.backward()
"""
from ctpg.errors import MaxStepsExceeded, NonFiniteError, SolverError, StepSizeTooSmall
from ctpg.estimators import (BPTT, CTPG, ESTIMATORS, Backsolve, EstimateInfo, Estimator, PassStats,
                             make_estimator)
from ctpg.system import (ControlSystem, OracleCounter, autograd_jacobians,
                         finite_difference_jacobians)
from ctpg.trajectory import Trajectory

__all__ = ["ControlSystem", "OracleCounter", "autograd_jacobians", "finite_difference_jacobians",
           "CTPG", "BPTT", "Backsolve", "Estimator", "EstimateInfo", "PassStats", "ESTIMATORS",
           "make_estimator", "Trajectory", "SolverError", "MaxStepsExceeded", "StepSizeTooSmall",
           "NonFiniteError"]

# Added names: the version and the action saturation the estimators apply.
from ctpg._version import __version__  # noqa: E402
from ctpg.system import saturated_policy  # noqa: E402

__all__ += ["__version__", "saturated_policy"]

# Neural ODEs: torchdiffeq's odeint interface with the interpolating adjoint (issue 13).
from ctpg.ode import OdeintInfo, odeint  # noqa: E402

__all__ += ["odeint", "OdeintInfo"]

# Events (issue 21): torchdiffeq's odeint_event, differentiable through the event time.
from ctpg.ode import odeint_event  # noqa: E402

__all__ += ["odeint_event"]
