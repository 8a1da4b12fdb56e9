"""Process-group helpers for training under ``torchrun`` (PyTorch's DistributedDataParallel).

kdlib trains on PyTorch's own multi-process engine, ``torch.distributed``: one process per GPU
(or per CPU share), started by ``torchrun``, which sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` for each process. ``Distiller`` and
``train_supervised`` use these helpers to run unchanged there (see ``kdlib.distill``):

    torchrun --nproc_per_node 4 -m kdlib.examples.ddp

- :func:`init_from_env`: initialise the default process group from torchrun's environment
  (NCCL on CUDA, gloo on the CPU) and pick this process's GPU; :func:`launched_by_torchrun`.
- :func:`rank`, :func:`world_size`, :func:`local_rank`, :func:`is_main`: who this process is
  (0, 1 and True in a plain single process).
- :func:`local_device`: ``cuda`` becomes ``cuda:LOCAL_RANK``, one GPU per process.
- :func:`shard_indices`: this rank's share of an epoch's sample order, as PyTorch's
  ``DistributedSampler`` deals it (``order[rank::world_size]``, padded to equal shares);
  :func:`shard_loader` applies it to a ``kdlib.data.TensorLoader`` or a ``DataLoader``.
- :func:`all_reduce_mean`, :func:`all_reduce_sum`, :func:`all_reduce_grads`,
  :func:`broadcast_object`, :func:`broadcast_module`: the few collectives the training loop
  needs (loss and metric averages, adapter gradients, a checkpoint read by rank 0).

Every helper is a no-op (or the identity) when no process group is initialised, so code that
calls them runs as well in one process.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping

import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "is_initialized",
    "launched_by_torchrun",
    "init_from_env",
    "join_process_group",
    "wrap_for_training",
    "destroy",
    "rank",
    "world_size",
    "local_rank",
    "is_main",
    "local_device",
    "collective_device",
    "shard_indices",
    "shard_loader",
    "all_reduce_sum",
    "all_reduce_mean",
    "all_reduce_grads",
    "broadcast_object",
    "broadcast_module",
    "barrier",
]

_TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def is_initialized() -> bool:
    """True when ``torch.distributed`` has a default process group in this process."""
    return dist.is_available() and dist.is_initialized()


def launched_by_torchrun() -> bool:
    """True when torchrun's variables (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``,
    ``MASTER_PORT``) are all set, i.e. this process is one of a torchrun job."""
    return all(v in os.environ for v in _TORCHRUN_VARS)


def _env_int(name: str) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def init_from_env(backend: str | None = None) -> bool:
    """Initialise the default process group from torchrun's environment; True when one is up.

    Nothing happens when a group is already initialised (True) or when this process was not
    started by torchrun (False). ``backend``: default ``"nccl"`` when CUDA is available, else
    ``"gloo"``. With NCCL, this process's GPU becomes ``cuda:LOCAL_RANK`` (one GPU per
    process: start at most as many processes per machine as it has GPUs).
    """
    if is_initialized():
        return True
    if not launched_by_torchrun():
        return False
    if not dist.is_available():
        raise ValueError("torchrun started this process but torch.distributed is unavailable")
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend not in ("nccl", "gloo", "mpi", "ucc", "xccl"):
        raise ValueError(f"backend must be 'nccl' or 'gloo', got {backend!r}")
    _env_int("RANK"), _env_int("WORLD_SIZE")  # a clear error for malformed values
    if backend == "nccl":
        lr, count = local_rank(), torch.cuda.device_count()
        if lr >= count:
            raise ValueError(
                f"LOCAL_RANK={lr} but this machine has {count} GPU(s): start at most {count} "
                "processes per machine (torchrun --nproc_per_node)"
            )
        torch.cuda.set_device(lr)
    dist.init_process_group(backend=backend)
    return True


def join_process_group(distributed: bool | str = "auto") -> tuple[int, int]:
    """``(world_size, rank)`` a training loop runs with: ``"auto"`` joins the process group
    when there is one (initialising it from torchrun's environment when this process was
    started by torchrun with more than one process), ``True`` the same but raises
    ``ValueError`` when there is no group to join, ``False`` runs alone: ``(1, 0)``."""
    if distributed not in (True, False, "auto"):
        raise ValueError(f"distributed must be True, False or 'auto', got {distributed!r}")
    if distributed and not is_initialized():
        if launched_by_torchrun() and int(os.environ["WORLD_SIZE"]) > 1:
            init_from_env()
        elif distributed is True:
            raise ValueError(
                "distributed=True but there is no torch.distributed process group: start "
                "the script with torchrun, or call torch.distributed.init_process_group first"
            )
    if distributed and is_initialized():
        return world_size(), rank()
    return 1, 0


def wrap_for_training(student: nn.Module, terms, device: torch.device, ranks: int):
    """``(forward module, term parameters)`` of a training loop: in a process group of several
    ranks, ``student`` wrapped in ``DistributedDataParallel`` (which copies rank 0's weights to
    every rank), the ``nn.Module`` terms (adapters) given rank 0's parameters, and those
    parameters, whose gradients the loop averages (:func:`all_reduce_grads`); for ``ranks``
    1, ``(student, [])``."""
    if ranks == 1:
        return student, []
    ids = [device.index] if device.type == "cuda" else None
    wrapped = nn.parallel.DistributedDataParallel(student, device_ids=ids)
    modules = [t for t in terms if isinstance(t, nn.Module)]
    for term in modules:
        broadcast_module(term)
    return wrapped, [p for t in modules for p in t.parameters() if p.requires_grad]


def destroy() -> None:
    """Shut the default process group down, if there is one (at the end of a script)."""
    if is_initialized():
        dist.destroy_process_group()


def rank() -> int:
    """This process's rank in the default group (0 without one)."""
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    """The number of processes in the default group (1 without one)."""
    return dist.get_world_size() if is_initialized() else 1


