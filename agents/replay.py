"""Using a trained policy: load it from a run directory, evaluate it, film it.

    policy = agents.load_policy("runs/dd")          # an nn.Module, ready to call
    u = policy(x)                                   # x [N, d] float64 -> u [N, k], inside the bounds

`ctpg eval --logdir RUN [--episodes N] [--video out.mp4|out.gif]` (agents/cli.py) is
`evaluate_run`: the trainer's held-out evaluation (accurate closed-loop solve, same
starts and metrics) plus N episodes of the gymnasium environment at its control
interval, optionally written as a video of its `rgb_array` frames.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import torch

from agents import checkpoint as ckpt
from agents.builders import make_system
from agents.config import ConfigError, TrainConfig
from agents.evaluation import heldout_states, metrics, rollout

VIDEO_SUFFIXES = (".mp4", ".gif")


def load_run(run_dir, system=None, device: str = "cpu"):
    """(config, system, policy) of the run in `run_dir`, the policy in eval mode with
    its trained parameters, both on `device` (default cpu, whichever device the run
    trained on). `system` replaces the one rebuilt from the checkpoint (needed for a
    run on a custom system). Raises FileNotFoundError without a checkpoint,
    ConfigError when the policy cannot be rebuilt."""
    return run_from_checkpoint(ckpt.load_checkpoint(run_dir), run_dir, system, device)


def run_from_checkpoint(payload: dict, run_dir, system=None, device: str = "cpu"):
    """`load_run` on an already loaded checkpoint `payload` (run_dir names it in errors)."""
    from agents.trainer import build_policy
    saved = {**TrainConfig().to_dict(), **payload["config"]}
    config = TrainConfig(**{**saved, "hidden": tuple(saved["hidden"]), "critic_hidden": tuple(saved["critic_hidden"])})
    if system is None:
        system = make_system(config, device=device, **payload.get("env_kwargs", {}))
    policy = build_policy(config, system)
    try:
        policy.load_state_dict(payload["policy"])
    except RuntimeError as err:
        raise ConfigError(f"the policy saved in {ckpt.checkpoint_path(run_dir)} is not the one make_policy "
                          "builds for its settings (was the run given its own policy=?); build that "
                          "module yourself and load_state_dict(torch.load(path)['policy'])") from err
    policy.eval().requires_grad_(False)
    return config, system, policy


def load_policy(run_dir, system=None, device: str = "cpu") -> torch.nn.Module:
    """The trained policy of the run in `run_dir`, ready to call on states [N, d] in the
    system's dtype (float64 by default) on `device`; its actions already lie inside the
    system's bounds (the trainer's squash head). See `load_run` for the arguments and errors."""
    return load_run(run_dir, system, device)[2]


def act(policy, observation: np.ndarray, system=None) -> np.ndarray:
    """The policy's action [k] for one gymnasium observation [d] (any float dtype), the
    observation converted to the system's dtype and device, or without `system` to those
    of the policy's parameters (float64 on the CPU for a policy without any)."""
    if system is not None:
        dtype, device = system.dtype, system.device
    else:
        first = next((p for p in getattr(policy, "parameters", lambda: [])() if p.is_floating_point()), None)
        dtype, device = (torch.float64, "cpu") if first is None else (first.dtype, first.device)
    x = torch.as_tensor(np.asarray(observation), dtype=dtype, device=device)[None]
    with torch.no_grad():
        return policy(x)[0].cpu().numpy()


def gym_id(env: str) -> str:
    """The gymnasium id registered for an envs name; ConfigError if there is none."""
    from envs.gym_adapter import GYM_ENVS
    for env_id, (name, _) in GYM_ENVS.items():
        if name == env:
            return env_id
    raise ConfigError(f"environment {env!r} has no gymnasium id; gym episodes exist for "
                      f"{', '.join(sorted(name for name, _ in GYM_ENVS.values()))}")


@dataclasses.dataclass
class EpisodeReport:
    """Undiscounted returns of gym episodes (minus each episode's cost) and, if asked
    for, their rgb_array frames at the environment's frame rate."""

    env_id: str
    returns: list
    dt: float
    frames: list
    fps: int


