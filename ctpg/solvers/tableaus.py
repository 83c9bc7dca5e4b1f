"""Butcher tableaus as data. One generic stepper (`stepper.rk_step`) runs them all.

A tableau is validated when built: each row of `a` sums to its `c`, `b` sums to 1,
error weights sum to 0 and, for FSAL methods, the last row of `a` equals `b`.
Dense output is data too: `dense[i][j]` is the coefficient of theta^(j+1) in the
weight b_i(theta), so that y(t0 + theta h) = y0 + h sum_i b_i(theta) k_i. Methods
without their own interpolant get cubic Hermite from the endpoint derivatives.

Sources: Hairer, Norsett & Wanner, Solving ODEs I (1993) for Euler, midpoint,
Heun-Euler, RK4, Dormand-Prince 5(4) and its dense output (Shampine, "Some practical
Runge-Kutta formulas", Math. Comp. 1986) and DOP853; Bogacki & Shampine, "A 3(2)
pair of Runge-Kutta formulas", Appl. Math. Lett. 1989; Tsitouras, "Runge-Kutta pairs
of order 5(4) satisfying only the first column simplifying assumption", Comput. Math.
Appl. 2011 (coefficients and interpolant).
"""
from __future__ import annotations

import dataclasses
from fractions import Fraction as F

import numpy as np


@dataclasses.dataclass(frozen=True)
class Tableau:
    """An explicit Runge-Kutta method.

    order: order of the propagated solution; error_order: order of the embedded
    solution (None when the method has no error estimate, i.e. fixed steps only);
    err: weights e_i = b_i - bhat_i of the local error estimate h sum_i e_i k_i.
    """

    name: str
    c: tuple
    a: tuple            # a[i] holds the i coefficients of stage i (a[0] is empty)
    b: tuple
    order: int
    err: tuple | None = None
    error_order: int | None = None
    fsal: bool = False
    dense: tuple | None = None
    # (i, j): two stages evaluated at the same time c_i = c_j = 1, whose slopes give
    # an estimate of the Jacobian's largest eigenvalue ||k_j - k_i|| / ||Y_j - Y_i||
    # for free (Hairer & Wanner's stiffness detection for dopri5, Solving ODEs II, IV.2)
    stiffness_stages: tuple | None = None

    def __post_init__(self):
        s = len(self.c)
        checks = [len(self.a) == s, len(self.b) == s,
                  all(len(row) == i for i, row in enumerate(self.a)),
                  all(abs(sum(map(float, row)) - float(ci)) < 1e-12 for row, ci in zip(self.a, self.c)),
                  abs(sum(map(float, self.b)) - 1) < 1e-12]
        if self.err is not None:
            checks += [len(self.err) == s, abs(sum(map(float, self.err))) < 1e-12]
        if self.fsal:
            checks += [tuple(map(float, self.a[-1])) == tuple(map(float, self.b[:-1])), float(self.b[-1]) == 0]
        if self.dense is not None:
            at_one = [sum(map(float, row)) for row in self.dense]
            checks += [len(self.dense) == s, np.allclose(at_one, list(map(float, self.b)), atol=1e-12)]
        if not all(checks):
            raise ValueError(f"tableau {self.name!r} is inconsistent (rows, weights or interpolant)")

    @property
    def stages(self) -> int:
        return len(self.c)

    @property
    def adaptive(self) -> bool:
        return self.err is not None

    @property
    def stability_boundary(self) -> float:
        """Largest x with |R(-x')| <= 1 for every x' in [0, x]: explicit steps are stable
        on a decaying mode with eigenvalue -lambda only while h lambda stays below it.
        R(z) = 1 + z b^T (I - z A)^-1 1 is the method's stability function."""
        s = self.stages
        A = np.zeros((s, s))
        for i, row in enumerate(self.a):
            A[i, :i] = [float(v) for v in row]
        b = np.array([float(v) for v in self.b])
        for x in np.arange(0.01, 10.0, 0.01):
            z = -x
            if abs(1 + z * b @ np.linalg.solve(np.eye(s) - z * A, np.ones(s))) > 1 + 1e-12:
                return float(x - 0.01)
        return 10.0


