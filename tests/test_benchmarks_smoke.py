"""Each benchmark script runs on its smallest budget and writes well-formed JSON and a PNG."""
import json
import math

import pytest

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _numbers(value):
    """Every number nested in a JSON value (bools excluded)."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return []
    if isinstance(value, (int, float)):
        return [value]
    items = value.values() if isinstance(value, dict) else value
    return [n for item in items for n in _numbers(item)]


def _read_outputs(folder, stem):
    result = json.loads((folder / f"{stem}.json").read_text())
    assert (folder / f"{stem}.png").read_bytes()[:8] == PNG_SIGNATURE
    return result


def test_backsolve_failure_smoke(tmp_path):
    from benchmarks import backsolve_failure

    backsolve_failure.main(["--smoke", "--out", str(tmp_path)])
    result = _read_outputs(tmp_path, "backsolve_failure")
    assert {"config", "budget", "optimum", "summary", "runs"} <= result.keys()
    assert result["budget"] == "smoke"
    assert result["optimum"]["closed_form"] == pytest.approx(2.0)
    assert result["optimum"]["exact_cost_riccati_gain"] == pytest.approx(2.0, rel=1e-10)
    for name in ("backsolve", "ctpg"):
        rows = result["runs"][name]["rows"]
        assert len(rows) == result["config"]["iters"]
        for row in rows:
            assert {"loss", "grad_norm", "oracle_evals", "wall_time"} <= row.keys()
            assert row["loss"] > 0 and row["oracle_evals"] > 0
        assert all(math.isfinite(n) for n in _numbers(result["summary"][name]))
    assert all(r["reconstruction_error"] >= 0 for r in result["runs"]["backsolve"]["rows"])
    # the first iterations are far from the stabilising regime: both gradients agree there
    assert result["summary"]["backsolve"]["max_grad_rel_error"] < 1e-4


def test_torchdiffeq_compare_smoke(tmp_path):
    pytest.importorskip("torchdiffeq")
    from benchmarks import torchdiffeq_compare

    torchdiffeq_compare.main(["--smoke", "--out", str(tmp_path)])
    result = _read_outputs(tmp_path, "torchdiffeq_compare")
    assert {"config", "budget", "evals_convention", "systems"} <= result.keys()
    assert set(result["systems"]) == {"lqr", "diffdrive"}
    tolerances = result["config"]["tolerances"]
    for name, res in result["systems"].items():
        assert {"check", "points", "failures", "floor"} <= res.keys()
        methods = {p["method"] for p in res["points"]} | {f["method"] for f in res["failures"]}
        assert methods == set(torchdiffeq_compare.METHODS)
        assert len(res["points"]) + len(res["failures"]) == len(methods) * len(tolerances)
        for point in res["points"]:
            assert all(math.isfinite(point[k]) and point[k] >= 0 for k in ("rel_error", "wall_time"))
            assert point["evals"] > 0
        assert isinstance(res["floor"]["ctpg-dopri5_below_adjoint"]["holds"], bool)
    assert result["systems"]["diffdrive"]["check"]["fd_max_rel_error"] < 1e-5
    assert set(result["systems"]["diffdrive"]["warmup_seconds"]) == {"direct-compiled", "ctpg-dopri5-compiled",
                                                                     "ctpg-dopri5-captured"}
    eager = [p for p in result["systems"]["diffdrive"]["points"] if p["method"] == "ctpg-dopri5"]
    # compiled: the same steps; captured: the device-side loop's, which may differ in roundoff
    for variant, rel in (("ctpg-dopri5-compiled", 1e-6), ("ctpg-dopri5-captured", 0.05)):
        compiled = [p for p in result["systems"]["diffdrive"]["points"] if p["method"] == variant]
        assert [p["rel_error"] for p in compiled] == pytest.approx([p["rel_error"] for p in eager], rel=rel)
    ctpg_points = [p for p in result["systems"]["lqr"]["points"] if p["method"] == "ctpg-dopri5"]
    assert min(p["rel_error"] for p in ctpg_points) < 1e-4


# ---------------------------------------------------------------- benchmarks/pareto.py
PARETO_LABELS = {"BPTT-Euler", "CTPG-dopri5", "CTPG-tsit5", "CTPG-bosh3", "CTPG-auto", "Backsolve", "Backsolve-ckpt10"}
STIFF_LABELS = {"CTPG-rodas5p", "CTPG-ros34pw2", "CTPG-rosenbrock23"}
PARETO_METRICS = {"param_error", "full_error", "oracle_evals", "weighted_evals", "sim_calls", "wall_time",
                  "stored_floats"}


def _check_pareto(result, primary, labels=PARETO_LABELS):
    assert {"config", "budget", "records", "failures", "curves", "floors", "primary_error", "reference",
            "solver_floors"} <= result.keys()
    assert result["budget"] == "smoke" and result["primary_error"] == primary
    assert result["records"] and set(result["curves"]) <= labels
    assert {"BPTT-Euler", "CTPG-dopri5"} <= set(result["curves"])
    for record in result["records"]:
        assert PARETO_METRICS <= record.keys()
        assert all(math.isfinite(record[k]) and record[k] >= 0 for k in PARETO_METRICS)
        assert record["oracle_evals"] > 0 and record["stored_floats"] > 0
    for curve in result["curves"].values():
        assert all(math.isfinite(n) for n in _numbers(curve))
    assert set(result["floors"]) == {"param_error", "full_error"}
    for table in result["floors"].values():
        assert "bptt_over_ctpg_oracle_evals" in table and "ctpg_below_Backsolve_oracle_evals" in table
        assert all(math.isfinite(n) for n in _numbers(table))


@pytest.mark.parametrize("gain, primary", [(None, "param_error"), ("optimal", "full_error")], ids=["default", "optimal"])
def test_pareto_smoke_lqr(tmp_path, capsys, gain, primary):
    """The default is the README's headline case, the perturbed gain; at the optimum
    dL/dtheta ~ 1e-8 and the floors are read on [dL/dx0, dL/dtheta]."""
    from benchmarks import pareto

    pareto.main(["--smoke", "--env", "lqr", "--out", str(tmp_path)] + (["--gain", gain] if gain else []))
    result = _read_outputs(tmp_path, f"pareto_lqr_{gain or 'perturbed'}")
    _check_pareto(result, primary=primary)
    assert result["reference"].startswith("exact")
    # CTPG at 1e-3 against the exact gradient
    ctpg = {p["setting"]: p for p in result["curves"]["CTPG-dopri5"]}
    assert ctpg[1e-3][primary] < 1e-2
    out = capsys.readouterr().out
    assert "param err / full err: relative error of dL/dtheta" in out and "ok: initial states" in out
    assert ": None" not in out                     # an unreached floor reads n/a, with its meaning
    assert "[pareto] state 1/1, point 1/" in out and "ETA" in out


def test_pareto_smoke_nonlinear_reference_checked(tmp_path, capsys):
    from benchmarks import pareto

    pareto.main(["--smoke", "--env", "diffdrive", "--out", str(tmp_path)])
    result = _read_outputs(tmp_path, "pareto_diffdrive")
    _check_pareto(result, primary="param_error")
    assert "central differences" in result["reference"]
    assert capsys.readouterr().out.count("reference gradient checked") == 2   # own and random direction


def test_pareto_smoke_stiff_lqr_adds_the_rosenbrock_solvers(tmp_path):
    from benchmarks import pareto

    pareto.main(["--smoke", "--env", "lqr", "--gain", "stiff", "--methods", "dopri5", "--out", str(tmp_path)])
    result = _read_outputs(tmp_path, "pareto_lqr_stiff")
    _check_pareto(result, primary="param_error", labels=PARETO_LABELS | STIFF_LABELS)
    assert STIFF_LABELS <= set(result["curves"])
    assert all(p["setting"] < 2.0 / pareto.STIFF_GAIN for p in result["curves"]["BPTT-Euler"])   # stable steps only
    ratios = result["solver_floors"]
    assert ratios["dopri5_over_rosenbrock_weighted_evals"] > 1   # the stiff loop favours Rosenbrock even here


def test_pareto_smoke_juggler_compares_saltation_ctpg_with_soft_contact_bptt(tmp_path):
    """--env juggler: CTPG through the impacts on the hybrid juggler, BPTT-Euler on the
    penalty-contact juggler at each stiffness, one reference (checked by central
    differences); the floors compare CTPG with BPTT at BPTT's best error."""
    from benchmarks import pareto, pareto_contact

    pareto.main(["--smoke", "--env", "juggler", "--out", str(tmp_path)])
    result = _read_outputs(tmp_path, "pareto_juggler")
    labels = {pareto_contact.soft_label(k) for k in pareto_contact.STIFFNESSES["smoke"]}
    assert labels | {"CTPG-dopri5", "CTPG-tsit5", "CTPG-bosh3"} == set(result["curves"])
    assert all(math.isfinite(r["param_error"]) and r["oracle_evals"] > 0 for r in result["records"])
    floors = result["floors"]
    # CTPG at rtol 1e-5 is accurate to ~1e-5 through the impacts; soft-contact BPTT is not
    assert floors["ctpg_reaches_target"] and floors["ctpg_best_error"] < 1e-4 < floors["bptt_best_error"]
    assert floors["bptt_over_ctpg_oracle_evals"] > 1


