"""Sweeps and independent tasks (agents.sweep, agents.tasks): grids parse by the settings'
types, every point trains into its own directory, the summary holds what the runs
returned, finished sweeps are not overwritten, and Ray gives what the serial path gives.
The Ray tests start a local Ray (about 10 s) and are slow-marked; they skip without Ray.
"""
from __future__ import annotations

import builtins
import csv
import json

import pytest
import torch

from agents import cli, sweep, tasks
from agents.config import ConfigError

FIXED = dict(iters=2, batch_size=4, horizon=1.0, eval_every=0, figure_every=0, eval_batch=8)


def test_grid_values_take_the_settings_types():
    grid = sweep.parse_grid(["lr=1e-2,3e-3", "batch-size=8,16", "hidden=32,64x64,none", "clip=none,1",
                             "squash=false,yes", "estimator=ctpg,bptt"])
    assert grid == {"lr": [0.01, 0.003], "batch_size": [8, 16], "hidden": [(32,), (64, 64), ()],
                    "clip": [None, 1.0], "squash": [False, True], "estimator": ["ctpg", "bptt"]}
    for bad, message in (("lr", "write KEY=V1,V2"), ("lr=", "write KEY=V1,V2"), ("seed=1,2", "--seeds"),
                         ("learning_rate=1", "not a setting"), ("batch_size=a", "cannot read 'a'"),
                         ("squash=maybe", "cannot read")):
        with pytest.raises(ConfigError, match=message):
            sweep.parse_grid([bad])
    with pytest.raises(ConfigError, match="given twice"):
        sweep.parse_grid(["lr=1", "lr=2"])


def test_points_are_the_product_of_the_grid_and_the_seeds():
    plan = sweep.points("lqr", "ctpg", {"lr": [0.01, 0.003], "hidden": [(64, 64)]}, [0, 1])
    assert [p.name for p in plan] == ["lqr__ctpg__lr=0.01__hidden=64x64__seed=0",
                                      "lqr__ctpg__lr=0.01__hidden=64x64__seed=1",
                                      "lqr__ctpg__lr=0.003__hidden=64x64__seed=0",
                                      "lqr__ctpg__lr=0.003__hidden=64x64__seed=1"]
    assert sweep.points("lqr", "ctpg", {"estimator": ["bptt"]}, [3])[0].name == "lqr__bptt__seed=3"


def test_a_serial_sweep_trains_every_point_and_writes_its_summary(tmp_path):
    out = tmp_path / "sweep"
    summary = sweep.sweep("lqr", "ctpg", FIXED, {"estimator": ["ctpg", "bptt"]}, [0], out, tasks.SerialRunner())
    rows = summary["points"]
    assert [r["name"] for r in rows] == ["lqr__ctpg__seed=0", "lqr__bptt__seed=0"]
    for row in rows:
        payload = torch.load(out / row["name"] / "checkpoint.pt", weights_only=True)
        assert payload["config"]["estimator"] == row["settings"]["estimator"]
        assert row["status"] == "completed" and row["iterations"] == 2
        assert row["oracle_total"] == payload["counters"]["oracle"]["total_evals"]
        assert row["final"]["cost"] == payload["history"][-1]["cost"]
    assert rows[0]["oracle_total"] != rows[1]["oracle_total"]
    assert json.loads((out / sweep.SUMMARY_JSON).read_text())["points"][1]["final"] == rows[1]["final"]
    with open(out / sweep.SUMMARY_CSV) as handle:
        table = list(csv.DictReader(handle))
    assert [t["estimator"] for t in table] == ["ctpg", "bptt"]
    assert float(table[1]["cost"]) == rows[1]["final"]["cost"]
    with pytest.raises(ConfigError, match="pass --resume"):
        sweep.sweep("lqr", "ctpg", FIXED, {"estimator": ["ctpg", "bptt"]}, [0], out, tasks.SerialRunner())
    longer = sweep.sweep("lqr", "ctpg", dict(FIXED, iters=3), {"estimator": ["ctpg", "bptt"]}, [0], out,
                         tasks.SerialRunner(), resume=True)
    assert [r["iterations"] for r in longer["points"]] == [3, 3]


