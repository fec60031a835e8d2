"""Data parallelism over ``torch.distributed``: the one place the library talks to it.

When a process group is initialised (``torchrun`` and
``torch.distributed.init_process_group``, gloo on CPU, NCCL on GPU), every
corpus-level step splits its units (texts, items, prompts) across ranks with
[`shard()`][tl_multilingual.distributed.shard], reduces its totals exactly with [`all_reduce_sum()`][tl_multilingual.distributed.all_reduce_sum] (int64 counts,
float64 sums) and gathers per-unit values back in their original order with
[`gather_rows()`][tl_multilingual.distributed.gather_rows] or [`gather_in_order()`][tl_multilingual.distributed.gather_in_order], so that every rank returns the same
result as one process would: counts bit for bit, sums up to summation order, and
bootstrap intervals identical for the same seed (they resample the gathered
per-unit values).

Without an initialised process group (or with one process, or inside
[`local()`][tl_multilingual.distributed.local]) every helper is the identity: [`shard()`][tl_multilingual.distributed.shard] returns every index and
nothing is communicated.

Failures: a collective that fails (a peer process died, or nothing arrived within
the process group's timeout) raises [`DistributedError`][tl_multilingual.errors.DistributedError] on the ranks that are
still alive, and [`on_main()`][tl_multilingual.distributed.on_main] runs work on rank 0 only (writing files, loading
results) and hands its result, or its error, to every rank.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta
from typing import Any, TypeVar

import torch
from torch import Tensor

from .errors import DistributedError, TLMultilingualError

__all__ = [
    "DistributedError",
    "active",
    "rank",
    "world_size",
    "is_main",
    "shard",
    "all_reduce_sum",
    "gather_rows",
    "gather_in_order",
    "broadcast",
    "on_main",
    "barrier",
    "local",
    "show_progress",
    "init_from_env",
    "shutdown",
]

T = TypeVar("T")
_STATE = threading.local()
DEFAULT_TIMEOUT_S = 1800.0


def _group_ready() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def active() -> bool:
    """Whether work is being split across more than one process right now."""
    return not getattr(_STATE, "local", 0) and _group_ready() and _dist().get_world_size() > 1


def _dist() -> Any:
    import torch.distributed as dist

    return dist


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return _dist().get_rank() if _group_ready() else 0


def world_size() -> int:
    """Processes in the group (1 without a process group or inside [`local()`][tl_multilingual.distributed.local])."""
    return _dist().get_world_size() if active() else 1


def is_main() -> bool:
    """Whether this process is rank 0 (the one that writes files and prints)."""
    return rank() == 0


def show_progress(progress: bool) -> bool:
    """Whether this process shows a progress bar: ``progress``, on rank 0 only."""
    return bool(progress) and is_main()


@contextlib.contextmanager
def local() -> Iterator[None]:
    """Inside this block every helper acts as in one process: for loops that are
    already split at a coarser level (items), whose inner calls must not split again."""
    _STATE.local = getattr(_STATE, "local", 0) + 1
    try:
        yield
    finally:
        _STATE.local -= 1


def shard(n: int, sizes: Sequence[int] | None = None) -> list[int]:
    """The indices of ``n`` units this rank handles, in increasing order.

    Units are ordered by ``sizes`` (largest first, ties by index) and dealt out in
    turn, so every rank gets ``n / world_size`` units (one more for some) of similar
    total size; without ``sizes`` rank ``r`` gets ``r, r + W, r + 2W, ...``. The split
    depends only on ``n``, ``sizes`` and the world size.
    """
    if not active():
        return list(range(n))
    w, r = world_size(), rank()
    order = list(range(n)) if sizes is None else sorted(range(n), key=lambda i: (-sizes[i], i))
    return sorted(order[r::w])


def _collective_device() -> torch.device:
    dist = _dist()
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _wrap(what: str, fn: Callable[[], T]) -> T:
    try:
        return fn()
    except DistributedError:
        raise
    except (RuntimeError, ValueError, OSError) as err:
        raise DistributedError(
            f"{what} failed on rank {rank()}: another process has probably stopped or timed out ({err})"
        ) from err


_REDUCIBLE = {torch.bool: torch.uint8, torch.int16: torch.int32}


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """The elementwise sum of ``tensor`` over ranks, on ``tensor``'s device and dtype.

    Integer sums are exact; floats are summed in ``tensor``'s dtype (use float64
    accumulators). Returns ``tensor`` itself without a process group.
    """
    if not active():
        return tensor
    device = _collective_device()
    work = tensor.detach().to(device=device, dtype=_REDUCIBLE.get(tensor.dtype, tensor.dtype)).contiguous()
    if work.data_ptr() == tensor.data_ptr():
        work = work.clone()
    _wrap("all_reduce", lambda: _dist().all_reduce(work))
    return work.to(device=tensor.device, dtype=tensor.dtype)


def gather_rows(local_rows: Tensor, indices: Sequence[int], n: int) -> Tensor:
    """The full ``[n, ...]`` tensor from every rank's rows ``indices`` (from [`shard()`][tl_multilingual.distributed.shard]).

    Exact for every dtype: each rank places its rows into zeros and the zeros are
    summed away. The result is on ``local_rows``'s device.
    """
    if not active():
        return local_rows
    full = torch.zeros((n, *local_rows.shape[1:]), dtype=local_rows.dtype, device=local_rows.device)
    if len(indices):
        full[torch.as_tensor(list(indices), device=local_rows.device)] = local_rows
    return all_reduce_sum(full)


def gather_in_order(values: Sequence[T], indices: Sequence[int], n: int) -> list[T]:
    """The list of ``n`` values (any picklable objects) from every rank's ``values`` at
    ``indices``, in the original order."""
    if not active():
        return list(values)
    parts: list[Any] = [None] * world_size()
    payload = (list(indices), list(values))
    _wrap("all_gather_object", lambda: _dist().all_gather_object(parts, payload))
    out: list[Any] = [None] * n
    seen = 0
    for idx, vals in parts:
        for i, v in zip(idx, vals):
            out[i] = v
            seen += 1
    if seen != n:
        raise DistributedError(f"gathered {seen} of {n} values: the ranks split the work differently")
    return out


def broadcast(obj: T, src: int = 0) -> T:
    """Rank ``src``'s ``obj`` on every rank (any picklable object)."""
    if not active():
        return obj
    box = [obj]
    _wrap("broadcast_object_list", lambda: _dist().broadcast_object_list(box, src=src))
    return box[0]


