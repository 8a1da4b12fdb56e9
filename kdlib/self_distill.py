"""Self-distillation: born-again networks, a model taught by an earlier copy of itself.

Born-Again Networks (BAN; Furlanello, Lipton, Tschannen, Itti & Anandkumar, ICML 2018):

    generation 0   trained on the labels alone                 train_supervised(m0, ...)
    generation k   same architecture, fresh initialisation,     Distiller(m_k, teacher=m_{k-1})
                   distilled from generation k - 1 (frozen)

so generation ``k`` minimises ``alpha * CE(y, z_k) + (1 - alpha) * tau^2 * KL(p_{k-1} || p_k)``
(**alpha weights the hard term**, as everywhere in kdlib). The paper distils with tau = 1 and
the teacher's outputs only (alpha = 0 here); its students match or beat their teachers on
CIFAR-100. BANE, the ensemble of the generations, averages their predicted probabilities:
:func:`ensemble_predictions`.

``make_model`` may also be a list of constructors, one per generation, for a chain of shrinking
students ("the model teaches its smaller version"). Generation 0 may itself be distilled from
an outside ``teacher``. Every generation is trained by :func:`kdlib.distill.train_supervised`
or :class:`kdlib.distill.Distiller`: there is no separate training loop here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import nn

from kdlib.distill import Distiller, train_supervised
from kdlib.metrics import predict
from kdlib.multi_teacher import combine_logits
from kdlib.runtime import pick_device, seed_everything

__all__ = ["Generation", "born_again", "ensemble_predictions"]


class Generation(NamedTuple):
    """One born-again generation: the trained (then frozen) ``model`` and its ``history``."""

    model: nn.Module
    history: list[dict]


def born_again(
    make_model: Callable[[], nn.Module] | Sequence[Callable[[], nn.Module]],
    train_loader,
    generations: int = 3,
    epochs: int = 10,
    val_loader=None,
    *,
    teacher: nn.Module | None = None,
    temperature: float = 4.0,
    alpha: float = 0.5,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    seed: int | None = None,
    device: str | torch.device | None = None,
    progress: bool | None = None,
    **distiller_kwargs,
) -> list[Generation]:
    """Train ``generations`` born-again generations; returns ``[Generation(model, history)]``.

    Args:
        make_model: builds a fresh, untrained model; or a list of ``generations``
            constructors, one per generation (e.g. ever smaller students).
        train_loader: yields ``(x, y[, index])``; used by every generation.
        generations: how many models to train (>= 1), generation 0 included.
        epochs: epochs per generation.
        val_loader: evaluated after each epoch (history ``val_accuracy``).
        teacher: if given, generation 0 is distilled from it instead of trained on labels.
        temperature, alpha: of the distillation (alpha weights the hard cross-entropy term);
            ``alpha = 0`` learns from the previous generation only.
        lr, weight_decay: Adam's, for every generation.
        seed: if given, ``seed_everything(seed + k)`` before building generation ``k``.
        device: where to train.
        progress: tqdm bars; ``None``: where a person watches (see
            :func:`kdlib.runtime.progress_enabled`).
        **distiller_kwargs: passed on to every :class:`~kdlib.distill.Distiller` (e.g.
            ``cache_teacher=True``, ``optimizer=...``).

    Each generation becomes the next one's teacher, so it is frozen (eval mode, no gradients)
    when the next generation starts; the last one is returned unfrozen.
    """
    if generations < 1:
        raise ValueError(f"generations must be >= 1, got {generations}")
    if callable(make_model):
        makers = [make_model] * generations
    else:
        makers = list(make_model)
        if len(makers) != generations or not all(callable(m) for m in makers):
            raise ValueError(
                f"make_model must be a callable or a list of {generations} callables (one per "
                f"generation), got {len(makers)} items"
            )
    device = pick_device(device if device is not None else "auto")
    options = dict(lr=lr, weight_decay=weight_decay, device=device, progress=progress)
    out: list[Generation] = []
    previous = teacher
    for k, maker in enumerate(makers):
        if seed is not None:
            seed_everything(seed + k)
        model = maker()
        if not isinstance(model, nn.Module):
            raise ValueError(f"make_model for generation {k} returned {type(model).__name__}")
        if previous is None:
            history = train_supervised(model, train_loader, epochs, val_loader, **options)
        else:
            trainer = Distiller(
                model,
                previous,
                temperature=temperature,
                alpha=alpha,
                **options,
                **distiller_kwargs,
            )
            history = trainer.fit(train_loader, epochs=epochs, val_loader=val_loader)
        out.append(Generation(model, history))
        previous = model
    return out


def ensemble_predictions(models: Sequence[nn.Module], data, device=None):
    """BANE: the generations' averaged probabilities, as ``(log p_mean (N, C), labels (N,))``.

    ``log p_mean = log(1/K sum_k softmax(z_k))``, i.e. :func:`kdlib.multi_teacher.combine_logits`
    at tau = 1: a uniform multi-teacher ensemble. Its arg-max is the ensemble's prediction, so
    ``kdlib.metrics.accuracy(*ensemble_predictions(models, test))`` scores it. ``data``: a
    loader, ``Split`` or ``(x, y)`` pair, as for :func:`kdlib.metrics.predict`.
    """
    models = list(models)
    if not models:
        raise ValueError("ensemble_predictions needs at least one model")
    outputs = [predict(m, data, device) for m in models]
    labels = outputs[0][1]
    logits = [z.to(labels.device) for z, _ in outputs]
    return combine_logits(logits, temperature=1.0), labels
