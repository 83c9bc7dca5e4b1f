"""Every registered control system as a gymnasium environment, through one adapter.

`ControlEnv(system, dt=...)` turns a `ctpg.ControlSystem` into a `gymnasium.Env`:

- A hybrid system (guards, `system.has_events`, the juggler): each interval's impacts
  are located and reset by ctpg.estimators.hybrid.solve_hybrid, as in CTPG's forward pass.
- Control interval dt: the action is held constant (zero-order hold) over
  [t, t + dt] and the closed loop dx/dt = f(x, u) is integrated together with the
  accrued cost dc/dt = w(x, u) by `ctpg.solvers.solve` (adaptive Dormand-Prince 5(4),
  rtol = atol = 1e-8 by default; `substep=h` gives fixed steps of size <= h instead,
  `substeps=k` k equal fixed steps per interval: `method="rk4", substeps=1` is the
  fast integrator the RL baselines use, benchmarks/rl_integrators.py measures its
  error against the accurate step per environment).
- Oracle counts: every f evaluation of the solver inside `step` is counted on
  `env.unwrapped.system.counter` (ctpg.system.OracleCounter, cumulative; MuJoCo calls
  in sim_calls); info["f_evals"] holds the step's own.
- reward = -(int_t^{t+dt} w dt), minus J(x(T)) as well on the last step, so the
  undiscounted return of an episode is minus the system's cost of the sampled
  (piecewise-constant) control signal.
- Truncation happens inside the env after round(T / dt) steps (T must be a whole
  number of intervals), because the env has to know the final step anyway to add the
  terminal cost; the registration therefore sets no max_episode_steps. There is no
  termination. Stepping past the horizon raises; call reset().
- Observation: the state x, Box(-inf, inf, (d,)). Action: Box with the system's
  bounds (every registered id has finite ones, so Stable-Baselines3's PPO and SAC
  accept it; an unbounded system gets (-inf, inf)). Both spaces are float64 unless
  `dtype=np.float32` is passed (what SB3 recommends); float32 action bounds are
  rounded inwards so the box stays inside the system's bounds. The integration
  inside `step` runs in the system's dtype (float64) either way. Out-of-bounds actions
  are clipped to the bounds (info["action_clipped"] says so), exactly the saturation
  `ctpg.saturated_policy` applies in the estimators, so an episode's return is minus
  the cost the estimators assign to the same (sampled-and-held) policy; a wrong shape
  or a NaN/Inf action raises ValueError.
- reset(seed=...) draws x0 from `sample_initial_state` with a torch.Generator seeded
  from `self.np_random`, so it is reproducible; options={"state": x0} starts from x0.
- render_mode "rgb_array" only ("human" would need a display and can abort the
  process headless): the system's own `render(x, width, height)` when it has one
  (the MuJoCo cart-pole), else a matplotlib drawing of the state (`envs.gym_render`:
  the vehicle and its heading, the quadrotor's projected body frame, the electrodes'
  charges and the goal, the pendulum, the double pendulum, or the state plane with the
  action).
- Without importing `envs` first: `gymnasium.make("envs:ctpg/LQR-v0")` (gymnasium
  imports the module named before the colon, which registers the ids).
Failure modes: the solver raises NonFiniteError if the state blows up inside a step,
and MaxStepsExceeded if the dynamics are too stiff for the tolerances.
"""
from __future__ import annotations

import math

import gymnasium
import numpy as np
import torch
from gymnasium import spaces

from ctpg.solvers import solve
from ctpg.system import ControlSystem

