"""Cart-pole swing-up on MuJoCo as a continuous-time control system.

State x = (cart position p, hinge angle th, cart velocity dp, hinge rate dth); th = 0 is
upright, pi hanging, and the angle is never wrapped (f is 2 pi-periodic in th). Action
u = motor command, force 10 u newtons on the cart.

    dx/dt = f(x, u) = (dp, dth, qacc(x, u)),  qacc from MuJoCo's mj_forward
    w(x, u) = -(cos th - 0.01 p^2)   per unit time,   J(x) = 0,   T = 3
    x0: p ~ U(-0.1, 0.1), th = pi + U(-0.1, 0.1), velocities 0

The model (envs/assets/cartpole.xml) is the dm_control cartpole with the slider range
of the CTPG paper's variant (+-4.8). MuJoCo is a black box here: df/dx and df/du come
from finite differences of qacc, and `counter.sim_calls` counts every mj_forward the
dynamics spend (rendering is not counted).

Non-smooth spots, where derivatives are meaningless (MuJoCo itself is fine):
- MuJoCo clamps ctrl to [-1, 1], so df/du = 0 for |u| > 1, and a central difference at
  |u| = 1 exactly returns half the true slope. Keep |u| < 1 (e.g. a tanh policy head).
- The soft slider limit switches on when |p| reaches 4.8; differences across it are junk.
Non-finite or huge (> 1e10) inputs give NaN rows: MuJoCo would silently reset them.

On CUDA (`device="cuda"`) the states, actions, costs and the policy live on the GPU, but
MuJoCo runs on the CPU: every f, vjp and Jacobian call copies its batch [N, 5] (with
finite differences [N (2(d+k)), 5]) to the host and the accelerations back, a round trip
that waits for the GPU. It works, and gives the CPU system's numbers, but gains nothing
from the GPU.
"""
from __future__ import annotations

import os

# MuJoCo picks its OpenGL backend when it is first imported; EGL renders headless.
os.environ.setdefault("MUJOCO_GL", "egl")

import importlib.resources  # noqa: E402
import math  # noqa: E402
import pathlib  # noqa: E402

import mujoco  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

try:  # mujoco.batch (MuJoCo >= 3.17) is a submodule that `import mujoco` does not load
    from mujoco import batch as mj_batch  # noqa: E402
except ImportError:  # pragma: no cover - older MuJoCo: fall back to a Python loop
    mj_batch = None

from ctpg.system import ControlSystem, finite_difference_jacobians  # noqa: E402
from envs._common import uniform  # noqa: E402

MAX_VALUE = 1e10  # MuJoCo's mjMAXVAL: beyond it mj_forward resets the state
COST_WEIGHT = 0.01  # weight of p^2 in the running cost
X0_SPREAD = 0.1  # p0 ~ U(-0.1, 0.1), th0 ~ pi + U(-0.1, 0.1)
SMALL_BATCH = 4  # below this a Python loop beats mujoco.batch's per-call overhead


def default_model_path() -> pathlib.Path:
    """Path of the MJCF file shipped with the package (envs/assets/cartpole.xml)."""
    return pathlib.Path(str(importlib.resources.files("envs"))) / "assets" / "cartpole.xml"


def load_model(path: str | os.PathLike | None = None) -> mujoco.MjModel:
    """Compile the cart-pole MJCF at `path` (default: the packaged file).

    Raises FileNotFoundError if the file is missing and ValueError if it does not
    compile or is not a 2-joint, 1-actuator cart-pole, each naming the path and the fix.
    """
    path = pathlib.Path(default_model_path() if path is None else path)
    fix = ("reinstall ctpg (`pip install -e .` from the repository ships envs/assets/"
           "cartpole.xml) or pass Cartpole(model_path=...) pointing at a valid MJCF file")
    if not path.is_file():
        raise FileNotFoundError(f"cart-pole model file not found: {path}; {fix}")
    try:
        model = mujoco.MjModel.from_xml_path(str(path))
    except ValueError as exc:  # MuJoCo reports XML and compile errors as ValueError
        raise ValueError(f"cannot load the cart-pole model {path}: {exc}; the file is "
                         f"corrupt or not MJCF: {fix}") from exc
    if (model.nq, model.nv, model.nu) != (2, 2, 1):
        raise ValueError(f"{path} is not the cart-pole model (nq, nv, nu) = (2, 2, 1), got "
                         f"({model.nq}, {model.nv}, {model.nu}); {fix}")
    return model


