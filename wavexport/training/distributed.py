"""Data-parallel training: one process per rank (started by ``torchrun``), DistributedDataParallel over them.

The rules that make N processes train exactly like one process with the whole batch:

- every rank draws the same *global* batch from the same generator, and keeps its own slice of it
  (:func:`shard`); ``--batch-size`` is the global batch, so a run's data, its checkpoint and its resume are the same
  whatever the number of processes (resume works across a change of world size);
- the loss is a mean over the batch: a rank's loss is weighted by its share of the batch (:func:`loss_weight`),
  so the gradient DDP averages is the full-batch gradient even when the batch does not split evenly;
- gradient clipping, the NaN/inf checks and the stop decision (Ctrl-C) see values that are the same on every rank
  (DDP's averaged gradients; an all-reduced loss and stop flag), so the ranks never take different branches;
- rank 0 alone touches the run directory (lock, checkpoints, metrics.jsonl, best.pt) and evaluates; it sends what
  the others need (:func:`on_main`, :func:`broadcast`);
- :func:`shutdown` waits for every rank (``barrier``) before tearing the process group down: without it a rank
  that leaves first can make another abort at exit.

Backends: gloo on CPU, NCCL on CUDA (each rank on ``cuda:LOCAL_RANK``; gloo beside it for CPU tensors).
``WAVEXPORT_DIST_TIMEOUT`` (seconds, default 7200) is how long a rank waits in a collective, e.g. while rank 0
evaluates a large validation split.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from datetime import timedelta

import torch

from ..core.errors import TrainingError, WavexportError

TIMEOUT_ENV = "WAVEXPORT_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 7200


@dataclass(frozen=True)
class World:
    """Where this process stands: its rank among ``size`` processes (1: not distributed)."""
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_world() -> World:
    """The world torchrun describes in the environment (RANK, WORLD_SIZE, LOCAL_RANK); size 1 outside torchrun."""
    try:
        size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise TrainingError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (as torchrun sets them)") from None
    return World(rank, size, local) if size > 1 else World()


def _dist():
    import torch.distributed as dist

    return dist if dist.is_available() else None


def current() -> World:
    """This process's world: the initialized process group's, else a single process."""
    dist = _dist()
    if dist is None or not dist.is_initialized():
        return World()
    rank = dist.get_rank()
    return World(rank, dist.get_world_size(), int(os.environ.get("LOCAL_RANK", str(rank))))


def init_from_env(device: str = "auto") -> World:
    """Join the process group torchrun set up (gloo for a CPU ``device``, NCCL for CUDA); a no-op outside torchrun
    or with one process. Returns the world."""
    from ..config import resolve_device

    want = env_world()
    if not want.active:
        return World()
    dist = _dist()
    if dist is None:
        raise TrainingError("this torch has no torch.distributed: data-parallel training is not available")
    if dist.is_initialized():
        return current()
    dev = resolve_device(device)
    if dev.type == "cuda":
        per_node = int(os.environ.get("LOCAL_WORLD_SIZE", want.local_rank + 1))
        if max(per_node, want.local_rank + 1) > torch.cuda.device_count():  # the same verdict on every rank
            raise TrainingError(f"{per_node} processes on this node but {torch.cuda.device_count()} CUDA device(s): "
                                "NCCL needs one device per process; start at most that many per node")
        torch.cuda.set_device(want.local_rank)
        backend = "cpu:gloo,cuda:nccl"  # NCCL for the CUDA tensors; gloo should a resumed run keep a CPU device
    else:
        backend = "gloo"
    try:
        timeout = timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S)))
    except ValueError:
        raise TrainingError(f"{TIMEOUT_ENV} must be a number of seconds") from None
    dist.init_process_group(backend, timeout=timeout)
    return current()


def shutdown(clean: bool = True) -> None:
    """Leave the process group: after a ``barrier`` when every rank got here the same way (``clean``), so no rank
    tears down while another still talks to it. A no-op when not distributed."""
    dist = _dist()
    if dist is None or not dist.is_initialized():
        return
    try:
        if clean:
            dist.barrier()
    finally:
        dist.destroy_process_group()


def device_for(device: torch.device, world: World) -> torch.device:
    """A rank's device: ``cuda`` becomes ``cuda:LOCAL_RANK`` in a distributed run."""
    if world.active and device.type == "cuda" and device.index is None:
        return torch.device("cuda", world.local_rank)
    return device


def shard(n: int, world: World) -> slice:
    """This rank's part of a global batch of ``n``: contiguous, sizes differing by at most one (the first
    ``n % size`` ranks take one more). A rank may get an empty slice when ``n < size``."""
    base, extra = divmod(n, world.size)
    start = world.rank * base + min(world.rank, extra)
    return slice(start, start + base + (1 if world.rank < extra else 0))


def loss_weight(n_local: int, n_global: int, world: World) -> float:
    """The factor on a rank's mean loss so that DDP's average over ranks is the mean over the global batch."""
    return n_local * world.size / n_global


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Elementwise sum of ``values`` over the ranks (float64)."""
    dist = _dist()
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def broadcast(obj, world: World, src: int = 0):
    """``obj`` as rank ``src`` has it, on every rank (pickled; for small records, not tensors of weights)."""
    if not world.active:
        return obj
    box = [obj]
    _dist().broadcast_object_list(box, src=src)
    return box[0]


def on_main(fn, world: World):
    """Run ``fn`` on rank 0 alone and hand its result to every rank. A :class:`WavexportError` it raises is raised
    on every rank (so all stop with the same one-line error instead of waiting for a rank that has left)."""
    if not world.active:
        return fn()
    result, error = None, None
    if world.is_main:
        try:
            result = fn()
        except WavexportError as e:
            error = e
    result, error = broadcast((result, error), world)
    if error is not None:
        raise error
    return result


def torchrun_command(nproc: int, args: list[str]) -> list[str]:
    """``torchrun --standalone --nproc_per_node=N -m wavexport ARGS``, with this interpreter (so the venv's torch)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "wavexport", *args]
