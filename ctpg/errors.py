"""Exceptions raised by solvers and estimators; each message says how to fix the problem."""


class SolverError(RuntimeError):
    """An ODE solve could not finish."""


class MaxStepsExceeded(SolverError):
    """The solver needed more than max_steps steps."""


class StepSizeTooSmall(SolverError):
    """The adaptive step fell below min_step (stiffness, a discontinuity or a blow-up)."""


class NonFiniteError(FloatingPointError):
    """The dynamics, policy or cost produced NaN or Inf."""
