"""Method names -> steppers, in one place (used by `solve` and the command line)."""
from __future__ import annotations

from ctpg.solvers.adams import ADAMS, Adams
from ctpg.solvers.rosenbrock_tableaus import ROSENBROCK_TABLEAUS
from ctpg.solvers.steppers import AutoSwitch, ExplicitRK, Rosenbrock
from ctpg.solvers.tableaus import TABLEAUS

AUTO_DEFAULT = ("tsit5", "rodas5p")


def method_names() -> list[str]:
    """Every name `solve(method=...)` accepts ("auto:E+R" pairs aside)."""
    return list(TABLEAUS) + list(ADAMS) + list(ROSENBROCK_TABLEAUS) + ["auto"]


def is_stiff_method(method: str) -> bool:
    """True for methods that use Jacobians (Rosenbrock and automatic switching)."""
    return method in ROSENBROCK_TABLEAUS or method.startswith("auto")


def make_stepper(method: str, jacobian=None, autonomous: bool = False):
    """The stepper for `method`; `jacobian` and `autonomous` matter to Rosenbrock steps only."""
    if method in TABLEAUS:
        return ExplicitRK(TABLEAUS[method])
    if method in ADAMS:
        return Adams(method, **ADAMS[method])
    if method in ROSENBROCK_TABLEAUS:
        return Rosenbrock(ROSENBROCK_TABLEAUS[method], jacobian, autonomous)
    if method == "auto" or method.startswith("auto:"):
        explicit, implicit = AUTO_DEFAULT if method == "auto" else _pair(method)
        return AutoSwitch(ExplicitRK(TABLEAUS[explicit]),
                          Rosenbrock(ROSENBROCK_TABLEAUS[implicit], jacobian, autonomous))
    raise ValueError(f"unknown solver method {method!r}; choose one of: {', '.join(method_names())} "
                     "(or 'auto:EXPLICIT+ROSENBROCK', e.g. 'auto:dopri5+rosenbrock23')")


def _pair(method: str):
    names = method[len("auto:"):].split("+")
    if len(names) != 2 or names[0] not in TABLEAUS or names[1] not in ROSENBROCK_TABLEAUS:
        raise ValueError(f"method {method!r}: write 'auto:EXPLICIT+ROSENBROCK' with EXPLICIT one of "
                         f"dopri5, tsit5 and ROSENBROCK one of {', '.join(ROSENBROCK_TABLEAUS)}")
    return names
