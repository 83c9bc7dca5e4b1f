"""ODE solvers: explicit Runge-Kutta and Rosenbrock tableaus as data, one stepper
protocol for both, per-sample adaptive step control with dense output."""
from ctpg.solvers.integrate import Solution, solve
from ctpg.solvers.methods import is_stiff_method, make_stepper, method_names
from ctpg.solvers.rosenbrock_tableaus import ROSENBROCK_TABLEAUS, RosenbrockTableau
from ctpg.solvers.steppers import Linearisation
from ctpg.solvers.tableaus import TABLEAUS, Tableau, get_tableau

__all__ = ["solve", "Solution", "Tableau", "TABLEAUS", "get_tableau", "RosenbrockTableau",
           "ROSENBROCK_TABLEAUS", "Linearisation", "make_stepper", "method_names", "is_stiff_method"]
