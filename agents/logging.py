"""Run logging: TensorBoard scalars with stable tags, a CSV twin, figures, hyperparameters.

Every scalar tag the trainer writes is a key of `TAGS`; writing any other tag is an
error, so this dict is the complete, documented list (the README's tag table is
generated from it by `tag_table()`). The x-axis of every scalar is the iteration;
cumulative oracle evaluations and wall-clock are scalars of their own, so
cost-vs-compute curves can be read back from the event files or `scalars.csv`.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path

TAGS: dict[str, str] = {
    "cost/train": "Mean per-sample cost of the training batch, as the training estimator computed it.",
    "cost/eval": "Mean cost over the held-out initial states, from an accurate solve of the closed loop.",
    "grad/norm": "Global L2 norm of the policy gradient before clipping.",
    "opt/lr": "Learning rate used for this iteration's optimiser step.",
    "oracle/f_evals": "Per-sample evaluations of f in this iteration (forward and backward pass).",
    "oracle/vjp_evals": "Per-sample vector-Jacobian products in this iteration.",
    "oracle/jac_evals": "Per-sample Jacobian evaluations in this iteration.",
    "oracle/sim_calls": "Black-box simulator calls in this iteration, finite differences included.",
    "oracle/total": "f, vjp and Jacobian evaluations together in this iteration (the paper's oracle calls).",
    "oracle/f_evals_cum": "Cumulative f evaluations since the start of the run.",
    "oracle/vjp_evals_cum": "Cumulative vector-Jacobian products since the start of the run.",
    "oracle/jac_evals_cum": "Cumulative Jacobian evaluations since the start of the run.",
    "oracle/sim_calls_cum": "Cumulative simulator calls since the start of the run.",
    "oracle/total_cum": "Cumulative oracle evaluations since the start of the run: the compute axis.",
    "solver/steps_forward": "Accepted solver steps of this iteration's forward pass.",
    "solver/steps_backward": "Accepted solver steps of this iteration's backward pass.",
    "solver/rejected": "Rejected adaptive steps of this iteration, forward and backward together.",
    "solver/reconstruction_error": "Backsolve only: batch mean of each sample's largest drift between a stored state (x0 or a checkpoint) and the state reconstructed back to it.",
    "memory/stored_floats": "Floats the estimator stored for its backward pass this iteration.",
    "time/forward": "Wall-clock seconds of this iteration's forward pass.",
    "time/backward": "Wall-clock seconds of this iteration's backward pass.",
    "time/wall": "Cumulative wall-clock seconds of the run, evaluation included, across resumes.",
    "train/skipped_steps": "Cumulative iterations skipped because the loss or gradient was not finite.",
    "critic/loss": "actor-critic: mean squared error of the critic on this window's TD(lambda) targets, last fitting epoch.",
    "critic/value_mean": "actor-critic: mean critic value V(x) over the window's target states, before this window's fit.",
    "critic/target_mean": "actor-critic: mean TD(lambda) target (discounted cost-to-go) over the window's target states.",
    "critic/explained_variance": "actor-critic: 1 - Var(G - V) / Var(G) of the critic before this window's fit on its targets G (1 perfect, 0 the mean).",
    "window/terminated": "actor-critic: actors whose window ended outside the system's valid region (reset, no bootstrap).",
    "window/timeouts": "actor-critic: actors whose episode time reached the horizon T at this window's end (reset, bootstrapped).",
    "window/restarts": "actor-critic: actors reset because the window's forward pass failed (non-finite, solver error).",
    "window/episodes": "actor-critic: cumulative episodes ended (timeouts, terminations and restarts) since the run started.",
    "window/episode_time_mean": "actor-critic: mean episode time of the actors at this window's end, before resets.",
    "eval/final_distance": "diffdrive: median distance of the final position to the origin.",
    "eval/final_position_error": "quadrotor, quadrotor_realistic: median distance of the final position to the target.",
    "eval/max_tilt": "quadrotor, quadrotor_realistic: largest final tilt from upright over the held-out starts, in degrees.",
    "eval/upright_fraction": "cartpole, pendulum: fraction of held-out starts within 25 degrees of upright at T.",
    "eval/cost_ratio_lqr": ("lqr: mean eval cost over the mean cost of the optimal stationary gain u = -Kx, "
                            "exact, over the run's horizon (--horizon) from the same starts; 1 matches it."),
    "eval/goal_distance_rms": "electric: root-mean-square distance of the particle to the moving goal over [0, T].",
    "eval/speed_error": ("hopper: median over the held-out starts of |mean forward speed over the second half of "
                         "the horizon - target| / target."),
    "eval/speed_fraction": "hopper: fraction of held-out starts within 10 % of the target speed and not fallen.",
    "eval/final_state_norm": "Other environments: median norm of the final state.",
}
FIGURE_TAG = "eval/trajectories"
HPARAMS_TAG = "hparams"
CSV_NAME = "scalars.csv"


def tag_table() -> str:
    """The TAGS dict as a markdown table (for the README)."""
    rows = ["| tag | meaning |", "|---|---|"]
    rows += [f"| `{tag}` | {text} |" for tag, text in TAGS.items()]
    return "\n".join(rows)


def hparams_table(config: dict) -> str:
    """A markdown table of the run's settings, written once as TensorBoard text."""
    rows = ["| setting | value |", "|---|---|"]
    rows += [f"| {key} | `{value}` |" for key, value in config.items()]
    return "\n".join(rows)


