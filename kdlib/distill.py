"""The training loop of the course: supervised training and distillation in one place.

The seed workflow, as :class:`Distiller` runs it::

    1. train the teacher               train_supervised(teacher, ...)
    2. freeze the teacher              freeze(teacher): eval mode, no gradients, stays in eval
    3. for each batch:
         teacher produces soft labels  with torch.no_grad(): z_T = teacher(x)
         student predicts              z_S = student(x)
         compute distillation loss     kd_loss(z_S, z_T, y, temperature, alpha) (+ extra terms)
         update student                loss.backward(); optimizer.step()

Helpers: :func:`pick_device` (CUDA, then MPS, then CPU), :func:`seed_everything`,
:func:`freeze`, :func:`evaluate`. Extra loss terms (feature, relation, ...) plug in through
``terms=``: any callable ``term(batch) -> scalar tensor`` with a ``weight`` attribute, and
optional ``student_features`` / ``teacher_features`` lists of module names to tap (see
``kdlib.features``). A term that is an ``nn.Module`` with parameters (a FitNets adapter, say)
is moved to the device and trained with the student.

Under ``torchrun`` (``torch.distributed``), the same code trains on several processes: the
Distiller joins the process group (initialising it from torchrun's environment by default),
wraps the student in ``DistributedDataParallel`` (the frozen teachers stay unwrapped: no
gradient to synchronise), gives each rank its share of every epoch's batches, averages the
losses, metrics and adapter gradients over the ranks, and prints and saves on rank 0 only
(``kdlib.distributed``; ``python -m kdlib.examples.ddp``).
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from kdlib import distributed as kdist
from kdlib.data import TensorLoader
from kdlib.features import FeatureTaps
from kdlib.losses import IGNORE_INDEX, KDLossParts, kd_loss
from kdlib.runtime import progress_enabled

__all__ = [
    "pick_device",
    "seed_everything",
    "freeze",
    "is_frozen",
    "evaluate",
    "Batch",
    "Distiller",
    "train_supervised",
]


def pick_device(prefer: str | torch.device | None = "auto") -> torch.device:
    """The device to run on: ``"auto"`` picks CUDA, then Apple's MPS, then the CPU.

    Any other value (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``) is taken as given, after a
    check that it is available here.
    """
    if prefer is None or str(prefer) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(prefer)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but CUDA is not available on this machine")
    if device.type == "mps" and not (
        getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    ):
        raise ValueError("device 'mps' was asked for but MPS is not available on this machine")
    return device


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and PyTorch (all devices); returns a CPU generator with that seed.

    On the CPU, the same seed then gives the same numbers on every run. cuDNN is set to
    deterministic algorithms; some CUDA kernels stay non-deterministic unless
    ``torch.use_deterministic_algorithms(True)`` is also set (slower), which this does not do.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    return torch.Generator().manual_seed(seed)


def _stay_in_eval(self: nn.Module, mode: bool = True) -> nn.Module:
    """Replacement for ``Module.train`` on a frozen model: a parent's ``.train()`` is ignored."""
    return self


def freeze(model: nn.Module) -> nn.Module:
    """Freeze a teacher: eval mode, ``requires_grad=False``, and kept in eval mode for good.

    Its BatchNorm statistics and dropout stay fixed even if a parent module calls ``.train()``
    (this module's ``train`` becomes a no-op). Returns the same model.
    """
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    for module in model.modules():
        module.train = _stay_in_eval.__get__(module)
    model._kdlib_frozen = True
    return model


def is_frozen(model: nn.Module) -> bool:
    """True when every parameter is frozen and the model is in eval mode."""
    return (not model.training) and not any(p.requires_grad for p in model.parameters())