def local_rank() -> int:
    """This process's rank on its machine: ``LOCAL_RANK`` as torchrun sets it (0 unset)."""
    return _env_int("LOCAL_RANK") if "LOCAL_RANK" in os.environ else 0


def is_main() -> bool:
    """True on rank 0 (and in a single process): the process that prints and saves."""
    return rank() == 0


def local_device(device: torch.device) -> torch.device:
    """``cuda`` without an index becomes ``cuda:LOCAL_RANK``; other devices are unchanged."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", local_rank())
    return device


def collective_device() -> torch.device:
    """Where the tensors of a collective must live: this process's GPU for NCCL, else CPU."""
    if is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


# --- sharding ---------------------------------------------------------------------------------


def shard_indices(order: torch.Tensor, index: int, count: int, pad: bool = True) -> torch.Tensor:
    """Shard ``index`` of ``count`` of an epoch's sample order ``order`` ``(N,)``.

    ``order[index::count]``, as ``torch.utils.data.DistributedSampler`` deals samples: with
    ``pad`` the order is first extended by its own beginning to ``ceil(N / count) * count``
    samples, so that every shard has the same size (the same number of batches: a rank with
    one batch fewer would wait for ever for the others' gradients) and a few samples are seen
    twice in an epoch; without ``pad`` the shards are disjoint and differ in size by at most
    one (for evaluation). With a per-rank batch of ``B``, batch ``b`` of the ``count`` shards
    together holds exactly ``order[b * B * count : (b + 1) * B * count]`` (padded): the batch
    one process of batch size ``B * count`` would see.
    """
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    if not 0 <= index < count:
        raise ValueError(f"index must be in [0, {count}), got {index}")
    n = len(order)
    if pad and n % count and n > 0:
        total = math.ceil(n / count) * count
        order = order.repeat(math.ceil(total / n))[:total]
    return order[index::count]


class _FixedSampler:
    """A sampler over a fixed list of dataset indices (one rank's evaluation share)."""

    def __init__(self, indices: list[int]):
        self.indices = indices

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def shard_loader(loader, index: int | None = None, count: int | None = None, train: bool = True):
    """This rank's share of ``loader``: a ``kdlib.data.TensorLoader`` or a ``DataLoader``.

    - ``TensorLoader``: ``loader.shard(index, count, pad=train)`` (see :func:`shard_indices`;
      every rank shuffles with the same seed, so the shards of an epoch never overlap).
    - ``DataLoader`` whose sampler is already a ``DistributedSampler``: returned as is.
    - ``DataLoader`` with a random or sequential sampler: rebuilt (same dataset, batch size,
      workers, collate function) on a ``DistributedSampler`` seeded with the loader's
      generator seed (0 without one) for training, or on ``range(index, N, count)`` for
      evaluation (disjoint shares, no sample counted twice).

    ``index``, ``count`` default to this process's rank and the world size. Anything else
    raises ``ValueError``: its batches could not be dealt out consistently.
    """
    index = rank() if index is None else index
    count = world_size() if count is None else count
    if count == 1:
        return loader
    if hasattr(loader, "shard") and hasattr(loader, "dataset_size"):  # TensorLoader
        return loader.shard(index, count, pad=train)
    from torch.utils.data import (
        DataLoader,
        DistributedSampler,
        IterableDataset,
        RandomSampler,
        SequentialSampler,
    )

    if not isinstance(loader, DataLoader):
        raise ValueError(
            f"under torch.distributed the data must be a kdlib TensorLoader or a torch "
            f"DataLoader (to deal its samples out between ranks), got {type(loader).__name__}"
        )
    if isinstance(loader.sampler, DistributedSampler):
        return loader
    if (
        isinstance(loader.dataset, IterableDataset)
        or loader.batch_size is None
        or not isinstance(loader.sampler, (RandomSampler, SequentialSampler))
    ):
        raise ValueError(
            "under torch.distributed a DataLoader needs a DistributedSampler (or a plain "
            "shuffle=True/False one that kdlib can replace): build it with "
            "sampler=torch.utils.data.DistributedSampler(dataset, seed=...)"
        )
    n = len(loader.dataset)
    if train:
        generator = getattr(loader.sampler, "generator", None) or loader.generator
        sampler = DistributedSampler(
            loader.dataset,
            num_replicas=count,
            rank=index,
            shuffle=isinstance(loader.sampler, RandomSampler),
            seed=generator.initial_seed() if generator is not None else 0,
        )
    else:
        sampler = _FixedSampler(list(range(index, n, count)))
    options = dict(
        batch_size=loader.batch_size,
        sampler=sampler,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        drop_last=loader.drop_last,
        timeout=loader.timeout,
        worker_init_fn=loader.worker_init_fn,
        persistent_workers=loader.persistent_workers,
    )
    if loader.num_workers > 0:
        options["prefetch_factor"] = loader.prefetch_factor
        options["multiprocessing_context"] = loader.multiprocessing_context
    return DataLoader(loader.dataset, **options)