# gymnasium id -> (envs.make name, adapter defaults). Intervals: the cart-pole uses
# dm_control's 0.01 s control step; the electric task DiffTaichi's 0.03 s (T = 512 dt);
# the realistic quadrotor 0.01 s (100 Hz, attitude loops run at least that fast: its
# torque limits give up to 112 rad/s^2, too fast for 20 Hz); the pendulum's angle is 0
# hanging down, which the "pole" drawing assumes (the double pendulum's two angles too).
# LQR gets finite action bounds here only (envs.lqr.GYM_ACTION_BOUND explains the value).
GYM_ENVS = {
    "ctpg/LQR-v0": ("lqr", {"action_bound": 5.0}),
    "ctpg/DiffDrive-v0": ("diffdrive", {"drawing": "diffdrive"}),
    "ctpg/Quadrotor-v0": ("quadrotor", {"drawing": "quadrotor"}),
    "ctpg/QuadrotorRealistic-v0": ("quadrotor_realistic", {"dt": 0.01, "drawing": "quadrotor"}),
    "ctpg/CartpoleSwingup-v0": ("cartpole", {"dt": 0.01}),
    "ctpg/Electric-v0": ("electric", {"dt": 0.03, "drawing": "electric"}),
    "ctpg/Pendulum-v0": ("pendulum", {"drawing": "pole"}),
    "ctpg/DoublePendulum-v0": ("double_pendulum", {"drawing": "double_pole"}),
    "ctpg/Juggler-v0": ("juggler", {}),
    "ctpg/Hopper-v0": ("hopper", {}),
}
# registered systems with no gym id: model variants whose gym counterpart is another id
# (juggler_soft, the penalty-contact baseline of `ctpg bench pareto --env juggler`: an RL
# agent sees the impacts themselves in ctpg/Juggler-v0)
WITHOUT_GYM_ID = ("juggler_soft",)
DRAWINGS = ("system", "xy", "pole", "double_pole", "diffdrive", "quadrotor", "electric")
DTYPES = (np.float64, np.float32)


def register_gym_envs() -> None:
    """Register every entry of GYM_ENVS with gymnasium; ids already present are left
    alone, so calling this twice neither warns nor errors."""
    for env_id, (name, defaults) in GYM_ENVS.items():
        if env_id not in gymnasium.registry:
            gymnasium.register(id=env_id, entry_point="envs.gym_adapter:ControlEnv",
                               kwargs={"system": name, **defaults})