@pytest.mark.parametrize("corruption", ["scaled", "orthogonal"])
def test_pareto_smoke_reference_check_raises(tmp_path, monkeypatch, corruption):
    import torch

    from benchmarks import pareto

    check = pareto.check_against_finite_differences

    def corrupted(estimator, system, policy, x0, theta, gx=None, **kwargs):
        if corruption == "scaled":      # an error along the gradient: 1 %
            wrong = 1.01 * theta
        else:                           # an error across it: 1 % of |theta|, orthogonal to theta
            noise = torch.randn(theta.shape, generator=torch.Generator().manual_seed(5), dtype=theta.dtype)
            noise = noise - (noise @ theta) / (theta @ theta) * theta
            wrong = theta + 0.01 * theta.norm() * noise / noise.norm()
        return check(estimator, system, policy, x0, wrong, gx, **kwargs)

    monkeypatch.setattr(pareto, "check_against_finite_differences", corrupted)
    direction = "own" if corruption == "scaled" else "random"   # the check that catches each
    with pytest.raises(RuntimeError, match=f"disagrees with central differences along its {direction} direction"):
        pareto.main(["--smoke", "--env", "diffdrive", "--out", str(tmp_path)])
    assert not list(tmp_path.glob("pareto_*"))


# ---------------------------------------------------------------- benchmarks/learning.py
def test_learning_smoke(tmp_path):
    from benchmarks import learning

    learning.main(["--smoke", "--out", str(tmp_path)])
    result = _read_outputs(tmp_path, "learning_diffdrive")
    assert {"config", "budget", "bptt_dt", "summary", "floor", "curves", "runs"} <= result.keys()
    assert result["budget"] == "smoke"
    # diffdrive: BPTT's dt is matched to CTPG's mean iteration (one f and one vjp per
    # state and Euler step): a BPTT iteration costs CTPG's mean, rounded up to whole steps
    ctpg_run, bptt_run = result["runs"]["ctpg"][0], result["runs"]["bptt"][0]
    steps = round(5.0 / result["bptt_dt"])
    assert steps == math.ceil(ctpg_run["mean_iteration_evals"] / (2 * 16))
    assert bptt_run["first_iteration_evals"] == 2 * 16 * steps
    assert {"per_seed", "median_ratio", "per_seed_median"} <= result["floor"].keys()
    assert {"ctpg", "bptt"} <= result["runs"].keys()
    for name in ("ctpg", "bptt"):
        runs = result["runs"][name]
        assert len(runs) == result["config"]["seeds"] == 1
        for run in runs:
            assert run["iterations"] == result["iters"] and run["oracle_total"] > 0
            assert [h["step"] for h in run["history"]] == [0, 2, 4]
            assert all(math.isfinite(n) for n in _numbers(run["history"]))
        assert all(math.isfinite(n) for n in _numbers(result["summary"][name]))
        assert set(result["curves"][name]) == {"step", "oracle_total_cum", "sim_calls_cum", "wall_time"}
        assert all(math.isfinite(n) for n in _numbers(result["curves"][name]))
    # same seed: same initial policy and held-out states, so the first evaluations agree
    assert result["runs"]["ctpg"][0]["history"][0]["cost"] == result["runs"]["bptt"][0]["history"][0]["cost"]
    assert isinstance(result["floor"]["holds"], bool)
    assert (tmp_path / "runs" / "diffdrive__ctpg__0" / "checkpoint.pt").exists()


