"""Everyday use of agents/: the learning-rate schedule on extension, Ctrl-C, resume
rules, progress without a terminal, the version and the command line's errors, using a
trained policy (load_policy, ctpg eval and its video), TensorBoard's final figure and
HParams, the LQR metric at the run's horizon, custom systems and the realistic
quadrotor's defaults. Tiny LQR runs; the file takes well under a minute on 2 cores.
"""
from __future__ import annotations

import math
import os
import signal
import subprocess
import sys

import pytest
import torch

import agents
import ctpg
from agents import cli
from agents.builders import learning_rate
from agents.checkpoint import load_checkpoint
from agents.config import ConfigError, resolve_config
from agents.evaluation import metrics, rollout

TINY = dict(iters=6, batch_size=8, horizon=2.0, eval_every=0, figure_every=0, eval_batch=16,
            rtol=1e-4, atol=1e-6, dt=0.05, quiet=True)


def tiny(tmp_path, name="run", **overrides):
    settings = dict(TINY, **overrides)
    return agents.train(settings.pop("env", "lqr"), settings.pop("estimator", "ctpg"),
                        logdir=tmp_path / name, **settings)


def lrs(result):
    return [it["opt/lr"] for it in result.iterations]


# --------------------------------------------------------- schedule on extension
def test_cosine_schedule_runs_from_lr_to_its_final_fraction():
    config = resolve_config("lqr", lr=0.01, schedule="cosine", lr_final=0.05, iters=200)
    assert learning_rate(config, 0) == pytest.approx(0.01)
    assert learning_rate(config, 100) == pytest.approx(0.01 * (0.05 + 0.95 * 0.5))
    assert learning_rate(config, 200) == pytest.approx(0.01 * 0.05)
    assert learning_rate(config, 300) == pytest.approx(0.01 * 0.05)   # never climbs back up


def test_extending_a_finished_run_follows_the_schedule_of_the_final_length(tmp_path):
    """A 4-iteration cosine run extended to 8 uses, on iterations 5-8, exactly the rates of
    a run started with 8 iterations (not a cosine continued past its end)."""
    settings = dict(schedule="cosine", lr=0.05, lr_final=0.1)
    long = tiny(tmp_path, "long", iters=8, **settings)
    short = tiny(tmp_path, "short", iters=4, **settings)
    assert short.status == "completed"
    extended = agents.train(logdir=short.run_dir, resume=True, iters=8)
    assert extended.step == 8 and lrs(extended) == lrs(long)[4:]
    assert lrs(short) == pytest.approx([learning_rate(short.config, s) for s in range(4)])


# ----------------------------------------------------------------- Ctrl-C
def test_ctrl_c_saves_a_checkpoint_at_the_iteration_boundary_and_resumes_exactly(tmp_path, capsys):
    def press_ctrl_c(step, scalars):
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)
    before = signal.getsignal(signal.SIGINT)   # default_int_handler, or SIG_IGN under nohup / `&`
    whole = tiny(tmp_path, "whole", eval_every=2)
    stopped = tiny(tmp_path, "stopped", eval_every=2, progress_fn=press_ctrl_c)
    assert stopped.status == "interrupted" and stopped.step == 3
    assert load_checkpoint(stopped.run_dir)["counters"]["step"] == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "interrupted at iteration 3 of 6" in err[0]
    assert f"resume with: ctpg train --logdir {stopped.run_dir} --resume" in err[0]
    assert signal.getsignal(signal.SIGINT) is before   # the caller's handler restored
    resumed = agents.train(logdir=stopped.run_dir, resume=True)
    for a, b in zip(whole.policy.parameters(), resumed.policy.parameters()):
        assert torch.equal(a, b)


def test_ctrl_c_on_the_command_line_exits_130_without_a_traceback(tmp_path):
    run_dir = tmp_path / "cli"
    command = [sys.executable, "-m", "ctpg", "train", "--env", "lqr", "--iters", "100000",
               "--batch-size", "4", "--horizon", "1", "--eval-every", "0", "--log-every", "1",
               "--logdir", str(run_dir)]
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    first = proc.stderr.readline()              # a progress line: training has started
    assert first.startswith("[ctpg] iteration 1/100000"), first
    proc.send_signal(signal.SIGINT)
    rest = proc.communicate(timeout=60)[1]
    assert proc.returncode == 130, rest
    assert "Traceback" not in rest
    last = rest.strip().splitlines()[-1]
    assert "resume with: ctpg train --logdir" in last and str(run_dir) in last
    step = load_checkpoint(run_dir)["counters"]["step"]
    assert f"interrupted at iteration {step} of 100000" in last


