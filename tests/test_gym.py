"""The gymnasium adapter over every registered "ctpg/" id.

Each id: gymnasium's env checker, reproducible reset/step, reward = minus the cost
accrued over the interval (against scipy's solve_ivp at tight tolerance, and for LQR
against the closed-form cost), clipping, shape errors and rendering.
"""
from __future__ import annotations

import re
import subprocess
import sys
import warnings

import gymnasium
import numpy as np
import pytest
import scipy.integrate
import torch
from gymnasium.utils.env_checker import check_env

import envs
from envs.gym_adapter import GYM_ENVS, ControlEnv, register_gym_envs

IDS = sorted(env_id for env_id in gymnasium.registry if env_id.startswith("ctpg/"))
# check_env's advice, harmless here: infinite observation (and unbounded action) boxes
# are the truth for these systems, and their action bounds are physical units.
EXPECTED_WARNINGS = re.compile(r"infinity|symmetric and normalized")


def rollout(env, seed: int, actions):
    obs, _ = env.reset(seed=seed)
    out = [obs]
    for a in actions:
        obs, reward, terminated, truncated, _ = env.step(a)
        out += [obs, np.array([reward, terminated, truncated], dtype=float)]
    return out


def test_every_system_has_a_gym_id():
    assert IDS == sorted(GYM_ENVS)
    from envs.gym_adapter import WITHOUT_GYM_ID
    assert sorted(name for name, _ in GYM_ENVS.values()) == sorted(set(envs.names()) - set(WITHOUT_GYM_ID))
    assert set(WITHOUT_GYM_ID) <= set(envs.names())


def test_registration_is_idempotent():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        register_gym_envs()
        register_gym_envs()
    assert sorted(i for i in gymnasium.registry if i.startswith("ctpg/")) == IDS


@pytest.mark.parametrize("env_id", IDS)
def test_env_checker_passes(env_id):
    env = gymnasium.make(env_id)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env.unwrapped)
    unexpected = [str(w.message) for w in caught if not EXPECTED_WARNINGS.search(str(w.message))]
    assert not unexpected
    env.close()


@pytest.mark.parametrize("env_id", IDS)
def test_spaces_and_horizon(env_id):
    env = gymnasium.make(env_id).unwrapped
    system = env.system
    assert env.observation_space.shape == (system.state_dim,)
    assert env.observation_space.dtype == np.float64 == env.action_space.dtype
    assert env.action_space.shape == (system.action_dim,)
    if system.action_low is not None:
        np.testing.assert_array_equal(env.action_space.low, system.action_low.numpy())
        np.testing.assert_array_equal(env.action_space.high, system.action_high.numpy())
    assert abs(env.n_steps * env.dt - system.horizon) < 1e-9


@pytest.mark.parametrize("env_id", IDS)
def test_reset_and_step_are_reproducible(env_id):
    env = gymnasium.make(env_id)
    env.action_space.seed(0)
    actions = [env.action_space.sample() for _ in range(3)]
    first, second = rollout(env, 7, actions), rollout(env, 7, actions)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    other, _ = env.reset(seed=8)
    assert not np.array_equal(other, first[0])