def _device_of(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def _batches(data, batch_size: int = 512):
    """Accept a loader (yielding tuples) or a ``Split``/``(x, y)`` pair; yield ``(x, y)``."""
    if hasattr(data, "x") and hasattr(data, "y") and not isinstance(data, TensorLoader):
        data = data.loader(batch_size=batch_size)
    elif isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        x, y = data
        data = [
            (x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, len(y), batch_size)
        ]
    for batch in data:
        yield batch[0], batch[1]


@torch.no_grad()
def evaluate(model: nn.Module, data, device: torch.device | None = None) -> dict:
    """Accuracy and mean cross-entropy (tau = 1) of ``model`` on ``data``.

    ``data``: a loader yielding ``(x, y[, index])``, a ``kdlib.data.Split`` or an ``(x, y)``
    pair. Samples labelled -1 are skipped. Puts the model in eval mode and restores its mode.
    """
    loss, correct, count = _evaluation_sums(model, data, device)
    count = max(count, 1)
    return {"loss": loss.item() / count, "accuracy": correct.item() / count}


_INTEGER_LABELS = (torch.int8, torch.uint8, torch.int16, torch.int32)


def _as_class_index(y: torch.Tensor) -> torch.Tensor:
    """Labels of a smaller integer dtype (int32 from numpy, uint8 from image files) as the
    int64 class indices PyTorch's losses need; other dtypes are left for the loss to check."""
    return y.long() if y.dtype in _INTEGER_LABELS else y


def _evaluation_sums(model: nn.Module, data, device: torch.device | None = None):
    """``(summed cross-entropy, number correct, number of labelled samples)`` of ``model`` on
    ``data``: the first two as 0-d tensors on the device, the count an int."""
    device = device or _device_of(model)
    was_training = model.training
    model.eval()
    correct = torch.zeros((), device=device)
    loss = torch.zeros((), device=device)
    count = 0
    for x, y in _batches(data):
        x, y = x.to(device, non_blocking=True), _as_class_index(y.to(device, non_blocking=True))
        keep = y != IGNORE_INDEX
        logits = model(x).float()[keep]
        y = y[keep]
        loss += F.cross_entropy(logits, y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
        count += len(y)
    model.train(was_training)
    return loss, correct, count


@dataclass
class Batch:
    """What an extra loss term sees at each step.

    ``inputs`` ``(B, ...)``, ``labels`` ``(B,)`` (-1 = unlabelled), ``index`` ``(B,)`` or None,
    ``student_logits`` / ``teacher_logits`` ``(B, C)`` (teacher: None without a teacher,
    detached otherwise), and the tapped features by module name (teacher's detached).
    """

    inputs: torch.Tensor
    labels: torch.Tensor
    index: torch.Tensor | None
    student_logits: torch.Tensor
    teacher_logits: torch.Tensor | None
    student_features: dict = field(default_factory=dict)
    teacher_features: dict = field(default_factory=dict)


def _term_name(term, k: int) -> str:
    return getattr(term, "name", None) or f"{type(term).__name__.lower()}{k}"


def _is_random_loader(loader) -> bool:
    if getattr(loader, "transform", None) is not None:
        return True
    dataset = getattr(loader, "dataset", None)
    return getattr(dataset, "transform", None) is not None


class Distiller:
    """Train ``student`` from ``teacher`` (and the labels) with KD and optional extra terms.

    Args:
        student: the model being trained.
        teacher: a trained model, frozen here (see :func:`freeze`); a list of teachers needs
            ``combine_teachers``; ``None`` trains the student on the labels alone (the
            baseline), with the same loop.
        temperature, alpha: of :func:`kdlib.losses.kd_loss`; **alpha weights the hard
            cross-entropy term**, ``1 - alpha`` the soft KL term.
        loss: replaces ``kd_loss``: ``loss(student_logits, teacher_logits, labels)`` returning
            a scalar or ``KDLossParts``. Without a teacher, ``teacher_logits`` is ``None``.
        terms: extra loss terms (see the module docstring), added as ``term.weight * term(b)``.
        combine_teachers: for a list of teachers, ``combine(list of (B, C) logits) -> (B, C)``
            logits used as the teacher's (see ``kdlib.multi_teacher``).
        optimizer: an optimizer over the student's (and the terms') parameters, or a factory
            ``params -> optimizer``; default ``Adam(lr, weight_decay)``, PyTorch's fused
            implementation where the device has one (CPU, CUDA): the same update in one kernel
            per step instead of a Python loop over the parameters.
        lr_schedule: optional factory ``optimizer -> scheduler``, stepped once per epoch.
        device: where to train; default :func:`pick_device`. Models, terms and batches are
            moved there; on CUDA, a ``TensorLoader`` whose tensors take at most a quarter of
            the free memory is copied there once (see ``TensorLoader.to``), not batch by batch.
        amp: bf16 autocast for the forward passes on CUDA (losses stay float32); ignored on
            other devices.
        channels_last: channels-last memory format for 4-d inputs and conv models on CUDA;
            ignored on other devices.
        cache_teacher: compute the teacher's logits once per training sample and reuse them
            every epoch. Needs a loader that yields ``(x, y, index)`` and has no random
            transform (else the cached logits would belong to other inputs): refused
            otherwise, and refused with ``augment``.
        augment: consistent teaching (Beyer et al., "Knowledge distillation: A good teacher
            is patient and consistent", CVPR 2022, arXiv:2106.05237): a function ``x -> x'``
            applied to every training batch ``x`` (on the device) before the teacher and the
            student see it, so both see the *same* augmented view, e.g.
            :func:`kdlib.data.random_shift`. The teacher then runs every step (no cache).
        label_smoothing: for the hard term when there is no teacher.
        progress: show a tqdm progress bar; ``None`` (default): where a person watches
            (JupyterLab, a terminal), not under papermill, nbgrader or CI (see
            :func:`kdlib.runtime.progress_enabled`; ``KDLIB_PROGRESS=0`` turns bars off).
        distributed: ``"auto"`` (default): train on all the ranks of the ``torch.distributed``
            process group when there is one, initialising it from torchrun's environment when
            this process was started by torchrun with more than one process (see
            ``kdlib.distributed.init_from_env``), else in this process alone; ``True``: the
            same, but raise ``ValueError`` when there is no group to join; ``False``: this
            process alone, even inside a group. With several ranks (see "Several processes").

    After :meth:`fit`, ``history`` holds one dict per epoch: ``epoch``, ``train_loss`` (and
    ``train_hard``, ``train_soft``, one entry per term), ``val_loss``, ``val_accuracy``,
    ``seconds``.

    Speed (``benchmarks/README.md``): the per-step losses stay on the device and are read back
    once per epoch. With the default loss, the first step on a new loader runs ``kd_loss``
    with all its input checks and later steps the same formula without them (they cost a dozen
    small ops and several host-device synchronisations per step); an epoch whose mean loss is
    not finite then raises ``ValueError``. Once every sample's logits are cached,
    ``cache_teacher`` looks them up without checking which are.

    Several processes (``torchrun --nproc_per_node N``, one GPU each, or gloo on CPUs): each
    rank trains on ``cuda:LOCAL_RANK`` (for ``device`` ``"auto"`` or ``"cuda"``), the student
    wrapped in ``DistributedDataParallel`` (``student`` stays the bare model: its
    ``state_dict`` has no ``module.`` prefix, and feature taps use its names); the parameters
    of loss terms (adapters) are broadcast from rank 0 once and their gradients averaged over
    the ranks at every step. ``fit`` deals each epoch out (``kdlib.distributed.shard_loader``:
    a ``TensorLoader`` or ``DataLoader`` shuffles with the same seed on every rank and each
    rank takes ``order[rank::N]``, padded to equal shares; a ``DistributedSampler`` gets
    ``set_epoch`` each epoch): ``batch_size`` is per rank, so N ranks with batch ``B`` make the
    steps of one process with batch ``N * B``. The logged losses are the means over all ranks'
    samples, the validation metrics are computed on disjoint shares of the validation data
    and summed; the bar and the checkpoints are rank 0's; ``resume`` reads the checkpoint on
    rank 0 and sends it to the others, so a run continues on any number of ranks. With
    ``cache_teacher``, each rank computes the teacher's logits of its share and the cache is
    summed over the ranks at the end of the epoch: the teacher runs once per sample in all.
    BatchNorm statistics are rank 0's (DistributedDataParallel broadcasts them at each step).
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | Sequence[nn.Module] | None = None,
        *,
        temperature: float = 4.0,
        alpha: float = 0.7,
        loss: Callable | None = None,
        terms: Iterable = (),
        combine_teachers: Callable | None = None,
        optimizer=None,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        lr_schedule: Callable | None = None,
        device: str | torch.device | None = None,
        amp: bool = False,
        channels_last: bool = False,
        cache_teacher: bool = False,
        augment: Callable | None = None,
        label_smoothing: float = 0.0,
        progress: bool | None = None,
        distributed: bool | str = "auto",
    ):
        self._join_process_group(distributed)
        self._place_on_device(student, device, amp, channels_last)
        self._freeze_teachers(teacher, combine_teachers)
        self._choose_loss(loss, temperature, alpha, label_smoothing)
        self._attach_terms(terms)
        self._wrap_for_ddp()
        self._plan_teacher_cache(cache_teacher, augment)
        self._make_optimizer(optimizer, lr, weight_decay, lr_schedule)
        self.progress = progress_enabled(progress)
        self.history: list[dict] = []
        self.epoch = 0

    # --- construction, step by step ---------------------------------------------------------

    def _join_process_group(self, distributed) -> None:
        """Decide whether to train on the ranks of a ``torch.distributed`` group (initialised
        from torchrun's environment when needed, see ``distributed``): ``world_size``, ``rank``."""
        if distributed not in (True, False, "auto"):
            raise ValueError(f"distributed must be True, False or 'auto', got {distributed!r}")
        if distributed and not kdist.is_initialized():
            if kdist.launched_by_torchrun() and int(os.environ["WORLD_SIZE"]) > 1:
                kdist.init_from_env()
            elif distributed is True:
                raise ValueError(
                    "distributed=True but there is no torch.distributed process group: start "
                    "the script with torchrun, or call torch.distributed.init_process_group first"
                )
        joined = bool(distributed) and kdist.is_initialized()
        self.world_size = kdist.world_size() if joined else 1
        self.rank = kdist.rank() if joined else 0

    def _place_on_device(self, student, device, amp, channels_last) -> None:
        """Pick the device and move the student there (channels-last and bf16 on CUDA only)."""
        self.device = pick_device(device if device is not None else "auto")
        if self.world_size > 1:  # one GPU per process: cuda:LOCAL_RANK
            self.device = kdist.local_device(self.device)
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)  # where NCCL's collectives run
        self.use_amp = bool(amp) and self.device.type == "cuda"
        self.channels_last = bool(channels_last) and self.device.type == "cuda"
        self.student = student.to(self.device)
        if self.channels_last:
            self.student = self.student.to(memory_format=torch.channels_last)

    def _freeze_teachers(self, teacher, combine_teachers) -> None:
        """Collect the teacher(s), move each to the device and freeze it (see :func:`freeze`);
        several teachers need ``combine_teachers``."""
        if teacher is None:
            self.teachers = []
        elif isinstance(teacher, nn.Module):
            self.teachers = [teacher]
        else:
            self.teachers = list(teacher)
        if len(self.teachers) > 1 and combine_teachers is None:
            raise ValueError(
                f"{len(self.teachers)} teachers were given: pass combine_teachers (e.g. "
                f"kdlib.multi_teacher.average_logits) to say how to combine them"
            )
        for t in self.teachers:
            t.to(self.device)
            if self.channels_last:
                t.to(memory_format=torch.channels_last)
            freeze(t)
        self.combine_teachers = combine_teachers

    def _choose_loss(self, loss, temperature, alpha, label_smoothing) -> None:
        """The loss of every step: the given one, else ``kd_loss`` with a teacher, else the
        cross-entropy of the labels alone."""
        # a teacher ensemble mixes soft targets at its own tau: it must be the loss's tau
        combine_tau = getattr(self.combine_teachers, "temperature", None)
        if loss is None and combine_tau is not None and float(combine_tau) != float(temperature):
            raise ValueError(
                f"combine_teachers mixes the teachers at temperature {combine_tau:g} but the "
                f"Distiller's temperature is {temperature:g}: use the same tau for both"
            )
        self._default_loss = None  # kd_loss as built here: the one with a fast path
        if loss is None:
            if self.teachers:
                loss = partial(kd_loss, temperature=temperature, alpha=alpha, return_parts=True)
                self._default_loss = loss
            else:
                loss = partial(_supervised_loss, label_smoothing=label_smoothing)
        self.loss = loss
        self.temperature, self.alpha = temperature, alpha

    def _attach_terms(self, terms) -> None:
        """Check the extra loss terms, move those with parameters to the device, and collect
        the names of the features they tap on the student and the teacher."""
        self.terms = list(terms)
        for term in self.terms:
            if not hasattr(term, "weight"):
                raise ValueError(f"term {term!r} has no 'weight' attribute")
            if isinstance(term, nn.Module):
                term.to(self.device)
        self.student_feature_names = sorted(
            {n for t in self.terms for n in getattr(t, "student_features", ())}
        )
        self.teacher_feature_names = sorted(
            {n for t in self.terms for n in getattr(t, "teacher_features", ())}
        )
        if self.teacher_feature_names and len(self.teachers) != 1:
            raise ValueError("terms that tap teacher features need exactly one teacher")

    def _wrap_for_ddp(self) -> None:
        """With several ranks, wrap the student in ``DistributedDataParallel`` (which copies
        rank 0's weights to every rank) and give the terms rank 0's parameters; the training
        forward pass goes through ``_train_student``."""
        self._train_student = self.student
        self._shards = None  # (training loader, this rank's share of it)
        self._term_params = [
            p
            for t in self.terms
            if isinstance(t, nn.Module)
            for p in t.parameters()
            if p.requires_grad
        ]
        if self.world_size == 1:
            self._term_params = []  # no gradient to average
            return
        ids = [self.device.index] if self.device.type == "cuda" else None
        self._train_student = nn.parallel.DistributedDataParallel(self.student, device_ids=ids)
        for term in self.terms:
            if isinstance(term, nn.Module):
                kdist.broadcast_module(term)

    def _plan_teacher_cache(self, cache_teacher, augment=None) -> None:
        """Decide whether teacher logits are cached (never with ``augment``, the consistent
        mode), and reset the per-loader bookkeeping."""
        if augment is not None and not callable(augment):
            raise ValueError(f"augment must be a function x -> x', got {augment!r}")
        self.augment = augment
        self.cache_teacher = bool(cache_teacher)
        if self.cache_teacher and augment is not None:
            raise ValueError(
                "cache_teacher=True was refused with augment: cached logits belong to the "
                "un-augmented images, while the student sees a new view each step. For "
                "consistent teaching keep augment and set cache_teacher=False (the teacher "
                "sees the same view as the student); for precomputed teacher outputs drop augment"
            )
        if self.cache_teacher and not self.teachers:
            raise ValueError("cache_teacher=True needs a teacher")
        if self.cache_teacher and self.teacher_feature_names:
            raise ValueError(
                "cache_teacher=True caches logits only, but the terms tap teacher features "
                f"({', '.join(self.teacher_feature_names)}): the teacher must run every step"
            )
        self._cache: torch.Tensor | None = None
        self._cached: torch.Tensor | None = None
        self._cache_complete = False  # every sample's logits are cached: look up, never check
        self._loss_checked = False  # kd_loss has checked a batch of the current loader
        self._checked_loader = None  # that loader
        self._all_labelled = False  # no label of that loader is IGNORE_INDEX
        self._staged = None  # (loader, its x, that loader on the device)

    def _make_optimizer(self, optimizer, lr, weight_decay, lr_schedule) -> None:
        """The optimizer over the student's and the terms' parameters, and its schedule."""
        params = self.trainable_parameters()
        if optimizer is None:
            optimizer = _adam(params, lr, weight_decay)
        elif callable(optimizer) and not isinstance(optimizer, torch.optim.Optimizer):
            optimizer = optimizer(params)
        self.optimizer = optimizer
        self.scheduler = lr_schedule(self.optimizer) if lr_schedule is not None else None

    # --- parameters and state ---------------------------------------------------------------

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """The student's parameters and those of the terms (adapters), each once."""
        params, seen = [], set()
        modules = [self.student] + [t for t in self.terms if isinstance(t, nn.Module)]
        for module in modules:
            for p in module.parameters():
                if p.requires_grad and id(p) not in seen:
                    seen.add(id(p))
                    params.append(p)
        return params

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "student": self.student.state_dict(),
            "terms": [t.state_dict() if isinstance(t, nn.Module) else None for t in self.terms],
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "history": self.history,
            "torch_rng": torch.get_rng_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.epoch = state["epoch"]
        self.student.load_state_dict(state["student"])
        for term, term_state in zip(self.terms, state["terms"]):
            if term_state is not None:
                term.load_state_dict(term_state)
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler and state["scheduler"]:
            self.scheduler.load_state_dict(state["scheduler"])
        self.history = list(state["history"])
        torch.set_rng_state(state["torch_rng"])

    def save_checkpoint(self, path: str | Path, loader=None) -> Path:
        """Write everything needed to resume (and the loader's shuffling state) to ``path``.
        With several ranks, rank 0 writes and the others do nothing (their state is the same)."""
        path = Path(path)
        if self.rank != 0:
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        state = self.state_dict()
        generator = getattr(loader, "generator", None)
        state["loader_rng"] = generator.get_state() if generator is not None else None
        torch.save(state, path)
        return path

    def load_checkpoint(self, path: str | Path, loader=None) -> None:
        """Continue from a checkpoint of :meth:`save_checkpoint`, written with any number of
        ranks. With several ranks, rank 0 reads the file and sends its contents to the others."""
        if self.world_size > 1:
            state = None
            if self.rank == 0:
                state = torch.load(path, map_location="cpu", weights_only=False)
            state = kdist.broadcast_object(state)
        else:
            state = torch.load(path, map_location=self.device, weights_only=False)
        self.load_state_dict(state)
        generator = getattr(loader, "generator", None)
        if generator is not None and state.get("loader_rng") is not None:
            generator.set_state(state["loader_rng"].cpu())

    # --- one step ---------------------------------------------------------------------------

    def _autocast(self):
        if self.use_amp:
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    def _teacher_logits(self, x: torch.Tensor, index, teacher_taps) -> torch.Tensor | None:
        if not self.teachers:
            return None
        if self.cache_teacher:
            if self._cache is not None and bool(self._cached[index].all()):
                return self._cache[index]
        with torch.no_grad(), self._autocast():
            outs = [t(x).float() for t in self.teachers]
        logits = outs[0] if len(outs) == 1 else self.combine_teachers(outs)
        if self.cache_teacher:
            if self._cache is None:  # first batch: now the number of classes is known
                shape = (self._cache_size, logits.shape[1])
                self._cache = torch.zeros(shape, device=self.device)
                self._cached = torch.zeros(self._cache_size, dtype=torch.bool, device=self.device)
            self._cache[index] = logits
            self._cached[index] = True
        return logits.detach()

    def step(self, batch, student_taps=None, teacher_taps=None) -> dict:
        """One optimisation step on ``batch = (x, y[, index])``; returns the losses as tensors."""
        x, y = batch[0], batch[1]
        index = batch[2] if len(batch) > 2 else None
        x = x.to(self.device, non_blocking=True)
        y = _as_class_index(y.to(self.device, non_blocking=True))
        if self.augment is not None:  # one view for the teacher and the student alike
            x = self.augment(x)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.cache_teacher:
            if index is None:
                raise ValueError(
                    "cache_teacher=True needs batches (x, y, index): use a TensorLoader with "
                    "return_index=True (the cache is keyed by dataset index)"
                )
            index = index.to(self.device, non_blocking=True)

        if teacher_taps is not None:
            teacher_taps.clear()
        if self._cache_complete:  # no teacher pass and no per-step check of the cache
            teacher_logits = self._cache.index_select(0, index)
        else:
            teacher_logits = self._teacher_logits(x, index, teacher_taps)
        if student_taps is not None:
            student_taps.clear()
        with self._autocast():
            student_logits = self._train_student(x)
        student_logits = student_logits.float()

        if self._loss_checked and self.loss is self._default_loss:
            out = _kd_loss_unchecked(
                student_logits, teacher_logits, y, self._all_labelled, **self.loss.keywords
            )
        else:
            out = self.loss(student_logits, teacher_logits, y)
            self._loss_checked = True
        parts = {}
        if isinstance(out, KDLossParts):
            total = out.total
            parts = {"hard": out.hard.detach(), "soft": out.soft.detach()}
        else:
            total = out
        if self.terms:
            b = Batch(
                x,
                y,
                index,
                student_logits,
                teacher_logits,
                dict(student_taps.features) if student_taps is not None else {},
                dict(teacher_taps.features) if teacher_taps is not None else {},
            )
            for k, term in enumerate(self.terms):
                value = term(b).float()
                parts[_term_name(term, k)] = value.detach()
                total = total + term.weight * value

        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        if self._term_params:  # adapters, outside the DDP wrapper: average their gradients
            kdist.all_reduce_grads(self._term_params)
        self.optimizer.step()
        parts["loss"] = total.detach()
        return parts

    # --- epochs -----------------------------------------------------------------------------

    def _prepare_cache(self, loader) -> None:
        if not self.cache_teacher:
            return
        if _is_random_loader(loader):
            raise ValueError(
                "cache_teacher=True was refused: the training loader applies a random "
                "transform, so the same index gives different inputs each epoch and cached "
                "teacher logits would not match them. Turn augmentation off, or the cache off "
                "(then the teacher sees the same augmented view as the student: consistent "
                "teaching; Distiller(augment=...) does the same from a plain loader)."
            )
        n = getattr(loader, "dataset_size", None)
        if n is None:
            n = len(loader.dataset)
        if self._cache is not None and self._cache.shape[0] != n:
            self._cache = self._cached = None  # a different dataset: start afresh
        self._cache_size = n
        self._update_cache_complete()

    def _update_cache_complete(self) -> None:
        """Note whether every sample's teacher logits are cached (one synchronisation)."""
        self._cache_complete = self._cached is not None and bool(self._cached.all())

    def _on_device(self, loader):
        """``loader`` as is, or, on CUDA, a ``TensorLoader`` over host tensors moved to the
        device once (kept for the next :meth:`fit`) when they take at most a quarter of the
        free memory: no host-device copy per batch."""
        if self.device.type != "cuda" or not isinstance(loader, TensorLoader) or loader.x.is_cuda:
            return loader
        if self._staged is not None and self._staged[0] is loader and self._staged[1] is loader.x:
            return self._staged[2]
        free, _ = torch.cuda.mem_get_info(self.device)
        if loader.x.nbytes + loader.y.nbytes > free // 4:
            return loader
        self._staged = None  # free the previous copy first
        self._staged = (loader, loader.x, loader.to(self.device))
        return self._staged[2]

    def fit(
        self,
        train_loader,
        epochs: int = 10,
        val_loader=None,
        checkpoint: str | Path | None = None,
        resume: bool = False,
    ) -> list[dict]:
        """Train for ``epochs`` epochs (in total: a resumed run continues up to that count).

        Evaluates on ``val_loader`` after each epoch. With ``checkpoint``, saves there after
        each epoch; with ``resume=True`` and an existing checkpoint, continues from it. Returns
        ``history``.
        """
        if resume and checkpoint is not None and self._checkpoint_exists(checkpoint):
            self.load_checkpoint(checkpoint, train_loader)
        self._prepare_cache(train_loader)
        train_loader = self._shard(self._on_device(train_loader))
        if train_loader is not self._checked_loader:  # new data: check its first batch
            self._loss_checked = False
            self._checked_loader = train_loader
            self._all_labelled = isinstance(train_loader, TensorLoader) and not bool(
                (train_loader.y == IGNORE_INDEX).any()
            )

        student_taps = (
            FeatureTaps(self.student, self.student_feature_names)
            if self.student_feature_names
            else None
        )
        teacher_taps = (
            FeatureTaps(self.teachers[0], self.teacher_feature_names, detach=True)
            if self.teacher_feature_names
            else None
        )
        steps = len(train_loader)
        bar = tqdm(
            total=max(epochs - self.epoch, 0) * steps,
            desc="distil" if self.teachers else "train",
            disable=not self.progress or self.rank != 0,
            leave=False,
        )
        try:
            while self.epoch < epochs:
                start = time.perf_counter()
                sampler = getattr(train_loader, "sampler", None)
                if hasattr(sampler, "set_epoch"):  # DistributedSampler: this epoch's order
                    sampler.set_epoch(self.epoch)
                self.student.train()
                for term in self.terms:
                    if isinstance(term, nn.Module):
                        term.train()
                steps, sizes = [], []  # each step's losses, on the device until the end
                for batch in train_loader:
                    steps.append(self.step(batch, student_taps, teacher_taps))
                    sizes.append(len(batch[1]))
                    bar.update(1)
                if self.scheduler is not None:
                    self.scheduler.step()
                self.epoch += 1
                record = {"epoch": self.epoch}
                means = _epoch_means(steps, sizes)
                if self.world_size > 1:  # the means over every rank's samples
                    means = kdist.all_reduce_mean(means, weight=sum(sizes))
                record.update(means)
                if self._default_loss is not None and not math.isfinite(
                    record.get("train_loss", 0.0)
                ):
                    raise ValueError(
                        f"the distillation loss of epoch {self.epoch} is not finite "
                        f"({record['train_loss']}): the student diverged (lower the learning "
                        "rate) or the inputs contain NaN or inf"
                    )
                if self.cache_teacher and not self._cache_complete:
                    if self.world_size > 1:
                        self._merge_cache_shards()
                    self._update_cache_complete()
                if self.world_size > 1:  # every rank evaluates with rank 0's BatchNorm stats
                    kdist.broadcast_module(self.student, buffers_only=True)
                if val_loader is not None:
                    metrics = self.evaluate(val_loader)
                    record["val_loss"] = metrics["loss"]
                    record["val_accuracy"] = metrics["accuracy"]
                record["seconds"] = time.perf_counter() - start
                self.history.append(record)
                bar.set_postfix(
                    {
                        k: f"{v:.3f}"
                        for k, v in record.items()
                        if k in ("train_loss", "val_accuracy")
                    }
                )
                if checkpoint is not None:
                    self.save_checkpoint(checkpoint, train_loader)
        finally:
            bar.close()
            for taps in (student_taps, teacher_taps):
                if taps is not None:
                    taps.remove()
        return self.history

    def evaluate(self, data) -> dict:
        """Accuracy and loss of the student on ``data`` (see :func:`evaluate`). With several
        ranks, each evaluates its share of ``data`` and the sums are added up over the ranks:
        the figures of the whole of ``data``, the same on every rank."""
        if self.world_size == 1:
            return evaluate(self.student, data, self.device)
        if isinstance(data, (tuple, list)) and len(data) == 2:
            data = TensorLoader(data[0], data[1], batch_size=512)
        elif hasattr(data, "x") and hasattr(data, "y") and not isinstance(data, TensorLoader):
            data = TensorLoader(data.x, data.y, batch_size=512)
        share = kdist.shard_loader(data, self.rank, self.world_size, train=False)
        loss, correct, count = _evaluation_sums(self.student, share, self.device)
        sums = torch.stack([loss.double(), correct.double(), loss.new_tensor(count).double()])
        loss, correct, count = kdist.all_reduce_sum(sums).tolist()
        count = max(count, 1)
        return {"loss": loss / count, "accuracy": correct / count}

    # --- several ranks ----------------------------------------------------------------------

    def _checkpoint_exists(self, path) -> bool:
        """Whether ``path`` exists (on rank 0, which reads it, when there are several ranks)."""
        exists = Path(path).exists()
        return kdist.broadcast_object(exists) if self.world_size > 1 else exists

    def _shard(self, loader):
        """This rank's share of the training ``loader`` (the same object across ``fit`` calls,
        so its first batch is checked once); ``loader`` itself in one process."""
        if self.world_size == 1:
            return loader
        if self._shards is None or self._shards[0] is not loader:
            share = kdist.shard_loader(loader, self.rank, self.world_size, train=True)
            self._shards = (loader, share)
        return self._shards[1]

    def _merge_cache_shards(self) -> None:
        """Add up the ranks' teacher-logit caches (each filled on its share of the epoch): one
        all-reduce of the logits and of the cached flags; a sample cached on two ranks (the
        padding of :func:`kdlib.distributed.shard_indices`) gets the mean of its two copies."""
        if self._cache is None:
            return
        flags = self._cached.to(self._cache.dtype)
        table = torch.cat([self._cache * flags[:, None], flags[:, None]], dim=1)
        table = kdist.all_reduce_sum(table)
        counts = table[:, -1]
        self._cache = table[:, :-1] / counts.clamp_min(1)[:, None]
        self._cached = counts > 0


def _adam(params: list, lr: float, weight_decay: float) -> torch.optim.Adam:
    """``Adam(params, lr, weight_decay)``, fused where PyTorch has a fused kernel for the device
    and dtype (the same update; on a CPU, 4x faster for an MLP, 7x for resnet8x4)."""
    try:
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=True)
    except RuntimeError:  # no fused kernel here: the loop over the parameters
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


def _epoch_means(steps: list[dict], sizes: list[int]) -> dict:
    """``{"train_<part>": mean}``: each step's loss parts (scalar tensors), weighted by batch
    size, averaged over the epoch in float64 and read back in one host-device synchronisation
    (``"loss"`` becomes ``"train_loss"``)."""
    if not steps:
        return {}
    keys = list(dict.fromkeys(k for parts in steps for k in parts))
    first = steps[0][keys[0]]
    zero = torch.zeros((), dtype=first.dtype, device=first.device)
    table = torch.stack([torch.stack([p.get(k, zero) for p in steps]) for k in keys])  # (K, S)
    weights = torch.tensor(sizes, dtype=torch.float64)
    means = ((table.cpu().double() @ weights) / max(sum(sizes), 1)).tolist()
    return {("train_loss" if k == "loss" else f"train_{k}"): m for k, m in zip(keys, means)}


def _kd_loss_unchecked(
    student_logits, teacher_logits, labels, all_labelled, temperature, alpha, return_parts=True
) -> KDLossParts:
    """:func:`kdlib.losses.kd_loss` on float32 logits ``(N, C)`` and labels ``(N,)``, without
    its input checks, so without a host-device synchronisation:
    ``alpha * CE(y, S) + (1 - alpha) * tau^2 * KL(p_T || p_S)``, KL per sample (batchmean) in
    log space, CE averaged over the labelled samples (0 when there are none; ``all_labelled``
    says the data has no unlabelled sample, which saves counting them). The Distiller uses it
    once ``kd_loss`` itself has checked a batch; its teacher logits carry no gradient."""
    tau = temperature
    log_p_s = F.log_softmax(student_logits / tau, dim=1)
    log_p_t = F.log_softmax(teacher_logits / tau, dim=1)
    soft = F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * (tau * tau)
    if all_labelled:
        hard = F.cross_entropy(student_logits, labels, ignore_index=IGNORE_INDEX)
    else:
        hard = _supervised_loss(student_logits, None, labels)
    return KDLossParts(alpha * hard + (1.0 - alpha) * soft, hard, soft)


def _supervised_loss(student_logits, teacher_logits, labels, label_smoothing=0.0):
    """Cross-entropy averaged over the labelled samples, 0 (zero gradient) when none is; a sum
    and a count, so no host-device synchronisation."""
    total = F.cross_entropy(
        student_logits,
        labels,
        ignore_index=IGNORE_INDEX,
        label_smoothing=label_smoothing,
        reduction="sum",
    )
    return total / (labels != IGNORE_INDEX).sum().clamp_min(1)


def train_supervised(
    model: nn.Module,
    train_loader,
    epochs: int = 10,
    val_loader=None,
    *,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    optimizer=None,
    lr_schedule: Callable | None = None,
    label_smoothing: float = 0.0,
    device: str | torch.device | None = None,
    amp: bool = False,
    channels_last: bool = False,
    progress: bool | None = None,
    distributed: bool | str = "auto",
) -> list[dict]:
    """Train ``model`` on the labels alone (a teacher, or a baseline student); returns history.

    The same loop as :class:`Distiller` without a teacher: cross-entropy (optionally with label
    smoothing), samples labelled -1 skipped. Under torchrun, on all the ranks (``distributed``).
    """
    trainer = Distiller(
        model,
        None,
        optimizer=optimizer,
        lr=lr,
        weight_decay=weight_decay,
        lr_schedule=lr_schedule,
        device=device,
        amp=amp,
        channels_last=channels_last,
        label_smoothing=label_smoothing,
        progress=progress,
        distributed=distributed,
    )
    return trainer.fit(train_loader, epochs=epochs, val_loader=val_loader)