def test_bad_points_are_refused_before_any_run(tmp_path):
    with pytest.raises(ConfigError, match="lr must be positive"):
        sweep.sweep("lqr", "ctpg", FIXED, {"lr": [0.01, -1.0]}, [0], tmp_path / "s", tasks.SerialRunner())
    assert not (tmp_path / "s").exists()


def test_ctpg_sweep_on_the_command_line(tmp_path, capsys):
    out = tmp_path / "cli"
    code = cli.main(["sweep", "--env", "lqr", "--iters", "2", "--batch-size", "4", "--horizon", "1",
                     "--eval-every", "0", "--figure-every", "0", "--eval-batch", "8", "--grid", "lr=1e-2,3e-3",
                     "--seeds", "0", "1", "--out", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    assert "lqr__ctpg__lr=0.003__seed=1" in text and "4 runs, serial" in text
    assert len(json.loads((out / sweep.SUMMARY_JSON).read_text())["points"]) == 4
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["sweep", "--env", "lqr", "--grid", "lr", "--out", str(tmp_path / "bad")])
    assert exit_info.value.code == 2 and "KEY=V1,V2" in capsys.readouterr().err


def test_ray_asked_for_but_missing_says_how_to_install_it(monkeypatch, capsys):
    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray":
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(RuntimeError, match=r"pip install -e '\.\[ray\]'"):
        tasks.make_runner(ray=True)
    assert isinstance(tasks.make_runner(), tasks.SerialRunner)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["sweep", "--env", "lqr", "--grid", "lr=1", "--ray"])
    assert exit_info.value.code == 2 and "[ray]" in capsys.readouterr().err
    from benchmarks import pareto
    with pytest.raises(SystemExit):
        pareto.main(["--smoke", "--ray"])
    assert "[ray]" in capsys.readouterr().err


# ------------------------------------------------------------------ Ray (slow)
def _without_wall_clock(value):
    """A result with every wall-clock number dropped (the one thing Ray may change)."""
    if isinstance(value, dict):
        return {k: _without_wall_clock(v) for k, v in value.items() if "wall" not in k and k != "runner"}
    if isinstance(value, list):
        return [_without_wall_clock(v) for v in value]
    return value


@pytest.mark.slow
def test_a_two_task_sweep_on_ray_equals_the_serial_sweep(tmp_path):
    pytest.importorskip("ray")
    grid = {"lr": [1e-2, 3e-3]}
    serial = sweep.sweep("lqr", "ctpg", FIXED, grid, [0], tmp_path / "serial", tasks.SerialRunner())
    on_ray = sweep.sweep("lqr", "ctpg", FIXED, grid, [0], tmp_path / "ray", tasks.RayRunner())
    assert on_ray["runner"] == "ray" and len(on_ray["points"]) == 2
    strip = lambda s: [dict(_without_wall_clock(r), run_dir=None) for r in s["points"]]   # noqa: E731
    assert strip(on_ray) == strip(serial)
    for row in serial["points"]:
        a = torch.load(tmp_path / "serial" / row["name"] / "checkpoint.pt", weights_only=True)["policy"]
        b = torch.load(tmp_path / "ray" / row["name"] / "checkpoint.pt", weights_only=True)["policy"]
        assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["learning", "pareto"])
def test_benchmark_runs_on_ray_give_the_serial_results(tmp_path, name):
    pytest.importorskip("ray")
    import importlib
    module = importlib.import_module(f"benchmarks.{name}")
    extra = ["--env", "lqr"] if name == "pareto" else []
    serial = module.main(["--smoke", *extra, "--out", str(tmp_path / "serial")])
    on_ray = module.main(["--smoke", *extra, "--out", str(tmp_path / "ray"), "--ray"])
    drop = {"config"}   # holds the output folder
    assert _without_wall_clock({k: v for k, v in on_ray.items() if k not in drop}) == \
        _without_wall_clock({k: v for k, v in serial.items() if k not in drop})