def test_learning_smoke_electric_uses_difftaichis_integrator_and_two_cost_axes(tmp_path):
    from benchmarks import learning

    learning.main(["--smoke", "--env", "electric", "--out", str(tmp_path)])
    result = _read_outputs(tmp_path, "learning_electric")
    assert result["bptt_dt"] == 0.03 and "semi-implicit" in result["labels"]["bptt"]
    assert set(result["floor"]["per_seed"]) == {"oracle_total_cum", "wall_time"}
    assert isinstance(result["floor"]["holds"], bool)


def test_learning_smoke_cartpole_counts_simulator_calls_and_learning(tmp_path):
    from benchmarks import learning

    learning.main(["--smoke", "--env", "cartpole", "--iters", "2", "--eval-every", "1", "--method", "auto",
                   "--out", str(tmp_path)])
    result = _read_outputs(tmp_path, "learning_cartpole")
    assert "auto" in result["labels"]["ctpg"]
    assert set(result["floor"]["per_seed"]) == {"sim_calls_cum"}
    assert set(result["floor"]["learned"]) == {"ctpg", "bptt"}
    for name in ("ctpg", "bptt"):
        run = result["runs"][name][0]
        assert run["history"][-1]["sim_calls_cum"] > run["history"][-1]["oracle_total_cum"] > 0
        assert "upright_fraction" in run["history"][-1]


