"""Multi-teacher distillation: several teachers, one set of soft targets.

Each teacher ``k`` gives logits ``z_k`` ``(N, C)``; at temperature tau its soft targets are
``p_k = softmax(z_k / tau)``. The ensemble's soft targets mix them with weights that sum to one:

    p_ens(x) = sum_k w_k(x) * p_k(x),     w_k(x) >= 0,   sum_k w_k(x) = 1

Three rules for the weights:

- ``weights=None``: plain averaging, ``w_k = 1 / K`` (You et al. 2017, "Learning from multiple
  teacher networks"; Hinton et al. 2015 distil an ensemble the same way);
- a sequence of ``K`` numbers: fixed weights, normalised to sum to one (e.g. set from each
  teacher's validation accuracy);
- ``"confidence"``: per-sample weights from how sure each teacher is on *that* sample, measured
  at tau = 1 whatever the distillation temperature. ``confidence="max_prob"`` (the default)
  uses the top-1 probability, ``w_k(x) = c_k(x) / sum_j c_j(x)`` with
  ``c_k(x) = max_c softmax(z_k(x))_c``; ``confidence="entropy"`` uses the negative entropy,
  ``w_k(x) = softmax_k(-H(softmax(z_k(x))))``, as in entropy-based adaptive KD (Kwon et al.,
  ICASSP 2020). Both need no labels, so they also work on unlabelled transfer data;
  CA-MKD (Zhang, Chen & Wang, ICASSP 2022, "Confidence-aware multi-teacher KD") instead
  weights teachers by their cross-entropy with the true label.

The Distiller and :func:`kdlib.losses.kd_loss` take teacher *logits*, so :func:`combine_logits`
turns the ensemble back into logits, ``z_ens = tau * log(p_ens)``, computed in log space
(``logsumexp``), for which ``softmax(z_ens / tau) == p_ens``. Then
``kd_loss(z_S, z_ens, y, tau, alpha)`` is KD against the ensemble.

**The temperature must be the same in both places.** The ensemble is averaged *at* tau, and the
loss softens ``z_ens`` by tau again; with a different tau' in the loss the student would see
``p_ens ** (tau / tau')`` renormalised, not ``p_ens``. :func:`teacher_ensemble` returns a
callable that carries its ``temperature`` so that the Distiller can check it::

    combine = teacher_ensemble(temperature=4.0, weights="confidence")
    Distiller(student, [t1, t2, t3], temperature=4.0, alpha=0.5, combine_teachers=combine)

Teachers may differ in architecture; they must agree on the class count and see the same batch
(a ``ValueError`` names the teacher and the counts otherwise).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from kdlib.losses import (
    check_logits,
    check_temperature,
    entropy,
    kd_loss,
    log_softmax_with_temperature,
)

__all__ = [
    "CONFIDENCE_RULES",
    "check_teacher_logits",
    "teacher_weights",
    "confidence_weights",
    "ensemble_soft_targets",
    "log_ensemble_targets",
    "combine_logits",
    "average_logits",
    "TeacherEnsemble",
    "teacher_ensemble",
    "CombinedTeachers",
    "multi_teacher_kd_loss",
]

CONFIDENCE_RULES = ("max_prob", "entropy")


def check_teacher_logits(teacher_logits: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Check a non-empty list of ``(N, C)`` logits with the same ``N`` and ``C``; return it.

    Raises ``ValueError`` naming the first teacher whose class count or batch size differs
    from teacher 0's.
    """
    if isinstance(teacher_logits, torch.Tensor) or not isinstance(teacher_logits, Sequence):
        raise ValueError(
            "teacher_logits must be a list of (N, C) tensors, one per teacher, got "
            f"{type(teacher_logits).__name__}"
        )
    if len(teacher_logits) == 0:
        raise ValueError("teacher_logits is empty: at least one teacher is needed")
    for k, z in enumerate(teacher_logits):
        check_logits(z, f"teacher_logits[{k}]")
    n, c = teacher_logits[0].shape
    for k, z in enumerate(teacher_logits[1:], start=1):
        if z.shape[1] != c:
            raise ValueError(
                f"class-count mismatch: teacher {k} has {z.shape[1]} classes but teacher 0 "
                f"has {c}; all teachers must predict the same classes"
            )
        if z.shape[0] != n:
            raise ValueError(
                f"batch-size mismatch: teacher {k} gave {z.shape[0]} rows but teacher 0 gave "
                f"{n}; all teachers must see the same batch"
            )
    return list(teacher_logits)