class _Simulator:
    """Batched qacc(qpos, qvel, ctrl) from mj_forward.

    Uses mujoco.batch.Batch (MuJoCo >= 3.17) when present: it is bit-identical to a loop
    over one MjData and about 2x faster per sample (2.4 vs 5.1 us here) from N = 4 on. The
    batch grows to the largest N seen and runs the first N rows. Warm-starts: mj_forward never writes
    qacc_warmstart and, for this model, its value changes qacc by ~1e-15 anyway; we still
    zero it on every call so that every evaluation, finite differences included, starts
    from the same solver state whatever was evaluated before. Not thread-safe.
    """

    def __init__(self, model: mujoco.MjModel, nthread: int = 1, use_batch: bool = True):
        self.model, self.nthread = model, nthread
        self.use_batch = use_batch and mj_batch is not None
        self._data = mujoco.MjData(model)
        self._batch, self._views = None, None

    def qacc(self, qpos: np.ndarray, qvel: np.ndarray, ctrl: np.ndarray) -> np.ndarray:
        n = qpos.shape[0]
        if not self.use_batch or n < SMALL_BATCH:
            return self._loop(qpos, qvel, ctrl)
        if self._batch is None or self._batch.nsim < n:
            self._grow(max(n, 2 * (self._batch.nsim if self._batch else 0)))
        q, v, c, warm, acc = self._views
        q[:n], v[:n], c[:n], warm[:n] = qpos, qvel, ctrl, 0.0
        self._batch.forward(np.arange(n))
        return acc[:n].copy()

    def _grow(self, nsim: int) -> None:
        self._batch = mj_batch.Batch(self.model, nsim=nsim, nthread=self.nthread)
        self._views = tuple(self._batch.bind(name) for name in
                            ("qpos", "qvel", "ctrl", "qacc_warmstart", "qacc"))

    def _loop(self, qpos, qvel, ctrl) -> np.ndarray:
        d, out = self._data, np.empty_like(qpos)
        for i in range(qpos.shape[0]):
            d.qpos[:], d.qvel[:], d.ctrl[:], d.qacc_warmstart[:] = qpos[i], qvel[i], ctrl[i], 0.0
            mujoco.mj_forward(self.model, d)
            out[i] = d.qacc
        return out