@pytest.mark.parametrize("env_id", IDS)
def test_reward_is_minus_the_accrued_cost(env_id):
    """One step against an independent tight solve of [dx/dt, dc/dt] = [f, w] with the
    action held constant (scipy's DOP853, rtol 1e-12)."""
    env = gymnasium.make(env_id).unwrapped
    system = env.system
    x0, _ = env.reset(seed=1)
    env.action_space.seed(1)
    action = np.clip(env.action_space.sample(), -1, 1) * 0.9  # inside the bounds: no clipping
    obs, reward, *_ = env.step(action)
    u = torch.as_tensor(action[None], dtype=system.dtype)

    def rhs(t, y):
        x = torch.as_tensor(y[None, :-1], dtype=system.dtype)
        return np.concatenate([system.f(x, u)[0].numpy(), system.running_cost(x, u).numpy()])

    ref = scipy.integrate.solve_ivp(rhs, (0.0, env.dt), np.append(x0, 0.0), method="DOP853",
                                    rtol=1e-12, atol=1e-12).y[:, -1]
    np.testing.assert_allclose(obs, ref[:-1], rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(reward, -ref[-1], rtol=1e-6, atol=1e-9)


def test_lqr_reward_matches_closed_form_cost_including_terminal():
    """A one-interval episode: the reward is minus the exact cost of u = const (K = 0,
    bias = u in LQR.exact_cost), whose terminal term x(T)' Qf x(T) comes due at once."""
    env = gymnasium.make("ctpg/LQR-v0", horizon=0.05, Qf=[[2.0, 0.0], [0.0, 3.0]]).unwrapped
    x0 = np.array([0.7, -1.2])
    u = np.array([0.4, -2.5])
    env.reset(options={"state": x0})
    _, reward, terminated, truncated, info = env.step(u)
    exact = env.system.exact_cost(torch.zeros(2, 2, dtype=torch.float64), torch.tensor(x0[None]),
                                  bias=torch.tensor(u), horizon=0.05)
    assert truncated and not terminated and not info["action_clipped"]
    np.testing.assert_allclose(reward, -exact.item(), rtol=1e-9)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(u)


@pytest.mark.parametrize("env_id", IDS)
def test_out_of_bounds_actions_are_clipped(env_id):
    env = gymnasium.make(env_id).unwrapped
    if env.system.action_low is None:
        pytest.skip(f"{env_id} has unbounded actions")
    high = env.action_space.high
    env.reset(seed=2)
    at_bound = env.step(high)
    env.reset(seed=2)
    beyond = env.step(high + 10.0)
    np.testing.assert_array_equal(at_bound[0], beyond[0])
    assert at_bound[1] == beyond[1]
    assert beyond[4]["action_clipped"] and not at_bound[4]["action_clipped"]


@pytest.mark.parametrize("env_id", IDS)
def test_bad_actions_raise_clear_errors(env_id):
    env = gymnasium.make(env_id).unwrapped
    env.reset(seed=0)
    k = env.action_space.shape[0]
    with pytest.raises(ValueError, match=rf"shape \({k},\)"):
        env.step(np.zeros(k + 1))
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros((1, k)))
    with pytest.raises(ValueError, match="NaN"):
        env.step(np.full(k, np.nan))


@pytest.mark.parametrize("env_id", IDS)
def test_render_returns_an_image(env_id):
    env = gymnasium.make(env_id, render_mode="rgb_array", render_width=160, render_height=120)
    env.reset(seed=0)
    env.step(env.action_space.sample())
    image = env.render()
    assert image.shape == (120, 160, 3) and image.dtype == np.uint8 and image.std() > 1
    env.close()
    env.close()  # closing twice is allowed


def test_only_rgb_array_rendering():
    with pytest.raises(ValueError, match="rgb_array"):
        ControlEnv("lqr", render_mode="human")


def test_interval_must_divide_the_horizon():
    with pytest.raises(ValueError, match="divides T"):
        ControlEnv("lqr", dt=0.3)


def test_step_before_reset_and_instances():
    env = ControlEnv(envs.make("lqr", horizon=1.0), dt=0.1)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(2))
    assert env.n_steps == 10
    with pytest.raises(TypeError, match="by name"):
        ControlEnv(envs.make("lqr"), horizon=2.0)


def test_cartpole_fixed_rk4_step_is_mujocos_own_rk4_step():
    """With one RK4 substep per 0.01 s interval the adapter reproduces mj_step on the
    model's RK4 integrator: the gym env and MuJoCo simulate the same dynamics."""
    mujoco = pytest.importorskip("mujoco")
    env = gymnasium.make("ctpg/CartpoleSwingup-v0", method="rk4", substep=0.01).unwrapped
    obs, _ = env.reset(seed=0)
    model = env.system.model
    data = mujoco.MjData(model)
    data.qpos[:], data.qvel[:] = obs[:2], obs[2:]
    for u in (0.5, -0.8, 0.3):
        obs, *_ = env.step(np.array([u]))
        data.ctrl[:] = u
        mujoco.mj_step(model, data)
        np.testing.assert_allclose(obs, np.concatenate([data.qpos, data.qvel]), rtol=0, atol=1e-12)


