"""Neural ODEs on ctpg's solvers: `ctpg.odeint`, torchdiffeq's interface with CTPG's
interpolating adjoint as the default gradient (see ctpg.ode.odeint)."""
from ctpg.ode.odeint import MODES, OdeintInfo, odeint, saved_floats

__all__ = ["odeint", "OdeintInfo", "MODES", "saved_floats"]
