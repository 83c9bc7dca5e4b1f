"""Device placement. On every machine: each torch environment and its default policy
compute on torch's "meta" device, which holds no data, so a tensor made on the CPU by
mistake meets the state's device and raises, and so does any read-back of a value
(.item(), float(), bool()) that would synchronise a GPU. On a machine with CUDA: every
estimator on every environment gives the CPU's gradient there, training runs, and the
benchmarks' device options work; skipped where torch sees no GPU.
"""
from __future__ import annotations

import pytest
import torch

import agents
import ctpg
import envs
from agents.config import ConfigError
from ctpg.system import saturated_policy

TORCH_ENVS = [name for name in envs.names() if name != "cartpole"]     # cartpole: MuJoCo on the host
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("name", TORCH_ENVS)
def test_oracles_and_policy_stay_on_the_state_device(name):
    policy = agents.make_policy(envs.make(name)).to("meta")    # built (and checked) on the CPU, then moved
    system = envs.make(name, device="meta")
    x = system.sample_initial_state(5, torch.Generator().manual_seed(0))   # drawn on the CPU, then moved
    u = saturated_policy(policy, system)(x)
    outputs = [x, u, system.f(x, u), *system.vjp(x, u, torch.ones_like(x)), *system.jacobians(x, u),
               system.running_cost(x, u), system.terminal_cost(x)]
    assert {t.device.type for t in outputs} == {"meta"}
    assert system.f(x, u).shape == x.shape


def test_devices_torch_cannot_use_are_refused_with_the_fix():
    with pytest.raises(ConfigError, match="not a torch device"):
        agents.resolve_config("lqr", device="gpu0")
    with pytest.raises(ConfigError, match="on cpu or cuda"):
        agents.resolve_config("lqr", device="meta")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="sees no CUDA device"):
            agents.resolve_config("lqr", device="cuda")
        from benchmarks import pareto
        with pytest.raises(SystemExit) as exit_info:
            pareto.main(["--smoke", "--device", "cuda"])
        assert exit_info.value.code == 2


def test_ray_tasks_of_cuda_runs_reserve_a_gpu_each():
    pytest.importorskip("ray")
    from agents import tasks
    assert tasks.make_runner(ray=True, device="cuda").num_gpus == 1
    assert tasks.make_runner(ray=True, device="cpu").num_gpus == 0


# ------------------------------------------------------------------ CUDA only
ESTIMATORS = {"ctpg": lambda: ctpg.CTPG(rtol=1e-7, atol=1e-9), "bptt": lambda: ctpg.BPTT(dt=0.01),
              "backsolve": lambda: ctpg.Backsolve(rtol=1e-7, atol=1e-9),
              # step control on the device: the same tolerance, a few roundoff-different steps
              "ctpg-sync": lambda: ctpg.CTPG(rtol=1e-7, atol=1e-9, sync_every=8)}


def _gradient(name, estimator, device, horizon):
    system = envs.make(name, device=device, horizon=horizon)
    torch.manual_seed(0)
    policy = agents.make_policy(envs.make(name)).to(device).eval()
    x0 = system.sample_initial_state(4, torch.Generator().manual_seed(1)).requires_grad_(True)
    loss, info = ESTIMATORS[estimator]()(system, policy, x0)
    loss.backward()
    grads = torch.cat([p.grad.reshape(-1) for p in policy.parameters()] + [x0.grad.reshape(-1)])
    return loss, grads, info


@cuda
@pytest.mark.parametrize("estimator", sorted(ESTIMATORS))
@pytest.mark.parametrize("name", envs.names())
def test_estimates_on_cuda_equal_the_cpu(name, estimator):
    horizon = 0.5 if name != "electric" else 1.0
    loss_gpu, grad_gpu, info = _gradient(name, estimator, "cuda", horizon)
    loss_cpu, grad_cpu, _ = _gradient(name, estimator, "cpu", horizon)
    assert loss_gpu.device.type == "cuda" and grad_gpu.device.type == "cuda" and info.costs.is_cuda
    assert float(loss_gpu) == pytest.approx(float(loss_cpu), rel=1e-9)
    assert float((grad_gpu.cpu() - grad_cpu).norm()) <= 1e-7 * float(grad_cpu.norm()) + 1e-12


@cuda
@pytest.mark.parametrize("name", TORCH_ENVS)
def test_cuda_oracles_do_not_synchronise(name):
    system = envs.make(name, device="cuda")
    policy = agents.make_policy(envs.make(name)).to("cuda")
    x = system.sample_initial_state(64, torch.Generator().manual_seed(0))
    torch.cuda.set_sync_debug_mode("error")
    try:
        u = saturated_policy(policy, system)(x)
        system.f(x, u), system.vjp(x, u, torch.ones_like(x)), system.jacobians(x, u)
        system.running_cost(x, u), system.terminal_cost(x)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@cuda
@pytest.mark.parametrize("name", envs.names())
def test_training_on_cuda(tmp_path, name):
    result = agents.train(name, "ctpg", logdir=tmp_path / name, device="cuda", iters=3, batch_size=8,
                          horizon=0.5, eval_every=2, figure_every=1, eval_batch=8, quiet=True)
    assert result.status == "completed" and result.skipped_steps == 0
    assert all(p.is_cuda for p in result.policy.parameters())
    policy = agents.load_policy(result.run_dir)                    # evaluated back on the CPU
    assert all(not p.is_cuda for p in policy.parameters())


@cuda
def test_benchmarks_on_cuda(tmp_path):
    from benchmarks import pareto, throughput
    result = throughput.main(["--smoke", "--devices", "cuda", "--out", str(tmp_path)])
    assert {p["device"] for p in result["points"]} == {"cuda"} and result["points"][0]["peak_cuda_gb"] > 0
    result = pareto.main(["--smoke", "--env", "diffdrive", "--device", "cuda", "--out", str(tmp_path)])
    assert result["records"]


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL needs a GPU per process: two or more")
def test_two_processes_on_two_gpus_equal_one(tmp_path):
    settings = dict(iters=3, batch_size=8, horizon=1.0, eval_every=0, figure_every=0, eval_batch=8, quiet=True,
                    device="cuda", dt=0.05)
    one = agents.train("lqr", "bptt", logdir=tmp_path / "one", **settings)
    two = agents.train("lqr", "bptt", logdir=tmp_path / "two", nproc=2, **settings)
    for p, q in zip(one.policy.parameters(), two.policy.parameters()):
        assert float((p - q).detach().norm()) <= 1e-10 * float(p.detach().norm())
    assert one.oracle_total == two.oracle_total