def confidence_weights(
    teacher_logits: Sequence[torch.Tensor], confidence: str = "max_prob"
) -> torch.Tensor:
    """Per-sample teacher weights ``(K, N)`` from each teacher's confidence at tau = 1.

    ``"max_prob"``: ``w_k(x) = c_k(x) / sum_j c_j(x)``, ``c_k(x) = max_c softmax(z_k(x))_c``.
    ``"entropy"``: ``w_k(x) = exp(-H_k(x)) / sum_j exp(-H_j(x))``, ``H_k`` the entropy in nats of
    ``softmax(z_k(x))``. Each column sums to one. No gradient flows through the weights.
    """
    teacher_logits = check_teacher_logits(teacher_logits)
    probs = torch.stack([torch.softmax(z.detach().float(), dim=1) for z in teacher_logits])
    if confidence == "max_prob":
        scores = probs.amax(dim=2)  # (K, N)
        return scores / scores.sum(dim=0, keepdim=True)
    if confidence == "entropy":
        return torch.softmax(-entropy(probs), dim=0)  # (K, N)
    raise ValueError(f"confidence must be one of {CONFIDENCE_RULES}, got {confidence!r}")


def teacher_weights(
    teacher_logits: Sequence[torch.Tensor],
    weights: None | str | Sequence[float] | torch.Tensor = None,
    confidence: str = "max_prob",
) -> torch.Tensor:
    """The mixing weights ``(K, N)`` of the ensemble, each column summing to one.

    ``weights``: ``None`` (uniform ``1/K``), ``K`` non-negative numbers (normalised; not all
    zero), or ``"confidence"`` (see :func:`confidence_weights`).
    """
    teacher_logits = check_teacher_logits(teacher_logits)
    k, n = len(teacher_logits), teacher_logits[0].shape[0]
    device = teacher_logits[0].device
    if weights is None:
        return torch.full((k, n), 1.0 / k, device=device)
    if isinstance(weights, str):
        if weights != "confidence":
            raise ValueError(
                f"weights must be None, a sequence of {k} numbers or 'confidence', got {weights!r}"
            )
        return confidence_weights(teacher_logits, confidence)
    w = torch.as_tensor(weights, dtype=torch.float32, device=device).detach()
    if w.dim() != 1 or w.shape[0] != k:
        raise ValueError(
            f"weights must hold one number per teacher ({k}), got shape {tuple(w.shape)}"
        )
    if not torch.isfinite(w).all() or bool((w < 0).any()) or not float(w.sum()) > 0:
        raise ValueError(f"weights must be finite, non-negative and not all zero, got {w.tolist()}")
    return (w / w.sum())[:, None].expand(k, n)


def log_ensemble_targets(
    teacher_logits: Sequence[torch.Tensor],
    temperature: float = 4.0,
    weights: None | str | Sequence[float] | torch.Tensor = None,
    confidence: str = "max_prob",
) -> torch.Tensor:
    """``log p_ens`` ``(N, C)`` in float32, the log of :func:`ensemble_soft_targets` (same
    arguments), computed as a log-sum-exp over the teachers."""
    check_temperature(temperature)
    teacher_logits = check_teacher_logits(teacher_logits)
    w = teacher_weights(teacher_logits, weights, confidence)  # (K, N)
    log_p = torch.stack(
        [log_softmax_with_temperature(z.detach(), temperature) for z in teacher_logits]
    )  # (K, N, C)
    return torch.logsumexp(torch.log(w)[:, :, None] + log_p, dim=0)


def ensemble_soft_targets(
    teacher_logits: Sequence[torch.Tensor],
    temperature: float = 4.0,
    weights: None | str | Sequence[float] | torch.Tensor = None,
    confidence: str = "max_prob",
) -> torch.Tensor:
    """The ensemble's soft targets ``p_ens = sum_k w_k * softmax(z_k / tau)``, shape ``(N, C)``.

    Args:
        teacher_logits: ``K`` tensors ``(N, C)``, one per teacher (detached here).
        temperature: tau > 0, applied to every teacher before mixing.
        weights: ``None`` (average), ``K`` numbers (fixed, normalised) or ``"confidence"``.
        confidence: ``"max_prob"`` or ``"entropy"``, for ``weights="confidence"``.

    Each row is a probability distribution (float32, sums to one).
    """
    return log_ensemble_targets(teacher_logits, temperature, weights, confidence).exp()


def combine_logits(
    teacher_logits: Sequence[torch.Tensor],
    temperature: float = 4.0,
    weights: None | str | Sequence[float] | torch.Tensor = None,
    confidence: str = "max_prob",
) -> torch.Tensor:
    """Logits ``z_ens = tau * log(p_ens)`` ``(N, C)`` whose ``softmax(z_ens / tau)`` is ``p_ens``.

    ``p_ens`` is :func:`ensemble_soft_targets` with the same arguments. Pass ``z_ens`` as the
    teacher's logits to ``kd_loss`` **at the same temperature**. With one teacher (or identical
    teachers) ``z_ens`` is that teacher's logits up to a per-row constant, which a softmax
    ignores: the loss is single-teacher KD. Row-wise constant shifts aside, ``z_ens`` at
    tau = 1 is the log of the averaged probabilities, a usual way to score an ensemble.
    """
    return temperature * log_ensemble_targets(teacher_logits, temperature, weights, confidence)