def on_main(fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0 only and return its result on every rank.

    When ``fn`` raises on rank 0, every rank raises: rank 0 its own exception, the
    others a [`TLMultilingualError`][tl_multilingual.errors.TLMultilingualError] with its message. Use it for writing files
    (only rank 0 writes) and for loading what rank 0 wrote.
    """
    if not active():
        return fn()
    result: Any = None
    failure: BaseException | None = None
    if is_main():
        try:
            result = fn()
        except BaseException as err:  # every rank must hear of it, then rank 0 re-raises
            failure = err
    shared = broadcast((None, f"{type(failure).__name__}: {failure}") if failure is not None else (result, None))
    if failure is not None:
        raise failure
    if shared[1] is not None:
        raise TLMultilingualError(f"rank 0 failed: {shared[1]}")
    return shared[0]


def barrier() -> None:
    """Wait until every rank arrives (within the process group's timeout)."""
    if active():
        _wrap("barrier", lambda: _dist().barrier())


def init_from_env(device: str = "cpu", *, timeout_s: float | None = None) -> str:
    """Join the process group described by ``torchrun``'s environment (``RANK``,
    ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``) and return this rank's device.

    Backend: NCCL when ``device`` is a CUDA device (each rank takes
    ``cuda:LOCAL_RANK``), else gloo. Does nothing (and returns ``device``) when the
    environment names one process or a group already exists.

    Raises:
        DistributedError: when the group cannot be formed within ``timeout_s``.
    """
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1 or _group_ready():
        return device
    timeout = timedelta(seconds=timeout_s or float(os.environ.get("TLM_DIST_TIMEOUT", DEFAULT_TIMEOUT_S)))
    dist = _dist()
    if device.startswith("cuda"):
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(local_rank)
        backend = "nccl"
    else:
        backend = "gloo"
    _wrap("joining the process group", lambda: dist.init_process_group(backend=backend, timeout=timeout))
    return device


def shutdown() -> None:
    """Leave the process group, if this process is in one."""
    if _group_ready():
        with contextlib.suppress(RuntimeError, ValueError):
            _dist().destroy_process_group()
