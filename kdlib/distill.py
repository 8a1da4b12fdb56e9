"""The training loop of the course: supervised training and distillation in one place.

The seed workflow, as :class:`Distiller` runs it::

    1. train the teacher               train_supervised(teacher, ...)
    2. freeze the teacher              freeze(teacher): eval mode, no gradients, stays in eval
    3. for each batch:
         teacher produces soft labels  with torch.no_grad(): z_T = teacher(x)
         student predicts              z_S = student(x)
         compute distillation loss     kd_loss(z_S, z_T, y, temperature, alpha) (+ extra terms)
         update student                loss.backward(); optimizer.step()

Extra loss terms (feature, relation, ...) plug in through ``terms=``: any callable
``term(batch) -> scalar tensor`` with a ``weight`` attribute, and optional ``student_features``
/ ``teacher_features`` lists of module names to tap (see ``kdlib.features``). A term that is an
``nn.Module`` with parameters (a FitNets adapter, say) is moved to the device and trained with
the student. ``batch.check`` says whether the term should check its inputs (the first batch of
a loader, see ``kdlib.training.FirstBatchCheck``).

Where the rest lives: the device and seeds in ``kdlib.runtime``, :func:`kdlib.metrics.evaluate`
in ``kdlib.metrics``, the teacher-logit cache in ``kdlib.logit_cache``, the optimiser and the
epoch means in ``kdlib.training``, the process group in ``kdlib.distributed``.

Under ``torchrun`` (``torch.distributed``), the same code trains on several processes: each
rank trains on ``cuda:LOCAL_RANK`` (for ``device`` ``"auto"`` or ``"cuda"``), the student
wrapped in ``DistributedDataParallel`` (``student`` stays the bare model: its ``state_dict`` has
no ``module.`` prefix; the frozen teachers stay unwrapped); the parameters of loss terms
(adapters) are broadcast from rank 0 once and their gradients averaged at every step. ``fit``
deals each epoch out (``kdlib.distributed.shard_loader``: every rank shuffles with the same
seed and takes ``order[rank::N]``, padded to equal shares): ``batch_size`` is per rank. The
logged losses are the means over all ranks' samples, the validation metrics are computed on
disjoint shares of the validation data and summed; the bar and the checkpoints are rank 0's;
``resume`` reads the checkpoint on rank 0 and sends it to the others. With ``cache_teacher``,
each rank computes the teacher's logits of its share and the caches are merged at the end of
the epoch. BatchNorm statistics are rank 0's (DistributedDataParallel broadcasts them).
"""

from __future__ import annotations

import copy
import inspect
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import ExitStack, nullcontext
from functools import partial
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from kdlib import distributed as kdist
from kdlib.data import on_device, tensor_pair, training_loader
from kdlib.features import FeatureTaps
from kdlib.logit_cache import TeacherLogitCache
from kdlib.losses import KDLossParts, hard_loss, kd_loss
from kdlib.metrics import as_class_index, evaluate
from kdlib.population import (
    SeedTable,
    check_seeds,
    distill_population,
    terms_tapping_unnamed_features,
    train_population,
    train_seed_by_seed,
)
from kdlib.runtime import fit_threads_to, pick_device, progress_enabled, seed_everything
from kdlib.training import (
    Batch,
    FirstBatchCheck,
    check_finite,
    epoch_means,
    freeze,
    is_frozen,
    make_optimizer,
    read_checkpoint,
    stay_in_eval,
    write_checkpoint,
)

__all__ = ["freeze", "is_frozen", "stay_in_eval", "Batch", "Distiller", "train_supervised"]

_SEEDS_DEFAULTS = {"amp": False, "channels_last": False, "augment": None, "combine_teachers": None}


def _refuse_with_seeds(**given) -> None:
    """``ValueError`` naming the first argument that ``seeds=`` (a population) cannot honour."""
    for name, value in given.items():
        if name == "distributed":
            if value is True:
                raise ValueError(
                    "distributed=True cannot be combined with seeds=: a population trains in "
                    "one process (run one population per process instead)"
                )
        elif value is not _SEEDS_DEFAULTS[name] and value != _SEEDS_DEFAULTS[name]:
            raise ValueError(
                f"{name}={value!r} cannot be combined with seeds= (the population's loop does "
                f"not have it): leave {name} at its default, or train the seeds one by one"
            )


