"""Independent tasks run one after another, or as Ray tasks on a local or remote Ray.

    runner = make_runner(ray=False)                      # or ray=True, or address="ray://host:10001"
    results = runner.map(agents.train, [dict(env="lqr", seed=0), dict(env="lqr", seed=1)])

Results come back in the order of the tasks, whichever finished first, so a sweep or a
benchmark builds the same JSON from either runner. A task is a module-level function
and keyword arguments that pickle; on Ray each task runs in a worker process with
`num_cpus` CPUs reserved (default 1), so a local Ray runs as many tasks at once as the
machine has cores (runs on CUDA reserve a GPU each instead of sharing one). The workers import this package: on a cluster it must be installed
on every node (the same version), and the files a task writes land on the node that
ran it (give a shared folder for run directories there).

Ray is an optional extra (pip install -e ".[ray]"); without it `make_runner(ray=True)`
raises RuntimeError saying so, and everything runs serially as before.
"""
from __future__ import annotations

INSTALL_HINT = "install it with: pip install -e '.[ray]'  (or pip install 'ray[default]>=2.9')"


class SerialRunner:
    """Runs the tasks here, in order: costs nothing beyond the tasks themselves."""

    name = "serial"

    def map(self, fn, tasks: list[dict]) -> list:
        return [fn(**task) for task in tasks]


class RayRunner:
    """Runs the tasks as Ray tasks. Starts a local Ray on first use (address None) or
    connects to a cluster (`address`, as ray.init takes it: "auto", "HOST:PORT" or
    "ray://HOST:10001"), and shuts it down again after `map` if it started it. Costs a few
    seconds to start a local Ray and ~10 ms per task; a task that raises re-raises here
    (ray.exceptions.RayTaskError wrapping the original) after the others finished."""

    name = "ray"

    def __init__(self, address: str | None = None, num_cpus: float = 1, num_gpus: float = 0):
        self.ray = require_ray()
        self.address, self.num_cpus, self.num_gpus = address, num_cpus, num_gpus

    def map(self, fn, tasks: list[dict]) -> list:
        ray = self.ray
        started = not ray.is_initialized()
        if started:
            ray.init(address=self.address, include_dashboard=False, logging_level="WARNING")
        try:
            remote = ray.remote(num_cpus=self.num_cpus, num_gpus=self.num_gpus)(_call)
            refs = [remote.remote(fn, task) for task in tasks]
            ray.wait(refs, num_returns=len(refs))          # let every task finish before raising
            return ray.get(refs)
        finally:
            if started:
                ray.shutdown()


def _call(fn, task: dict):
    return fn(**task)


def require_ray():
    """The ray module; RuntimeError with the install command when it is missing."""
    try:
        import ray
    except ImportError:
        raise RuntimeError(f"--ray needs Ray, which is not installed; {INSTALL_HINT}") from None
    return ray


def make_runner(ray: bool = False, address: str | None = None, device: str = "cpu"):
    """SerialRunner, or RayRunner when `ray` is set or an `address` is given. For runs on
    `device` cuda each Ray task reserves a whole GPU (Ray hides the GPUs from tasks that
    reserve none), so a cluster runs as many at once as it has GPUs."""
    if ray or address:
        return RayRunner(address or None, num_gpus=1 if str(device).startswith("cuda") else 0)
    return SerialRunner()


def add_arguments(parser) -> None:
    """The --ray and --ray-address options of a command that runs independent tasks."""
    parser.add_argument("--ray", action="store_true",
                        help="run the independent runs as Ray tasks on a local Ray started for them "
                             f"(needs the ray extra: {INSTALL_HINT})")
    parser.add_argument("--ray-address", default=None, metavar="ADDRESS",
                        help="run them on an existing Ray cluster at ADDRESS (e.g. auto, HOST:6379 or "
                             "ray://HOST:10001); ctpg must be installed on its nodes")


def runner_from_args(args, device: str = "cpu"):
    """make_runner from parsed --ray / --ray-address (RuntimeError if Ray is missing)."""
    return make_runner(getattr(args, "ray", False), getattr(args, "ray_address", None), device)
