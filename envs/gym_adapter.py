"""Every registered control system as a gymnasium environment, through one adapter.

`ControlEnv(system, dt=...)` turns a `ctpg.ControlSystem` into a `gymnasium.Env`:

- Control interval dt: the action is held constant (zero-order hold) over
  [t, t + dt] and the closed loop dx/dt = f(x, u) is integrated together with the
  accrued cost dc/dt = w(x, u) by `ctpg.solvers.solve` (adaptive Dormand-Prince 5(4),
  rtol = atol = 1e-8 by default; `substep=h` gives fixed steps of size <= h instead).
- reward = -(int_t^{t+dt} w dt), minus J(x(T)) as well on the last step, so the
  undiscounted return of an episode is minus the system's cost of the sampled
  (piecewise-constant) control signal.
- Truncation happens inside the env after round(T / dt) steps (T must be a whole
  number of intervals), because the env has to know the final step anyway to add the
  terminal cost; the registration therefore sets no max_episode_steps. There is no
  termination. Stepping past the horizon raises; call reset().
- Observation: the state x as float64, Box(-inf, inf, (d,)). Action: Box with the
  system's bounds, or (-inf, inf) for an unbounded system, float64. Out-of-bounds
  actions are clipped to the bounds (info["action_clipped"] says so); a wrong shape
  or a NaN/Inf action raises ValueError.
- reset(seed=...) draws x0 from `sample_initial_state` with a torch.Generator seeded
  from `self.np_random`, so it is reproducible; options={"state": x0} starts from x0.
- render_mode "rgb_array" only ("human" would need a display and can abort the
  process headless): the system's own `render(x, width, height)` when it has one
  (the MuJoCo cart-pole), else a matplotlib drawing (`envs.gym_render`).
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
# the pendulum's angle is 0 hanging down, which the "pole" drawing assumes.
GYM_ENVS = {
    "ctpg/LQR-v0": ("lqr", {}),
    "ctpg/DiffDrive-v0": ("diffdrive", {}),
    "ctpg/Quadrotor-v0": ("quadrotor", {}),
    "ctpg/CartpoleSwingup-v0": ("cartpole", {"dt": 0.01}),
    "ctpg/Electric-v0": ("electric", {"dt": 0.03}),
    "ctpg/Pendulum-v0": ("pendulum", {"drawing": "pole"}),
}
DRAWINGS = ("system", "xy", "pole")


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
    horizon; method, rtol, atol, substep, the integration inside `step` (see the module
    docstring); render_mode, None or "rgb_array"; drawing, "system", "xy" or "pole"
    (default: "system" if the system has a `render` method, else "xy");
    render_width, render_height in pixels; **overrides, passed to `envs.make`.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(self, system: str | ControlSystem = "lqr", *, dt: float = 0.05,
                 method: str = "dopri5", rtol: float = 1e-8, atol: float = 1e-8,
                 substep: float | None = None, render_mode: str | None = None,
                 drawing: str | None = None, render_width: int = 320, render_height: int = 240,
                 **overrides):
        self.system = _build_system(system, overrides)
        self.dt, self.n_steps = _control_interval(dt, self.system.horizon)
        self.solver_options = ({"method": method, "dt": substep} if substep is not None
                               else {"method": method, "rtol": rtol, "atol": atol})
        self.render_mode = _check_render_mode(render_mode)
        self.drawing = _choose_drawing(drawing, self.system)
        self.render_size = (int(render_width), int(render_height))
        self.metadata = {**self.metadata, "render_fps": max(1, round(1 / self.dt))}
        self.observation_space, self.action_space = _spaces(self.system)
        self._x, self._steps, self._path = None, 0, []

    # -------------------------------------------------------------- gymnasium
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        state = (options or {}).get("state")
        if state is None:
            generator = torch.Generator().manual_seed(int(self.np_random.integers(2 ** 63 - 1)))
            x0 = self.system.sample_initial_state(1, generator)
        else:
            x0 = self._state_tensor(state)
        self._x, self._steps, self._path = x0, 0, [self._observation(x0)]
        return self._observation(x0), {"t": 0.0}

    def step(self, action):
        if self._x is None:
            raise RuntimeError("call reset() before step()")
        if self._steps >= self.n_steps:
            raise RuntimeError(f"the episode ended at the horizon T={self.system.horizon} "
                               f"({self.n_steps} steps); call reset() to start a new one")
        u, clipped = self._action_tensor(action)
        t0 = self._steps * self.dt
        self._x, cost = self._integrate(self._x, u, t0)
        self._steps += 1
        truncated = self._steps == self.n_steps
        if truncated:
            cost += float(self.system.terminal_cost(self._x)[0])
        obs = self._observation(self._x)
        self._path.append(obs.copy())
        info = {"t": self._steps * self.dt, "cost": cost, "action_clipped": clipped}
        return obs, -cost, False, truncated, info

    def render(self):
        if self.render_mode is None or self._x is None:
            return None
        from envs import gym_render

        width, height = self.render_size
        if self.drawing == "system":
            return self.system.render(self._x[0], width=width, height=height)
        if self.drawing == "pole":
            return gym_render.draw_pole(float(self._x[0, 0]), width, height)
        return gym_render.draw_xy(np.stack(self._path), width, height)

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
        clipped = np.clip(a, self.action_space.low, self.action_space.high)
        u = torch.as_tensor(clipped[None], dtype=self.system.dtype, device=self.system.device)
        return u, bool(np.any(clipped != a))

    def _state_tensor(self, state) -> torch.Tensor:
        x = torch.as_tensor(np.asarray(state, dtype=np.float64), dtype=self.system.dtype,
                            device=self.system.device).reshape(1, -1)
        if x.shape[1] != self.system.state_dim:
            raise ValueError(f"options['state'] must have {self.system.state_dim} values, "
                             f"got {tuple(np.shape(state))}")
        return x

    @staticmethod
    def _observation(x: torch.Tensor) -> np.ndarray:
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


def _spaces(system: ControlSystem):
    d, k = system.state_dim, system.action_dim
    observation = spaces.Box(-np.inf, np.inf, (d,), np.float64)
    if system.action_low is None:
        return observation, spaces.Box(-np.inf, np.inf, (k,), np.float64)
    low = system.action_low.detach().cpu().numpy().astype(np.float64)
    high = system.action_high.detach().cpu().numpy().astype(np.float64)
    low, high = np.broadcast_to(low, (k,)).copy(), np.broadcast_to(high, (k,)).copy()
    return observation, spaces.Box(low, high, (k,), np.float64)
