"""Data-parallel training (agents.distributed): two processes on gloo end where one process
ends, the oracle counts add up, resume works, and bad requests are refused before any
process starts.

Exactness holds where a sample's gradient does not depend on the batch it shares: BPTT
fixed-step CTPG, and adaptive CTPG with per-sample steps (per_sample=True). Each
2-process run spawns one Python (about 3-5 s on 2 cores); the default tests spawn three.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import agents
import ctpg
import envs
from agents import cli
from agents.config import ConfigError
from envs.lqr import LQR

TINY = dict(batch_size=8, horizon=2.0, eval_every=2, figure_every=0, eval_batch=16,
            rtol=1e-4, atol=1e-6, dt=0.05, quiet=True)
EXACT = 1e-10   # float64, relative


def train(tmp_path, name, **settings):
    values = dict(TINY, **settings)
    return agents.train(values.pop("env", "lqr"), values.pop("estimator"), logdir=tmp_path / name, **values)


def assert_same_run(one, two):
    """Parameters to EXACT relative, the same evaluations and oracle counts."""
    for p, q in zip(one.policy.parameters(), two.policy.parameters()):
        assert float((p - q).detach().norm()) <= EXACT * float(p.detach().norm()), (p, q)
    assert one.oracle_total == two.oracle_total
    assert [h["step"] for h in one.history] == [h["step"] for h in two.history]
    for a, b in zip(one.history, two.history):
        assert b["cost"] == pytest.approx(a["cost"], rel=EXACT)
    steps = {a["step"]: a for a in one.iterations}
    for b in two.iterations:          # a resumed run holds only its own session's iterations
        a = steps[b["step"]]
        assert b["cost/train"] == pytest.approx(a["cost/train"], rel=EXACT)
        assert b["oracle/total"] == a["oracle/total"] and b["oracle/f_evals"] == a["oracle/f_evals"]


def test_a_run_resumed_in_two_processes_ends_as_one_process_does(tmp_path):
    one = train(tmp_path, "one", estimator="bptt", iters=3)
    # 8 states, T = 2, dt = 0.05: 40 Euler steps of one f and one vjp each
    assert one.iterations[0]["oracle/total"] == 8 * 40 * 2
    first = train(tmp_path, "two", estimator="bptt", iters=2)      # resumed with another process count
    assert first.step == 2 and first.status == "completed"
    two = agents.train(logdir=tmp_path / "two", resume=True, iters=3, nproc=2, quiet=True)
    assert two.step == 3 and two.status == "completed"
    assert_same_run(one, two)
    logged = (tmp_path / "two" / "scalars.csv").read_text().splitlines()
    assert sum(1 for row in logged if ",oracle/total," in row) == 3   # rank 0 alone logs, once per step


def test_two_processes_fixed_step_ctpg_equal_one_process(tmp_path):
    one = train(tmp_path, "one", estimator="ctpg", iters=3, solver_dt=0.05)
    two = train(tmp_path, "two", estimator="ctpg", iters=3, solver_dt=0.05, nproc=2)
    assert one.iterations[0]["solver/steps_forward"] == 40          # T / solver_dt
    assert_same_run(one, two)


def test_adaptive_ctpg_oracle_counts_add_up_over_the_shards(tmp_path):
    """With shared adaptive steps each shard takes its own steps: the run's first
    iteration counts what the two shards cost when estimated one by one here."""
    two = train(tmp_path, "two", estimator="ctpg", iters=1, eval_every=0, nproc=2)
    config = agents.resolve_config("lqr", "ctpg", **{k: v for k, v in TINY.items() if k != "quiet"})
    system = envs.make("lqr")
    torch.manual_seed(config.seed)
    policy = agents.make_policy(system, env="lqr").eval()
    batch = system.sample_initial_state(config.batch_size, torch.Generator().manual_seed(config.seed))
    estimator, shards = ctpg.CTPG(method=config.method, rtol=config.rtol, atol=config.atol), []
    for shard in torch.tensor_split(batch, 2):
        loss, info = estimator(system, policy, shard, config.horizon)
        loss.backward()
        shards.append(info)
    first = two.iterations[0]
    assert first["oracle/total"] == sum(info.oracle_evals for info in shards)
    assert first["solver/steps_forward"] == max(info.forward.steps_accepted for info in shards)
    weighted = sum(float(info.costs.sum()) for info in shards) / config.batch_size
    assert first["cost/train"] == pytest.approx(weighted, rel=EXACT)


def test_two_processes_adaptive_ctpg_with_per_sample_steps_equal_one_process(tmp_path):
    one = train(tmp_path, "one", estimator="ctpg", iters=3, per_sample=True)
    two = train(tmp_path, "two", estimator="ctpg", iters=3, per_sample=True, nproc=2)
    assert_same_run(one, two)


def test_per_sample_is_refused_clearly_where_the_estimator_lacks_it(tmp_path):
    from agents.builders import make_estimator
    assert make_estimator(agents.resolve_config("lqr", "ctpg", per_sample=True)).per_sample
    with pytest.raises(ConfigError, match="per_sample=True needs ctpg.Backsolve"):
        make_estimator(agents.resolve_config("lqr", "backsolve", per_sample=True))


def test_bad_process_counts_are_refused_before_anything_starts(tmp_path, monkeypatch, capsys):
    with pytest.raises(ConfigError, match="cannot be shared among 4 processes"):
        train(tmp_path, "a", estimator="bptt", iters=1, batch_size=3, nproc=4)
    with pytest.raises(ConfigError, match="nproc must be a positive integer"):
        train(tmp_path, "b", estimator="bptt", iters=1, nproc=0)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--env", "lqr", "--nproc", "0", "--logdir", str(tmp_path / "c")])
    assert exit_info.value.code == 2 and "--nproc must be at least 1" in capsys.readouterr().err
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--env", "lqr", "--nproc", "2", "--logdir", str(tmp_path / "d")])
    assert exit_info.value.code == 2 and "drop --nproc" in capsys.readouterr().err


def test_unpicklable_arguments_are_refused_before_spawning(tmp_path):
    import envs
    policy = agents.make_policy(envs.make("lqr"))
    policy.hook = lambda x: x      # a lambda does not pickle
    with pytest.raises(ConfigError, match="do not pickle"):
        train(tmp_path, "a", estimator="bptt", iters=1, policy=policy, nproc=2)


# ------------------------------------------------------------------ slow
class RankOneFails(LQR):
    """LQR whose f misbehaves in the process of rank 1 only: NaN (a bad step) or a crash."""

    def __init__(self, mode: str, **kwargs):
        super().__init__(**kwargs)
        self.mode = mode

    def f(self, x, u):
        if torch.distributed.is_initialized() and torch.distributed.get_rank() == 1:
            if self.mode == "crash":
                os._exit(3)
            return torch.full_like(x, float("nan"))
        return super().f(x, u)


@pytest.mark.slow
def test_a_bad_shard_skips_the_step_on_every_process(tmp_path):
    system = RankOneFails("nan", horizon=2.0)
    torch.manual_seed(0)           # as the trainer seeds before it builds the policy
    start = [p.detach().clone() for p in agents.make_policy(system, env="lqr").parameters()]
    result = train(tmp_path, "run", estimator="ctpg", iters=5, system=system, max_bad_steps=2, nproc=2)
    assert result.status == "diverged" and result.skipped_steps == 2 and result.step == 2
    assert all(torch.equal(p, q) for p, q in zip(start, result.policy.parameters()))


@pytest.mark.slow
def test_a_process_that_dies_ends_the_run_with_an_error(tmp_path):
    start = time.perf_counter()
    with pytest.raises(RuntimeError):
        train(tmp_path, "run", estimator="bptt", iters=3, system=RankOneFails("crash", horizon=2.0), nproc=2)
    assert time.perf_counter() - start < 120     # an error, not a hang until the timeout


@pytest.mark.slow
def test_ctrl_c_stops_every_process_at_an_iteration_boundary(tmp_path):
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "agents.cli", "train", "--env", "lqr", "--iters", "100000", "--batch-size", "8",
               "--horizon", "2", "--eval-every", "0", "--figure-every", "0", "--log-every", "1",
               "--logdir", str(run_dir), "--nproc", "2"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 120
    for line in process.stderr:
        if "iteration 5/" in line or time.time() > deadline:
            break
    os.killpg(process.pid, signal.SIGINT)        # the terminal's Ctrl-C reaches the whole group
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "--resume --nproc 2" in err
    payload = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert payload["counters"]["step"] >= 5


@pytest.mark.slow
def test_torchrun_trains_like_one_process(tmp_path):
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    options = ["--env", "lqr", "--estimator", "bptt", "--iters", "3", "--batch-size", "8", "--horizon", "2",
               "--eval-every", "0", "--figure-every", "0", "--quiet"]
    subprocess.run([torchrun, "--nproc-per-node", "2", "-m", "agents.cli", "train", *options,
                    "--logdir", str(tmp_path / "two")], check=True, timeout=300)
    one = agents.train("lqr", "bptt", logdir=tmp_path / "one", iters=3, batch_size=8, horizon=2.0,
                       eval_every=0, figure_every=0, quiet=True)
    saved = torch.load(tmp_path / "two" / "checkpoint.pt", weights_only=True)
    for name, value in one.policy.state_dict().items():
        assert float((saved["policy"][name] - value).norm()) <= EXACT * float(value.norm())
    assert saved["counters"]["oracle"]["total_evals"] == one.oracle_total
