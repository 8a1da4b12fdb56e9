"""What a model costs to run: parameters, bytes, latency, throughput, activation memory.

The quantities of the course's "why distillation exists" table (latency, memory, energy/cost),
measured the same way for a teacher and its student::

    from kdlib.efficiency import benchmark
    benchmark(teacher, (1, 8, 8))   # {"parameters": ..., "latency_ms": ..., ...}

Timing rules that every function here keeps:

- inference only: ``model.eval()`` (the mode is restored afterwards) under
  ``torch.inference_mode()``;
- ``warmup`` untimed calls first (lazy initialisation, allocator, caches), then ``repeats``
  calls each timed with ``time.perf_counter``; the **median** is reported, because a shared
  machine adds outliers that a mean would absorb;
- on CUDA (and MPS) the device is synchronised before the clock is read: kernels run
  asynchronously, and without a synchronisation the clock measures only the launch.

Energy and cloud cost scale with the compute time per sample, so throughput (samples per
second at a large batch) stands for them here.

A timing depends on what else the machine is doing; the operation count (:func:`flops`, from
``torch.utils.flop_counter``) and the byte counts do not. Show them beside every timing, and
time with one thread (``benchmark(threads=1)``, the default), so that two models compared in
one run compete for the same single core.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

from kdlib.models import count_parameters, model_size_bytes
from kdlib.runtime import device_of

__all__ = [
    "ActivationMemory",
    "activation_memory",
    "benchmark",
    "flops",
    "measure_latency",
    "synchronize",
    "throughput",
]


def synchronize(device: torch.device | str) -> None:
    """Wait for the queued kernels of ``device`` to finish (a no-op on the CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def _check_shape(input_shape: Sequence[int], batch_size: int, repeats: int, warmup: int):
    shape = tuple(input_shape)
    if not shape or not all(isinstance(s, int) and s > 0 for s in shape):
        raise ValueError(
            f"input_shape must be the shape of one sample, positive integers such as (1, 8, 8), "
            f"got {input_shape!r}"
        )
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be an integer >= 1, got {repeats!r}")
    if not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be an integer >= 0, got {warmup!r}")
    return shape


def measure_latency(
    model: nn.Module,
    input_shape: Sequence[int],
    batch_size: int = 1,
    repeats: int = 50,
    warmup: int = 5,
    device: torch.device | str | None = None,
) -> float:
    """Median wall time in seconds of one forward pass on a batch of ``batch_size``.

    ``input_shape`` is one sample's shape, e.g. ``(1, 8, 8)``; the batch is
    ``torch.rand(batch_size, *input_shape)`` on ``device`` (default: where the model's
    parameters are). Each of the ``repeats`` timed calls runs under ``torch.inference_mode()``
    and is bracketed by a device synchronisation; ``warmup`` calls are run untimed first.
    """
    shape = _check_shape(input_shape, batch_size, repeats, warmup)
    device = torch.device(device) if device is not None else device_of(model)
    x = torch.rand((batch_size, *shape), generator=torch.Generator().manual_seed(0)).to(device)
    was_training = model.training
    model.eval()
    times = []
    try:
        with torch.inference_mode():
            for _ in range(warmup):
                model(x)
            synchronize(device)
            for _ in range(repeats):
                start = time.perf_counter()
                model(x)
                synchronize(device)
                times.append(time.perf_counter() - start)
    finally:
        model.train(was_training)
    return statistics.median(times)


def throughput(
    model: nn.Module,
    input_shape: Sequence[int],
    batch_size: int = 256,
    repeats: int = 20,
    warmup: int = 3,
    device: torch.device | str | None = None,
) -> float:
    """Samples per second at batch size ``batch_size``: ``batch_size / median latency``.

    The median batch latency comes from :func:`measure_latency` with the same arguments.
    """
    return batch_size / measure_latency(model, input_shape, batch_size, repeats, warmup, device)


class ActivationMemory(NamedTuple):
    """Activation memory of one forward pass, in bytes (see :func:`activation_memory`).

    ``total``: the outputs of every leaf module added up: what training keeps alive for the
    backward pass. ``peak``: the largest ``input + output`` of a single leaf module: what a
    chain of layers needs at once when inference frees each activation after use (a lower
    bound for networks with skip connections, which keep more alive).
    """

    total: int
    peak: int


def _bytes(obj) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, (tuple, list)):
        return sum(_bytes(o) for o in obj)
    if isinstance(obj, dict):
        return sum(_bytes(o) for o in obj.values())
    return 0


