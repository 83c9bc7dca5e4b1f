"""The per-environment defaults learn: each test runs one default training run and
checks the floor promised in the README on 64 held-out initial states (evaluated by an
accurate solve, independent of the training estimator). Slow: run with `pytest -m slow`.
Measured budgets (iterations, oracle evaluations, wall-clock) are in the agents report.
"""
from __future__ import annotations

import pytest

import agents
from agents import cli
from agents.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow


def test_ctpg_train_without_arguments_drives_the_diffdrive_home(tmp_path):
    """`ctpg train` (no options): CTPG on the differential drive reaches a median final
    distance to the origin below 0.5. Its wall-clock (about 1 minute on 2 cores, goal
    < 5 minutes) is measured and reported, not asserted: shared machines are noisy."""
    assert cli.main(["train", "--logdir", str(tmp_path / "dd"), "--quiet"]) == 0
    saved = load_checkpoint(tmp_path / "dd")
    final = saved["history"][-1]
    assert saved["config"]["env"] == "diffdrive" and saved["config"]["estimator"] == "ctpg"
    assert final["final_distance"] < 0.5, final
    print(f"ctpg train: {final['wall_time']:.0f} s wall-clock")


def test_lqr_mlp_reaches_the_optimal_cost_within_two_percent(tmp_path):
    result = agents.train("lqr", "ctpg", logdir=tmp_path / "lqr", quiet=True)
    assert result.config.hidden == (32,) and result.config.activation == "tanh"  # a 2-32-2 MLP
    assert result.final_eval["cost_ratio_lqr"] <= 1.02, result.final_eval


def test_quadrotor_reaches_the_origin_upright(tmp_path):
    result = agents.train("quadrotor", "ctpg", logdir=tmp_path / "quad", quiet=True)
    assert result.final_eval["final_position_error"] < 0.5, result.final_eval
    assert result.final_eval["max_tilt"] < 10.0, result.final_eval


def test_cartpole_swings_up(tmp_path):
    result = agents.train("cartpole", "ctpg", logdir=tmp_path / "cartpole", quiet=True)
    assert result.final_eval["upright_fraction"] >= 0.8, result.final_eval


def test_pendulum_actor_critic_swings_up(tmp_path):
    """`ctpg train --env pendulum --algo actor-critic` (CTPG in 2 s windows with a critic,
    exploring starts): >= 90% of the 64 held-out starts within 25 deg of upright at T = 5,
    where full-horizon CTPG stalls at a bang-bang policy (0 of 64). Seed 0 measured 98.4%
    after 600 iterations (about 2 minutes on the 2-core machine at load 3, 11 on a busy one)."""
    result = agents.train("pendulum", "ctpg", algo="actor-critic", logdir=tmp_path / "pend", quiet=True)
    assert result.config.window == 2.0 and result.config.discount == 0.1
    assert result.final_eval["upright_fraction"] >= 0.9, result.final_eval