# ---------------------------------------------------------------- benchmarks/throughput.py
def test_throughput_smoke(tmp_path):
    from benchmarks import throughput

    result = throughput.main(["--smoke", "--out", str(tmp_path)])
    saved = _read_outputs(tmp_path, "throughput_diffdrive")
    assert saved["budget"] == "smoke" and set(saved["devices"]) == {"cpu", "cuda"}
    cpu = [p for p in result["points"] if p["device"] == "cpu"]
    assert {(p["estimator"], p["batch"]) for p in cpu} == {(e, n) for e in ("ctpg", "bptt", "backsolve") for n in (1, 4)}
    for p in cpu:
        assert p["seconds"] > 0 and p["samples_per_second"] == pytest.approx(p["batch"] / p["seconds"])
        assert p["oracle_evals"] > 0 and p["stored_floats"] > 0
    bptt = {p["batch"]: p for p in cpu if p["estimator"] == "bptt"}
    assert bptt[4]["oracle_evals"] == 4 * bptt[1]["oracle_evals"] == 4 * 2 * 50   # T 0.5 / dt 0.01, f + vjp
    # a tiny memory budget skips every batch size after the first, and says why
    small = throughput.main(["--smoke", "--estimators", "bptt", "--devices", "cpu", "--max-memory-gb", "1e-6",
                             "--out", str(tmp_path)])
    assert [p["batch"] for p in small["points"]] == [1]
    assert small["skipped"][0]["batch"] == 4 and "max_memory_gb" in small["skipped"][0]["reason"]


