"""The training loop of one process: sample initial states, estimate the gradient,
step the optimiser, evaluate, log and save.

One plain loop with one callback, `progress_fn(step, metrics)`, called after every
iteration with that iteration's tagged scalars (and the evaluation's, when one ran);
returning False stops the run. Each iteration costs one estimator forward and backward pass on
`batch_size` initial states (this process's shard of them in a data-parallel run, see
agents.distributed); every `eval_every` iterations an accurate solve on the held-out
states adds roughly one tight-tolerance forward solve. A non-finite loss or gradient
never reaches the parameters: the step is skipped and counted, and after
`max_bad_steps` in a row the run stops with status "diverged". Ctrl-C or SIGTERM stops
the run at the next iteration boundary with status "interrupted", after writing a
checkpoint (a second signal aborts at once). When another process of a data-parallel
run dies, rank 0 writes the checkpoint of the last iteration boundary and the run ends
with agents.distributed.PeerFailure, saying how to resume. Runs are reproducible under a seed, and a run resumed
from its checkpoint ends with parameters bitwise equal to an uninterrupted run's.
With algo="actor-critic" an iteration is one window from the carried states instead
(agents.actor_critic: its `estimate` replaces the full-horizon estimate, its
`after_window` fits the critic and carries the states on, and its state is checkpointed).
"""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import torch

from ctpg.errors import NonFiniteError, SolverError

from agents import checkpoint as ckpt
from agents import distributed
from agents.actor_critic import ActorCritic
from agents.builders import learning_rate, make_estimator, make_optimizer
from agents.config import TrainConfig
from agents.evaluation import heldout_states, metrics, rollout
from agents.logging import NullLogger, RunLogger
from agents.progress import Progress, StopOnInterrupt
from agents.runs import BOOKKEEPING, TrainResult, interrupted_by, interrupted_line, report


