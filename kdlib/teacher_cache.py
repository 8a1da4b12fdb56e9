"""Train a teacher once, reuse it everywhere: a cache of trained teachers on disk.

Several notebooks train the same digits teacher (same architecture, data, epochs and seed).
:func:`train_teacher` trains it the first time and stores its weights; every later request with
the same **key** loads them instead, in this notebook, in another one and in the next run::

    run = train_teacher(lambda: SmallCNN(width=32, depth=2), data.train.loader(64, shuffle=True),
                        epochs=10, lr=3e-3, seed=0)
    teacher = run.model            # trained (or loaded); run.seconds: how long training took

The key holds everything that determines the weights, so a changed recipe trains a new teacher:

- the model: its class, ``repr`` (the architecture and its arguments) and a SHA-256 of its
  initial weights (built right after ``seed_everything(seed)``, so the seed is in it);
- the data: a SHA-256 of the loader's tensors, its batch size, shuffling, ``drop_last``, the
  state of its shuffling generator and the name of its transform (augmentation); the same for
  the validation data, whose accuracies the history records;
- the training: epochs, Adam's learning rate and weight decay, the learning-rate schedule, label
  smoothing, the device type (CPU and GPU arithmetic differ), kdlib's and PyTorch's versions.

The cache folder is ``$KDLIB_CACHE/teachers`` (``KDLIB_CACHE=off`` turns the cache off), else
``$XDG_CACHE_HOME/kdlib/teachers``, else ``~/.cache/kdlib/teachers``. Each teacher is one file
``<name>-<key hash>.pt``: a header with the SHA-256 of the payload, then the payload (``torch.save``
of the key, the weights, the history and the training time). Checksum and weights live in one
file written to a temporary name and renamed into place (atomic), so several kernels running at
once (``kdlib course run --jobs``) never see half a file nor a checksum of someone else's
weights; a lock makes a second kernel wait for a teacher being trained instead of training it
again. A file that fails its checksum, cannot be read, or holds another key is trained again
with a warning. Loading uses ``torch.load(weights_only=True)``: no code runs from the cache.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import os
import re
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

import kdlib
from kdlib.distill import Distiller
from kdlib.runtime import pick_device, seed_everything

__all__ = ["TeacherCacheWarning", "TrainedTeacher", "cache_dir", "teacher_key", "train_teacher"]

_MAGIC = b"KDLIB-TEACHER 1\n"
_SCHEDULES = (None, "cosine")
_OFF = {"0", "off", "none", "false", "no"}


class TeacherCacheWarning(UserWarning):
    """A cached teacher could not be used (corrupted, unreadable, unwritable): trained again."""


@dataclass
class TrainedTeacher:
    """What :func:`train_teacher` returns.

    ``model``: the trained teacher (on ``device``, in train mode, as training leaves it);
    ``history``: one dict per epoch as :meth:`kdlib.distill.Distiller.fit` records it;
    ``seconds``: how long the training took when it ran (also when loaded from the cache);
    ``snapshots``: ``{epoch: model}`` for the requested intermediate epochs (eval mode);
    ``loader_state``: the training loader's shuffling state after training (restored on load,
    so a loader shared with a student continues the same batches, cached or not);
    ``from_cache``: whether the weights were loaded; ``path``: the cache file (None without a
    cache); ``key``: the key's hash.
    """

    model: nn.Module
    history: list = field(default_factory=list)
    seconds: float = 0.0
    snapshots: dict = field(default_factory=dict)
    loader_state: torch.Tensor | None = None
    from_cache: bool = False
    path: Path | None = None
    key: str = ""


def cache_dir() -> Path | None:
    """The folder of cached teachers (see the module docstring); None when turned off."""
    root = os.environ.get("KDLIB_CACHE", "").strip()
    if root.lower() in _OFF:
        return None
    if not root:
        base = os.environ.get("XDG_CACHE_HOME", "").strip() or Path.home() / ".cache"
        root = Path(base) / "kdlib"
    return Path(root).expanduser() / "teachers"


# ------------------------------------------------------------------------------- the key


def _sha256_tensors(tensors: Iterable[torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous().reshape(-1)  # 0-d buffers (BatchNorm's count) too
        digest.update(f"{t.dtype}{tuple(t.shape)}".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def _callable_name(fn) -> str | None:
    if fn is None:
        return None
    if hasattr(fn, "func"):  # functools.partial
        return f"{_callable_name(fn.func)}(*{fn.args!r}, **{sorted(fn.keywords.items())!r})"
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


def _data_key(loader) -> dict | None:
    """What in a loader decides the batches: its tensors, batching, shuffling and transform."""
    if loader is None:
        return None
    if hasattr(loader, "x") and hasattr(loader, "y") and not hasattr(loader, "batch_size"):
        loader = loader.loader(batch_size=512)  # a Split, evaluated as Distiller.fit would
    if not (hasattr(loader, "x") and hasattr(loader, "y")):
        raise ValueError(
            "train_teacher needs a kdlib TensorLoader (or a Split) for train_loader and "
            f"val_loader: its tensors are part of the cache key; got {type(loader).__name__}"
        )
    if "<lambda>" in (_callable_name(getattr(loader, "transform", None)) or ""):
        raise ValueError(
            "the loader's transform is a lambda, which the teacher cache cannot tell apart from "
            "another lambda: use a named function (e.g. kdlib.data.random_shift)"
        )
    generator = getattr(loader, "generator", None)
    return {
        "tensors": _sha256_tensors([loader.x, loader.y]),
        "batch_size": loader.batch_size,
        "shuffle": bool(getattr(loader, "shuffle", False)),
        "drop_last": bool(getattr(loader, "drop_last", False)),
        "generator": _sha256_tensors([generator.get_state()]) if generator is not None else None,
        "transform": _callable_name(getattr(loader, "transform", None)),
    }


def teacher_key(
    model: nn.Module,
    train_loader,
    *,
    epochs: int,
    val_loader=None,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    lr_schedule: str | None = None,
    label_smoothing: float = 0.0,
    device: torch.device | str = "cpu",
) -> dict:
    """The cache key of training ``model`` (as it is now: untrained) this way: a JSON-able dict
    (see the module docstring for what it holds)."""
    return {
        "format": 1,
        "kdlib": kdlib.__version__,
        "torch": ".".join(torch.__version__.split("+")[0].split(".")[:2]),
        "model": f"{type(model).__module__}.{type(model).__qualname__}",
        "architecture": repr(model),
        "initial_weights": _sha256_tensors(model.state_dict().values()),
        "data": _data_key(train_loader),
        "val_data": _data_key(val_loader),
        "epochs": int(epochs),
        "optimizer": {"name": "adam", "lr": float(lr), "weight_decay": float(weight_decay)},
        "lr_schedule": lr_schedule,
        "label_smoothing": float(label_smoothing),
        "device": torch.device(device).type,
    }


def _key_hash(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]


# ------------------------------------------------------------------------------- the file


def _write_atomic(path: Path, payload: bytes) -> None:
    """``path`` <- header (magic, SHA-256 of ``payload``) + ``payload``, via a temporary file in
    the same folder renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = _MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n"
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(header + payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _read_verified(path: Path) -> dict:
    """The payload of ``path`` after checking its SHA-256; ``ValueError`` saying what is wrong."""
    blob = path.read_bytes()
    if not blob.startswith(_MAGIC):
        raise ValueError("not a kdlib teacher file")
    line_end = blob.find(b"\n", len(_MAGIC))
    if line_end < 0:
        raise ValueError("truncated header")
    expected = blob[len(_MAGIC) : line_end].decode(errors="replace")
    payload = blob[line_end + 1 :]
    if hashlib.sha256(payload).hexdigest() != expected:
        raise ValueError("checksum mismatch")
    try:
        return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 (any unpickling problem means: unreadable)
        raise ValueError(f"unreadable payload ({type(exc).__name__})") from None


@contextlib.contextmanager
def _locked(path: Path):
    """An exclusive lock on ``<path>.lock`` (POSIX ``flock``; no lock where there is none)."""
    try:
        import fcntl
    except ImportError:  # Windows: no lock; the atomic rename still keeps files whole
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


# ------------------------------------------------------------------------------ training


def _cosine(epochs: int):
    return lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(int(epochs), 1))