# --- collectives ------------------------------------------------------------------------------


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The sum of ``tensor`` over all ranks (a new tensor on ``tensor``'s device; the tensor
    itself without a process group)."""
    if world_size() == 1:
        return tensor
    out = tensor.detach().to(collective_device(), copy=True)
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out.to(tensor.device)


def all_reduce_mean(values: Mapping[str, float], weight: float = 1.0) -> dict[str, float]:
    """The ``weight``-weighted mean of each value over all ranks, in float64, one collective.

    ``sum_r w_r * v_r / sum_r w_r`` per key (every rank must pass the same keys); with
    ``weight`` = the rank's number of samples, the mean over all the samples. Returns
    ``values`` (as a dict) without a process group.
    """
    values = dict(values)
    if world_size() == 1 or not values:
        return values
    if weight < 0 or not math.isfinite(weight):
        raise ValueError(f"weight must be a finite number >= 0, got {weight}")
    keys = list(values)
    flat = torch.tensor([values[k] * weight for k in keys] + [weight], dtype=torch.float64)
    flat = all_reduce_sum(flat)
    total = max(flat[-1].item(), 1e-300)
    return {k: v / total for k, v in zip(keys, flat[:-1].tolist())}


def all_reduce_grads(params: Iterable[torch.Tensor]) -> None:
    """Average the gradients of ``params`` over all ranks in place, in one collective.

    For parameters outside the DistributedDataParallel wrapper (a loss term's adapter). A
    gradient that is ``None`` counts as zero and becomes the average (knowing whether it is
    ``None`` on every rank would take a host-device synchronisation per step).
    """
    params = list(params)
    n = world_size()
    if n == 1 or not params:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = all_reduce_sum(torch.cat([g.reshape(-1) for g in grads])) / n
    offset = 0
    for p in params:
        size = p.numel()
        p.grad = flat[offset : offset + size].view_as(p).to(p.dtype)
        offset += size


def broadcast_object(obj, src: int = 0, device: torch.device | None = None):
    """``obj`` from rank ``src`` on every rank (pickled; tensors inside should be on the CPU).
    ``device``: this rank's GPU for NCCL (default :func:`collective_device`)."""
    if world_size() == 1:
        return obj
    box = [obj if rank() == src else None]
    dist.broadcast_object_list(box, src=src, device=device or collective_device())
    return box[0]


def broadcast_module(module: nn.Module, src: int = 0, buffers_only: bool = False) -> None:
    """Copy rank ``src``'s parameters and buffers (only the buffers with ``buffers_only``:
    BatchNorm statistics) of ``module`` to every rank, in place."""
    if world_size() == 1:
        return
    tensors = list(module.buffers()) if buffers_only else [*module.parameters(), *module.buffers()]
    with torch.no_grad():
        for t in tensors:
            if t.is_floating_point() or t.dtype in (torch.int64, torch.int32, torch.bool):
                buf = t.detach().to(collective_device(), copy=True)
                if buf.dtype == torch.bool:
                    buf = buf.to(torch.uint8)
                dist.broadcast(buf, src=src)
                t.copy_(buf.to(t.device, t.dtype))


def barrier() -> None:
    """Wait for every rank (nothing without a process group)."""
    if world_size() > 1:
        dist.barrier()
