"""The continuous-time actor-critic (`algo="actor-critic"`): windows, carried states, critic.

Not a second training loop and not a new estimator: agents.loop.Trainer calls `estimate`
in place of its full-horizon estimate and `after_window` after the optimiser step.

Each iteration is one window [t, t+H] of N carried "actors". The actor loss is the
window problem (agents.window: discounted running cost, terminal cost e^{-rho H} V'(x(H))
with V' the target critic, held fixed) differentiated by the configured estimator
(CTPG, BPTT = SHAC, Backsolve). The forward pass's path then gives the critic's
TD(lambda) targets (agents.critic) and the next window's starts x(t+H) (detached).

Resets. Every actor carries its episode time; an actor starts afresh from
system.sample_initial_state at the next window when its episode time reaches the
episode horizon T (a timeout: its targets bootstrap from V'(x(t+H)), as the task goes
on beyond T in the discounted problem V solves) or when x(t+H) leaves the system's
valid region, `system.valid` (a termination: no bootstrap, G_K = 0). With explore_starts = p > 0, a restart is drawn
from system.sample_exploration_state (a wider distribution: exploring starts) with
probability p, so the critic also learns the value of states the policy does not reach
yet (the upright pendulum before it can swing up). A window whose
forward pass failed (NaN, solver error) resets all its actors. The resets draw from the
Trainer's generator, so they are part of the checkpointed RNG state.

Costs per iteration, on top of the estimate: K + 1 path evaluations, one target-network
pass on N (K + 1) states and critic_epochs x critic_minibatches critic steps on N K states.
"""
from __future__ import annotations

import math

import torch

from agents import critic as vf
from agents.window import WindowPolicy, WindowProblem


class ActorCritic:
    """The actor-critic's state: critic, target critic, their optimiser, carried states
    [N,d] and episode times [N]; checkpointed through state_dict()."""

    def __init__(self, config, system, policy, generator: torch.Generator, horizon: float):
        if config.window is None:
            raise ValueError("algo='actor-critic' needs a window length, e.g. window=1.0 (--window 1.0)")
        self.config, self.system, self.generator, self.horizon = config, system, generator, float(horizon)
        self.critic = vf.Critic(system, config.env, config.critic_hidden, config.activation)
        self.target = vf.frozen_copy(self.critic)
        self.optimizer = torch.optim.Adam(self.critic.parameters(), lr=config.critic_lr)
        self.problem = WindowProblem(system, self.target, config.window, config.discount)
        self.policy = WindowPolicy(policy, system.state_dim)
        self.params = [p for p in policy.parameters() if p.requires_grad]
        self.states = self._fresh(config.batch_size)
        self.episode_time = self.states.new_zeros(config.batch_size)
        self.episodes = 0

    # ------------------------------------------------------------------ actor
    def estimate(self, estimator):
        """(loss, info) of the window from the carried states, with its path kept."""
        x0 = self.problem.start(self.states)
        return estimator(self.problem, self.policy, x0, self.config.window, params=self.params, keep_path=True)

    # ----------------------------------------------------------------- critic
    def target_times(self, info) -> list[float]:
        """Where the targets are read: critic_points + 1 equal times over the window, or
        the path's own knots where it is exact only there (Backsolve's checkpoints)."""
        if info.estimator == "backsolve":
            return list(info.path.times)
        H, K = self.config.window, self.config.critic_points
        return [H * k / K for k in range(K + 1)]

    def after_window(self, info) -> dict:
        """Fit the critic on the window's targets, update the target network, carry the
        states on (resetting finished episodes); returns the critic/ and window/ scalars."""
        if info is None or info.path is None:
            return self._restart_all()
        d, cfg = self.system.state_dim, self.config
        end = info.path.evaluate(cfg.window)[:, :d]
        if not bool(torch.isfinite(end).all()):
            return self._restart_all()
        self.episode_time = self.episode_time + cfg.window
        terminated = ~self.system.valid(end)
        states, targets = vf.window_targets(info.path, self.target_times(info), self.target, cfg.discount,
                                            cfg.td_lambda, ~terminated, d)
        states, targets = states.reshape(-1, d), targets.reshape(-1)
        with torch.no_grad():
            before = self.critic(states)
        loss = vf.fit(self.critic, self.optimizer, states, targets, cfg.critic_epochs, cfg.critic_minibatches,
                      self.generator)
        vf.polyak(self.target, self.critic, cfg.target_alpha)
        timeout = self.episode_time >= self.horizon - 1e-9
        self._carry(end, terminated | timeout)
        return {"critic/loss": loss, "critic/value_mean": float(before.mean()),
                "critic/target_mean": float(targets.mean()),
                "critic/explained_variance": explained_variance(before, targets),
                "window/terminated": int(terminated.sum()), "window/timeouts": int((timeout & ~terminated).sum()),
                "window/episodes": self.episodes, "window/episode_time_mean": float(self.episode_time.mean())}

    def _fresh(self, n: int) -> torch.Tensor:
        """n restart states: each from system.sample_exploration_state with probability
        `explore_starts`, else from sample_initial_state (both drawn, so the generator
        advances the same way whatever the coin says)."""
        initial = self.system.sample_initial_state(n, self.generator)
        if not self.config.explore_starts:
            return initial
        wide = self.system.sample_exploration_state(n, self.generator)
        coin = torch.rand(n, generator=self.generator, dtype=initial.dtype, device=initial.device)
        return torch.where((coin < self.config.explore_starts)[:, None], wide, initial)

    def _carry(self, end: torch.Tensor, reset: torch.Tensor) -> None:
        self.states = end.detach().clone()
        if bool(reset.any()):
            self.states[reset] = self._fresh(int(reset.sum()))
        self.episode_time = torch.where(reset, torch.zeros_like(self.episode_time), self.episode_time)
        self.episodes += int(reset.sum())

    def _restart_all(self) -> dict:
        n = self.states.shape[0]
        self._carry(self.states, torch.ones(n, dtype=torch.bool, device=self.states.device))
        return {"window/restarts": n}

    # -------------------------------------------------------------- checkpoint
    def state_dict(self) -> dict:
        return {"critic": self.critic.state_dict(), "target": self.target.state_dict(),
                "optimizer": self.optimizer.state_dict(), "states": self.states.cpu(),
                "episode_time": self.episode_time.cpu(), "episodes": self.episodes}

    def load_state_dict(self, state: dict) -> None:
        self.critic.load_state_dict(state["critic"])
        self.target.load_state_dict(state["target"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.states = state["states"].to(self.states)
        self.episode_time = state["episode_time"].to(self.episode_time)
        self.episodes = int(state["episodes"])


def explained_variance(prediction: torch.Tensor, target: torch.Tensor) -> float:
    """1 - Var(target - prediction) / Var(target): 1 a perfect critic, 0 no better than
    the mean, negative worse (nan when the targets do not vary)."""
    var = float(target.var())
    return 1.0 - float((target - prediction).var()) / var if var > 0 else math.nan


__all__ = ["ActorCritic", "explained_variance"]