class Cartpole(ControlSystem):
    """MuJoCo cart-pole swing-up; Jacobians by finite differences of mj_forward.

    Options: `fd_scheme` "central" (2(d+k) = 10 mj_forward per sample, max relative
    error against the analytic model ~3e-10 at fd_eps=1e-6, ~8e-10 at 1e-5) or
    "forward" (d+k+1 = 6 per sample, ~5e-6 at 1e-6); `fd_eps` the relative step;
    `nthread` MuJoCo batch threads (0: all CPUs); `model_path` an MJCF file to use
    instead of the packaged one. Differences are always taken in float64, whatever
    `dtype` the system returns. Cost on one shared core: f ~2 us and central
    Jacobians ~22 us per sample at N = 1000; a call on N = 1 is ~50 us of overhead.
    """

    state_dim = 4
    action_dim = 1

    def __init__(self, model_path=None, horizon: float = 3.0, fd_scheme: str = "central",
                 fd_eps: float = 1e-6, nthread: int = 1, dtype=torch.float64, device="cpu"):
        super().__init__(dtype, device)
        if fd_scheme not in ("central", "forward"):
            raise ValueError(f"unknown fd_scheme {fd_scheme!r}; use 'central' or 'forward'")
        self.horizon, self.fd_scheme, self.fd_eps = float(horizon), fd_scheme, float(fd_eps)
        self.model_path = pathlib.Path(default_model_path() if model_path is None else model_path)
        self.model = load_model(self.model_path)
        self.action_low = torch.tensor([-1.0], dtype=dtype, device=self.device)
        self.action_high = torch.tensor([1.0], dtype=dtype, device=self.device)
        self.simulator = _Simulator(self.model, nthread)
        self._render_data = mujoco.MjData(self.model)
        self._renderers: dict[tuple[int, int], mujoco.Renderer] = {}

    # ---------------------------------------------------------------- dynamics
    def f(self, x, u):
        """(dp, dth, qacc) [N,4]; one mj_forward per sample. No autograd: use f_autograd."""
        return self._f(x, u).to(self.dtype)

    def jacobians(self, x, u):
        """(df/dx [N,4,4], df/du [N,4,1]): kinematic rows exact, qacc rows differenced."""
        gx, gu, _ = finite_difference_jacobians(
            self._qacc, x.detach().double(), u.detach().double(), self.fd_eps, self.fd_scheme)
        n = x.shape[0]
        jx = torch.zeros(n, 4, 4, dtype=torch.float64, device=self.device)
        jx[:, 0, 2] = jx[:, 1, 3] = 1.0  # d(p, th)/dt = (dp, dth)
        jx[:, 2:] = gx
        ju = torch.cat([torch.zeros(n, 2, 1, dtype=torch.float64, device=self.device), gu], 1)
        return jx.to(self.dtype), ju.to(self.dtype)

    def vjp(self, x, u, a):
        """(a^T df/dx, a^T df/du) from the full finite-difference Jacobians (no cheaper
        reverse-mode route exists for a black box): costs what `jacobians` costs."""
        jx, ju = self.jacobians(x, u)
        return torch.einsum("nd,nde->ne", a, jx), torch.einsum("nd,nde->ne", a, ju)

    def _f(self, x, u):
        qacc = self._qacc(x, u)
        return torch.cat([x[:, 2:].detach().to(qacc), qacc], 1)

    def _qacc(self, x, u):
        """qacc [N,2] in float64, counting one sim call per sample; NaN rows for bad input."""
        z = torch.cat([x, u], 1).detach().to("cpu", torch.float64).numpy()
        bad = ~np.all(np.abs(z) <= MAX_VALUE, axis=1)  # also catches NaN
        if bad.any():
            z = z.copy()
            z[bad] = 0.0
        qacc = self.simulator.qacc(z[:, :2], z[:, 2:4], z[:, 4:])
        qacc[bad] = np.nan
        self.counter.sim_calls += z.shape[0]
        return torch.as_tensor(qacc, device=self.device)

    # -------------------------------------------------------------------- task
    def running_cost(self, x, u):
        return -(torch.cos(x[:, 1]) - COST_WEIGHT * x[:, 0] ** 2)

    def terminal_cost(self, x):
        return x.new_zeros(x.shape[0])

    def sample_initial_state(self, n, generator=None):
        low, high = [-X0_SPREAD, math.pi - X0_SPREAD], [X0_SPREAD, math.pi + X0_SPREAD]
        positions = uniform(n, low, high, generator, self.dtype, self.device)
        return torch.cat([positions, torch.zeros_like(positions)], 1)

    def safe_state_box(self):
        """(low [4], high [4]): a box inside the slider limits where f is smooth."""
        high = torch.tensor([4.0, 2 * torch.pi, 5.0, 10.0], dtype=self.dtype, device=self.device)
        return -high, high

    # --------------------------------------------------------------- rendering
    def render(self, x, width: int = 320, height: int = 240, camera: str = "fixed") -> np.ndarray:
        """uint8 [height, width, 3] image of state x ([4] or [1,4]) from `camera`.

        Needs MUJOCO_GL=egl (or osmesa) in the environment before mujoco is first
        imported; this module sets it if it is the first importer. Image size is capped
        by the model's offscreen buffer (1280 x 960).
        """
        state = np.asarray(torch.as_tensor(x).detach().cpu(), dtype=np.float64).reshape(-1)
        if state.shape != (4,):
            raise ValueError(f"render expects one state of 4 values, got shape {tuple(np.shape(x))}")
        data = self._render_data
        data.qpos[:], data.qvel[:] = state[:2], state[2:]
        mujoco.mj_forward(self.model, data)  # the scene reads poses computed here
        renderer = self._renderer(width, height)
        renderer.update_scene(data, camera=camera)
        return renderer.render().copy()

    def _renderer(self, width: int, height: int) -> mujoco.Renderer:
        key = (height, width)
        if key not in self._renderers:
            try:
                self._renderers[key] = mujoco.Renderer(self.model, height, width)
            except mujoco.FatalError as exc:
                raise RuntimeError(
                    f"MuJoCo cannot create an offscreen renderer ({exc}); set MUJOCO_GL=egl "
                    "in the environment before anything imports mujoco") from exc
        return self._renderers[key]

    def close(self) -> None:
        """Free the offscreen renderers (safe to call more than once)."""
        for renderer in self._renderers.values():
            renderer.close()
        self._renderers.clear()
