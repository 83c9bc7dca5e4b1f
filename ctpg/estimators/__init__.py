"""Policy-gradient estimators behind one interface: loss, info = estimator(system, policy, x0, T)."""
from ctpg.estimators.backsolve import Backsolve
from ctpg.estimators.base import EstimateInfo, Estimator, PassStats
from ctpg.estimators.bptt import BPTT
from ctpg.estimators.ctpg import CTPG

ESTIMATORS = {"ctpg": CTPG, "bptt": BPTT, "backsolve": Backsolve}


def make_estimator(name: str, **kwargs) -> Estimator:
    """Build an estimator by name ('ctpg', 'bptt', 'backsolve'); the error lists the names."""
    try:
        cls = ESTIMATORS[name]
    except KeyError:
        raise ValueError(f"unknown estimator {name!r}; choose one of: {', '.join(ESTIMATORS)}") from None
    return cls(**kwargs)


__all__ = ["CTPG", "BPTT", "Backsolve", "Estimator", "EstimateInfo", "PassStats", "ESTIMATORS", "make_estimator"]