class ControlEnv(gymnasium.Env):
    """A ControlSystem (or an `envs.make` name plus constructor overrides) as a gymnasium.Env.

    Args: system, name or instance; dt, the control interval, which must divide the
    horizon; method, rtol, atol, substep or substeps (not both), the integration inside
    `step` (see the module docstring); dtype, np.float64 or np.float32, of the spaces, observations and the
    action box; render_mode, None or "rgb_array"; drawing, one of DRAWINGS
    (default: "system" if the system has a `render` method, else "xy");
    render_width, render_height in pixels; **overrides, passed to `envs.make`.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(self, system: str | ControlSystem = "lqr", *, dt: float = 0.05,
                 method: str = "dopri5", rtol: float = 1e-8, atol: float = 1e-8,
                 substep: float | None = None, substeps: int | None = None, dtype=np.float64, render_mode: str | None = None,
                 drawing: str | None = None, render_width: int = 320, render_height: int = 240,
                 **overrides):
        self.system = _build_system(system, overrides)
        self.dt, self.n_steps = _control_interval(dt, self.system.horizon)
        substep = _fixed_step(substep, substeps, self.dt)
        self.solver_options = ({"method": method, "dt": substep} if substep is not None
                               else {"method": method, "rtol": rtol, "atol": atol})
        self.render_mode = _check_render_mode(render_mode)
        self.drawing = _choose_drawing(drawing, self.system)
        self.render_size = (int(render_width), int(render_height))
        self.metadata = {**self.metadata, "render_fps": max(1, round(1 / self.dt))}
        self.dtype = _check_dtype(dtype)
        self.observation_space, self.action_space = _spaces(self.system, self.dtype)
        self._x, self._steps, self._path, self._u = None, 0, [], None

    # -------------------------------------------------------------- gymnasium
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        state = (options or {}).get("state")
        if state is None:
            generator = torch.Generator().manual_seed(int(self.np_random.integers(2 ** 63 - 1)))
            x0 = self.system.sample_initial_state(1, generator)
        else:
            x0 = self._state_tensor(state)
        self._x, self._steps, self._path, self._u = x0, 0, [self._state(x0)], None
        return self._observation(x0), {"t": 0.0}

    def step(self, action):
        if self._x is None:
            raise RuntimeError("call reset() before step()")
        if self._steps >= self.n_steps:
            raise RuntimeError(f"the episode ended at the horizon T={self.system.horizon} "
                               f"({self.n_steps} steps); call reset() to start a new one")
        u, clipped = self._action_tensor(action)
        t0, f_before = self._steps * self.dt, self.system.counter.f_evals
        self._x, cost = self._integrate(self._x, u, t0)
        self._steps += 1
        truncated = self._steps == self.n_steps
        if truncated:
            cost += float(self.system.terminal_cost(self._x)[0])
        obs = self._observation(self._x)
        self._path.append(self._state(self._x))
        self._u = u[0].detach().cpu().numpy()
        info = {"t": self._steps * self.dt, "cost": cost, "action_clipped": clipped,
                "f_evals": self.system.counter.f_evals - f_before}
        return obs, -cost, False, truncated, info

    def render(self):
        if self.render_mode is None or self._x is None:
            return None
        from envs import gym_render

        width, height = self.render_size
        if self.drawing == "system":
            return self.system.render(self._x[0], width=width, height=height)
        draw = gym_render.DRAWINGS[self.drawing]
        return draw(np.stack(self._path), self._u, self.system, width, height)

    def close(self):
        close = getattr(self.system, "close", None)
        if callable(close):
            close()

    # ---------------------------------------------------------------- helpers
    def _integrate(self, x: torch.Tensor, u: torch.Tensor, t0: float):
        """(x(t0 + dt), accrued cost) with u held constant; y = [x, c] with dc/dt = w."""
        d = self.system.state_dim

        def closed_loop(t, y):
            state = y[:, :d]
            cost_rate = self.system.running_cost(state, u)[:, None]
            return torch.cat([self.system.f(state, u), cost_rate.to(y)], 1)

        y0 = torch.cat([x, x.new_zeros(1, 1)], 1)
        with torch.no_grad():
            if getattr(self.system, "has_events", False):      # impacts inside the interval: located and reset, as CTPG does
                from ctpg.estimators.hybrid import solve_hybrid
                y1 = solve_hybrid(closed_loop, self.system, lambda s: u.expand(s.shape[0], -1), y0, t0 + self.dt,
                                  t0=t0, event_tol=1e-10, max_events=1000, grazing=1e-8, max_steps=100_000,
                                  dense=False, **self.solver_options).y1
            else:
                y1 = solve(closed_loop, y0, t0, t0 + self.dt, **self.solver_options).y1
        return y1[:, :d], float(y1[0, d])

    def _action_tensor(self, action):
        shape = self.action_space.shape
        a = np.asarray(action, dtype=np.float64)
        if a.shape != shape:
            raise ValueError(f"action must have shape {shape}, got {a.shape}; pass a 1-D array "
                             f"of {shape[0]} values, e.g. env.action_space.sample()")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"action contains NaN or Inf: {a}")
        clipped = np.clip(a, self._low, self._high)
        u = torch.as_tensor(clipped[None], dtype=self.system.dtype, device=self.system.device)
        return u, bool(np.any(clipped != a))

    def _state_tensor(self, state) -> torch.Tensor:
        x = torch.as_tensor(np.asarray(state, dtype=np.float64), dtype=self.system.dtype,
                            device=self.system.device).reshape(1, -1)
        if x.shape[1] != self.system.state_dim:
            raise ValueError(f"options['state'] must have {self.system.state_dim} values, "
                             f"got {tuple(np.shape(state))}")
        return x

    @property
    def _low(self) -> np.ndarray:
        """The system's own lower bounds in float64 (the float32 box may sit inside them)."""
        low = self.system.action_low
        return self.action_space.low.astype(np.float64) if low is None else low.detach().cpu().numpy()

    @property
    def _high(self) -> np.ndarray:
        high = self.system.action_high
        return self.action_space.high.astype(np.float64) if high is None else high.detach().cpu().numpy()

    def _observation(self, x: torch.Tensor) -> np.ndarray:
        return x[0].detach().cpu().numpy().astype(self.dtype, copy=True)

    @staticmethod
    def _state(x: torch.Tensor) -> np.ndarray:
        return x[0].detach().cpu().numpy().astype(np.float64, copy=True)