class RunLogger:
    """Writes scalars to TensorBoard and to `scalars.csv` (step, tag, value) in run_dir.

    The CSV is flushed at every write so that an interrupted run keeps its numbers.
    `resume_step` drops events and CSV rows beyond the checkpoint being resumed, so
    a resumed run's logs read as if it had never stopped. Costs a file append per
    scalar; TensorBoard itself flushes every 10 s and on `close`.
    """

    def __init__(self, run_dir: str | os.PathLike, resume_step: int | None = None):
        from torch.utils.tensorboard import SummaryWriter
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        purge = None if resume_step is None else resume_step + 1
        self.writer = SummaryWriter(str(self.run_dir), purge_step=purge, flush_secs=10)
        path = self.run_dir / CSV_NAME
        if resume_step is not None and path.exists():
            _truncate_csv(path, resume_step)
        is_new = not path.exists()
        self._file = open(path, "a", newline="")
        self._csv = csv.writer(self._file)
        if is_new:
            self._csv.writerow(["step", "tag", "value"])

    def scalars(self, step: int, values: dict) -> None:
        unknown = [tag for tag in values if tag not in TAGS]
        if unknown:
            raise ValueError(f"tag(s) {unknown} are not in agents.logging.TAGS; add them there "
                             "with a one-sentence description")
        for tag, value in values.items():
            self.writer.add_scalar(tag, float(value), step)
            self._csv.writerow([step, tag, repr(float(value))])
        self._file.flush()

    def hparams(self, config: dict) -> None:
        self.writer.add_text(HPARAMS_TAG, hparams_table(config), 0)

    def hparams_with_metrics(self, config: dict, metrics: dict) -> None:
        """The settings and the final metrics for TensorBoard's HParams dashboard.

        `metrics` maps scalar tags already logged in this run (cost/eval, eval/...) to
        their final values; the dashboard reads each metric's last value from those
        scalars, so runs are compared on their final evaluation. Values that are not
        numbers, strings or booleans (tuples, None) are written as strings.
        """
        from torch.utils.tensorboard.summary import hparams
        values = {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in config.items()}
        for summary in hparams(values, dict(metrics)):
            self.writer.file_writer.add_summary(summary)

    def figure(self, step: int, fig) -> None:
        self.writer.add_figure(FIGURE_TAG, fig, step, close=True)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
        self._file.close()


class NullLogger:
    """RunLogger's interface, writing nothing: the logger of ranks other than 0 in a
    data-parallel run (rank 0 writes the run's logs)."""

    def scalars(self, step: int, values: dict) -> None:
        unknown = [tag for tag in values if tag not in TAGS]
        if unknown:
            raise ValueError(f"tag(s) {unknown} are not in agents.logging.TAGS")

    def hparams(self, config: dict) -> None:
        pass

    def hparams_with_metrics(self, config: dict, metrics: dict) -> None:
        pass

    def figure(self, step: int, fig) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def _truncate_csv(path: Path, last_step: int) -> None:
    """Keep the header and the rows with step <= last_step; rewrite atomically."""
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    kept = rows[:1] + [row for row in rows[1:] if row and int(row[0]) <= last_step]
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as handle:
        csv.writer(handle).writerows(kept)
    os.replace(tmp, path)
