"""ODE solvers: Butcher tableaus as data, one generic explicit RK step, fixed and
adaptive integration with dense output."""
from ctpg.solvers.integrate import Solution, solve
from ctpg.solvers.tableaus import TABLEAUS, Tableau, get_tableau

__all__ = ["solve", "Solution", "Tableau", "TABLEAUS", "get_tableau"]
