"""The training loop: sample initial states, estimate the gradient, step the optimiser.

    result = agents.train(env="diffdrive", estimator="ctpg", iters=300, logdir="runs/dd", seed=0)

One plain loop with one callback, `progress_fn(step, metrics)`, called after every
iteration with that iteration's tagged scalars (and the evaluation's, when one ran);
returning False stops the run. Each iteration costs one estimator forward and backward pass on
`batch_size` initial states; every `eval_every` iterations an accurate solve on the
held-out states adds roughly one tight-tolerance forward solve. A non-finite loss or
gradient never reaches the parameters: the step is skipped and counted, and after
`max_bad_steps` in a row the run stops with status "diverged". Ctrl-C stops the run at
the next iteration boundary with status "interrupted", after writing a checkpoint (a
second Ctrl-C aborts at once). Runs are reproducible under a seed, and a run resumed
from its checkpoint ends with parameters bitwise equal to an uninterrupted run's.
"""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import torch

from ctpg.errors import NonFiniteError, SolverError

from agents import checkpoint as ckpt
from agents.builders import learning_rate, make_estimator, make_optimizer, make_system
from agents.config import TrainConfig
from agents.evaluation import heldout_states, metrics, rollout
from agents.logging import RunLogger
from agents.policies import env_name, make_policy
from agents.progress import Progress, StopOnInterrupt
from agents.runs import BOOKKEEPING, TrainResult, interrupted_line, prepare_run, report


def train(env: str | None = None, estimator: str | None = None, *, logdir=None,
          resume: bool = False, progress_fn=None, system=None, policy=None,
          env_kwargs: dict | None = None, **overrides) -> TrainResult:
    """Train a policy; keyword overrides are TrainConfig fields (iters=, lr=, seed=, ...).

    `system` / `policy` replace the ones built from the config (any ControlSystem,
    any torch module mapping [N,d] to [N,k]). A `system` given without `env` names the
    environment itself (its `name`, as envs.make sets it); a system of your own runs as
    env "custom": generic defaults, an MLP sized from its dimensions, and metrics that
    assume no environment. `env_kwargs` go to envs.make and are kept in the checkpoint.
    With resume=True an existing checkpoint in `logdir` is continued under its own
    settings (only budgets and logging intervals may change). Raises
    agents.config.ConfigError (a ValueError) for bad settings, before any work is done.
    """
    if env is None and system is not None and not resume:
        env = env_name(system)
    run_dir, config, payload = prepare_run(env, estimator, logdir, resume, overrides)
    if payload is not None:
        env_kwargs = payload.get("env_kwargs", {}) if env_kwargs is None else env_kwargs
        if not config.quiet:
            print(f"[ctpg] resuming {run_dir} from iteration {payload['counters']['step']} "
                  f"(of {config.iters})", file=sys.stderr)
    threads = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    try:
        torch.manual_seed(config.seed)
        system = system if system is not None else make_system(config, **(env_kwargs or {}))
        if policy is None:
            policy = build_policy(config, system)
        return Trainer(config, system, policy, run_dir, payload, progress_fn, env_kwargs).run()
    finally:
        torch.set_num_threads(threads)


def build_policy(config: TrainConfig, system):
    """The policy make_policy builds for this config and system (what a checkpoint's
    `policy` state belongs to, unless the run was given its own policy)."""
    return make_policy(system, env=config.env, hidden=config.hidden, activation=config.activation,
                       features=config.features, last_layer_scale=config.last_layer_scale,
                       squash=config.squash)


