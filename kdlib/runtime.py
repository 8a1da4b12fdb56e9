"""How a notebook runs here: CPU threads, progress bars, the device, in one call at its start.

``setup()`` is the first thing a notebook does after its parameters::

    device = setup(device, dataset=dataset)

It picks the device (:func:`kdlib.distill.pick_device`) and sets PyTorch's number of CPU
threads by this **thread policy**:

1. ``threads=`` if given (a positive number; ``0`` leaves PyTorch's default alone);
2. else ``KDLIB_THREADS`` from the environment (the same values);
3. else **one thread for small models** (the ``digits`` dataset: MLPs and small CNNs on 8x8
   images), and for the bigger datasets the cores this process may use: ``KDLIB_CPUS`` when
   set (``kdlib course run --jobs N`` sets it to each kernel's share), else every core of the
   process's CPU affinity.

Why one thread: a training step of these models takes a fraction of a millisecond, too short for
splitting a matrix product between threads to pay for the threads' synchronisation, and far too
short once another program keeps a core busy, when every step waits for the thread that lost
its core (``benchmarks/README.md`` measures the crossover and the slow-down).

:func:`progress_enabled` decides whether training shows a progress bar (see its docstring):
yes in JupyterLab, the classic notebook and a terminal; no under papermill, nbgrader, CI and
``kdlib course run``.

This module is part of the library half of kdlib: it imports nothing from ``kdlib.course``.
"""

from __future__ import annotations

import os
import sys

import torch

__all__ = [
    "available_cpus",
    "default_threads",
    "progress_enabled",
    "resolve_threads",
    "setup",
]

#: datasets whose models are small enough to train fastest on one CPU thread
SMALL_DATASETS = frozenset({"digits"})
_FALSE = {"0", "false", "no", "off"}


def available_cpus() -> int:
    """The cores this process may use: ``KDLIB_CPUS`` when set (its share under
    ``kdlib course run --jobs``), else the size of its CPU affinity (``os.cpu_count()`` where
    the platform has none)."""
    share = os.environ.get("KDLIB_CPUS", "").strip()
    if share:
        try:
            value = int(share)
        except ValueError:
            raise ValueError(f"KDLIB_CPUS must be a positive integer, got {share!r}") from None
        if value < 1:
            raise ValueError(f"KDLIB_CPUS must be a positive integer, got {share!r}")
        return value
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def default_threads(dataset: str | None = None) -> int:
    """Step 3 of the policy: 1 for a small dataset's models (``digits``, or ``dataset=None``),
    else :func:`available_cpus`."""
    if dataset is None or str(dataset).lower() in SMALL_DATASETS:
        return 1
    return available_cpus()


def _parse_threads(value, name: str) -> int:
    text = str(value).strip().lower()
    if text in ("torch", "default"):
        return 0
    try:
        number = int(text)
    except ValueError:
        raise ValueError(
            f"{name} must be a number of threads (0 or 'torch': PyTorch's default), got {value!r}"
        ) from None
    if number < 0:
        raise ValueError(f"{name} must be >= 0 (0: PyTorch's default), got {value!r}")
    return number


def resolve_threads(threads: int | str | None = None, dataset: str | None = None) -> int:
    """The number of intra-op threads the policy gives (0: leave PyTorch's default).

    ``threads`` (explicit) wins, then ``KDLIB_THREADS``, then :func:`default_threads`. Raises
    ``ValueError`` for a negative or non-numeric value, naming where it came from.
    """
    if threads is not None:
        return _parse_threads(threads, "threads")
    env = os.environ.get("KDLIB_THREADS", "").strip()
    if env:
        return _parse_threads(env, "KDLIB_THREADS")
    return default_threads(dataset)


def setup(
    device: str | torch.device | None = "auto",
    *,
    dataset: str | None = None,
    threads: int | str | None = None,
    seed: int | None = None,
) -> torch.device:
    """Apply the thread policy, optionally seed everything, and return the device to use.

    Args:
        device: ``"auto"`` (CUDA, then MPS, then the CPU) or a device name; see
            :func:`kdlib.distill.pick_device`.
        dataset: the notebook's dataset; its size decides the default thread count (one
            thread for ``digits``).
        threads: intra-op CPU threads; ``None`` follows the policy of the module docstring
            (``KDLIB_THREADS``, else 1 for small models, else the cores available); ``0``
            keeps PyTorch's default.
        seed: if given, :func:`kdlib.distill.seed_everything` is called with it.

    The thread count is set with ``torch.set_num_threads`` (it also matters on a GPU machine:
    data preparation and evaluation run on the CPU).
    """
    from kdlib.distill import pick_device, seed_everything

    n = resolve_threads(threads, dataset)
    if n:
        torch.set_num_threads(n)
    if seed is not None:
        seed_everything(seed)
    return pick_device(device)


# ---------------------------------------------------------------------------- progress bars


def _env_flag(name: str) -> bool | None:
    """``True``/``False`` for a set variable (``0``, ``false``, ``no``, ``off``: False), None
    when it is unset or empty."""
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return None
    return value not in _FALSE


def _headless_reason() -> str | None:
    """Why bars are off however the code runs, or None."""
    if "NBGRADER_EXECUTION" in os.environ:
        return "nbgrader"
    if any(name.startswith("PAPERMILL_") for name in os.environ):
        return "papermill"
    if _env_flag("CI"):
        return "CI"
    return None


def _in_kernel() -> bool:
    """True inside a Jupyter (IPython) kernel."""
    shell = sys.modules.get("IPython")
    if shell is None:
        return False
    try:
        ip = shell.get_ipython()
    except Exception:  # noqa: BLE001 (an IPython too old or half imported)
        return False
    return ip is not None and getattr(ip, "kernel", None) is not None


def progress_enabled(progress: bool | None = None) -> bool:
    """Whether a training loop shows a progress bar.

    ``progress=True``/``False`` is obeyed, except that ``KDLIB_PROGRESS=0`` turns every bar off.
    ``None`` (the default of every training function) decides from where the code runs:

    - ``KDLIB_PROGRESS=1`` / ``0``: on / off (``kdlib course run`` sets 0 for its kernels);
    - off under nbgrader (``NBGRADER_EXECUTION``), papermill (``PAPERMILL_*``) and CI (``CI``);
    - in a Jupyter kernel: on when a Jupyter server started it for a person (JupyterLab and the
      classic notebook set ``JPY_SESSION_NAME``), off when a headless client (papermill,
      nbclient, nbconvert) did;
    - elsewhere (a script, the IPython shell): on when standard error is a terminal.
    """
    forced = _env_flag("KDLIB_PROGRESS")
    if forced is False:
        return False
    if progress is not None:
        return bool(progress)
    if forced:
        return True
    if _headless_reason() is not None:
        return False
    if _in_kernel():
        return bool(os.environ.get("JPY_SESSION_NAME"))
    stream = sys.stderr
    try:
        return bool(stream is not None and stream.isatty())
    except (AttributeError, ValueError):  # closed or replaced stream
        return False
