"""Butcher tableaus as data. One generic stepper (`stepper.rk_step`) runs them all.

A tableau is validated when built: each row of `a` sums to its `c`, `b` sums to 1,
error weights sum to 0 and, for FSAL methods, the last row of `a` equals `b`.
Dense output is data too: `dense[i][j]` is the coefficient of theta^(j+1) in the
weight b_i(theta), so that y(t0 + theta h) = y0 + h sum_i b_i(theta) k_i; a method that
is not FSAL may give one row more, the weight of F(t0 + h, y1) (computed on acceptance
anyway). Methods without their own interpolant get cubic Hermite from the endpoint
derivatives.

Sources: Hairer, Norsett & Wanner, Solving ODEs I (1993) for Euler, midpoint,
Heun-Euler, RK4, Dormand-Prince 5(4) and its dense output (Shampine, "Some practical
Runge-Kutta formulas", Math. Comp. 1986) and DOP853; Bogacki & Shampine, "A 3(2)
pair of Runge-Kutta formulas", Appl. Math. Lett. 1989; Tsitouras, "Runge-Kutta pairs
of order 5(4) satisfying only the first column simplifying assumption", Comput. Math.
Appl. 2011 (coefficients and interpolant); Prince & Dormand, "High order embedded
Runge-Kutta formulae", J. Comput. Appl. Math. 7 (1981) 67-75, for the 13-stage 8(7)
pair (dopri8), as rational approximations transcribed in torchdiffeq's
`_impl/dopri8.py`, which also gives the midpoint weights its interpolant uses;
Fehlberg, NASA TR R-315 (1969), for the 2(1) pair fehlberg2 (propagating the
second-order solution, as torchdiffeq does). tests/test_methods.py checks every
order condition of dopri8 (all 200 rooted trees up to order 8) and fehlberg2.
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
            extra = len(self.dense) == s + 1 and not self.fsal    # a row for F(t0 + h, y1)
            b = list(map(float, self.b)) + [0.0] * extra
            checks += [len(self.dense) == s or extra, np.allclose(at_one, b, atol=1e-12)]
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


def _quartic_through_midpoint(b, mid):
    """Dense weights of the quartic through y0, y1, h f0, h f1 and a midpoint value.

    Every endpoint quantity is a linear combination of the vectors (f0 = k_1 and f1 the
    last vector: the last stage of an FSAL method, or F(t0 + h, y1) appended to the
    stages of one that is not), so the interpolant's weights b_i(theta) are
    polynomials whose coefficients solve a 3x3 system, vector by vector.
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

_DOPRI8_C = (0, F(1, 18), F(1, 12), F(1, 8), F(5, 16), F(3, 8), F(59, 400), F(93, 200),
             F(5490023248, 9719169821), F(13, 20), F(1201146811, 1299019798), 1, 1)
_DOPRI8_A = (
    (F(1, 18),),
    (F(1, 48), F(1, 16)),
    (F(1, 32), 0, F(3, 32)),
    (F(5, 16), 0, F(-75, 64), F(75, 64)),
    (F(3, 80), 0, 0, F(3, 16), F(3, 20)),
    (F(29443841, 614563906), 0, 0, F(77736538, 692538347), F(-28693883, 1125000000), F(23124283, 1800000000)),
    (F(16016141, 946692911), 0, 0, F(61564180, 158732637), F(22789713, 633445777), F(545815736, 2771057229),
     F(-180193667, 1043307555)),
    (F(39632708, 573591083), 0, 0, F(-433636366, 683701615), F(-421739975, 2616292301), F(100302831, 723423059),
     F(790204164, 839813087), F(800635310, 3783071287)),
    (F(246121993, 1340847787), 0, 0, F(-37695042795, 15268766246), F(-309121744, 1061227803),
     F(-12992083, 490766935), F(6005943493, 2108947869), F(393006217, 1396673457), F(123872331, 1001029789)),
    (F(-1028468189, 846180014), 0, 0, F(8478235783, 508512852), F(1311729495, 1432422823),
     F(-10304129995, 1701304382), F(-48777925059, 3047939560), F(15336726248, 1032824649),
     F(-45442868181, 3398467696), F(3065993473, 597172653)),
    (F(185892177, 718116043), 0, 0, F(-3185094517, 667107341), F(-477755414, 1098053517),
     F(-703635378, 230739211), F(5731566787, 1027545527), F(5232866602, 850066563), F(-4093664535, 808688257),
     F(3962137247, 1805957418), F(65686358, 487910083)),
    (F(403863854, 491063109), 0, 0, F(-5068492393, 434740067), F(-411421997, 543043805), F(652783627, 914296604),
     F(11173962825, 925320556), F(-13158990841, 6184727034), F(3936647629, 1978049680), F(-160528059, 685178525),
     F(248638103, 1413531060), 0),
)
_DOPRI8_B = (F(14005451, 335480064), 0, 0, 0, 0, F(-59238493, 1068277825), F(181606767, 758867731),
             F(561292985, 797845732), F(-1041891430, 1371343529), F(760417239, 1151165299), F(118820643, 751138087),
             F(-528747749, 2220607170), F(1, 4))