class Trainer:
    """Holds the objects of one run; `run()` drives the loop to a stop reason."""

    def __init__(self, config: TrainConfig, system, policy, run_dir: Path, payload, progress_fn,
                 env_kwargs: dict | None = None):
        self.config, self.system, self.policy, self.run_dir = config, system, policy, run_dir
        self.progress_fn, self.env_kwargs = progress_fn, dict(env_kwargs or {})
        # estimates need a deterministic right-hand side: BatchNorm and Dropout in eval mode
        policy.eval()
        self.params = [p for p in policy.parameters() if p.requires_grad]
        self.estimator = make_estimator(config)
        self.optimizer = make_optimizer(config, self.params)
        self.generator = torch.Generator(device=system.device).manual_seed(config.seed)
        self.horizon = config.horizon or system.horizon
        self.x0_eval = heldout_states(system, config.eval_batch, config.eval_seed)
        self.counters, self.history = ckpt.Counters(), []
        if payload is not None:
            self.counters, self.history = ckpt.restore(
                payload, policy=policy, optimizer=self.optimizer, generator=self.generator)
        self.logger = RunLogger(run_dir, resume_step=None if payload is None else self.counters.step)
        if payload is None:
            self.logger.hparams(config.to_dict())
        self.iterations: list[dict] = []
        self.last_error = ""
        self._last_run, self._figure_step = None, None
        self._session_start = time.perf_counter()
        self._wall_before = self.counters.wall_time

    # ------------------------------------------------------------------ loop
    def run(self) -> TrainResult:
        c, cfg = self.counters, self.config
        progress = Progress(cfg.iters, c.step, cfg.quiet, cfg.log_every)
        status, message = None, ""
        try:
            with StopOnInterrupt() as interrupt:
                if c.step == 0 and c.last_eval_step < 0:
                    self.evaluate()
                while status is None:
                    status, message = self.budget_spent()
                    if status is None and interrupt.requested:
                        status, message = "interrupted", f"interrupted at iteration {c.step}"
                    if status is not None:
                        break
                    scalars = self.iteration()
                    progress.update(c.step, scalars["cost/train"], c.oracle["total_evals"], self.wall_time())
                    status, message = self.after_iteration(scalars)
        except BaseException:   # a second Ctrl-C or a bug: keep the logs; the last checkpoint stands
            self.logger.close()
            raise
        finally:
            progress.close()
        return self.finish(status, message)

    def budget_spent(self):
        """(status, message) when an iteration, oracle or wall-clock budget is spent."""
        cfg, c = self.config, self.counters
        if c.step >= cfg.iters:
            return "completed", f"finished {c.step} iterations"
        if cfg.max_oracle_evals is not None and c.oracle["total_evals"] >= cfg.max_oracle_evals:
            return "budget", f"oracle budget spent: {c.oracle['total_evals']} >= {cfg.max_oracle_evals}"
        if cfg.max_wall_time is not None and self.wall_time() >= cfg.max_wall_time:
            return "budget", f"wall-clock budget spent: {self.wall_time():.1f} s >= {cfg.max_wall_time} s"
        return None, ""

    def after_iteration(self, scalars: dict):
        cfg, c = self.config, self.counters
        if cfg.eval_every and c.step % cfg.eval_every == 0:
            scalars.update(self.evaluate())
        if c.step % cfg.checkpoint_every == 0:
            self.save()
        if c.bad_in_row >= cfg.max_bad_steps:
            return "diverged", (
                f"stopped at iteration {c.step}: {c.bad_in_row} non-finite losses or gradients "
                f"in a row ({c.skipped} skipped in all; last: {self.last_error}); the parameters "
                f"are those of the last good step, saved in {ckpt.checkpoint_path(self.run_dir)}. "
                "Lower the learning rate, clip gradients (--clip) or tighten the solver tolerances.")
        if self.progress_fn is not None and self.progress_fn(c.step, dict(scalars)) is False:
            return "stopped", f"progress_fn stopped the run at iteration {c.step}"
        return None, ""

    def iteration(self) -> dict:
        """One optimiser step (or a counted skip); returns this iteration's scalars."""
        x0 = self.system.sample_initial_state(self.config.batch_size, self.generator)
        lr = learning_rate(self.config, self.counters.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        snapshot, start = self.system.counter.snapshot(), time.perf_counter()
        info, grad_norm = self.estimate(x0)
        oracle = self.system.counter.since(snapshot)    # includes passes that failed midway
        seconds = time.perf_counter() - start
        if math.isfinite(grad_norm):
            self.clip()
            self.optimizer.step()
            self.counters.bad_in_row = 0
        else:
            self.optimizer.zero_grad(set_to_none=True)
            self.counters.skipped += 1
            self.counters.bad_in_row += 1
            if not self.config.quiet:
                print(f"[ctpg] iteration {self.counters.step + 1} skipped: {self.last_error}",
                      file=sys.stderr)
        self.counters.step += 1
        for key in ckpt.ORACLE_KEYS:
            self.counters.oracle[key] += oracle[key]
        scalars = self.scalars(info, grad_norm, lr, oracle, seconds)
        self.logger.scalars(self.counters.step, scalars)
        self.iterations.append(dict(scalars, step=self.counters.step))
        return scalars

    def estimate(self, x0):
        """(info, gradient norm) after the estimator's forward and backward pass.

        The norm is nan when the loss, the gradient or a solve was not finite, and
        `last_error` says which. A solver error (NaN/Inf, step-size collapse) in either
        pass counts as a bad step rather than ending the run; info is then None.
        """
        try:
            loss, info = self.estimator(self.system, self.policy, x0, self.horizon)
            if not bool(torch.isfinite(loss.detach())):
                self.last_error = f"non-finite loss {float(loss)}"
                return info, math.nan
            loss.backward()
        except (NonFiniteError, SolverError) as err:
            self.last_error = f"{type(err).__name__}: {err}"
            return None, math.nan
        grad_norm = _grad_norm(self.params)
        if not math.isfinite(grad_norm):
            self.last_error = "non-finite gradient"
        return info, grad_norm

    def clip(self) -> None:
        if self.config.clip is None:
            return
        if self.config.clip_mode == "norm":
            torch.nn.utils.clip_grad_norm_(self.params, self.config.clip)
        else:
            torch.nn.utils.clip_grad_value_(self.params, self.config.clip)

    def scalars(self, info, grad_norm: float, lr: float, oracle: dict, seconds: float) -> dict:
        """This iteration's tagged scalars. Without info (a solve failed) the cost is nan
        and the whole iteration's time is booked as forward time."""
        out = {"cost/train": math.nan, "grad/norm": grad_norm, "opt/lr": lr,
               "solver/steps_forward": 0, "solver/steps_backward": 0, "solver/rejected": 0,
               "memory/stored_floats": 0, "time/forward": seconds, "time/backward": 0.0,
               "time/wall": self.wall_time(), "train/skipped_steps": self.counters.skipped}
        for key in ckpt.ORACLE_KEYS:
            tag = "total" if key == "total_evals" else key
            out[f"oracle/{tag}"] = oracle[key]
            out[f"oracle/{tag}_cum"] = self.counters.oracle[key]
        if info is not None:
            out.update(_info_scalars(info))
        return out

    # ------------------------------------------------------- eval / save / end
    def evaluate(self) -> dict:
        """Accurate held-out evaluation: logs and returns cost/eval and eval/<metric>,
        appends an entry to the history and every `figure_every` evaluations a figure."""
        cfg, c = self.config, self.counters
        try:
            run = rollout(self.system, self.policy, self.x0_eval, self.horizon,
                          rtol=cfg.eval_rtol, atol=cfg.eval_atol)
        except (NonFiniteError, SolverError) as err:   # a policy that blows the closed loop up
            print(f"[ctpg] evaluation at iteration {c.step} failed: {type(err).__name__}: {err}",
                  file=sys.stderr)
            run, values = None, {"cost": math.nan}
        else:
            values = metrics(cfg.env, self.system, run, self.x0_eval)
        tagged = {("cost/eval" if k == "cost" else f"eval/{k}"): v for k, v in values.items()}
        self.logger.scalars(c.step, tagged)
        self._last_run = run
        if cfg.figure_every and c.evaluations % cfg.figure_every == 0:
            self.figure()
        c.evaluations += 1
        c.last_eval_step = c.step
        entry = dict(values, step=c.step, oracle_total_cum=c.oracle["total_evals"],
                     sim_calls_cum=c.oracle["sim_calls"],
                     wall_time=self.wall_time())
        self.history.append(entry)
        self.logger.flush()
        return tagged

    def figure(self) -> None:
        """Draw the last evaluation's trajectories to TensorBoard (once per step)."""
        run, step, cfg = self._last_run, self.counters.step, self.config
        if run is None or self._figure_step == step:
            return
        from agents.plots import trajectory_figure  # matplotlib only when drawing
        title = f"{cfg.env} / {cfg.estimator}, iteration {step}"
        self.logger.figure(step, trajectory_figure(cfg.env, run, title))
        self._figure_step = step

    def save(self) -> None:
        self.counters.wall_time = self.wall_time()
        ckpt.save_checkpoint(self.run_dir, policy=self.policy, optimizer=self.optimizer,
                             generator=self.generator, counters=self.counters,
                             config=self.config.to_dict(), history=self.history,
                             env_kwargs=self.env_kwargs)

    def wall_time(self) -> float:
        return self._wall_before + time.perf_counter() - self._session_start

    def finish(self, status: str, message: str) -> TrainResult:
        """Final evaluation, its figure and the HParams summary (not when interrupted:
        Ctrl-C only saves), then the checkpoint and the report."""
        c = self.counters
        if status != "interrupted":
            if c.last_eval_step != c.step:
                self.evaluate()
            if self.config.figure_every:
                self.figure()
            final = {("cost/eval" if k == "cost" else f"eval/{k}"): v for k, v in self.history[-1].items()
                     if k not in BOOKKEEPING}
            self.logger.hparams_with_metrics(self.config.to_dict(), final)
        self.save()
        self.logger.close()
        result = TrainResult(self.policy, self.config, self.run_dir, status, message, c.step,
                             self.history, self.iterations, c.oracle["total_evals"],
                             self.wall_time(), c.skipped)
        if status == "interrupted":
            print(interrupted_line(result), file=sys.stderr)
        elif status == "diverged" or not self.config.quiet:
            report(result)
        return result


def _grad_norm(params) -> float:
    """Global L2 norm of the gradients (nan if any entry is not finite)."""
    grads = [p.grad.detach().reshape(-1) for p in params if p.grad is not None]
    if not grads:
        return 0.0
    return float(torch.linalg.vector_norm(torch.cat(grads)))


def _info_scalars(info) -> dict:
    """Cost, solver steps, memory and pass times reported by the estimator."""
    back = info.backward
    out = {"cost/train": float(info.costs.mean()),
           "solver/steps_forward": info.forward.steps_accepted,
           "solver/steps_backward": back.steps_accepted if back else 0,
           "solver/rejected": info.forward.steps_rejected + (back.steps_rejected if back else 0),
           "memory/stored_floats": info.stored_floats,
           "time/forward": info.forward.wall_time,
           "time/backward": back.wall_time if back else 0.0}
    if info.reconstruction_error is not None:
        out["solver/reconstruction_error"] = float(info.reconstruction_error.mean())
    return out


__all__ = ["TrainResult", "Trainer", "build_policy", "train"]