def gym_episodes(config: TrainConfig, policy, env_kwargs: dict, episodes: int, seed: int = 0,
                 record: bool = False) -> EpisodeReport:
    """Run `episodes` episodes (reset seeds seed, seed+1, ...) of the run's gymnasium
    environment (same overrides and horizon) with the policy acting at every control
    interval. Costs one accurate integration per step, plus ~20 ms per frame rendered."""
    import gymnasium

    import envs  # noqa: F401  registers the ids
    env_id = gym_id(config.env)
    overrides = dict(env_kwargs)
    if config.horizon is not None:
        overrides["horizon"] = config.horizon
    env = gymnasium.make(env_id, render_mode="rgb_array" if record else None, **overrides)
    system = env.unwrapped.system
    returns, frames = [], []
    try:
        for episode in range(episodes):
            obs, _ = env.reset(seed=seed + episode)
            total, done = 0.0, False
            frames += [env.render()] if record else []
            while not done:
                obs, reward, terminated, truncated, _ = env.step(act(policy, obs, system))
                total += reward
                done = terminated or truncated
                frames += [env.render()] if record else []
            returns.append(total)
    finally:
        env.close()
    return EpisodeReport(env_id, returns, env.unwrapped.dt, frames, env.metadata["render_fps"])


def check_video_writer(path) -> Path:
    """The video path, after checking that it can be written: a .mp4 (needs imageio and
    imageio-ffmpeg) or .gif (imageio's pillow plugin). Raises ValueError for another
    suffix, RuntimeError naming the extra to install when a package is missing. Cheap:
    call it before the work whose frames it will write."""
    path = Path(path)
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        raise ValueError(f"the video file must end in .mp4 or .gif, got {path.name!r}")
    try:
        import imageio.v3  # noqa: F401
    except ImportError:
        raise RuntimeError("writing a video needs imageio: pip install -e '.[video]'") from None
    if path.suffix.lower() == ".mp4":
        try:
            import imageio_ffmpeg  # noqa: F401
        except ImportError:
            raise RuntimeError("an .mp4 needs imageio-ffmpeg: pip install -e '.[video]', "
                               "or write a .gif instead") from None
    return path


def write_video(path, frames: list, fps: int) -> Path:
    """Write rgb frames to an .mp4 or .gif file (check_video_writer says what it needs)."""
    path = check_video_writer(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".gif":
        import imageio.v3 as iio
        iio.imwrite(path, np.stack(frames), extension=".gif", duration=1000.0 / fps, loop=0)
        return path
    import imageio.v2 as imageio2
    imageio2.mimsave(path, frames, fps=fps, format="FFMPEG")
    return path


def evaluate_run(run_dir, episodes: int = 5, video=None, seed: int = 0, system=None) -> dict:
    """Held-out metrics of the run's policy (as the trainer computes them) and `episodes`
    gym episodes; writes `video` (.mp4/.gif) of those episodes if given. Returns
    {"step", "env", "metrics", "gym": {"env_id", "returns", "mean_return"}, "video"}."""
    if video is not None and Path(video).suffix.lower() not in VIDEO_SUFFIXES:
        raise ConfigError(f"--video must end in .mp4 or .gif, got {video!r}")
    if video is not None:
        check_video_writer(video)          # a missing package fails before the evaluation runs
    payload = ckpt.load_checkpoint(run_dir)          # read once: it may be large (critic, replay states)
    config, system, policy = run_from_checkpoint(payload, run_dir, system)
    horizon = config.horizon or system.horizon
    x0 = heldout_states(system, config.eval_batch, config.eval_seed)
    run = rollout(system, policy, x0, horizon, rtol=config.eval_rtol, atol=config.eval_atol)
    out = {"run_dir": str(run_dir), "env": config.env, "step": payload["counters"]["step"],
           "metrics": metrics(config.env, system, run, x0), "gym": None, "video": None}
    if episodes > 0 or video is not None:
        report = gym_episodes(config, policy, payload.get("env_kwargs", {}), max(episodes, 1), seed,
                              record=video is not None)
        out["gym"] = {"env_id": report.env_id, "returns": report.returns, "dt": report.dt,
                      "mean_return": sum(report.returns) / len(report.returns)}
        if video is not None:
            out["video"] = str(write_video(video, report.frames, report.fps))
            out["frames"], out["fps"] = len(report.frames), report.fps
    return out


def format_report(out: dict) -> str:
    """The lines `ctpg eval` prints."""
    values = ", ".join(f"{k} {v:.4g}" for k, v in out["metrics"].items())
    lines = [f"[ctpg] {out['run_dir']}: {out['env']}, iteration {out['step']}",
             f"[ctpg] held-out evaluation: {values}"]
    gym = out["gym"]
    if gym:
        returns = gym["returns"]
        spread = math.sqrt(sum((r - gym["mean_return"]) ** 2 for r in returns) / len(returns))
        lines.append(f"[ctpg] {len(returns)} episodes of {gym['env_id']} (control interval {gym['dt']:g} s): "
                     f"return {gym['mean_return']:.4g} +- {spread:.3g} (min {min(returns):.4g}, "
                     f"max {max(returns):.4g})")
    if out["video"]:
        lines.append(f"[ctpg] video: {out['video']} ({out['frames']} frames at {out['fps']} fps)")
    return "\n".join(lines)
