"""Neural ODEs on ctpg's solvers: `ctpg.odeint`, torchdiffeq's interface with CTPG's
interpolating adjoint as the default gradient (see ctpg.ode.odeint)."""
from ctpg.ode.memory import graph_saved_floats, saved_floats
from ctpg.ode.events import odeint_event
from ctpg.ode.odeint import MODES, OdeintInfo, odeint

__all__ = ["odeint", "odeint_event", "OdeintInfo", "MODES", "graph_saved_floats", "saved_floats"]
