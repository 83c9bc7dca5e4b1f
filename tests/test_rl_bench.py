"""The pieces of `ctpg bench rl`: the gym env's fast integrator, the training clock, the SB3 policy wrapper."""
from __future__ import annotations

import time

import gymnasium
import numpy as np
import pytest
import torch

import envs  # noqa: F401  registers the ids
from benchmarks import rl_integrators
from benchmarks.rl_methods import BASELINE_INTEGRATOR, SB3Policy, Clock, eval_times


def test_substeps_take_k_fixed_rk4_steps_per_interval():
    for k in (1, 3):
        env = gymnasium.make("ctpg/Pendulum-v0", method="rk4", substeps=k).unwrapped
        env.reset(seed=0)
        _, _, _, _, info = env.step(np.array([1.0]))
        assert info["f_evals"] == 4 * k           # four stages per RK4 step, one sample
        same = gymnasium.make("ctpg/Pendulum-v0", method="rk4", substep=env.dt / k).unwrapped
        same.reset(seed=0)
        assert same.step(np.array([1.0]))[0].tolist() == env._observation(env._x).tolist()


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_bad_substeps_are_refused(bad):
    with pytest.raises(ValueError, match="substeps must be a positive integer"):
        gymnasium.make("ctpg/Pendulum-v0", method="rk4", substeps=bad)


def test_substep_and_substeps_together_are_refused():
    with pytest.raises(ValueError, match="not both"):
        gymnasium.make("ctpg/Pendulum-v0", method="rk4", substep=0.01, substeps=2)


def test_accurate_step_counts_its_f_evaluations():
    env = gymnasium.make("ctpg/Pendulum-v0").unwrapped
    env.reset(seed=0)
    before = env.system.counter.f_evals
    _, _, _, _, info = env.step(np.array([0.5]))
    assert info["f_evals"] == env.system.counter.f_evals - before > 4


def test_fixed_rk4_converges_at_fourth_order_on_a_feedback_episode():
    """Halving the RK4 step cuts the episode's largest state error ~16x (the pendulum
    under a seeded MLP policy: the error compounds through the feedback, as in training)."""
    cfg = rl_integrators.Config(envs=("pendulum",), episodes=1)
    reference_env = rl_integrators.make_env("pendulum")
    policy = rl_integrators.fixed_policy("pendulum", reference_env.system)
    reference = rl_integrators.episode(reference_env, policy, 0)
    errors = []
    for k in (1, 2):
        fast = rl_integrators.episode(rl_integrators.make_env("pendulum", method="rk4", substeps=k), policy, 0)
        errors.append(np.abs(fast["states"] - reference["states"]).max())
    assert cfg.episodes == 1 and errors[0] > 0
    assert 10 < errors[0] / errors[1] < 25, errors


SLOW_EPISODES = {"electric", "quadrotor_realistic"}   # 500+ steps: seconds each, more on a busy machine


@pytest.mark.parametrize("env", [pytest.param(e, marks=pytest.mark.slow) if e in SLOW_EPISODES else e
                                 for e in sorted(BASELINE_INTEGRATOR) if BASELINE_INTEGRATOR[e]])
def test_baselines_fast_step_returns_agree_with_the_accurate_step(env):
    """The documented choice holds: the same policy's episode return differs by < 1e-3 relative."""
    reference_env = rl_integrators.make_env(env)
    policy = rl_integrators.fixed_policy(env, reference_env.system)
    reference = rl_integrators.episode(reference_env, policy, 0)
    fast = rl_integrators.episode(rl_integrators.make_env(env, **BASELINE_INTEGRATOR[env]), policy, 0)
    assert abs(fast["ret"] - reference["ret"]) <= 1e-3 * abs(reference["ret"])
    assert fast["f_per_step"] < reference["f_per_step"]


def test_clock_does_not_charge_paused_time():
    clock = Clock("wall")
    with clock.pause():
        time.sleep(0.2)
    assert clock.wall() < 0.1
    with pytest.raises(ValueError, match="'wall' or 'cpu'"):
        Clock("gpu")


def test_eval_times_start_at_zero_and_resolve_a_tenth_of_the_budget():
    times = eval_times(100.0, 4, early=3)
    assert times == sorted(times) and times[0] == 0.0 and times[-1] == 100.0
    assert min(t for t in times if t > 0) < 10.0
    assert [t for t in times if t >= 25.0] == [25.0, 50.0, 75.0, 100.0]


def test_sb3_policy_maps_its_unit_box_onto_the_bounds():
    class Fixed:
        def __init__(self, a):
            self.a = np.asarray(a, dtype=np.float32)

        def predict(self, obs, deterministic):
            assert deterministic and obs.dtype == np.float32
            return self.a, None

    low, high = np.array([-2.0, 0.0]), np.array([2.0, 10.0])
    x = torch.zeros(1, 3, dtype=torch.float64)
    assert SB3Policy(Fixed([-1, 1]), low, high)(x).tolist() == [[-2.0, 10.0]]
    assert SB3Policy(Fixed([0, 0]), low, high)(x).tolist() == [[0.0, 5.0]]
    assert SB3Policy(Fixed([3, -3]), low, high)(x).tolist() == [[2.0, 0.0]]   # clipped into the box