def _snapshot(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).eval()


def _cpu_state(model: nn.Module) -> dict:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def train_teacher(
    build: Callable[[], nn.Module],
    train_loader,
    epochs: int,
    val_loader=None,
    *,
    seed: int,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    lr_schedule: str | None = None,
    label_smoothing: float = 0.0,
    snapshots: Iterable[int] = (),
    device: str | torch.device | None = None,
    progress: bool | None = None,
    cache: bool | str | Path = True,
    name: str | None = None,
) -> TrainedTeacher:
    """A teacher trained on the labels (Adam, cross-entropy), from the cache when it is there.

    Args:
        build: makes the untrained model; called right after ``seed_everything(seed)``.
        train_loader, val_loader: ``kdlib`` ``TensorLoader`` (or ``Split``) objects; the
            validation data only fills the history's ``val_accuracy``.
        epochs: training epochs.
        seed: seeds the initialisation (the loader's own seed drives the shuffling).
        lr, weight_decay, label_smoothing: of Adam and the cross-entropy, as in
            :func:`kdlib.distill.train_supervised`.
        lr_schedule: ``None`` (constant) or ``"cosine"`` (``CosineAnnealingLR`` over
            ``epochs``, stepped once per epoch). A name rather than a function, so that it can
            be part of the key.
        snapshots: epochs (``< epochs``) whose weights are also kept, returned in
            ``snapshots`` (a cached file without them is trained again).
        device: where to train and return the model (default :func:`pick_device`).
        progress: a progress bar while training (``None``: see
            :func:`kdlib.runtime.progress_enabled`).
        cache: ``True`` (the folder of :func:`cache_dir`), a folder, ``False`` (always train,
            store nothing) or ``"refresh"`` (always train, then store: a notebook that shows
            the training can still leave its teacher for the others).
        name: the file's prefix (default: the model's class name).

    Raises ``ValueError`` for a bad ``epochs``, ``snapshots``, ``lr_schedule`` or loader.
    """
    if int(epochs) < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    stops = sorted({int(e) for e in snapshots})
    if any(not 1 <= e < epochs for e in stops):
        raise ValueError(f"snapshots must be epochs in [1, {epochs}), got {list(snapshots)}")
    if lr_schedule not in _SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {_SCHEDULES}, got {lr_schedule!r}")
    device = pick_device(device if device is not None else "auto")

    seed_everything(seed)
    model = build()
    if not isinstance(model, nn.Module):
        raise ValueError(f"build() returned {type(model).__name__}, not an nn.Module")
    key = teacher_key(
        model,
        train_loader,
        epochs=epochs,
        val_loader=val_loader,
        lr=lr,
        weight_decay=weight_decay,
        lr_schedule=lr_schedule,
        label_smoothing=label_smoothing,
        device=device,
    )
    key_hash = _key_hash(key)
    options = dict(lr=lr, weight_decay=weight_decay, label_smoothing=label_smoothing)
    options["lr_schedule"] = _cosine(epochs) if lr_schedule == "cosine" else None

    def train_now() -> TrainedTeacher:
        result = _train(model, train_loader, val_loader, epochs, stops, options, device, progress)
        result.key = key_hash
        return result

    folder = None
    if cache is True or cache == "refresh":
        folder = cache_dir()
    elif cache:
        folder = Path(cache)
    if folder is None:
        return train_now()
    prefix = re.sub(r"[^\w.-]", "_", name or type(model).__name__)
    path = folder / f"{prefix}-{key_hash}.pt"

    try:
        lock = _locked(path)
        lock.__enter__()
    except OSError as exc:  # an unwritable folder: train without the cache
        warnings.warn(
            f"teacher cache: cannot use {folder} ({exc}); training without the cache",
            TeacherCacheWarning,
            stacklevel=2,
        )
        return train_now()
    try:
        if cache != "refresh" and path.exists():
            loaded = _load(path, key, build, model, stops, device, train_loader)
            if loaded is not None:
                loaded.key = key_hash
                return loaded
        result = train_now()
        payload = io.BytesIO()
        torch.save(
            {
                "key": key,
                "state_dict": _cpu_state(result.model),
                "snapshots": {e: _cpu_state(m) for e, m in result.snapshots.items()},
                "history": result.history,
                "seconds": result.seconds,
                "loader_state": result.loader_state,
            },
            payload,
        )
        try:
            _write_atomic(path, payload.getvalue())
            result.path = path
        except OSError as exc:
            warnings.warn(
                f"teacher cache: could not write {path} ({exc}); the teacher is not stored",
                TeacherCacheWarning,
                stacklevel=2,
            )
        return result
    finally:
        lock.__exit__(None, None, None)


