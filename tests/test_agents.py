"""Fast checks of agents/: training lowers the cost, logs carry the documented tags,
checkpoints resume bitwise, NaN never reaches the parameters, and the command line
works and rejects bad input with exit code 2. Budgets are tiny (LQR, short horizon,
few iterations); the whole file runs in well under two minutes on 2 cores.
"""
from __future__ import annotations

import math
import subprocess
import sys
import types

import pytest
import torch

import agents
from agents import cli
from agents.checkpoint import load_checkpoint
from agents.config import ConfigError
from agents.logging import CSV_NAME, FIGURE_TAG, TAGS
from envs.lqr import LQR

# A tiny LQR run: T = 2, 8 states a batch, evaluation off except at start and end.
TINY = dict(iters=6, batch_size=8, horizon=2.0, eval_every=0, figure_every=0, eval_batch=16,
            rtol=1e-4, atol=1e-6, dt=0.05, quiet=True)


def tiny(tmp_path, name="run", **overrides):
    settings = dict(TINY, **overrides)
    return agents.train(settings.pop("env", "lqr"), settings.pop("estimator", "ctpg"),
                        logdir=tmp_path / name, **settings)


def params_of(policy):
    return [p.detach().clone() for p in policy.parameters()]


# ------------------------------------------------------------------ learning
@pytest.mark.parametrize("estimator", ["ctpg", "bptt", "backsolve"])
def test_short_run_lowers_the_eval_cost(tmp_path, estimator):
    result = tiny(tmp_path, estimator=estimator, iters=10, lr=0.05)
    first, last = result.history[0], result.history[-1]
    assert result.status == "completed" and result.step == 10
    assert last["cost"] < 0.8 * first["cost"], (first, last)
    assert result.oracle_total > 0 and result.skipped_steps == 0


def test_same_seed_same_parameters_other_seed_differs(tmp_path):
    a = params_of(tiny(tmp_path, "a", seed=3).policy)
    b = params_of(tiny(tmp_path, "b", seed=3).policy)
    c = params_of(tiny(tmp_path, "c", seed=4).policy)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))


def test_oracle_budget_stops_the_run(tmp_path):
    result = tiny(tmp_path, iters=1000, max_oracle_evals=1)
    assert result.status == "budget" and result.step == 1
    assert "oracle budget" in result.message


def test_progress_fn_sees_metrics_and_can_stop(tmp_path):
    seen = []
    result = tiny(tmp_path, eval_every=2, progress_fn=lambda step, m: seen.append((step, m)) or step < 2)
    assert result.status == "stopped" and result.step == 2
    assert [s for s, _ in seen] == [1, 2]
    assert "cost/train" in seen[0][1] and "cost/eval" not in seen[0][1]
    assert {"cost/eval", "eval/cost_ratio_lqr"} <= set(seen[1][1]) <= set(TAGS)


