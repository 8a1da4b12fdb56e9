"""How a run is set up: the device, seeds, CPU threads and progress bars.

``setup()`` is the first thing a notebook does after its parameters::

    device = setup(device, dataset=dataset)

It picks the device (:func:`pick_device`: CUDA, then MPS, then the CPU), seeds everything when
asked (:func:`seed_everything`) and sets PyTorch's number of CPU threads by this **thread
policy**:

1. ``threads=`` if given (a positive number; ``0`` leaves PyTorch's default alone);
2. else ``KDLIB_THREADS`` from the environment (the same values);
3. else **by the size of the model**: one thread for a model of at most
   ``SMALL_MODEL_PARAMETERS`` (1,000,000) parameters, whatever the dataset is called (the
   course's MLPs and CNNs have 2,000 to 100,000, resnet8 78,000), and the cores this process
   may use for a bigger one (resnet8x4, 1.2M, where a quiet multi-core machine gains):
   ``KDLIB_CPUS`` when set (``kdlib course run --jobs N`` sets it to each kernel's share),
   else every core of the process's CPU affinity. ``setup`` sets one thread
   (no model is known yet); the training loops (``Distiller``, ``mutual_learning``) then call
   :func:`fit_threads_to` with their models, which raises the count for a big model, but only
   after ``setup`` chose by step 3 (an explicit choice, or no ``setup`` at all, is left alone).

Why one thread: a training step of these models takes a fraction of a millisecond, too short for
splitting a matrix product between threads to pay for the threads' synchronisation, and far too
short once another program keeps a core busy, when every step waits for the thread that lost
its core (``benchmarks/README.md`` measures the crossover and the slow-down).

:func:`progress_enabled` decides whether training shows a progress bar (see its docstring):
yes in JupyterLab, the classic notebook and a terminal; no under papermill, nbgrader, CI and
``kdlib course run``.

:func:`device_of` says where a model lives (its first parameter or buffer; the CPU for a model
with neither).

This module is part of the library half of kdlib: it imports nothing from ``kdlib.course``.
"""

from __future__ import annotations

import os
import random
import sys

import numpy as np
import torch
from torch import nn

__all__ = [
    "SMALL_MODEL_PARAMETERS",
    "available_cpus",
    "default_threads",
    "device_of",
    "fit_threads_to",
    "pick_device",
    "progress_enabled",
    "resolve_threads",
    "seed_everything",
    "setup",
]

#: models with at most this many parameters train fastest on one CPU thread
SMALL_MODEL_PARAMETERS = 1_000_000
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


def _parameter_count(models) -> int:
    """The parameters of ``models``: an ``nn.Module``, a count, or a list of either."""
    if models is None:
        return 0
    if isinstance(models, nn.Module):
        return sum(p.numel() for p in models.parameters())
    if isinstance(models, int) and not isinstance(models, bool):
        return models
    if isinstance(models, (list, tuple)):
        return sum(_parameter_count(m) for m in models)
    raise ValueError(f"model must be an nn.Module, a parameter count or a list, got {models!r}")


def default_threads(model=None) -> int:
    """Step 3 of the policy: 1 for a model (``nn.Module``, parameter count, or a list of them:
    the largest counts) of at most ``SMALL_MODEL_PARAMETERS`` parameters or none known yet,
    else :func:`available_cpus`."""
    models = model if isinstance(model, (list, tuple)) else [model]
    largest = max((_parameter_count(m) for m in models), default=0)
    return 1 if largest <= SMALL_MODEL_PARAMETERS else available_cpus()


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


def resolve_threads(
    threads: int | str | None = None, dataset: str | None = None, model=None
) -> int:
    """The number of intra-op threads the policy gives (0: leave PyTorch's default).

    ``threads`` (explicit) wins, then ``KDLIB_THREADS``, then :func:`default_threads` of
    ``model``. ``dataset`` is accepted for the notebooks' ``setup(device, dataset=dataset)``
    but decides nothing: a tiny MLP gets one thread on ``"mnist-t10k"`` as on ``"digits"``.
    Raises ``ValueError`` for a negative or non-numeric value, naming where it came from.
    """
    if threads is not None:
        return _parse_threads(threads, "threads")
    env = os.environ.get("KDLIB_THREADS", "").strip()
    if env:
        return _parse_threads(env, "KDLIB_THREADS")
    return default_threads(model)


_by_model_size = False  # setup() chose step 3 of the policy: fit_threads_to may raise the count


def setup(
    device: str | torch.device | None = "auto",
    *,
    dataset: str | None = None,
    threads: int | str | None = None,
    seed: int | None = None,
    model=None,
) -> torch.device:
    """Apply the thread policy, optionally seed everything, and return the device to use.

    Args:
        device: ``"auto"`` (CUDA, then MPS, then the CPU) or a device name; see
            :func:`pick_device`.
        dataset: the notebook's dataset (kept for the notebooks' calls; the thread count
            goes by the model's size, see the module docstring).
        threads: intra-op CPU threads; ``None`` follows the policy of the module docstring
            (``KDLIB_THREADS``, else by the model's size); ``0`` keeps PyTorch's default.
        seed: if given, :func:`seed_everything` is called with it.
        model: the model (or models, or a parameter count) about to be trained, if known;
            otherwise the training loops apply step 3 when they get their models.

    The thread count is set with ``torch.set_num_threads`` (it also matters on a GPU machine:
    data preparation and evaluation run on the CPU).
    """
    global _by_model_size
    n = resolve_threads(threads, dataset, model)
    _by_model_size = threads is None and not os.environ.get("KDLIB_THREADS", "").strip()
    if n:
        torch.set_num_threads(n)
    if seed is not None:
        seed_everything(seed)
    return pick_device(device)


def fit_threads_to(*models: nn.Module) -> None:
    """Step 3 of the policy for ``models``, when :func:`setup` left the choice to it: every
    core available for a model over ``SMALL_MODEL_PARAMETERS`` parameters, one thread
    otherwise. Does nothing when ``setup`` was not called or was given ``threads`` (or
    ``KDLIB_THREADS`` is set): a choice made by hand stands."""
    if _by_model_size and not os.environ.get("KDLIB_THREADS", "").strip():
        torch.set_num_threads(default_threads(list(models)))


def pick_device(prefer: str | torch.device | None = "auto") -> torch.device:
    """The device to run on: ``"auto"`` picks CUDA, then Apple's MPS, then the CPU.

    Any other value (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``) is taken as given, after a
    check that it is available here.
    """
    if prefer is None or str(prefer) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(prefer)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but CUDA is not available on this machine")
    if device.type == "mps" and not _mps_available():
        raise ValueError("device 'mps' was asked for but MPS is not available on this machine")
    return device


def _mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def device_of(model: nn.Module) -> torch.device:
    """Where ``model`` lives: the device of its first parameter, else of its first buffer,
    else the CPU."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and PyTorch (all devices); returns a CPU generator with that seed.

    On the CPU, the same seed then gives the same numbers on every run, and the loaders made
    afterwards without a ``seed`` (``kdlib.data.TensorLoader``, ``Split.loader``) shuffle in an
    order that follows it (they take ``torch.initial_seed()``). cuDNN is set to deterministic
    algorithms; some CUDA kernels stay non-deterministic unless
    ``torch.use_deterministic_algorithms(True)`` is also set (slower), which this does not do.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    return torch.Generator().manual_seed(seed)


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
