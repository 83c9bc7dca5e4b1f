"""Data-parallel training on torch.distributed: each process estimates the gradient on
its shard of the batch.

    ctpg train --nproc 2 ...                                # this process is rank 0, 1 more spawned
    torchrun --nproc-per-node 2 -m agents.cli train ...     # or several machines, torchrun's flags

Every rank draws the whole global batch from the trainer's generator (all ranks hold the
same generator state) and keeps its contiguous shard (`torch.tensor_split`: sizes differ
by at most one), so the batches are those of a single-process run. The estimators' loss
is the batch mean, so each rank weights its shard's gradient by shard_size / batch_size
and one all_reduce (sum) of one flat vector gives the global batch's gradient, after the
estimator's own backward pass (DDP's module hooks never see that pass). Every rank then
takes the same optimiser step on the same gradient, so the parameters stay equal without
being sent again. Oracle counts and stored floats are summed over the ranks, the training
cost is the weighted sum of the shards' means, solver steps and pass times are the largest
over the ranks. Rank 0 alone evaluates, logs, draws and writes checkpoints (so only it
needs the run directory); the decision to stop (budgets, progress_fn, Ctrl-C on any rank)
is rank 0's and agreed by all once per iteration.

A sample's gradient must not depend on the rest of its batch for the result to equal a
single-process run's: true of BPTT and of fixed-step solves (solver_dt), and of adaptive
solves only with per-sample steps (per_sample); with shared adaptive steps a shard takes
the steps its own samples need, which is as accurate but not bitwise the same.

Backend: gloo for CPU tensors; on a machine with CUDA, "cpu:gloo,cuda:nccl" (gradients of
a CUDA run go through NCCL, one GPU per process: device "cuda" becomes cuda:LOCAL_RANK).
Cost per iteration beyond the shard's estimate: drawing the whole batch on every rank,
one all_reduce of the P parameters' gradients and three of a few numbers (counts and
costs, maxima, the stop decision). A rank that dies makes the others raise (gloo at
once, NCCL after `TIMEOUT`).
"""
from __future__ import annotations

import datetime
import functools
import math
import os
import pickle

import torch
import torch.distributed as dist

from agents.config import ConfigError

TIMEOUT = datetime.timedelta(minutes=10)
STATUSES = (None, "completed", "budget", "stopped", "interrupted", "diverged")
# How each per-iteration scalar combines across ranks (the rest are equal on every rank).
SUMMED = ("memory/stored_floats",)
WEIGHTED = ("cost/train", "solver/reconstruction_error")
LARGEST = ("solver/steps_forward", "solver/steps_backward", "solver/rejected", "time/forward",
           "time/backward")


class PeerFailure(RuntimeError):
    """A collective failed: another process of the group died or stopped answering.
    The trainer catches it at rank 0, writes the checkpoint of the last iteration
    boundary and re-raises it with the command that resumes the run."""


def _collective(method):
    """Turn the backend's error in a collective (gloo: "Connection closed by peer")
    into PeerFailure."""
    @functools.wraps(method)
    def wrapped(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except RuntimeError as err:
            if isinstance(err, PeerFailure):
                raise
            raise PeerFailure(f"process {self.rank} of {self.world_size}: another process of the data-parallel "
                              f"run stopped answering ({type(err).__name__}: {str(err).splitlines()[0]})") from err
    return wrapped


class Solo:
    """The group of a single-process run: every collective is the identity."""

    rank, world_size, local_rank = 0, 1, 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, requested: str) -> str:
        return requested

    def shard(self, x0: torch.Tensor) -> torch.Tensor:
        return x0

    def reduce_gradients(self, params, weight: float, ok: bool) -> None:
        pass

    def combine(self, oracle: dict, scalars: dict, weight: float):
        return oracle, scalars

    def agree(self, status, message: str, interrupted: bool):
        return status, message

    def share(self, make):
        """make() evaluated on rank 0, its result (or its ConfigError) on every rank."""
        return make()

    def sync_parameters(self, module) -> None:
        pass

    def close(self) -> None:
        pass