# ------------------------------------------------------------------- logging
def test_event_files_carry_the_documented_tags(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    result = tiny(tmp_path, iters=4, eval_every=2, figure_every=1, estimator="backsolve")
    events = EventAccumulator(str(result.run_dir), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    per_iteration = {"cost/train", "grad/norm", "opt/lr", "oracle/f_evals", "oracle/vjp_evals",
                     "oracle/jac_evals", "oracle/sim_calls", "oracle/total", "oracle/total_cum",
                     "oracle/f_evals_cum", "solver/steps_forward", "solver/steps_backward",
                     "time/forward", "time/backward", "time/wall", "train/skipped_steps",
                     "solver/reconstruction_error", "memory/stored_floats"}
    assert per_iteration | {"cost/eval", "eval/cost_ratio_lqr"} <= scalars
    assert scalars <= set(TAGS)
    assert [e.step for e in events.Scalars("cost/eval")] == [0, 2, 4]
    assert [e.step for e in events.Scalars("cost/train")] == [1, 2, 3, 4]
    assert FIGURE_TAG in events.Tags()["images"]
    assert any(tag.startswith("hparams") for tag in events.Tags()["tensors"])
    rows = (result.run_dir / CSV_NAME).read_text().splitlines()
    assert rows[0] == "step,tag,value" and any(",cost/eval," in row for row in rows)


def test_unknown_tag_is_refused(tmp_path):
    from agents.logging import RunLogger
    logger = RunLogger(tmp_path)
    with pytest.raises(ValueError, match="not in agents.logging.TAGS"):
        logger.scalars(0, {"made/up": 1.0})
    logger.close()


# ---------------------------------------------------------------- checkpoints
def test_resume_is_bitwise_identical_to_an_uninterrupted_run(tmp_path):
    settings = dict(iters=6, schedule="cosine", optimizer="adam", checkpoint_every=2, eval_every=3)
    whole = tiny(tmp_path, "whole", **settings)
    part = tiny(tmp_path, "part", progress_fn=lambda step, m: step < 3, **settings)
    assert part.status == "stopped" and part.step == 3
    resumed = agents.train(logdir=tmp_path / "part", resume=True)
    assert resumed.step == 6 and resumed.status == "completed"
    for a, b in zip(params_of(whole.policy), params_of(resumed.policy)):
        assert torch.equal(a, b)
    saved_whole, saved_resumed = load_checkpoint(whole.run_dir), load_checkpoint(resumed.run_dir)
    assert saved_whole["counters"]["oracle"] == saved_resumed["counters"]["oracle"]
    assert torch.equal(saved_whole["generator"], saved_resumed["generator"])
    assert [h["step"] for h in resumed.history] == [h["step"] for h in whole.history]
    steps = [row.split(",")[0:2] for row in (resumed.run_dir / CSV_NAME).read_text().splitlines()[1:]]
    assert len(steps) == len(set(map(tuple, steps))), "a resumed run must not log a step twice"


def test_crash_resumes_from_the_last_checkpoint_and_rewrites_the_logs(tmp_path):
    def crash(step, metrics):
        if step == 3:
            raise KeyboardInterrupt    # after the checkpoint of step 2, before any other
    whole = tiny(tmp_path, "whole", checkpoint_every=2)
    with pytest.raises(KeyboardInterrupt):
        tiny(tmp_path, "crashed", checkpoint_every=2, progress_fn=crash)
    assert load_checkpoint(tmp_path / "crashed")["counters"]["step"] == 2
    resumed = agents.train(logdir=tmp_path / "crashed", resume=True)
    for a, b in zip(params_of(whole.policy), params_of(resumed.policy)):
        assert torch.equal(a, b)
    csv_rows = (tmp_path / "crashed" / CSV_NAME).read_text().splitlines()[1:]
    train_steps = [int(row.split(",")[0]) for row in csv_rows if ",cost/train," in row]
    assert train_steps == [1, 2, 3, 4, 5, 6]


def test_resume_may_extend_the_budget_but_not_change_settings(tmp_path):
    tiny(tmp_path, iters=2)
    with pytest.raises(ConfigError, match="already holds a run"):
        tiny(tmp_path, iters=2)
    with pytest.raises(ConfigError, match="lr"):
        agents.train(logdir=tmp_path / "run", resume=True, lr=0.5)
    longer = agents.train(logdir=tmp_path / "run", resume=True, iters=4)
    assert longer.step == 4


# ------------------------------------------------------------------ NaN guard
class NaNAfter(LQR):
    """LQR whose f (or, with where='vjp', whose vjp) returns NaN from training iteration
    `start` (1-based) on, until before iteration `stop` if given. Iterations are counted
    by batch draws; the first draw is the trainer's held-out evaluation set."""

    def __init__(self, start: int, where: str = "f", stop: int | None = None):
        super().__init__()
        self.start, self.where, self.stop, self.draws = start, where, stop, 0

    def sample_initial_state(self, n, generator=None):
        self.draws += 1
        return super().sample_initial_state(n, generator)

    def _poisoned(self) -> bool:
        iteration = self.draws - 1
        return iteration >= self.start and (self.stop is None or iteration < self.stop)

    def f(self, x, u):
        out = super().f(x, u)
        return out * math.nan if self.where == "f" and self._poisoned() else out

    def vjp(self, x, u, a):
        gx, gu = super().vjp(x, u, a)
        return (gx * math.nan, gu) if self.where == "vjp" and self._poisoned() else (gx, gu)


@pytest.mark.parametrize("where", ["f", "vjp"])
def test_nan_never_reaches_the_parameters(tmp_path, where, capsys):
    result = tiny(tmp_path, estimator="bptt", system=NaNAfter(4, where), iters=50,
                  max_bad_steps=3, quiet=False)
    assert result.status == "diverged" and result.skipped_steps == 3 and result.step == 6
    assert "3 non-finite" in result.message and "last good step" in result.message
    assert all(torch.isfinite(p).all() for p in result.policy.parameters())
    saved = load_checkpoint(result.run_dir)
    assert all(torch.isfinite(t).all() for t in saved["policy"].values())
    assert "skipped" in capsys.readouterr().err


def test_transient_nan_is_skipped_and_training_goes_on(tmp_path):
    for where in ("f", "vjp"):
        system = NaNAfter(start=3, where=where, stop=5)   # iterations 3 and 4 go wrong
        result = tiny(tmp_path, where, estimator="ctpg", system=system, iters=8, max_bad_steps=3)
        assert result.status == "completed" and result.skipped_steps == 2
        assert [it["train/skipped_steps"] for it in result.iterations] == [0, 0, 1, 2, 2, 2, 2, 2]


# ------------------------------------------------------------------- policies
def test_policies_follow_bounds_angles_and_dtype():
    pendulum = agents.make_policy("pendulum")
    x = torch.randn(64, 2, dtype=torch.float64) * 10
    u = pendulum(x)
    assert u.dtype == torch.float64 and u.shape == (64, 1) and u.abs().max() <= 5.0
    shifted = x.clone()
    shifted[:, 0] += 2 * math.pi
    assert torch.allclose(pendulum(shifted), u, atol=1e-12)
    quad = agents.make_policy("quadrotor", last_layer_scale=0.0)
    hover = quad(torch.zeros(3, 12, dtype=torch.float64))
    assert torch.allclose(hover[:, 0], torch.full((3,), 9.8, dtype=torch.float64))
    linear = agents.make_policy("lqr", hidden=())
    assert sum(p.numel() for p in linear.parameters()) == 2 * 2 + 2


# ----------------------------------------------------------------------- CLI
def test_cli_trains_and_resumes(tmp_path):
    common = ["--env", "lqr", "--batch-size", "4", "--horizon", "1", "--eval-every", "0",
              "--eval-batch", "8", "--logdir", str(tmp_path / "cli"), "--quiet"]
    assert cli.main(["train", "--iters", "2", "--hidden", "8", *common]) == 0
    assert cli.main(["train", "--iters", "3", "--resume", *common]) == 0
    assert load_checkpoint(tmp_path / "cli")["counters"]["step"] == 3


@pytest.mark.parametrize("argv, message", [
    (["train", "--estimator", "magic"], "invalid choice: 'magic'"),
    (["train", "--env", "nowhere"], "unknown environment 'nowhere'"),
    (["train", "--lr", "-1"], "lr must be positive"),
    (["train", "--iters", "many"], "invalid int value"),
    (["train", "--hidden", "3,x"], "comma-separated widths"),
    (["train", "--frobnicate"], "unrecognized arguments"),
    (["bench", "nothing"], "invalid choice: 'nothing'"),
    ([], "choose a command"),
])
def test_bad_arguments_exit_2_with_a_message(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_bench_dispatches_and_reports_a_missing_module(monkeypatch, capsys):
    calls = []
    fake = types.ModuleType("benchmarks.fake_bench")
    fake.main = lambda argv: calls.append(argv) or {"results": "a dict, as benchmarks return"}
    monkeypatch.setitem(sys.modules, "benchmarks.fake_bench", fake)
    monkeypatch.setitem(cli.BENCHMARKS, "fake", "benchmarks.fake_bench")
    monkeypatch.setitem(cli.BENCHMARKS, "gone", "benchmarks.not_written_yet")
    assert cli.main(["bench", "fake", "--env", "lqr", "--full", "--extra", "1"]) == 0
    assert calls == [["--env", "lqr", "--full", "--extra", "1"]]
    assert cli.main(["bench", "fake", "--help", "--smoke"]) == 0
    assert calls[-1] == ["--help", "--smoke"]
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["bench", "gone"])
    assert exit_info.value.code == 2 and "not available" in capsys.readouterr().err


def test_console_entry_point_help_runs():
    out = subprocess.run([sys.executable, "-m", "agents.cli", "train", "--help"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    for option in ("--estimator", "--rtol", "--dt", "--optimizer", "--clip", "--resume", "--seed"):
        assert option in out.stdout


# ------------------------------------------------------------ float32, eval mode
@pytest.mark.parametrize("horizon", [1.1, 2.2])
@pytest.mark.parametrize("estimator", ["ctpg", "bptt", "backsolve"])
def test_float32_trains_and_evaluates_at_horizons_float32_cannot_represent(tmp_path, horizon, estimator):
    """Time stays in Python floats end to end: the training solves and the evaluation
    grid both end exactly at T, whatever float32 makes of it."""
    system = LQR(dtype=torch.float32, horizon=horizon)
    result = agents.train(system=system, estimator=estimator, logdir=tmp_path / "f32",
                          **dict(TINY, horizon=horizon, rtol=1e-3, atol=1e-4))
    assert result.status == "completed" and result.skipped_steps == 0
    assert all(p.dtype == torch.float32 for p in result.policy.parameters())
    assert all(math.isfinite(h["cost"]) for h in result.history)
    assert result.history[-1]["cost"] < result.history[0]["cost"]


def test_the_trainer_estimates_with_the_policy_in_eval_mode(tmp_path):
    policy = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 2)).double()
    result = tiny(tmp_path, policy=policy, iters=2)
    assert result.status == "completed" and result.skipped_steps == 0
    assert not policy.training


def test_ctpg_only_settings_apply_to_ctpg_alone():
    # the cart-pole's best measured CTPG setting must not leak into the other estimators,
    # which lack reuse_jacobians (and Backsolve a Rosenbrock adjoint)
    ctpg = agents.resolve_config("cartpole", "ctpg")
    assert ctpg.method == "auto:dopri5+rosenbrock23" and ctpg.reuse_jacobians
    for other in ("backsolve", "bptt"):
        config = agents.resolve_config("cartpole", other)
        assert config.method == "dopri5" and not config.reuse_jacobians
    assert not agents.resolve_config("cartpole", "ctpg", reuse_jacobians=False).reuse_jacobians