def _train(model, train_loader, val_loader, epochs, stops, options, device, progress):
    """Train ``model`` as ``train_supervised`` would, keeping copies at the ``stops`` epochs."""
    trainer = Distiller(model, None, device=device, progress=progress, **options)
    kept = {}
    start = time.perf_counter()
    for stop in [*stops, int(epochs)]:
        trainer.fit(train_loader, epochs=stop, val_loader=val_loader)  # continues up to `stop`
        if stop in stops:
            kept[stop] = _snapshot(model)
    seconds = time.perf_counter() - start
    generator = getattr(train_loader, "generator", None)
    state = generator.get_state() if generator is not None else None
    return TrainedTeacher(model, list(trainer.history), seconds, kept, state, False, None, "")


def _load(path: Path, key: dict, build, model, stops, device, loader) -> TrainedTeacher | None:
    """The cached teacher, or None (with a warning when the file is bad) to train again."""
    try:
        state = _read_verified(path)
        if state.get("key") != key:
            raise ValueError("it holds another key")
        loaded = copy.deepcopy(model)  # `model` keeps its initial weights if this fails
        loaded.load_state_dict(state["state_dict"])
        kept = {}
        for stop in stops:
            if stop not in state["snapshots"]:
                return None  # trained without this snapshot: train again, keeping it
            snap = build()
            snap.load_state_dict(state["snapshots"][stop])
            kept[stop] = snap.to(device).eval()
        loader_state = state.get("loader_state")
        generator = getattr(loader, "generator", None)
        if generator is not None and loader_state is not None:
            generator.set_state(loader_state)  # where training would have left it
    except (ValueError, KeyError, RuntimeError, OSError, TypeError) as exc:
        warnings.warn(
            f"teacher cache: {path} is corrupted ({exc}); training the teacher again",
            TeacherCacheWarning,
            stacklevel=3,
        )
        return None
    return TrainedTeacher(
        loaded.to(device),
        list(state["history"]),
        float(state["seconds"]),
        kept,
        loader_state,
        True,
        path,
        "",
    )