class Group(Solo):
    """A torch.distributed process group of `world_size` ranks (already initialised);
    `close` destroys it if `owned` (this module initialised it for one run)."""

    def __init__(self, rank: int, world_size: int, local_rank: int, owned: bool = False):
        self.rank, self.world_size, self.local_rank, self.owned = rank, world_size, local_rank, owned

    def close(self) -> None:
        if self.owned and dist.is_initialized():
            dist.destroy_process_group()

    def device(self, requested: str) -> str:
        """cuda -> cuda:LOCAL_RANK (one GPU per process); an explicit index is refused."""
        parsed = torch.device(requested)
        if parsed.type != "cuda":
            return requested
        if parsed.index is not None:
            raise ConfigError(f"device={requested!r} with {self.world_size} processes: give device=cuda, "
                              "and each process takes cuda:LOCAL_RANK")
        if self.local_rank >= torch.cuda.device_count():
            raise ConfigError(f"process {self.rank} (local rank {self.local_rank}) has no GPU of its own: "
                              f"this machine has {torch.cuda.device_count()}; start at most that many per machine")
        return f"cuda:{self.local_rank}"

    def shard(self, x0):
        return torch.tensor_split(x0, self.world_size)[self.rank]

    @_collective
    def reduce_gradients(self, params, weight, ok):
        """Sum weight * grad over the ranks into every p.grad; a rank whose estimate
        failed (ok False) sends NaN, so every rank skips the step alike."""
        if not params:
            return
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
        flat = flat * weight if ok else torch.full_like(flat, math.nan)
        dist.all_reduce(flat)
        start = 0
        for p in params:
            p.grad = flat[start:start + p.numel()].view_as(p).clone()
            start += p.numel()

    @_collective
    def combine(self, oracle, scalars, weight):
        """Oracle counts and SUMMED scalars summed, WEIGHTED ones summed after weighting,
        LARGEST ones maximised over the ranks."""
        summed = [k for k in scalars if k in SUMMED + WEIGHTED]
        keys = [k for k in oracle if k != "total_evals"]
        values = [float(oracle[k]) for k in keys] + [scalars[k] * (weight if k in WEIGHTED else 1.0) for k in summed]
        total = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(total)
        largest = [k for k in scalars if k in LARGEST]
        peak = torch.tensor([float(scalars[k]) for k in largest], dtype=torch.float64)
        dist.all_reduce(peak, op=dist.ReduceOp.MAX)
        oracle = {k: int(v) for k, v in zip(keys, total[:len(keys)].tolist())}
        oracle["total_evals"] = oracle["f_evals"] + oracle["vjp_evals"] + oracle["jac_evals"]
        combined = dict(zip(summed, total[len(keys):].tolist())) | dict(zip(largest, peak.tolist()))
        return oracle, {k: type(v)(combined.get(k, v)) for k, v in scalars.items()}   # counts stay ints

    @_collective
    def agree(self, status, message, interrupted):
        """Rank 0's status, or "interrupted" when it has none and any rank was interrupted."""
        vote = torch.tensor([STATUSES.index(status) if self.is_main else 0, int(interrupted)], dtype=torch.float64)
        dist.all_reduce(vote)
        agreed = STATUSES[int(vote[0])]
        if agreed is None and vote[1] > 0:
            agreed = "interrupted"
        if agreed != status:
            message = f"{agreed}: decided with the other processes"
        return agreed, message

    def share(self, make):
        box = [None]
        if self.is_main:
            try:
                box[0] = ("ok", make())
            except ConfigError as err:
                box[0] = ("error", str(err))
        kind, value = self._broadcast_object(box)
        if kind == "error":
            raise ConfigError(value)
        return value

    @_collective
    def _broadcast_object(self, box: list):
        dist.broadcast_object_list(box, src=0, device=torch.device("cpu"))
        return box[0]

    @_collective
    def sync_parameters(self, module):
        """Rank 0's parameters and buffers on every rank (a policy built without a seed)."""
        for tensor in [*module.parameters(), *module.buffers()]:
            with torch.no_grad():
                dist.broadcast(tensor.data, src=0)


# ------------------------------------------------------------------ starting groups
def backend() -> str:
    """gloo, plus NCCL for CUDA tensors where torch has both CUDA and NCCL."""
    if torch.cuda.is_available() and dist.is_nccl_available():
        return "cpu:gloo,cuda:nccl"
    return "gloo"


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def from_environment() -> Group | Solo:
    """The group torchrun (or a user) set up: joins it from RANK, WORLD_SIZE, LOCAL_RANK,
    MASTER_ADDR and MASTER_PORT unless torch.distributed is already initialised; Solo
    when there is one process."""
    if dist.is_available() and dist.is_initialized():
        return _group(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())))
    if not launched_by_torchrun():
        return Solo()
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    _set_cuda_device(local_rank)
    _init_process_group(init_method="env://", rank=rank, world_size=world)
    return Group(rank, world, local_rank, owned=True)