class Trainer:
    """Holds the objects of one run; `run()` drives the loop to a stop reason."""

    def __init__(self, config: TrainConfig, system, policy, run_dir: Path, payload, progress_fn,
                 env_kwargs: dict | None = None, group=None):
        self.config, self.system, self.policy, self.run_dir = config, system, policy, run_dir
        self.progress_fn, self.env_kwargs = progress_fn, dict(env_kwargs or {})
        self.group = group if group is not None else distributed.Solo()
        main = self.group.is_main
        # estimates need a deterministic right-hand side: BatchNorm and Dropout in eval mode
        policy.eval()
        self.params = [p for p in policy.parameters() if p.requires_grad]
        self.estimator = make_estimator(config)
        self.optimizer = make_optimizer(config, self.params)
        self.generator = torch.Generator(device=system.device).manual_seed(config.seed)
        self.horizon = config.horizon or system.horizon
        self.x0_eval = heldout_states(system, config.eval_batch, config.eval_seed) if main else None
        # the actor-critic's windows replace the full-horizon estimate (agents.actor_critic)
        self.actor_critic = (ActorCritic(config, system, policy, self.generator, self.horizon)
                             if config.algo == "actor-critic" else None)
        self.counters, self.history = ckpt.Counters(), []
        if payload is not None:
            self.counters, self.history = ckpt.restore(
                payload, policy=policy, optimizer=self.optimizer, generator=self.generator)
            if self.actor_critic is not None:
                self.actor_critic.load_state_dict(payload["actor_critic"])
        resume_step = None if payload is None else self.counters.step
        self.logger = RunLogger(run_dir, resume_step=resume_step) if main else NullLogger()
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
        progress = Progress(cfg.iters, c.step, cfg.quiet or not self.group.is_main, cfg.log_every)
        status, message, stop_signal, boundary = None, "", None, None
        try:
            with StopOnInterrupt() as interrupt:
                if c.step == 0 and c.last_eval_step < 0:
                    self.evaluate()
                while True:
                    if self.group.world_size > 1:       # what a checkpoint written now would hold
                        boundary = self.random_states()
                    if status is None:
                        status, message = self.budget_spent()
                    if status is None and interrupt.requested:
                        stop_signal = interrupt.signum
                        status, message = "interrupted", f"{interrupted_by(stop_signal)} at iteration {c.step}"
                    status, message = self.group.agree(status, message, interrupt.requested)
                    if status is not None:
                        break
                    scalars = self.iteration()
                    progress.update(c.step, scalars["cost/train"], c.oracle["total_evals"], self.wall_time())
                    status, message = self.after_iteration(scalars)
        except distributed.PeerFailure as err:   # another process died: save where this one stands
            raise self.stop_for_peer(err, boundary) from err
        except BaseException:   # a second Ctrl-C or a bug: keep the logs; the last checkpoint stands
            self.logger.close()
            raise
        finally:
            progress.close()
        return self.finish(status, message, stop_signal)

    def random_states(self):
        """(batch generator, torch global) RNG states: a few KB, read once per iteration of
        a data-parallel run (only a peer's failure needs them: Trainer.stop_for_peer)."""
        return self.generator.get_state(), torch.get_rng_state()

    def stop_for_peer(self, err, boundary) -> distributed.PeerFailure:
        """After another process of a data-parallel run died: rank 0 saves a checkpoint of
        the last iteration boundary (a collective fails before the optimiser step, so only
        the RNGs moved since: they are put back) and the error says how to resume."""
        c = self.counters
        resume = ""
        if self.group.is_main and boundary is not None:
            self.generator.set_state(boundary[0])
            torch.set_rng_state(boundary[1])
            self.save()
            resume = (f"; the run stopped at iteration {c.step} with its checkpoint in {self.run_dir}; "
                      f"resume with: ctpg train --logdir {self.run_dir} --resume --nproc {self.group.world_size}")
        self.logger.close()
        return distributed.PeerFailure(f"{err}{resume}")

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
        """Evaluate and save when due; (status, message) when the run must stop."""
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
        if self.progress_fn is not None and self.group.is_main and self.progress_fn(c.step, dict(scalars)) is False:
            return "stopped", f"progress_fn stopped the run at iteration {c.step}"
        return None, ""

    def iteration(self) -> dict:
        """One optimiser step (or a counted skip); returns this iteration's scalars.

        The batch is drawn whole and this process keeps its shard (all of it in a
        single process); counts and costs are combined over the processes. The
        actor-critic's batch is its carried states (one process only)."""
        x0 = (self.system.sample_initial_state(self.config.batch_size, self.generator)
              if self.actor_critic is None else self.actor_critic.states)
        x0 = self.group.shard(x0)
        weight = x0.shape[0] / self.config.batch_size
        lr = learning_rate(self.config, self.counters.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        snapshot, start = self.system.counter.snapshot(), time.perf_counter()
        info, grad_norm = self.estimate(x0, weight)
        oracle = self.system.counter.since(snapshot)    # includes passes that failed midway
        local = _info_scalars(info, time.perf_counter() - start)
        oracle, local = self.group.combine(oracle, local, weight)
        if math.isfinite(grad_norm):
            self.clip()
            self.optimizer.step()
            self.counters.bad_in_row = 0
        else:
            self.optimizer.zero_grad(set_to_none=True)
            self.counters.skipped += 1
            self.counters.bad_in_row += 1
            if not self.config.quiet and self.group.is_main:
                print(f"[ctpg] iteration {self.counters.step + 1} skipped: {self.last_error}",
                      file=sys.stderr)
        self.counters.step += 1
        for key in ckpt.ORACLE_KEYS:
            self.counters.oracle[key] += oracle[key]
        scalars = self.scalars(local, grad_norm, lr, oracle)
        if self.actor_critic is not None:
            scalars.update(self.actor_critic.after_window(info))
        self.logger.scalars(self.counters.step, scalars)
        self.iterations.append(dict(scalars, step=self.counters.step))
        return scalars

    def estimate(self, x0, weight: float = 1.0):
        """(info, gradient norm) after the estimator's forward and backward pass and, in
        a data-parallel run, the sum of the processes' gradients weighted by their share
        `weight` of the batch.

        The norm is nan when the loss, the gradient or a solve was not finite (in any
        process), and `last_error` says which. A solver error (NaN/Inf, step-size
        collapse) in either pass counts as a bad step rather than ending the run; info
        is then None.
        """
        info, ok = None, False
        try:
            loss, info = (self.estimator(self.system, self.policy, x0, self.horizon) if self.actor_critic is None
                          else self.actor_critic.estimate(self.estimator))
            if bool(torch.isfinite(loss.detach())):
                loss.backward()
                ok = True
            else:
                self.last_error = f"non-finite loss {float(loss)}"
        except (NonFiniteError, SolverError) as err:
            self.last_error = f"{type(err).__name__}: {err}"
            info = None
        self.group.reduce_gradients(self.params, weight, ok)
        grad_norm = _grad_norm(self.params) if ok or self.group.world_size > 1 else math.nan
        if ok and not math.isfinite(grad_norm):
            self.last_error = "non-finite gradient" + (" (after summing the processes' gradients)"
                                                       if self.group.world_size > 1 else "")
        return info, grad_norm

    def clip(self) -> None:
        if self.config.clip is None:
            return
        if self.config.clip_mode == "norm":
            torch.nn.utils.clip_grad_norm_(self.params, self.config.clip)
        else:
            torch.nn.utils.clip_grad_value_(self.params, self.config.clip)

    def scalars(self, local: dict, grad_norm: float, lr: float, oracle: dict) -> dict:
        """This iteration's tagged scalars: the estimate's (`local`, combined over the
        processes), the optimiser's and the counters'."""
        out = dict(local, **{"grad/norm": grad_norm, "opt/lr": lr, "time/wall": self.wall_time(),
                             "train/skipped_steps": self.counters.skipped})
        for key in ckpt.ORACLE_KEYS:
            tag = "total" if key == "total_evals" else key
            out[f"oracle/{tag}"] = oracle[key]
            out[f"oracle/{tag}_cum"] = self.counters.oracle[key]
        return out

    # ------------------------------------------------------- eval / save / end
    def evaluate(self) -> dict:
        """Accurate held-out evaluation: logs and returns cost/eval and eval/<metric>,
        appends an entry to the history and every `figure_every` evaluations a figure."""
        cfg, c = self.config, self.counters
        if not self.group.is_main:
            return {}
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
        if not self.group.is_main:
            return
        ckpt.save_checkpoint(self.run_dir, policy=self.policy, optimizer=self.optimizer,
                             generator=self.generator, counters=self.counters,
                             config=self.config.to_dict(), history=self.history,
                             env_kwargs=self.env_kwargs,
                             extra=None if self.actor_critic is None else {
                                 "actor_critic": self.actor_critic.state_dict()})

    def wall_time(self) -> float:
        return self._wall_before + time.perf_counter() - self._session_start

    def finish(self, status: str, message: str, stop_signal: int | None = None) -> TrainResult:
        """Final evaluation, its figure and the HParams summary (not when interrupted:
        Ctrl-C only saves), then the checkpoint and the report."""
        c = self.counters
        if status != "interrupted" and self.group.is_main:
            if c.last_eval_step != c.step:
                self.evaluate()
            if self.config.figure_every:
                self.figure()
            final = {("cost/eval" if k == "cost" else f"eval/{k}"): v for k, v in self.history[-1].items()
                     if k not in BOOKKEEPING}
            self.logger.hparams_with_metrics(self.config.to_dict(), final)
        self.save()
        self.logger.close()
        self.history = self.group.share(lambda: self.history)   # rank 0 evaluated
        result = TrainResult(self.policy, self.config, self.run_dir, status, message, c.step,
                             self.history, self.iterations, c.oracle["total_evals"],
                             self.wall_time(), c.skipped, stop_signal)
        if not self.group.is_main:
            pass
        elif status == "interrupted":
            print(interrupted_line(result, self.group.world_size), file=sys.stderr)
        elif status == "diverged" or not self.config.quiet:
            report(result)
        return result


def _grad_norm(params) -> float:
    """Global L2 norm of the gradients (nan if any entry is not finite)."""
    grads = [p.grad.detach().reshape(-1) for p in params if p.grad is not None]
    if not grads:
        return 0.0
    return float(torch.linalg.vector_norm(torch.cat(grads)))


def _info_scalars(info, seconds: float) -> dict:
    """Cost, solver steps, memory and pass times reported by the estimator. Without info
    (a solve failed) the cost is nan and the whole `seconds` count as forward time."""
    if info is None:
        return {"cost/train": math.nan, "solver/steps_forward": 0, "solver/steps_backward": 0,
                "solver/rejected": 0, "memory/stored_floats": 0, "time/forward": seconds,
                "time/backward": 0.0}
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


__all__ = ["Trainer"]