_DOPRI8_BHAT = (F(13451932, 455176623), 0, 0, 0, 0, F(-808719846, 976000145), F(1757004468, 5645159321),
                F(656045339, 265891186), F(-3867574721, 1518517206), F(465885868, 322736535),
                F(53011238, 667516719), F(2, 45), 0)


def _dopri8_midpoint():
    """Weights of y(t0 + h/2) on the 13 stages and F(t0 + h, y1), from the quintics in
    theta that torchdiffeq's dopri8.py evaluates at theta = 1/2 (rows: stages 1, 6-14)."""
    quintics = {0: (-6.3448349392860401388, 22.1396504998094068976, -30.0610568289666450593,
                    19.9990069333683970610, -6.6910181737837595697, 1.0),
                5: (-39.6107919852202505218, 116.4422149550342161651, -121.4999627731334642623,
                    52.2273532792945524050, -7.6142658045872677172, 0.0),
                6: (20.3761213808791436958, -67.1451318825957197185, 83.1721004639847717481,
                    -46.8919164181093621583, 10.7281392630428866124, 0.0),
                7: (7.3347098826795362023, -16.5672243527496524646, 9.5724507555993664382,
                    -0.1890893225010595467, 0.5526637063753648783, 0.0),
                8: (32.8801774352459155182, -89.9916014847245016028, 87.8406057677205645007,
                    -35.7075975946222072821, 4.2186562625665153803, 0.0),
                9: (-10.1588990526426760954, 22.6237489648532849093, -17.4152107770762969005,
                    6.2736448083240352160, -0.6627209125361597559, 0.0),
                10: (-12.5401268098782561200, 32.2362340167355370113, -28.5903289514790976966,
                     10.3160881272450748458, -1.2636789001135462218, 0.0),
                11: (29.5553001484516038033, -82.1020315488359848644, 81.6630950584341412934,
                     -34.7650769866611817349, 5.4106037898590422230, 0.0),
                12: (-41.7923486424390588923, 116.2662185791119533462, -114.9375291377009418170,
                     47.7457971078225540396, -7.0321379067945741781, 0.0),
                13: (20.3006925822100825485, -53.9020777466385396792, 50.2558364226176017553,
                     -19.0082099341608028453, 2.3537586759714983486, 0.0)}
    h = 0.5
    mid = [0.0] * 14
    for i, (c5, c4, c3, c2, c1, c0) in quintics.items():
        mid[i] = h * (c5 * h ** 5 + c4 * h ** 4 + c3 * h ** 3 + c2 * h ** 2 + c1 * h + c0)
    return mid


# Prince & Dormand's 8(7) pair, 13 stages, not FSAL; dense output: the quartic through
# y0, y1, F0, F1 and the midpoint value (torchdiffeq's interpolant for dopri8).
DOPRI8 = Tableau("dopri8", c=_DOPRI8_C, a=((),) + _DOPRI8_A, b=_DOPRI8_B, order=8,
                 err=tuple(x - y for x, y in zip(_DOPRI8_B, _DOPRI8_BHAT)), error_order=7,
                 dense=_quartic_through_midpoint(_DOPRI8_B + (0,), _dopri8_midpoint()))

# Fehlberg's 2(1) pair: the second-order weights propagate, the first-order ones
# (the third stage's row) estimate the error. Dense output: cubic Hermite.
FEHLBERG2 = Tableau("fehlberg2", c=(0, F(1, 2), 1), a=((), (F(1, 2),), (F(1, 256), F(255, 256))),
                    b=(F(1, 512), F(255, 256), F(1, 512)), order=2,
                    err=(F(-1, 512), 0, F(1, 512)), error_order=1)

TABLEAUS = {t.name: t for t in (EULER, MIDPOINT, HEUN, RK4, BOSH3, DOPRI5, TSIT5, DOP853, DOPRI8, FEHLBERG2)}


def get_tableau(method: str) -> Tableau:
    """Look up a method by name; the error lists the known names."""
    try:
        return TABLEAUS[method]
    except KeyError:
        raise ValueError(f"unknown solver method {method!r}; choose one of: {', '.join(TABLEAUS)}") from None