def _quartic_through_midpoint(b, mid, fsal_last: bool = True):
    """Dense weights of the quartic through y0, y1, h f0, h f1 and a midpoint value.

    Every endpoint quantity is a linear combination of the stages (f0 = k_1 and, for
    an FSAL method, f1 = k_s), so the interpolant's weights b_i(theta) are polynomials
    whose coefficients solve a 3x3 system, stage by stage.
    """
    s = len(b)
    e_first = np.eye(s)[0]
    e_last = np.eye(s)[-1]
    b, mid = np.array(b, float), np.array(mid, float)
    # unknowns (a2, a3, a4); a1 = f0 weights
    M = np.array([[1, 1, 1], [2, 3, 4], [1 / 4, 1 / 8, 1 / 16]])
    rhs = np.stack([b - e_first, e_last - e_first, mid - e_first / 2])
    a234 = np.linalg.solve(M, rhs)
    coef = np.vstack([e_first, a234])          # [4, s]: theta^1..theta^4
    return tuple(tuple(coef[:, i]) for i in range(s))


def _weights_from_factors(rows):
    """Interpolant weights given as scale * theta^p * product of polynomial factors.

    Each row is (scale, p, factors) with factors in increasing-degree coefficients;
    returns the rows of coefficients of theta^1, theta^2, ... (no constant term).
    """
    P = np.polynomial.polynomial
    coefs = []
    for scale, power, factors in rows:
        poly = np.r_[np.zeros(power), scale]
        for factor in factors:
            poly = P.polymul(poly, factor)
        coefs.append(poly[1:])
    width = max(len(c) for c in coefs)
    return tuple(tuple(np.r_[c, np.zeros(width - len(c))]) for c in coefs)


EULER = Tableau("euler", c=(0,), a=((),), b=(1,), order=1)

MIDPOINT = Tableau("midpoint", c=(0, F(1, 2)), a=((), (F(1, 2),)), b=(0, 1), order=2)

# Heun's method with Euler embedded: a 2(1) pair.
HEUN = Tableau("heun", c=(0, 1), a=((), (1,)), b=(F(1, 2), F(1, 2)), order=2,
               err=(F(-1, 2), F(1, 2)), error_order=1)

RK4 = Tableau("rk4", c=(0, F(1, 2), F(1, 2), 1),
              a=((), (F(1, 2),), (0, F(1, 2)), (0, 0, 1)),
              b=(F(1, 6), F(1, 3), F(1, 3), F(1, 6)), order=4)

_BOSH3_B = (F(2, 9), F(1, 3), F(4, 9), 0)
_BOSH3_BHAT = (F(7, 24), F(1, 4), F(1, 3), F(1, 8))
BOSH3 = Tableau("bosh3", c=(0, F(1, 2), F(3, 4), 1),
                a=((), (F(1, 2),), (0, F(3, 4)), _BOSH3_B[:3]),
                b=_BOSH3_B, order=3, err=tuple(x - y for x, y in zip(_BOSH3_B, _BOSH3_BHAT)),
                error_order=2, fsal=True)

_DOPRI5_B = (F(35, 384), 0, F(500, 1113), F(125, 192), F(-2187, 6784), F(11, 84), 0)
_DOPRI5_BHAT = (F(5179, 57600), 0, F(7571, 16695), F(393, 640), F(-92097, 339200), F(187, 2100), F(1, 40))
# Shampine's 4th-order accurate value at the step midpoint.
_DOPRI5_MID = tuple(x / 2 for x in (F(6025192743, 30085553152), 0, F(51252292925, 65400821598),
                                    F(-2691868925, 45128329728), F(187940372067, 1594534317056),
                                    F(-1776094331, 19743644256), F(11237099, 235043384)))
DOPRI5 = Tableau(
    "dopri5", c=(0, F(1, 5), F(3, 10), F(4, 5), F(8, 9), 1, 1),
    a=((), (F(1, 5),), (F(3, 40), F(9, 40)), (F(44, 45), F(-56, 15), F(32, 9)),
       (F(19372, 6561), F(-25360, 2187), F(64448, 6561), F(-212, 729)),
       (F(9017, 3168), F(-355, 33), F(46732, 5247), F(49, 176), F(-5103, 18656)),
       _DOPRI5_B[:6]),
    b=_DOPRI5_B, order=5, err=tuple(x - y for x, y in zip(_DOPRI5_B, _DOPRI5_BHAT)), error_order=4,
    fsal=True, dense=_quartic_through_midpoint(_DOPRI5_B, _DOPRI5_MID), stiffness_stages=(5, 6))

_TSIT5_B = (0.09646076681806523, 0.01, 0.4798896504144996, 1.379008574103742, -3.290069515436081,
            2.324710524099774, 0.0)