def _build_system(system, overrides: dict) -> ControlSystem:
    if isinstance(system, ControlSystem):
        if overrides:
            raise TypeError(f"overrides {sorted(overrides)} only apply when the system is given "
                            "by name; configure the instance before passing it")
        return system
    import envs  # deferred: envs imports this module while it initialises

    return envs.make(system, **overrides)


def _control_interval(dt: float, horizon: float):
    """(dt, number of steps); T must be a whole number of intervals so the last step
    ends exactly at the horizon, where the terminal cost is charged."""
    if not (dt > 0 and math.isfinite(dt)):
        raise ValueError(f"the control interval dt must be a positive number, got {dt}")
    n = round(horizon / dt)
    if n < 1 or abs(n * dt - horizon) > 1e-9 * max(1.0, horizon):
        suggestion = horizon / max(1, math.ceil(horizon / dt))
        raise ValueError(f"the horizon T={horizon} is not a whole number of control intervals "
                         f"dt={dt}; pick a dt that divides T, e.g. dt={suggestion:.6g}")
    return float(dt), n


def _fixed_step(substep, substeps, dt: float):
    """The fixed step size inside `step`, from a size or a count per interval (None: adaptive)."""
    if substeps is None:
        return substep
    if substep is not None:
        raise ValueError(f"give substep (a step size) or substeps (steps per interval), not both: "
                         f"substep={substep}, substeps={substeps}")
    if isinstance(substeps, bool) or not isinstance(substeps, int) or substeps < 1:
        raise ValueError(f"substeps must be a positive integer (fixed steps per control interval), "
                         f"got {substeps!r}; e.g. substeps=1 with method='rk4'")
    return dt / substeps


def _check_render_mode(render_mode):
    if render_mode not in (None, "rgb_array"):
        raise ValueError(f"render_mode {render_mode!r} is not supported; use 'rgb_array' "
                         "(no on-screen mode: it needs a display and aborts headless)")
    return render_mode


def _choose_drawing(drawing, system) -> str:
    has_renderer = callable(getattr(system, "render", None))
    drawing = drawing or ("system" if has_renderer else "xy")
    if drawing not in DRAWINGS or (drawing == "system" and not has_renderer):
        raise ValueError(f"drawing {drawing!r} is not available for {type(system).__name__}; "
                         f"choose one of {[d for d in DRAWINGS if d != 'system' or has_renderer]}")
    return drawing


def _check_dtype(dtype):
    dtype = np.dtype(dtype).type
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be np.float64 or np.float32 (what Stable-Baselines3 "
                         f"recommends), got {dtype.__name__}")
    return dtype


def _spaces(system: ControlSystem, dtype=np.float64):
    """(observation box, action box) in `dtype`; float32 action bounds are rounded
    towards the inside of the system's float64 bounds."""
    d, k = system.state_dim, system.action_dim
    observation = spaces.Box(-np.inf, np.inf, (d,), dtype)
    if system.action_low is None:
        return observation, spaces.Box(-np.inf, np.inf, (k,), dtype)
    low = system.action_low.detach().cpu().numpy().astype(np.float64)
    high = system.action_high.detach().cpu().numpy().astype(np.float64)
    low, high = np.broadcast_to(low, (k,)), np.broadcast_to(high, (k,))
    low_t, high_t = low.astype(dtype), high.astype(dtype)
    low_t = np.where(low_t < low, np.nextafter(low_t, dtype(np.inf)), low_t).astype(dtype)
    high_t = np.where(high_t > high, np.nextafter(high_t, dtype(-np.inf)), high_t).astype(dtype)
    return observation, spaces.Box(low_t, high_t, (k,), dtype)
