"""Rosenbrock (linearly implicit) methods as data; `steppers.Rosenbrock` runs them all.

Every method is stored in the transformed form of Hairer & Wanner (Solving ODEs II,
IV.7, eq. 7.25), which needs no Jacobian-vector products: with W = I / (h gamma) - J,

    W u_i = F(t + c_i h, y + sum_j A_ij u_j) + sum_j (C_ij / h) u_j + d_i h F_t,
    y1 = y + sum_i b_i u_i,     error estimate sum_i btilde_i u_i,

and y(t + theta h) = y + sum_p theta^p sum_i dense[p-1][i] u_i between the step ends.
The classical form (alpha, Gamma) is recovered as Gamma = (diag(1/gamma) - C)^-1 and
alpha = A Gamma; a tableau is validated when built: the row sums of alpha must equal
c and those of Gamma must equal d.

W-methods (`w_method=True`) keep their order for any matrix in place of the exact
Jacobian (only stability depends on it), so a solver may reuse a stale Jacobian
across steps; the others need the exact Jacobian at every step start.

Sources (coefficients):
- rosenbrock23: Shampine & Reichelt, "The MATLAB ODE suite", SIAM J. Sci. Comput. 1997
  (the ode23s pair, d = 1/(2 + sqrt 2), e32 = 6 + sqrt 2, its continuous extension);
  order 2, a W-method, its error estimate O(h^3) from a 3rd-order companion. L-stable.
- ros34pw2: Rang & Angermann, "New Rosenbrock W-methods of order 3 for partial
  differential algebraic equations of index 1", BIT 2005; order 3(2), W-method,
  stiffly accurate, L-stable; cubic Hermite dense output.
- rodas4: Hairer & Wanner, Solving ODEs II (1996), RODAS; order 4(3), stiffly
  accurate, L-stable; its own 3rd-order dense output.
- rodas5p: Steinebach, "Construction of Rosenbrock-Wanner method Rodas5P and numerical
  benchmarks within the Julia Differential Equations package", BIT 2023; order 5(4),
  stiffly accurate, L-stable; its own 4th-order dense output.
Decimal values as published in those papers (and as tabulated in OrdinaryDiffEq.jl).
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np


@dataclasses.dataclass(frozen=True)
class RosenbrockTableau:
    """A Rosenbrock method in transformed form (see the module docstring).

    A, C: [s, s] strictly lower triangular; gamma: the diagonal of Gamma; c: stage
    times; d: row sums of Gamma (weights of h F_t); b, btilde: weights of the solution
    and of the error estimate on u; dense: rows of weights on u of theta^1, theta^2,
    ... (None: cubic Hermite from the step ends); fsal: the last stage is evaluated at
    (t + h, y1), so its F is the next step's first.
    """

    name: str
    A: np.ndarray
    C: np.ndarray
    gamma: float
    c: np.ndarray
    d: np.ndarray
    b: np.ndarray
    btilde: np.ndarray
    order: int
    error_order: int
    w_method: bool
    dense: np.ndarray | None = None
    fsal: bool = False
    # error_order: the error estimate is O(h^(error_order + 1)), as for the explicit pairs

    def __post_init__(self):
        s = len(self.c)
        shapes_ok = (self.A.shape == (s, s) and self.C.shape == (s, s) and len(self.d) == s
                     and len(self.b) == s and len(self.btilde) == s
                     and not np.triu(self.A).any() and not np.triu(self.C).any())
        if not shapes_ok:
            raise ValueError(f"Rosenbrock tableau {self.name!r}: A and C must be strictly lower "
                             f"triangular [s, s] and c, d, b, btilde of length s = {s}")
        gamma_matrix = self.gamma_matrix
        alpha = self.A @ gamma_matrix
        if not (np.allclose(alpha.sum(1), self.c, atol=1e-10)
                and np.allclose(gamma_matrix.sum(1), self.d, atol=1e-10)):
            raise ValueError(f"Rosenbrock tableau {self.name!r} is inconsistent: row sums of "
                             "alpha = A Gamma must equal c and those of Gamma must equal d")
        if self.dense is not None and not np.allclose(self.dense.sum(0), self.b, atol=1e-10):
            raise ValueError(f"Rosenbrock tableau {self.name!r}: the dense output must equal y1 at theta = 1")

    @property
    def stages(self) -> int:
        return len(self.c)

    @property
    def gamma_matrix(self) -> np.ndarray:
        """Gamma of the classical form, lower triangular with gamma on the diagonal."""
        return np.linalg.inv(np.diag(np.full(self.stages, 1.0 / self.gamma)) - self.C)

    @property
    def classical_weights(self) -> tuple[np.ndarray, np.ndarray]:
        """(b, btilde) of the classical form, the weights of the stage slopes K = Gamma^-1 u.

        A quadrature component q' = g(t, y) advanced with the method gets
        q1 = q + h sum_i b_i g_i + h G(sum_i b_i u_i) + h^2 (sum_i b_i d_i) g_t, where
        G = dg/dy: this is how `steppers.Rosenbrock` carries quadratures without
        putting them into the linear systems.
        """
        gamma_matrix = self.gamma_matrix
        return gamma_matrix.T @ self.b, gamma_matrix.T @ self.btilde


def _from_classical(name, alpha, gamma_matrix, b, btilde, dense_on_k, **kwargs) -> RosenbrockTableau:
    """Build the transformed tableau from the classical (alpha, Gamma, b, btilde) form."""
    alpha, gamma_matrix = np.array(alpha, float), np.array(gamma_matrix, float)
    inverse = np.linalg.inv(gamma_matrix)
    gamma = float(gamma_matrix[0, 0])
    A = np.tril(alpha @ inverse, -1)     # exactly strictly lower (inv leaves ~1e-17 above)
    C = np.diag(1.0 / np.diag(gamma_matrix)) - inverse
    dense = None if dense_on_k is None else np.array(dense_on_k, float) @ inverse
    return RosenbrockTableau(name, A=A, C=np.tril(C, -1), gamma=gamma, c=alpha.sum(1),
                             d=gamma_matrix.sum(1), b=np.array(b, float) @ inverse,
                             btilde=np.array(btilde, float) @ inverse, dense=dense, **kwargs)


def _rodas(name, A, C, gamma, c, d, H, order, error_order) -> RosenbrockTableau:
    """A stiffly accurate Rodas-type method: y1 is the last stage's input plus u_s and
    the error estimate is u_s. H holds the rows of Steinebach's dense output
    y(theta) = (1-theta) y0 + theta (y1 + (1-theta)(k1 + theta k2 + theta^2 k3)),
    k_r = sum_i H_ri u_i, rewritten here as weights of theta^p."""
    A = np.array(A, float)
    s = A.shape[0]
    C = np.hstack([np.array(C, float), np.zeros((s, 1))])
    b = np.r_[A[-1, :-1], 1.0]
    H = np.array(H, float)
    rows = [b + H[0]] + [H[r] - H[r - 1] for r in range(1, len(H))] + [-H[-1]]
    return RosenbrockTableau(name, A=A, C=C, gamma=gamma, c=np.array(c, float), d=np.array(d, float),
                             b=b, btilde=np.eye(s)[-1], order=order, error_order=error_order,
                             w_method=False, dense=np.array(rows))


# --- Rosenbrock23 (ode23s), written in classical form: the MATLAB paper states it as
# W k1 = f0 + h d T; W (k2 - k1) = f(y + h k1 / 2) - k1; y1 = y + h k2;
# W k3 = f(y1) - e32 (k2 - f1) - 2 (k1 - f0) + h d T; error h (k1 - 2 k2 + k3) / 6,
# which in the classical form (K = h k) has the Gamma below.
_D23 = 1.0 / (2.0 + math.sqrt(2.0))
_E32 = 6.0 + math.sqrt(2.0)
ROSENBROCK23 = _from_classical(
    "rosenbrock23",
    alpha=[[0, 0, 0], [0.5, 0, 0], [0, 1, 0]],
    gamma_matrix=[[_D23, 0, 0], [-_D23, _D23, 0], [_D23 * (_E32 - 2), -_E32 * _D23, _D23]],
    b=[0, 1, 0], btilde=[1 / 6, -2 / 6, 1 / 6],
    # y(theta) = y + (theta (1 - theta) K1 + theta (theta - 2d) K2) / (1 - 2d)
    dense_on_k=[[1 / (1 - 2 * _D23), -2 * _D23 / (1 - 2 * _D23), 0],
                [-1 / (1 - 2 * _D23), 1 / (1 - 2 * _D23), 0]],
    order=2, error_order=2, w_method=True, fsal=True)

_ROS34PW2_A = np.zeros((4, 4))
_ROS34PW2_A[1, 0] = 2.0
_ROS34PW2_A[2, :2] = (1.4192173174557647, -0.2592322116729697)
_ROS34PW2_A[3, :3] = (4.18476048231916, -0.28519201735549593, 2.294280360279042)
_ROS34PW2_C = np.zeros((4, 4))
_ROS34PW2_C[1, 0] = -4.588560720558084
_ROS34PW2_C[2, :2] = (-4.18476048231916, 0.28519201735549593)
_ROS34PW2_C[3, :3] = (-6.368179200128359, -6.795620944466837, 2.8700986043310563)
ROS34PW2 = RosenbrockTableau(
    "ros34pw2", A=_ROS34PW2_A, C=_ROS34PW2_C, gamma=0.435866521508459,
    c=np.array([0.0, 0.871733043016918, 0.7315799577888524, 1.0]),
    d=np.array([0.435866521508459, -0.435866521508459, -0.4133333762338865, -5.551115123125783e-17]),
    b=np.array([4.1847604823191595, -0.28519201735549565, 2.2942803602790414, 1.0]),
    btilde=np.array([0.2777499476479681, -1.4032398951759992, 1.7726301276675507, 0.5]),
    order=3, error_order=2, w_method=True)

RODAS4 = _rodas(
    "rodas4",
    A=[[0, 0, 0, 0, 0, 0],
       [1.544, 0, 0, 0, 0, 0],
       [0.9466785280815826, 0.2557011698983284, 0, 0, 0, 0],
       [3.314825187068521, 2.896124015972201, 0.9986419139977817, 0, 0, 0],
       [1.221224509226641, 6.019134481288629, 12.53708332932087, -0.687886036105895, 0, 0],
       [1.221224509226641, 6.019134481288629, 12.53708332932087, -0.687886036105895, 1, 0]],
    C=[[0, 0, 0, 0, 0],
       [-5.6688, 0, 0, 0, 0],
       [-2.430093356833875, -0.2063599157091915, 0, 0, 0],
       [-0.1073529058151375, -9.594562251023355, -20.47028614809616, 0, 0],
       [7.496443313967647, -10.24680431464352, -33.99990352819905, 11.7089089320616, 0],
       [8.083246795921522, -7.981132988064893, -31.52159432874371, 16.31930543123136, -6.058818238834054]],
    gamma=0.25, c=[0, 0.386, 0.21, 0.63, 1, 1], d=[0.25, -0.1043, 0.1035, -0.0362, 0, 0],
    H=[[10.12623508344586, -7.487995877610167, -34.80091861555747, -7.992771707568823,
        1.025137723295662, 0],
       [-0.6762803392801253, 6.087714651680015, 16.43084320892478, 24.76722511418386,
        -6.594389125716872, 0]],
    order=4, error_order=3)

RODAS5P = _rodas(
    "rodas5p",
    A=[[0, 0, 0, 0, 0, 0, 0, 0],
       [3.0, 0, 0, 0, 0, 0, 0, 0],
       [2.849394379747939, 0.45842242204463923, 0, 0, 0, 0, 0, 0],
       [-6.954028509809101, 2.489845061869568, -10.358996098473584, 0, 0, 0, 0, 0],
       [2.8029986275628964, 0.5072464736228206, -0.3988312541770524, -0.04721187230404641, 0, 0, 0, 0],
       [-7.502846399306121, 2.561846144803919, -11.627539656261098, -0.18268767659942256,
        0.030198172008377946, 0, 0, 0],
       [-7.502846399306121, 2.561846144803919, -11.627539656261098, -0.18268767659942256,
        0.030198172008377946, 1, 0, 0],
       [-7.502846399306121, 2.561846144803919, -11.627539656261098, -0.18268767659942256,
        0.030198172008377946, 1, 1, 0]],
    C=[[0, 0, 0, 0, 0, 0, 0],
       [-14.155112264123755, 0, 0, 0, 0, 0, 0],
       [-17.97296035885952, -2.859693295451294, 0, 0, 0, 0, 0],
       [147.12150275711716, -1.41221402718213, 71.68940251302358, 0, 0, 0, 0],
       [165.43517024871676, -0.4592823456491126, 42.90938336958603, -5.961986721573306, 0, 0, 0],
       [24.854864614690072, -3.0009227002832186, 47.4931110020768, 5.5814197821558125,
        -0.6610691825249471, 0, 0],
       [30.91273214028599, -3.1208243349937974, 77.79954646070892, 34.28646028294783,
        -19.097331116725623, -28.087943162872662, 0],
       [37.80277123390563, -3.2571969029072276, 112.26918849496327, 66.9347231244047,
        -40.06618937091002, -54.66780262877968, -9.48861652309627]],
    gamma=0.21193756319429014,
    c=[0, 0.6358126895828704, 0.4095798393397535, 0.9769306725060716, 0.4288403609558664, 1, 1, 1],
    d=[0.21193756319429014, -0.42387512638858027, -0.3384627126235924, 1.8046452872882734,
       2.325825639765069, 0, 0, 0],
    H=[[25.948786856663858, -2.5579724845846235, 10.433815404888879, -2.3679251022685204,
        0.524948541321073, 1.1241088310450404, 0.4272876194431874, -0.17202221070155493],
       [-9.91568850695171, -0.9689944594115154, 3.0438037242978453, -24.495224566215796,
        20.176138334709044, 15.98066361424651, -6.789040303419874, -6.710236069923372],
       [11.419903575922262, 2.8879645146136994, 72.92137995996029, 80.12511834622643,
        -52.072871366152654, -59.78993625266729, -0.15582684282751913, 4.883087185713722]],
    order=5, error_order=4)

ROSENBROCK_TABLEAUS = {t.name: t for t in (ROSENBROCK23, ROS34PW2, RODAS4, RODAS5P)}