def _init_process_group(**kwargs) -> None:
    """dist.init_process_group, with torch._dynamo imported first.

    Importing torch._dynamo (which torch.optim does on first use) after the group
    exists keeps a reference to it that destroy_process_group does not release, so
    gloo's worker threads outlive the group and, destroyed at interpreter exit while
    still joinable, abort the process ("terminate called without an active
    exception", SIGABRT) in a few runs out of ten. Imported before, the group's threads
    end with destroy_process_group (tests/test_distributed.py checks both).
    """
    import torch._dynamo  # noqa: F401  (the import is the point)
    dist.init_process_group(backend(), timeout=TIMEOUT, **kwargs)


def _group(rank, world, local_rank):
    return Group(rank, world, local_rank) if world > 1 else Solo()


def _set_cuda_device(local_rank: int) -> None:
    if torch.cuda.is_available() and local_rank < torch.cuda.device_count():
        torch.cuda.set_device(local_rank)


def _join(store_port: int, rank: int, world: int) -> Group:
    store = dist.TCPStore("127.0.0.1", store_port, world, is_master=False, timeout=TIMEOUT)
    _set_cuda_device(rank)
    _init_process_group(store=store, rank=rank, world_size=world)
    return Group(rank, world, rank)


def _worker(store_port: int, rank: int, world: int, payload: bytes) -> None:
    """Entry point of a spawned rank: join the group, train quietly, leave."""
    from agents.trainer import train_in_group
    group = _join(store_port, rank, world)
    try:
        train_in_group(group, **pickle.loads(payload))
    finally:
        dist.destroy_process_group()


def launch(nproc: int, kwargs: dict, progress_fn=None):
    """Train with `nproc` processes on this machine: this one is rank 0 (it returns the
    TrainResult and calls progress_fn), nproc - 1 more are spawned. `kwargs` are
    agents.train's arguments; a system or policy among them must pickle. Costs a Python
    start and import of torch per spawned process (about 1-3 s). Raises PeerFailure when
    a spawned process dies during the run (rank 0 has then saved the checkpoint of the
    last iteration boundary), RuntimeError when one fails after it."""
    from agents.trainer import train_in_group
    if dist.is_initialized():
        raise ConfigError("nproc > 1 inside a torch.distributed job (torchrun): the processes are "
                          "torchrun's already; drop nproc (--nproc)")
    try:
        payload = pickle.dumps(kwargs)
    except (pickle.PicklingError, TypeError, AttributeError) as err:
        raise ConfigError(f"nproc > 1 sends the run's arguments to new processes, but they do not pickle "
                          f"({err}); build the system and policy from the config (env=...), or start "
                          "each process yourself under torchrun") from None
    store = dist.TCPStore("127.0.0.1", 0, nproc, is_master=True, timeout=TIMEOUT, wait_for_workers=False)
    context = torch.multiprocessing.get_context("spawn")
    workers = [context.Process(target=_worker, args=(store.port, rank, nproc, payload), daemon=True)
               for rank in range(1, nproc)]
    for worker in workers:
        worker.start()
    finished, failure = False, None
    try:
        _set_cuda_device(0)
        _init_process_group(store=store, rank=0, world_size=nproc)
        result = train_in_group(Group(0, nproc, 0), progress_fn=progress_fn, **kwargs)
        finished = True
        return result
    except PeerFailure as err:
        failure = err                     # re-raised below, once the exit codes are known
    finally:
        _stop(workers, finished)
        if dist.is_initialized():
            dist.destroy_process_group()
    codes = ", ".join(f"rank {rank}: {w.exitcode}" for rank, w in enumerate(workers, 1))
    raise PeerFailure(f"{failure} (exit codes of the spawned processes: {codes})") from failure.__cause__


def _stop(workers, finished: bool) -> None:
    """Wait for the spawned ranks (end them at once if rank 0 failed: its error is the
    one raised); after a finished run, raise if one of them failed."""
    for worker in workers:
        worker.join(timeout=60 if finished else 5)
        if worker.is_alive():
            worker.terminate()
            worker.join()
    failed = [(rank, w.exitcode) for rank, w in enumerate(workers, 1) if w.exitcode != 0]
    if finished and failed:
        raise RuntimeError(f"spawned process(es) failed (rank, exit code): {failed}; see their messages "
                           "above on stderr")