# ------------------------------------------- stiff solvers, per-sample steps, crossover
def test_stiff_solvers_smoke(tmp_path):
    from benchmarks import stiff_solvers

    stiff_solvers.main(["--smoke", "--out", str(tmp_path)])
    result = _read_outputs(tmp_path, "stiff_solvers")
    rows = {(r["method"], r["problem"]) for r in result["rows"]}
    assert rows == {("radau", "robertson"), ("rodas5p", "robertson")}
    assert all(r["error"] < 1e-2 and r["cost"] > 0 for r in result["rows"])
    assert {"robertson@0.001", "robertson@1e-06"} == set(result["floors"])


def test_per_sample_smoke(tmp_path):
    from benchmarks import per_sample

    per_sample.main(["--smoke", "--out", str(tmp_path)])
    result = _read_outputs(tmp_path, "per_sample")
    modes = {r["mode"] for r in result["rows"]}
    assert modes == {"shared", "per-sample"}
    assert all(r["oracle_evals"] > 0 and r["worst_error"] >= 0 for r in result["rows"])


def test_crossover_smoke(tmp_path):
    from benchmarks import crossover

    crossover.main(["--smoke", "--out", str(tmp_path)])
    result = _read_outputs(tmp_path, "crossover")
    assert [r["scale"] for r in result["rows"]] == [1.0, 10.0]
    for row in result["rows"]:
        assert row["optimal_cost"] > 0 and row["per_seed"][0]["dt"] > 0
        assert row["time_scales_in_horizon"] == 10 * row["scale"]


# ---------------------------------------------------------------- neural-ODE studies (issue 13)
def test_odeint_compare_smoke(tmp_path):
    pytest.importorskip("torchdiffeq")
    from benchmarks import odeint_compare

    odeint_compare.main(["--smoke", "--out", str(tmp_path)])
    result = _read_outputs(tmp_path, "odeint_compare")
    assert result["budget"] == "smoke"
    assert max(result["reference_check"]["fd_rel_errors"]) < 1e-5
    assert result["reference_check"]["torchdiffeq_odeint_1e-12_rel_diff"] < 1e-8
    methods = {p["method"] for p in result["points"]} | {f["method"] for f in result["failures"]}
    assert methods == set(odeint_compare.METHODS)
    for point in result["points"]:
        assert point["evals"] > 0 and point["stored_floats"] > 0 and point["wall_time"] > 0
        assert math.isfinite(point["rel_error"])
    tight = {p["method"]: p["rel_error"] for p in result["points"] if p["tol"] == 1e-6}
    assert tight["ctpg-interpolating"] < 1e-5 and tight["torchdiffeq-odeint"] < 1e-4
    assert {"faster_than_odeint_adjoint", "ten_times_fewer_floats_than_odeint"} <= result["floors"].keys()


def test_fitzhugh_nagumo_smoke(tmp_path):
    from benchmarks import fitzhugh_nagumo

    fitzhugh_nagumo.main(["--smoke", "--out", str(tmp_path)])
    result = _read_outputs(tmp_path, "fitzhugh_nagumo")
    assert set(result["runs"]) == {"node", "node_t", "rnn"}
    summary = result["summary"]
    assert summary["node"]["params"] == summary["rnn"]["params"] == summary["node_t"]["params"] - 16
    for name in ("node", "node_t", "rnn"):
        s = summary[name]
        assert all(math.isfinite(s[k]) and s[k] >= 0 for k in ("train_mse", "test_mse", "extrapolation_mse"))
        assert -1 <= s["cosine_training_window"] <= 1
        history = result["runs"][name]["history"]
        assert len(history) == 2 and history[-1]["loss"] < history[0]["loss"]     # two epochs, loss fell
    # the autonomous field does not depend on t: both windows give the same cosine
    assert summary["node"]["cosine_training_window"] == pytest.approx(summary["node"]["cosine_extrapolation_window"])