TSIT5 = Tableau(
    "tsit5", c=(0, 0.161, 0.327, 0.9, 0.9800255409045097, 1, 1),
    a=((), (0.161,), (-0.008480655492356989, 0.335480655492357),
       (2.897153057105493, -6.359448489975075, 4.3622954328695815),
       (5.325864828439257, -11.748883564062828, 7.4955393428898365, -0.09249506636175525),
       (5.86145544294642, -12.92096931784711, 8.159367898576159, -0.071584973281401,
        -0.028269050394068383),
       _TSIT5_B[:6]),
    b=_TSIT5_B, order=5,
    err=(-0.00178001105222577714, -0.0008164344596567469, 0.007880878010261995, -0.1447110071732629,
         0.5823571654525552, -0.45808210592918697, 1 / 66),
    error_order=4, fsal=True, stiffness_stages=(5, 6),
    # Tsitouras (2011) interpolant weights in factored form
    dense=_weights_from_factors((
        (-1.0530884977290216, 1, ((-1.3299890189751412, 1), (0.7139816917074209, -1.4364028541716351, 1))),
        (0.1017, 2, ((1.2949852507374631, -2.1966568338249754, 1),)),
        (2.490627285651252793, 2, ((1.57803468208092486, -2.38535645472061657, 1),)),
        (-16.54810288924490272, 2, ((-1.21712927295533244, 1), (-0.61620406037800089, 1))),
        (47.37952196281928122, 2, ((-1.203071208372362603, 1), (-0.658047292653547382, 1))),
        (-34.87065786149660974, 2, ((-1.2, 1), (-0.666666666666666667, 1))),
        (2.5, 2, ((-1, 1), (-0.6, 1))),
    )))

# Dormand & Prince 8(5) (Hairer, Norsett & Wanner, Solving ODEs I, DOP853), for reference
# solutions. Its 5th-order error weights drive the step size; dense output is cubic Hermite.
_DOP853_C = (0.0, 0.05260015195876773, 0.0789002279381516, 0.1183503419072274, 0.2816496580927726, 0.3333333333333333, 0.25, 0.3076923076923077, 0.6512820512820513, 0.6, 0.8571428571428571, 1.0)
_DOP853_A = (
    (0.05260015195876773,),
    (0.0197250569845379, 0.0591751709536137),
    (0.02958758547680685, 0.0, 0.08876275643042054),
    (0.2413651341592667, 0.0, -0.8845494793282861, 0.924834003261792),
    (0.037037037037037035, 0.0, 0.0, 0.17082860872947386, 0.12546768756682242),
    (0.037109375, 0.0, 0.0, 0.17025221101954405, 0.06021653898045596, -0.017578125),
    (0.03709200011850479, 0.0, 0.0, 0.17038392571223998, 0.10726203044637328, -0.015319437748624402, 0.008273789163814023),
    (0.6241109587160757, 0.0, 0.0, -3.3608926294469414, -0.868219346841726, 27.59209969944671, 20.154067550477894, -43.48988418106996),
    (0.47766253643826434, 0.0, 0.0, -2.4881146199716677, -0.590290826836843, 21.230051448181193, 15.279233632882423, -33.28821096898486, -0.020331201708508627),
    (-0.9371424300859873, 0.0, 0.0, 5.186372428844064, 1.0914373489967295, -8.149787010746927, -18.52006565999696, 22.739487099350505, 2.4936055526796523, -3.0467644718982196),
    (2.273310147516538, 0.0, 0.0, -10.53449546673725, -2.0008720582248625, -17.9589318631188, 27.94888452941996, -2.8589982771350235, -8.87285693353063, 12.360567175794303, 0.6433927460157636),
)
_DOP853_B = (0.054293734116568765, 0.0, 0.0, 0.0, 0.0, 4.450312892752409, 1.8915178993145003, -5.801203960010585, 0.3111643669578199, -0.1521609496625161, 0.20136540080403034, 0.04471061572777259)
_DOP853_E5 = (0.01312004499419488, 0.0, 0.0, 0.0, 0.0, -1.2251564463762044, -0.4957589496572502, 1.6643771824549864, -0.35032884874997366, 0.3341791187130175, 0.08192320648511571, -0.022355307863886294)
DOP853 = Tableau("dop853", c=_DOP853_C, a=((),) + _DOP853_A, b=_DOP853_B, order=8,
                 err=_DOP853_E5, error_order=5)

TABLEAUS = {t.name: t for t in (EULER, MIDPOINT, HEUN, RK4, BOSH3, DOPRI5, TSIT5, DOP853)}


def get_tableau(method: str) -> Tableau:
    """Look up a method by name; the error lists the known names."""
    try:
        return TABLEAUS[method]
    except KeyError:
        raise ValueError(f"unknown solver method {method!r}; choose one of: {', '.join(TABLEAUS)}") from None