def labels_only_loss(student_logits, teacher_logits, labels, label_smoothing=0.0, check=True):
    """The loss without a teacher: :func:`kdlib.losses.hard_loss` (``teacher_logits`` unused)."""
    return hard_loss(student_logits, labels, label_smoothing, check=check)


def _takes_check(loss: Callable) -> bool:
    try:
        return "check" in inspect.signature(loss).parameters
    except (TypeError, ValueError):  # a builtin without a signature
        return False


def _size(data) -> int:
    """Samples in a ``Split`` or an ``(x, y)`` pair, else batches (a loader)."""
    pair = tensor_pair(data)
    return len(pair[1]) if pair is not None else len(data)


class Distiller:
    """Train ``student`` from ``teacher`` (and the labels) with KD and optional extra terms.

    Args:
        student: the model being trained.
        teacher: a trained model, frozen here (:func:`freeze`); a list of teachers needs
            ``combine_teachers`` (list of ``(B, C)`` logits -> ``(B, C)``, see
            ``kdlib.multi_teacher``); ``None`` trains on the labels alone, in the same loop.
        temperature, alpha: of :func:`kdlib.losses.kd_loss`; **alpha weights the hard term**.
        loss: replaces ``kd_loss``: ``loss(student_logits, teacher_logits, labels)`` -> a scalar
            or ``KDLossParts``; one with a ``check`` keyword gets ``check=False`` after a
            loader's first batch (``self.first_batch``, see ``kdlib.training``).
        terms: extra loss terms (see the module docstring), added as ``term.weight * term(b)``.
        optimizer, lr, weight_decay, lr_schedule: an optimizer or a factory ``params -> opt``
            (default: fused Adam, ``kdlib.training.adam``); a factory ``opt -> scheduler``.
        device: default :func:`kdlib.runtime.pick_device`; on CUDA a ``TensorLoader`` over host
            tensors that fit is copied there once (``kdlib.data.on_device``).
        amp, channels_last: bf16 autocast (losses stay float32) and channels-last, CUDA only.
        cache_teacher: the teacher's logits computed once per training sample and looked up
            later (``kdlib.logit_cache.TeacherLogitCache``): needs batches ``(x, y, index)``.
        augment: consistent teaching (Beyer et al., "Knowledge distillation: A good teacher
            is patient and consistent", CVPR 2022, arXiv:2106.05237): ``x -> x'`` applied to
            each batch on the device, so teacher and student see the same view.
        label_smoothing: of the hard term when there is no teacher. progress: a tqdm bar
            (``None``: where a person watches, ``kdlib.runtime.progress_enabled``).
        distributed: ``"auto"``, ``True`` or ``False`` (``kdlib.distributed.join_process_group``).

    ``fit`` takes a loader, a ``kdlib.data.Split`` or an ``(x, y)`` pair; ``history`` then holds
    one dict per epoch: ``epoch``, ``train_loss`` (``train_hard``, ``train_soft``, one entry per
    term), ``val_loss``, ``val_accuracy``, ``seconds``. No step reads a value back from the
    device (``benchmarks/README.md``): the losses are read once per epoch, and an epoch whose
    mean loss is not finite raises ``ValueError`` (the unchecked steps' safety net).
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
        seeds: Sequence[int] | None = None,
        shuffle: str = "paired",
    ):
        self.seeds = None
        if seeds is not None:
            self._plan_population(
                student,
                teacher,
                seeds,
                shuffle,
                dict(
                    temperature=temperature,
                    alpha=alpha,
                    loss=loss,
                    terms=terms,
                    optimizer=optimizer,
                    lr=lr,
                    weight_decay=weight_decay,
                    lr_schedule=lr_schedule,
                    device=device,
                    cache_teacher=cache_teacher,
                    label_smoothing=label_smoothing,
                ),
            )
            _refuse_with_seeds(
                combine_teachers=combine_teachers,
                amp=amp,
                channels_last=channels_last,
                augment=augment,
                distributed=distributed,
            )
            return
        self.world_size, self.rank = kdist.join_process_group(distributed)
        self._place_models(student, teacher, combine_teachers, device, amp, channels_last)
        self._choose_loss(loss, temperature, alpha, label_smoothing)
        self._attach_terms(terms)
        # the module of the training forward pass (the student in DistributedDataParallel with
        # several ranks) and the terms' parameters, whose gradients are averaged over the ranks
        self._train_student, self._term_params = kdist.wrap_for_training(
            self.student, self.terms, self.device, self.world_size
        )
        if augment is not None and not callable(augment):
            raise ValueError(f"augment must be a function x -> x', got {augment!r}")
        self.augment, self.cache_teacher = augment, bool(cache_teacher)
        if self.cache_teacher:
            TeacherLogitCache.check_usable(augment, self.teachers, self.teacher_feature_names)
        self.logit_cache = TeacherLogitCache(self.device) if self.cache_teacher else None
        self.optimizer = make_optimizer(optimizer, self.trainable_parameters(), lr, weight_decay)
        self.scheduler = lr_schedule(self.optimizer) if lr_schedule is not None else None
        self.progress = progress_enabled(progress)
        self.first_batch = FirstBatchCheck()
        self.history: list[dict] = []
        self.epoch = 0
        self._data = None  # (fit's data, its x, the loader made of it): see _training_data
        fit_threads_to(self.student, *self.teachers)

    # --- construction, step by step ---------------------------------------------------------

    def _place_models(self, student, teacher, combine_teachers, device, amp, channels_last):
        """The device (``cuda:LOCAL_RANK`` under torchrun), the student and the teachers moved
        there, the teachers frozen (see :func:`freeze`); several need ``combine_teachers``."""
        self.device = pick_device(device)
        if self.world_size > 1:  # one GPU per process: cuda:LOCAL_RANK
            self.device = kdist.local_device(self.device)
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)  # where NCCL's collectives run
        self.use_amp = bool(amp) and self.device.type == "cuda"
        self.channels_last = bool(channels_last) and self.device.type == "cuda"
        self.student = student
        self.teachers = [teacher] if isinstance(teacher, nn.Module) else list(teacher or [])
        if len(self.teachers) > 1 and combine_teachers is None:
            raise ValueError(
                f"{len(self.teachers)} teachers were given: pass combine_teachers (e.g. "
                f"kdlib.multi_teacher.average_logits) to say how to combine them"
            )
        for model in [student, *self.teachers]:
            model.to(self.device)
            if self.channels_last:
                model.to(memory_format=torch.channels_last)
        for t in self.teachers:
            freeze(t)
        self.combine_teachers = combine_teachers

    def _choose_loss(self, loss, temperature, alpha, label_smoothing) -> None:
        # a teacher ensemble mixes soft targets at its own tau: it must be the loss's tau
        combine_tau = getattr(self.combine_teachers, "temperature", None)
        if loss is None and combine_tau is not None and float(combine_tau) != float(temperature):
            raise ValueError(
                f"combine_teachers mixes the teachers at temperature {combine_tau:g} but the "
                f"Distiller's temperature is {temperature:g}: use the same tau for both"
            )
        if loss is None and self.teachers:
            loss = partial(kd_loss, temperature=temperature, alpha=alpha, return_parts=True)
        elif loss is None:
            loss = partial(labels_only_loss, label_smoothing=label_smoothing)
        self.loss, self.loss_takes_check = loss, _takes_check(loss)
        self.temperature, self.alpha = temperature, alpha

    def _attach_terms(self, terms) -> None:
        self.terms = list(terms)
        for term in self.terms:
            if not hasattr(term, "weight"):
                raise ValueError(f"term {term!r} has no 'weight' attribute")
            if isinstance(term, nn.Module):
                term.to(self.device)
        self.term_names = [
            getattr(t, "name", None) or f"{type(t).__name__.lower()}{k}"
            for k, t in enumerate(self.terms)
        ]
        tapped = lambda side: sorted({n for t in self.terms for n in getattr(t, side, ())})  # noqa: E731
        self.student_feature_names = tapped("student_features")
        self.teacher_feature_names = tapped("teacher_features")
        if self.teacher_feature_names and len(self.teachers) != 1:
            raise ValueError("terms that tap teacher features need exactly one teacher")

    # --- parameters and state ---------------------------------------------------------------

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """The student's parameters and those of the terms (adapters), each once."""
        modules = [self.student] + [t for t in self.terms if isinstance(t, nn.Module)]
        params = [p for m in modules for p in m.parameters() if p.requires_grad]
        return list({id(p): p for p in params}.values())

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
        """Write everything needed to resume (and ``loader``'s shuffling state) to ``path``;
        with several ranks, rank 0 writes (the others' state is the same)."""
        if self.rank == 0:
            write_checkpoint(path, self.state_dict(), loader)
        return Path(path)

    def load_checkpoint(self, path: str | Path, loader=None) -> None:
        """Continue from :meth:`save_checkpoint`'s file, written with any number of ranks."""
        self.load_state_dict(read_checkpoint(path, self.device, loader, self.world_size > 1))

    # --- one step ---------------------------------------------------------------------------

    def _autocast(self):
        if self.use_amp:
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    def _teacher_logits(self, x: torch.Tensor, index) -> torch.Tensor | None:
        if not self.teachers:
            return None
        if self.logit_cache is not None and (cached := self.logit_cache.lookup(index)) is not None:
            return cached
        with torch.no_grad(), self._autocast():
            outs = [t(x).float() for t in self.teachers]
        logits = outs[0] if len(outs) == 1 else self.combine_teachers(outs)
        if self.logit_cache is not None:
            self.logit_cache.store(index, logits)
        return logits.detach()

    def step(self, batch, student_taps=None, teacher_taps=None) -> dict:
        """One optimisation step on ``batch = (x, y[, index])``; returns the losses as tensors."""
        x = batch[0].to(self.device, non_blocking=True)
        y = as_class_index(batch[1].to(self.device, non_blocking=True))
        index = batch[2].to(self.device, non_blocking=True) if len(batch) > 2 else None
        if self.augment is not None:  # one view for the teacher and the student alike
            x = self.augment(x)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        for taps in (teacher_taps, student_taps):
            if taps is not None:
                taps.clear()
        teacher_logits = self._teacher_logits(x, index)
        with self._autocast():
            student_logits = self._train_student(x)
        student_logits = student_logits.float()

        check = self.first_batch.pending
        options = {} if not self.loss_takes_check else {"check": check}
        out = self.loss(student_logits, teacher_logits, y, **options)
        total, parts = out, {}
        if isinstance(out, KDLossParts):
            total, parts = out.total, {"hard": out.hard.detach(), "soft": out.soft.detach()}
        if self.terms:
            s_feats = dict(student_taps.features) if student_taps is not None else {}
            t_feats = dict(teacher_taps.features) if teacher_taps is not None else {}
            b = Batch(x, y, index, student_logits, teacher_logits, s_feats, t_feats, check)
            for name, term in zip(self.term_names, self.terms):
                value = term(b).float()
                parts[name] = value.detach()
                total = total + term.weight * value

        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        if self._term_params:  # adapters, outside the DDP wrapper: average their gradients
            kdist.all_reduce_grads(self._term_params)
        self.optimizer.step()
        self.first_batch.done()
        parts["loss"] = total.detach()
        return parts

    # --- epochs -----------------------------------------------------------------------------

    def fit(
        self, train_loader, epochs=10, val_loader=None, checkpoint=None, resume=False
    ) -> list[dict]:
        """Train for ``epochs`` epochs (in total: a resumed run continues up to that count).

        ``train_loader``/``val_loader``: loaders, ``kdlib.data.Split`` s or ``(x, y)`` pairs (a
        training split is shuffled in batches of 64). Evaluates on ``val_loader`` after each
        epoch (an empty one is refused). With ``checkpoint``, saves there after each epoch;
        with ``resume=True`` and an existing checkpoint, continues from it. Returns ``history``.
        """
        if val_loader is not None and _size(val_loader) == 0:
            raise ValueError("val_loader has no sample: pass val_loader=None for no validation")
        if self.seeds is not None:
            if checkpoint is not None or resume:
                raise ValueError("checkpoint and resume cannot be combined with seeds=")
            return self._fit_population(train_loader, epochs, val_loader)
        train_loader = self._training_data(train_loader)
        if resume and checkpoint is not None and self._checkpoint_exists(checkpoint):
            self.load_checkpoint(checkpoint, train_loader)
        if self.logit_cache is not None:
            self.logit_cache.prepare(train_loader)
        self.first_batch.start(train_loader)
        s_names, t_names = self.student_feature_names, self.teacher_feature_names
        student_taps = FeatureTaps(self.student, s_names) if s_names else None
        teacher_taps = FeatureTaps(self.teachers[0], t_names, detach=True) if t_names else None
        total = max(epochs - self.epoch, 0) * len(train_loader)
        hide = not self.progress or self.rank != 0
        bar = tqdm(
            total=total, desc="distil" if self.teachers else "train", disable=hide, leave=False
        )
        try:
            while self.epoch < epochs:
                start = time.perf_counter()
                record = self._train_epoch(train_loader, student_taps, teacher_taps, bar)
                if val_loader is not None:
                    with ExitStack() as untapped:  # no feature is captured while evaluating
                        for taps in (student_taps, teacher_taps):
                            if taps is not None:
                                untapped.enter_context(taps.paused())
                        metrics = self.evaluate(val_loader)
                    record.update(val_loss=metrics["loss"], val_accuracy=metrics["accuracy"])
                record["seconds"] = time.perf_counter() - start
                self.history.append(record)
                bar.set_postfix(
                    {k: f"{record[k]:.3f}" for k in ("train_loss", "val_accuracy") if k in record}
                )
                if checkpoint is not None:
                    self.save_checkpoint(checkpoint, train_loader)
        finally:
            bar.close()
            for taps in (student_taps, teacher_taps):
                if taps is not None:
                    taps.remove()
        return self.history

    def _train_epoch(self, train_loader, student_taps, teacher_taps, bar) -> dict:
        """One pass over ``train_loader``; the epoch's record (mean losses) so far."""
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
        means = epoch_means(steps, sizes)
        if self.world_size > 1:  # the means over every rank's samples
            means = kdist.all_reduce_mean(means, weight=sum(sizes))
        if self.loss_takes_check and "train_loss" in means:  # the unchecked steps' safety net
            check_finite(means["train_loss"], self.epoch)
        if self.logit_cache is not None:
            self.logit_cache.end_epoch(self.world_size)
        if self.world_size > 1:  # every rank evaluates with rank 0's BatchNorm statistics
            kdist.broadcast_module(self.student, buffers_only=True)
        return {"epoch": self.epoch, **means}

    def evaluate(self, data) -> dict:
        """Accuracy and loss of the student on ``data`` (see :func:`kdlib.metrics.evaluate`):
        with several ranks, each evaluates its share and the sums are added over the ranks."""
        return evaluate(self.student, data, self.device, distributed=self.world_size > 1)

    # --- where the data is ------------------------------------------------------------------

    def _training_data(self, data):
        """``data`` as the loader this rank trains on (see :func:`kdlib.data.training_loader`,
        :func:`kdlib.data.on_device`, :func:`kdlib.distributed.shard_loader`), made once and
        kept while ``data`` (and its tensors) stay the same objects: the next ``fit`` keeps
        the shuffling generator, the device copy and the first-batch check."""
        kept = self._data
        if kept is None or kept[0] is not data or kept[1] is not getattr(data, "x", None):
            self._data = None  # free a previous device copy before making another
            loader = on_device(training_loader(data, return_index=self.cache_teacher), self.device)
            if self.world_size > 1:
                loader = kdist.shard_loader(loader, self.rank, self.world_size, train=True)
            self._data = kept = (data, getattr(data, "x", None), loader)
        return kept[2]

    def _plan_population(self, student, teacher, seeds, shuffle, args: dict):
        """``seeds=``: check the arguments now and keep them (``args``: the loop's settings,
        by name) for :meth:`_fit_population`."""
        self.seeds = check_seeds(seeds)
        if isinstance(student, nn.Module) or not callable(student):
            raise ValueError(
                f"student: with seeds=, pass a function () -> nn.Module that builds one seed's "
                f"model (called right after seed_everything(seed)), e.g. lambda: "
                f"MLP(64, (32,), 10); got {type(student).__name__}"
            )
        if teacher is not None and not isinstance(teacher, nn.Module):
            raise ValueError(
                f"teacher: with seeds=, one trained nn.Module or None, got {type(teacher).__name__}"
            )
        if shuffle not in ("paired", "per-seed"):
            raise ValueError(f"shuffle must be 'paired' or 'per-seed', got {shuffle!r}")
        if isinstance(args["optimizer"], torch.optim.Optimizer):
            raise ValueError(
                "optimizer: with seeds=, a factory params -> optimizer (the population's "
                "parameters are made later), not an optimizer"
            )
        if teacher is not None and args["label_smoothing"]:
            raise ValueError("label_smoothing applies without a teacher only (teacher=None)")
        self.student, self.teacher, self.shuffle = student, teacher, shuffle
        self.history = []
        self.population = None
        self._population_args = args

    def _fit_population(self, train_loader, epochs, val_loader):
        """The seeds trained as one population (:mod:`kdlib.population`), or, for terms that
        tap modules other than the model's named features, one Distiller per seed."""
        a = dict(self._population_args)
        loader = training_loader(train_loader, return_index=a["cache_teacher"])
        common = dict(
            optimizer=a["optimizer"],
            lr=a["lr"],
            weight_decay=a["weight_decay"],
            lr_schedule=a["lr_schedule"],
            shuffle=self.shuffle,
            device=a["device"],
        )
        if self.teacher is None:
            pop = train_population(
                self.student,
                self.seeds,
                loader,
                epochs,
                val_loader,
                label_smoothing=a["label_smoothing"],
                **common,
            )
        elif self._taps_other_modules(a["terms"]):
            pop = self._fit_seed_by_seed(loader, epochs, val_loader, a)
        else:
            pop = distill_population(
                self.student,
                self.seeds,
                self.teacher,
                loader,
                epochs,
                val_loader,
                temperature=a["temperature"],
                alpha=a["alpha"],
                loss=a["loss"],
                terms=a["terms"],
                cache_teacher=a["cache_teacher"],
                **common,
            )
        self.population, self.history = pop, pop.history
        return SeedTable(pop, val_loader)

    def _taps_other_modules(self, terms) -> bool:
        terms = terms() if callable(terms) else list(terms)
        with torch.random.fork_rng(devices=[]):
            probe = self.student()
        return bool(terms_tapping_unnamed_features(terms, probe, self.teacher))

    def _fit_seed_by_seed(self, loader, epochs, val_loader, a):
        """One Distiller per seed (it taps any module), the trained models then stacked into a
        population (:func:`kdlib.population.train_seed_by_seed`)."""
        make_terms = a["terms"] if callable(a["terms"]) else (lambda: copy.deepcopy(a["terms"]))
        kwargs = {
            k: a[k]
            for k in ("temperature", "alpha", "loss", "optimizer", "lr", "weight_decay")
            + ("lr_schedule", "device", "cache_teacher")
        }

        def train_one(seed, own_loader):
            seed_everything(seed)
            model = self.student()
            one = Distiller(model, self.teacher, terms=make_terms(), **kwargs)
            return model, one.fit(own_loader, epochs, val_loader=val_loader)

        pop = train_seed_by_seed(self.seeds, loader, epochs, val_loader, self.shuffle, train_one)
        pop.model_fn = self.student
        return pop

    def _checkpoint_exists(self, path) -> bool:  # (rank 0's answer, with several ranks)
        exists = Path(path).exists()
        return kdist.broadcast_object(exists) if self.world_size > 1 else exists


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
    seeds: Sequence[int] | None = None,
    shuffle: str = "paired",
):
    """Train ``model`` on the labels alone (a teacher, or a baseline student); returns history.

    The same loop as :class:`Distiller` without a teacher: cross-entropy (optionally with label
    smoothing), samples labelled -1 skipped; ``train_loader`` a loader, a ``Split`` or an
    ``(x, y)`` pair. Under torchrun, on all the ranks (``distributed``).

    ``seeds``: train one model per seed, all at once (``kdlib.population``): ``model`` is then
    a function ``() -> nn.Module`` called right after ``seed_everything(seed)``, every seed
    sees the same batches (``shuffle="paired"``) or the loader's shuffle with its own seed
    (``"per-seed"``), and the result is a :class:`kdlib.population.SeedTable`, one row per
    seed (its ``population`` holds the trained models). Each model equals that seed trained
    alone by this function.
    """
    if seeds is not None:
        _refuse_with_seeds(amp=amp, channels_last=channels_last, distributed=distributed)
        table = Distiller(
            model,
            None,
            optimizer=optimizer,
            lr=lr,
            weight_decay=weight_decay,
            lr_schedule=lr_schedule,
            device=device,
            label_smoothing=label_smoothing,
            seeds=seeds,
            shuffle=shuffle,
        )
        return table.fit(train_loader, epochs=epochs, val_loader=val_loader)
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