def test_van_der_pol_smoke(tmp_path):
    from benchmarks import van_der_pol

    van_der_pol.main(["--smoke", "--out", str(tmp_path)])
    result = _read_outputs(tmp_path, "van_der_pol")
    entry = result["mus"]["1.0"]
    assert max(entry["check_initial"]["fd_rel_errors"]) < 1e-5
    for when in ("check_initial", "check_trained"):
        assert all(e < 1e-4 for e in entry[when]["rel_error"].values())
    modes = entry["modes"]
    assert set(modes) == {"interpolating", "backsolve", "direct"}
    assert modes["direct"]["max_stored_floats"] > modes["interpolating"]["max_stored_floats"] > \
        modes["backsolve"]["max_stored_floats"]
    assert all(m["seconds_per_epoch"] > 0 and m["vjp_evals_per_epoch"] > 0 for m in modes.values())


def test_double_pendulum_smoke(tmp_path):
    from benchmarks import double_pendulum

    double_pendulum.main(["--smoke", "--out", str(tmp_path)])
    result = _read_outputs(tmp_path, "double_pendulum")
    s = result["summary"]
    assert len(s["lyapunov_exponent"]) == len(s["valid_time"]) == result["config"]["test_trajectories"]
    assert all(0 < v <= result["config"]["track_seconds"] + 1e-9 for v in s["valid_time"])
    assert [h["window"] for h in result["history"]] == [2, 4]       # the curriculum's stages, in order
    assert len(result["tracking"]["error"][0]) == len(result["tracking"]["t"])


# ---------------------------------------------------------------- benchmarks/rl.py
def test_rl_smoke(tmp_path):
    """`ctpg bench rl --smoke` in this process: every default method trains on its budget and is
    evaluated through the same accurate gym episodes; ctpg's first point is the seeded
    untrained policy's return, computed independently here."""
    pytest.importorskip("stable_baselines3")
    import agents
    from agents.builders import make_system
    from agents.replay import gym_episodes
    from agents.trainer import build_policy
    from benchmarks import rl, rl_methods

    rl.main(["--env", "pendulum", "--smoke", "--budget", "1", "--workers", "0", "--clock", "cpu",
             "--out", str(tmp_path)])
    result = _read_outputs(tmp_path, "rl_pendulum")
    assert result["budget"] == "smoke" and set(result["summary"]) == set(rl_methods.DEFAULT_METHODS)
    for run in result["runs"]:
        assert run["error"] is None, run["error"]
        history = run["history"]
        assert len(history) >= 2 and history[0]["oracle_evals"] == 0
        assert all(a["cpu_time"] <= b["cpu_time"] for a, b in zip(history, history[1:]))
        assert all(a["oracle_evals"] <= b["oracle_evals"] for a, b in zip(history, history[1:]))
        assert history[-1]["oracle_evals"] > 0 and history[-1]["cpu_time"] >= 1.0
        assert all(math.isfinite(h["return"]) and h["cost"] == -h["return"] for h in history)
        if run["method"] in rl.CTPG_METHODS:           # ctpg's trainers take no gym steps
            assert all(h["env_steps"] is None for h in history)
        else:
            assert history[-1]["env_steps"] > 0
    config = agents.resolve_config("pendulum")
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    policy = build_policy(config, make_system(config))
    fresh = gym_episodes(config, policy, {}, result["config"]["episodes"], seed=rl_methods.EVAL_SEED)
    ctpg_run = next(r for r in result["runs"] if r["method"] == "ctpg")
    assert ctpg_run["history"][0]["return"] == pytest.approx(sum(fresh.returns) / len(fresh.returns), rel=1e-12)
    assert {"cpu_time", "oracle_evals"} <= set(result["curves"]["ctpg"])
    assert {"cpu_time", "env_steps", "oracle_evals"} <= set(result["curves"]["sac"])
    assert isinstance(result["floor"]["beats_sac"], bool) and isinstance(result["floor"]["beats_ppo"], bool)