# ----------------------------------------------------------------- resuming
def test_resume_without_a_checkpoint_refuses(tmp_path, capsys):
    with pytest.raises(ConfigError, match="nothing to resume"):
        agents.train(logdir=tmp_path / "empty", resume=True)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--logdir", str(tmp_path / "empty"), "--resume"])
    assert exit_info.value.code == 2 and "nothing to resume" in capsys.readouterr().err
    assert not (tmp_path / "empty").exists()


def test_resuming_says_where_it_resumes(tmp_path, capsys):
    tiny(tmp_path, iters=2)
    capsys.readouterr()
    agents.train(logdir=tmp_path / "run", resume=True, iters=3, quiet=False)
    assert f"resuming {tmp_path / 'run'} from iteration 2 (of 3)" in capsys.readouterr().err


def test_progress_lines_when_stderr_is_not_a_terminal(tmp_path, capsys):
    tiny(tmp_path, quiet=False, log_every=2)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("[ctpg] iteration ")]
    assert [line.split()[2] for line in lines] == ["2/6", "4/6", "6/6"]
    assert all("cost" in line and "oracle evals" in line and "elapsed" in line for line in lines)


# --------------------------------------------------------------- command line
def test_version_and_python_dash_m():
    out = subprocess.run([sys.executable, "-m", "ctpg", "--version"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == f"ctpg {ctpg.__version__}"


@pytest.mark.parametrize("argv", [["train", "--lr", "-1"], ["train", "--frobnicate"],
                                  ["eval", "--logdir", "/nonexistent"], []])
def test_errors_print_the_short_usage_and_one_reason(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 2
    assert err[0].startswith("usage: ctpg") and "error:" in err[1]


def test_bench_help_describes_smoke_and_full(capsys):
    with pytest.raises(SystemExit) as exit_info:      # argparse's --help exits 0
        cli.main(["bench", "pareto", "--help"])
    assert exit_info.value.code == 0
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--smoke 1 initial state" in help_text and "--full the README's numbers" in help_text


# --------------------------------------------------------- using a policy
def test_load_policy_and_ctpg_eval_with_a_video(tmp_path, capsys):
    imageio = pytest.importorskip("imageio.v3")
    result = tiny(tmp_path, iters=2)
    policy = agents.load_policy(result.run_dir)
    x = torch.randn(5, 2, dtype=torch.float64)
    assert torch.equal(policy(x), result.policy(x).detach())
    video = tmp_path / "lqr.gif"
    assert cli.main(["eval", "--logdir", str(result.run_dir), "--episodes", "2", "--video", str(video)]) == 0
    out = capsys.readouterr().out
    assert "cost_ratio_lqr" in out and "2 episodes of ctpg/LQR-v0" in out
    frames = imageio.imread(video, index=None)
    assert frames.shape[0] == 2 * (40 + 1) and frames.shape[-1] in (3, 4)   # T = 2 at dt = 0.05


def test_eval_mp4(tmp_path, capsys):
    pytest.importorskip("imageio_ffmpeg")
    result = tiny(tmp_path, iters=1)
    video = tmp_path / "lqr.mp4"
    assert cli.main(["eval", "--logdir", str(result.run_dir), "--episodes", "1", "--video", str(video)]) == 0
    assert video.stat().st_size > 1000


def test_eval_refuses_another_video_format(tmp_path, capsys):
    result = tiny(tmp_path, iters=1)
    with pytest.raises(SystemExit):
        cli.main(["eval", "--logdir", str(result.run_dir), "--video", str(tmp_path / "x.avi")])
    assert ".mp4 or .gif" in capsys.readouterr().err


# -------------------------------------------------------------- TensorBoard
def test_final_policy_is_drawn_and_hparams_carry_the_final_metrics(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2
    result = tiny(tmp_path, iters=7, eval_every=3, figure_every=5)
    events = EventAccumulator(str(result.run_dir), size_guidance={"images": 0, "tensors": 0})
    events.Reload()
    assert [e.step for e in events.Images("eval/trajectories")] == [0, 7]
    content = events.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    assert start.session_start_info.hparams["lr"].number_value == result.config.lr
    assert start.session_start_info.hparams["env"].string_value == "lqr"
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"])
    tags = {m.name.tag for m in experiment.experiment.metric_infos}
    assert {"cost/eval", "eval/cost_ratio_lqr"} <= tags


# ------------------------------------------------------ LQR metric, custom systems
def test_lqr_metric_compares_with_the_optimum_over_the_runs_horizon():
    """The optimal gain itself scores 1 at any horizon (before: a 1 s cost over the 10 s
    optimum, 0.86 here)."""
    import envs
    system = envs.make("lqr")
    K = system.optimal_gain()
    x0 = system.sample_initial_state(16, torch.Generator().manual_seed(0))
    for horizon in (1.0, 3.0):
        run = rollout(system, lambda x: -x @ K.T, x0, horizon)
        assert metrics("lqr", system, run, x0)["cost_ratio_lqr"] == pytest.approx(1.0, abs=1e-6)
    bounded = envs.make("lqr", action_bound=0.5)    # the reference saturates as the policy does
    run = rollout(bounded, lambda x: -x @ K.T, x0, 1.0)
    assert metrics("lqr", bounded, run, x0)["cost_ratio_lqr"] == pytest.approx(1.0, abs=1e-6)


class DoubleIntegrator(ctpg.ControlSystem):
    """A system of the user's own: position and velocity, force in [-2, 2]."""

    state_dim, action_dim, horizon = 2, 1, 2.0

    def __init__(self):
        super().__init__()
        self.action_high = torch.tensor([2.0], dtype=torch.float64)
        self.action_low = -self.action_high

    def f(self, x, u):
        return torch.stack([x[:, 1], u[:, 0]], 1)

    def running_cost(self, x, u):
        return (x ** 2).sum(1) + 0.1 * (u ** 2).sum(1)

    def sample_initial_state(self, n, generator=None):
        return torch.rand(n, 2, generator=generator, dtype=torch.float64) * 2 - 1


def test_a_custom_system_gets_generic_defaults_and_metrics(tmp_path):
    result = agents.train(system=DoubleIntegrator(), logdir=tmp_path / "custom", iters=5,
                          batch_size=8, eval_every=5, quiet=True)
    config = result.config
    assert config.env == "custom" and result.status == "completed"
    assert config.lr == agents.TrainConfig.lr and config.schedule == "constant"
    mlp = [m for m in result.policy.modules() if isinstance(m, torch.nn.Linear)]
    assert mlp[0].in_features == 2 and mlp[-1].out_features == 1
    assert set(result.final_eval) == {"cost", "final_state_norm", "step", "oracle_total_cum", "sim_calls_cum",
                                      "wall_time"}
    assert result.history[-1]["cost"] < result.history[0]["cost"]
    with pytest.raises(ConfigError, match="custom system"):
        agents.train(logdir=tmp_path / "custom", resume=True, iters=6)
    again = agents.train(logdir=tmp_path / "custom", resume=True, iters=6, system=DoubleIntegrator())
    assert again.step == 6


def test_realistic_quadrotor_defaults_run(tmp_path):
    result = agents.train("quadrotor_realistic", logdir=tmp_path / "qr", iters=2, batch_size=4,
                          eval_batch=4, eval_every=0, quiet=True)
    assert result.status == "completed" and result.skipped_steps == 0
    assert math.isfinite(result.final_eval["final_position_error"])


def test_act_takes_a_gym_observation_without_the_system(tmp_path):
    import gymnasium
    import numpy as np

    import envs  # noqa: F401  (registers the gymnasium ids)
    from agents.replay import act
    result = tiny(tmp_path, iters=1)
    policy = agents.load_policy(result.run_dir)
    env = gymnasium.make("ctpg/LQR-v0")
    obs, _ = env.reset(seed=0)
    u = act(policy, obs)
    assert isinstance(u, np.ndarray) and u.shape == env.action_space.shape
    expected = policy(torch.as_tensor(obs, dtype=torch.float64)[None])[0].detach().numpy()
    assert np.array_equal(u, expected)
    assert np.array_equal(u, act(policy, obs, envs.make("lqr")))
    env.step(u)                                               # an action the environment takes


def test_every_solver_method_is_a_command_line_choice(capsys):
    from agents.config import METHODS
    from ctpg.solvers.methods import method_names
    assert set(method_names()) <= set(METHODS)
    for method in METHODS:                                    # and each is one the estimators accept
        ctpg.CTPG(method=method, dt=0.01)
    with pytest.raises(SystemExit):
        cli.main(["train", "--method", "nope"])
    err = capsys.readouterr().err
    assert "heun" in err and "dop853" in err
