"""Progress of a training run on stderr, and Ctrl-C at an iteration boundary.

On a terminal a tqdm bar; otherwise (CI, nohup, `| tee`, a file) one line every
`every` iterations, so a long run is never silent until its end:

    [ctpg] iteration 40/400  cost 38.21  oracle evals 120,334  elapsed 4.7 s
"""
from __future__ import annotations

import signal
import sys
import threading


class Progress:
    """Reports iterations on `stream` (default stderr); nothing when quiet.

    `every`: iterations between lines when the stream is not a terminal (None: a
    twentieth of the run, at least 1). Costs one write per line; the bar redraws at
    most ~10 times a second.
    """

    def __init__(self, total: int, initial: int, quiet: bool, every: int | None = None, stream=None):
        self.stream = sys.stderr if stream is None else stream
        self.total, self.quiet = total, quiet
        self.every = every or max(1, total // 20)
        self.bar = None
        if not quiet and _is_terminal(self.stream):
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=initial, unit="it", dynamic_ncols=True, file=self.stream)

    def update(self, step: int, cost: float, oracle_evals: int, elapsed: float) -> None:
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(cost=f"{cost:.4g}", oracle=oracle_evals)
        elif step % self.every == 0 or step == self.total:
            print(f"[ctpg] iteration {step}/{self.total}  cost {cost:.4g}  oracle evals {oracle_evals:,}  "
                  f"elapsed {elapsed:.1f} s", file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _is_terminal(stream) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


class StopOnInterrupt:
    """Context manager: the first Ctrl-C (SIGINT) or SIGTERM (what `kill`, `timeout` and
    cluster schedulers send) sets `requested` (and `signum`) instead of ending the
    process, so the trainer can stop at the next iteration boundary and save a
    checkpoint; a second one raises KeyboardInterrupt at once. The previous handlers
    are restored on exit. Outside the main thread (where Python allows no signal
    handlers) it does nothing and both signals behave as usual.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.requested = False
        self.signum = None
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested, self.signum = True, signum

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}
        return False