def average_logits(teacher_logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """The plain mean of the teachers' logits ``(N, C)``, a temperature-free alternative.

    Averaging logits is not averaging probabilities: ``softmax(mean_k z_k / tau)`` is the
    normalised *geometric* mean of the ``p_k``, which is sharper where teachers disagree. Use
    :func:`teacher_ensemble` to average the soft targets themselves.
    """
    teacher_logits = check_teacher_logits(teacher_logits)
    return torch.stack([z.detach().float() for z in teacher_logits]).mean(dim=0)


class TeacherEnsemble:
    """``combine(list of (N, C) teacher logits) -> (N, C) logits`` for the Distiller.

    Calls :func:`combine_logits` with the stored ``temperature``, ``weights`` and
    ``confidence``. ``temperature`` must equal the Distiller's (the loss's) temperature; the
    attribute is there so that the Distiller can check it.
    """

    def __init__(self, temperature: float = 4.0, weights=None, confidence: str = "max_prob"):
        check_temperature(temperature)
        if isinstance(weights, str) and weights != "confidence":
            raise ValueError(f"weights must be None, numbers or 'confidence', got {weights!r}")
        if confidence not in CONFIDENCE_RULES:
            raise ValueError(f"confidence must be one of {CONFIDENCE_RULES}, got {confidence!r}")
        self.temperature = float(temperature)
        self.weights = weights
        self.confidence = confidence

    def __call__(self, teacher_logits: Sequence[torch.Tensor]) -> torch.Tensor:
        return combine_logits(teacher_logits, self.temperature, self.weights, self.confidence)

    def __repr__(self) -> str:
        rule = "average" if self.weights is None else self.weights
        if isinstance(rule, str) and rule == "confidence":
            rule = f"confidence ({self.confidence})"
        return f"TeacherEnsemble(temperature={self.temperature:g}, weights={rule})"


def teacher_ensemble(
    temperature: float = 4.0, weights=None, confidence: str = "max_prob"
) -> TeacherEnsemble:
    """A ``combine_teachers`` callable for ``Distiller(student, [t1, t2, ...], ...)``.

    Use the **same temperature** as the Distiller's: the teachers are mixed at tau and the loss
    softens the combined logits by tau again (see the module docstring).
    """
    return TeacherEnsemble(temperature, weights, confidence)


class CombinedTeachers(nn.Module):
    """Several teachers as one model: ``forward(x) = combine([t(x) for t in teachers])``,
    logits ``(N, C)``.

    For what takes one teacher, such as :func:`kdlib.population.distill_population`: with
    ``combine = teacher_ensemble(tau, weights)`` the student learns from the same ensemble
    targets as with ``Distiller(student, teachers, combine_teachers=combine)`` (use the
    loss's temperature, as there).

    Args:
        teachers: one or more trained ``nn.Module`` s with logits of one shape.
        combine: ``(list of (N, C) logits) -> (N, C) logits``, e.g. :func:`teacher_ensemble`.
    """

    def __init__(self, teachers: Sequence[nn.Module], combine):
        super().__init__()
        teachers = list(teachers) if not isinstance(teachers, nn.Module) else [teachers]
        if not teachers:
            raise ValueError("teachers is empty: pass one or more trained models")
        bad = [type(t).__name__ for t in teachers if not isinstance(t, nn.Module)]
        if bad:
            raise ValueError(f"teachers must be nn.Modules, got {', '.join(bad)}")
        if not callable(combine):
            raise ValueError(
                f"combine must be a function (list of logits) -> logits, e.g. "
                f"teacher_ensemble(temperature), got {combine!r}"
            )
        self.teachers = nn.ModuleList(teachers)
        self.combine = combine

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.combine([t(x) for t in self.teachers])


def multi_teacher_kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: Sequence[torch.Tensor],
    labels: torch.Tensor | None,
    temperature: float = 4.0,
    alpha: float = 0.7,
    weights: None | str | Sequence[float] | torch.Tensor = None,
    confidence: str = "max_prob",
    return_parts: bool = False,
):
    """KD against an ensemble: ``alpha * CE(y, S) + (1 - alpha) * tau^2 * KL(p_ens || p_S)``.

    ``student_logits`` ``(N, C)``, ``teacher_logits`` a list of ``(N, C)``, ``labels`` ``(N,)``
    (-1 = unlabelled). As everywhere in kdlib, **alpha weights the hard term**. Equals
    ``kd_loss(student_logits, combine_logits(teacher_logits, tau, weights), labels, tau,
    alpha)``; with identical teachers it is single-teacher KD.
    """
    combined = combine_logits(teacher_logits, temperature, weights, confidence)
    if student_logits.dim() == 2 and student_logits.shape[1] != combined.shape[1]:
        raise ValueError(
            f"class-count mismatch: the student has {student_logits.shape[1]} classes, the "
            f"teachers have {combined.shape[1]}"
        )
    return kd_loss(student_logits, combined, labels, temperature, alpha, return_parts)