# ----------------------------------------------------------- other RL code
SB3_ADVICE = re.compile(r"symmetric and normalized Box action space")


@pytest.mark.parametrize("env_id", IDS)
def test_stable_baselines3_check_env_accepts_every_env(env_id):
    """SB3's own checker (which PPO and SAC rely on: finite action bounds) on the float32
    variant; its only remark may be the advice to rescale the box to [-1, 1]."""
    from stable_baselines3.common.env_checker import check_env as sb3_check_env
    env = gymnasium.make(env_id, dtype=np.float32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sb3_check_env(env.unwrapped, warn=True)
    unexpected = [str(w.message) for w in caught if not SB3_ADVICE.search(str(w.message))]
    assert not unexpected
    assert np.all(np.isfinite(env.action_space.low)) and np.all(np.isfinite(env.action_space.high))
    env.close()


@pytest.mark.parametrize("env_id", IDS)
def test_float32_spaces_stay_inside_the_system_bounds(env_id):
    env = gymnasium.make(env_id, dtype=np.float32).unwrapped
    system = env.system
    obs, _ = env.reset(seed=0)
    assert obs.dtype == np.float32 and env.observation_space.contains(obs)
    assert env.action_space.dtype == np.float32
    assert np.all(env.action_space.low.astype(np.float64) >= system.action_low.numpy())
    assert np.all(env.action_space.high.astype(np.float64) <= system.action_high.numpy())
    obs, reward, *_, info = env.step(env.action_space.high)
    assert obs.dtype == np.float32 and not info["action_clipped"] and isinstance(reward, float)
    with pytest.raises(ValueError, match="float32"):
        ControlEnv("lqr", dtype=np.int64)


def test_gymnasium_make_works_without_importing_envs_first():
    """gymnasium imports the module named before the colon, which registers the ids
    (gymnasium 1.x has no plugin entry points)."""
    code = ("import sys, gymnasium\nassert 'envs' not in sys.modules\n"
            "env = gymnasium.make('envs:ctpg/Pendulum-v0')\nenv.reset(seed=0)\n"
            "print(type(env.unwrapped).__name__, env.action_space)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "ControlEnv" in out.stdout


# --------------------------------------------------------------- rendering
def frame(env_id, state=None, action=None, seed=0):
    env = gymnasium.make(env_id, render_mode="rgb_array", render_width=160, render_height=120).unwrapped
    env.reset(seed=seed, options=None if state is None else {"state": state})
    if action is not None:
        env.step(action)
    image = env.render()
    env.close()
    return image


@pytest.mark.parametrize("env_id, index, value", [
    ("ctpg/DiffDrive-v0", 2, 1.5),                  # heading
    ("ctpg/Quadrotor-v0", 5, 0.6),                  # roll
    ("ctpg/Quadrotor-v0", 3, 1.0),                  # yaw
    ("ctpg/QuadrotorRealistic-v0", 4, 0.6),         # pitch
])
def test_drawings_show_the_pose_not_only_the_position(env_id, index, value):
    """Two states at the same position that differ only in heading or attitude draw
    differently: the drawing shows the pose."""
    env = gymnasium.make(env_id).unwrapped
    state, _ = env.reset(seed=0)
    turned = state.copy()
    turned[index] += value
    assert not np.array_equal(frame(env_id, state), frame(env_id, turned))


@pytest.mark.parametrize("env_id", ["ctpg/Electric-v0", "ctpg/LQR-v0"])
def test_drawings_show_the_action(env_id):
    """The electrodes' charges (electric) and the action arrow (LQR) are drawn: the same
    start stepped with opposite actions gives different pictures even where the state
    hardly moves."""
    env = gymnasium.make(env_id).unwrapped
    state, _ = env.reset(seed=0)
    high = env.action_space.high
    assert not np.array_equal(frame(env_id, state, high), frame(env_id, state, -high))