def activation_memory(
    model: nn.Module,
    input_shape: Sequence[int],
    batch_size: int = 1,
    device: torch.device | str | None = None,
) -> ActivationMemory:
    """Bytes of the activations of one forward pass on ``batch_size`` samples, counted by hooks.

    A forward hook on every leaf module (a module without children: ``Linear``, ``Conv2d``,
    ``ReLU``, ...) records the bytes of its inputs and outputs (``numel * element_size``). The
    input batch itself is not counted in ``total``; parameters are not activations (see
    :func:`kdlib.models.model_size_bytes`). Returns :class:`ActivationMemory` ``(total, peak)``.
    Counting by hooks is exact for what the modules return and independent of the allocator,
    so it is the same on every machine; functional operations inside a ``forward`` (a
    ``torch.relu`` call, a residual addition) are not modules and are not counted.
    """
    shape = _check_shape(input_shape, batch_size, 1, 0)
    device = torch.device(device) if device is not None else device_of(model)
    leaves = [m for m in model.modules() if not list(m.children())]
    if not leaves:
        raise ValueError(f"{type(model).__name__} has no leaf modules to hook")
    total, peak = 0, 0

    def hook(module, inputs, output):
        nonlocal total, peak
        out = _bytes(output)
        total += out
        peak = max(peak, _bytes(inputs) + out)

    handles = [m.register_forward_hook(hook) for m in leaves]
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            model(torch.zeros((batch_size, *shape), device=device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return ActivationMemory(total, peak)


def flops(
    model: nn.Module,
    input_shape: Sequence[int],
    batch_size: int = 1,
    device: torch.device | str | None = None,
) -> int:
    """Floating-point operations of one forward pass on ``batch_size`` samples.

    Counted by ``torch.utils.flop_counter.FlopCounterMode`` over the operators PyTorch has
    formulas for (matrix products, convolutions, attention): a multiply-add counts 2, so a
    ``Linear(n, m)`` costs ``2 n m`` per sample; element-wise operations (ReLU, BatchNorm in
    eval mode, additions) are not counted. The count depends only on the model and the shape,
    never on the machine or its load. Runs in eval mode (restored) without autograd.
    """
    shape = _check_shape(input_shape, batch_size, 1, 0)
    from torch.utils.flop_counter import FlopCounterMode

    device = torch.device(device) if device is not None else device_of(model)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.zeros((batch_size, *shape), device=device))
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


def benchmark(
    model: nn.Module,
    input_shape: Sequence[int],
    latency_batch: int = 1,
    throughput_batch: int = 256,
    repeats: int = 50,
    device: torch.device | str | None = None,
    threads: int | None = 1,
) -> dict:
    """All the costs of one model in a flat dict, for a teacher-versus-student table.

    Keys: ``parameters`` (count), ``model_bytes`` (parameters and buffers), ``flops`` (per
    sample, :func:`flops`), ``latency_ms`` (median at ``latency_batch``), ``throughput``
    (samples/s at ``throughput_batch``, median of ``max(repeats // 5, 3)`` batches),
    ``activation_bytes`` (peak, at ``latency_batch``) and ``activation_bytes_total`` (all
    activations, at ``latency_batch``). The timings run after warm-up calls on ``threads``
    CPU threads (``torch.set_num_threads``, restored afterwards; ``None``: leave it as it is).
    """
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads must be an integer >= 1 or None, got {threads!r}")
    memory = activation_memory(model, input_shape, latency_batch, device)
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        latency = measure_latency(model, input_shape, latency_batch, repeats, 5, device)
        rate = throughput(model, input_shape, throughput_batch, max(repeats // 5, 3), 3, device)
    finally:
        torch.set_num_threads(before)
    return {
        "parameters": count_parameters(model),
        "model_bytes": model_size_bytes(model),
        "flops": flops(model, input_shape, 1, device),
        "latency_ms": 1e3 * latency,
        "throughput": rate,
        "activation_bytes": memory.peak,
        "activation_bytes_total": memory.total,
    }
