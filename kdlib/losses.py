"""Response-based distillation losses: the student matches the teacher's output distribution.

The classic knowledge-distillation loss (Hinton, Vinyals & Dean, 2015) is

    L = alpha * CE(y, S) + (1 - alpha) * tau^2 * KL(p_T || p_S),
    p_T = softmax(z_T / tau),   p_S = softmax(z_S / tau),

where ``z_S, z_T`` are the student's and teacher's logits, shape ``(N, C)``. As in the course
(and in the PyTorch example most tutorials show), **alpha weights the hard (cross-entropy)
term** and ``1 - alpha`` the soft one; some libraries use the opposite convention.

Conventions that every function here keeps:

- inputs are *logits*, never probabilities; soft terms are computed with ``log_softmax`` on both
  sides, so identical logits give exactly zero and KL is never negative;
- KL is averaged per sample (``batchmean``): the sum over classes, averaged over the batch.
  ``F.kl_div(..., reduction="mean")`` would also divide by the number of classes;
- soft terms are multiplied by ``tau^2`` so that their gradient does not shrink as ``1/tau^2``;
- losses are computed in float32 even when the logits arrive in bf16/fp16 from autocast
  (float64 logits stay float64);
- temperature only enters the soft term; evaluation uses the plain logits (tau = 1);
- labels equal to ``IGNORE_INDEX`` (-1) mark unlabelled samples of a transfer set: they take part
  in the soft term only. Labels may be of any integer dtype (int64, int32, uint8, ...); bool and
  floating labels are refused;
- bad input raises ``ValueError`` naming the argument: an empty batch, non-finite logits, a
  temperature that is not a finite number > 0, weights that are NaN or out of range. Some of
  these checks read values back from the device (a host-device synchronisation each), so every
  loss takes ``check=True``: ``check=False`` skips the checks and runs the same formula, which
  never synchronises. The training loops (``kdlib.distill.Distiller``,
  ``kdlib.online.mutual_learning``) check the first batch of each loader and pass
  ``check=False`` afterwards (``kdlib.training.FirstBatchCheck``).

:func:`dkd_loss` (decoupled KD, Zhao et al. 2022) splits the soft term at the target class into
two separately weighted parts; it needs every label.
"""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import torch
import torch.nn.functional as F

__all__ = [
    "IGNORE_INDEX",
    "KDLossParts",
    "check_logits",
    "softmax_with_temperature",
    "log_softmax_with_temperature",
    "soft_targets",
    "entropy",
    "kl_divergence",
    "soft_loss",
    "hard_loss",
    "kd_loss",
    "check_temperature",
    "check_alpha",
    "logit_matching_loss",
    "DKDLossParts",
    "dkd_loss",
    "DKDTerm",
]

IGNORE_INDEX = -1


class KDLossParts(NamedTuple):
    """The total KD loss and its two parts, as returned by ``kd_loss(..., return_parts=True)``.

    ``hard`` is the cross-entropy with the labels, ``soft`` is ``tau^2 * KL(p_T || p_S)``
    (already scaled), and ``total = alpha * hard + (1 - alpha) * soft``.
    """

    total: torch.Tensor
    hard: torch.Tensor
    soft: torch.Tensor


def _as_number(value, name: str) -> float:
    """``value`` as a Python float: numbers and one-element tensors; bools are refused."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.is_complex() or value.dtype == torch.bool:
            raise ValueError(
                f"{name} must be a real number or a one-element tensor, got a tensor of shape "
                f"{tuple(value.shape)} and dtype {value.dtype}"
            )
        return float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    return float(value)


def check_temperature(temperature: float) -> None:
    """Raise ``ValueError`` unless ``temperature`` is a finite number > 0."""
    tau = _as_number(temperature, "temperature")
    if not (tau > 0 and math.isfinite(tau)):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")


def check_alpha(alpha: float) -> None:
    """Raise ``ValueError`` unless ``alpha`` (the hard term's weight) lies in [0, 1]."""
    a = _as_number(alpha, "alpha")
    if not 0.0 <= a <= 1.0:  # NaN fails both comparisons
        raise ValueError(
            f"alpha must lie in [0, 1] (it weights the hard cross-entropy term), got {alpha!r}"
        )


def _float(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32, or float64 if it already is: losses never compute in bf16/fp16."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def _no_grad(x: torch.Tensor) -> torch.Tensor:
    """``x`` detached (a teacher's logits carry no gradient); as is when it has none."""
    return x.detach() if x.requires_grad else x


def check_logits(logits: torch.Tensor, name: str = "logits") -> None:
    """Raise ``ValueError`` unless ``logits`` is a finite floating tensor of shape ``(N, C)``
    with ``N >= 1`` and ``C >= 1``."""
    if not isinstance(logits, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(logits).__name__}")
    if logits.dim() != 2:
        raise ValueError(
            f"{name} must have shape (batch, classes), got shape {tuple(logits.shape)}"
        )
    if logits.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (shape {tuple(logits.shape)}): no sample")
    if logits.shape[1] == 0:
        raise ValueError(f"{name} has no class (shape {tuple(logits.shape)})")
    if not logits.is_floating_point():
        raise ValueError(f"{name} must be floating point logits, got dtype {logits.dtype}")
    if not torch.isfinite(logits).all():
        bad = int((~torch.isfinite(logits)).sum())
        raise ValueError(f"{name} contain {bad} non-finite values (NaN or inf)")


def _check_pair(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> None:
    check_logits(student_logits, "student_logits")
    check_logits(teacher_logits, "teacher_logits")
    if student_logits.shape[1] != teacher_logits.shape[1]:
        raise ValueError(
            f"class-count mismatch: student has {student_logits.shape[1]} classes, "
            f"teacher has {teacher_logits.shape[1]}"
        )
    if student_logits.shape[0] != teacher_logits.shape[0]:
        raise ValueError(
            f"batch-size mismatch: student logits have {student_logits.shape[0]} rows, "
            f"teacher logits have {teacher_logits.shape[0]}"
        )


def _check_labels(labels: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Check ``labels`` against ``logits`` ``(N, C)``; return them as int64 class indices."""
    if not isinstance(labels, torch.Tensor):
        raise ValueError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    if labels.dim() != 1 or labels.shape[0] != logits.shape[0]:
        raise ValueError(
            f"labels must have shape ({logits.shape[0]},) to match the logits, "
            f"got shape {tuple(labels.shape)}"
        )
    if labels.dtype == torch.bool or labels.is_floating_point() or labels.is_complex():
        raise ValueError(
            f"labels must be integer class indices (int64, int32, uint8, ...), got dtype "
            f"{labels.dtype}; convert with labels.long() if the values are class numbers"
        )
    labels = labels.long()
    num_classes = logits.shape[1]
    labelled = labels[labels != IGNORE_INDEX]
    if labelled.numel() and (int(labelled.min()) < 0 or int(labelled.max()) >= num_classes):
        raise ValueError(
            f"labels out of range: expected values in [0, {num_classes - 1}] "
            f"(or {IGNORE_INDEX} for unlabelled samples), got min {int(labelled.min())}, "
            f"max {int(labelled.max())}"
        )
    return labels


def softmax_with_temperature(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``softmax(logits / temperature)`` over the last dimension.

    ``logits``: ``(..., C)``. Higher temperatures flatten the distribution (tau -> inf gives the
    uniform distribution), tau -> 0 approaches the one-hot argmax; tau = 1 is the plain softmax.
    """
    check_temperature(temperature)
    return torch.softmax(_float(logits) / temperature, dim=-1)


def log_softmax_with_temperature(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``log_softmax(logits / temperature)`` over the last dimension, in float32 (float64 stays)."""
    check_temperature(temperature)
    return torch.log_softmax(_float(logits) / temperature, dim=-1)


def soft_targets(teacher_logits: torch.Tensor, temperature: float = 4.0) -> torch.Tensor:
    """The teacher's soft targets ``p_T = softmax(z_T / tau)``, shape ``(N, C)``, no gradient."""
    check_logits(teacher_logits, "teacher_logits")
    return softmax_with_temperature(teacher_logits.detach(), temperature)


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Shannon entropy in nats of each distribution along the last dimension: ``-sum p log p``.

    Zero probabilities contribute zero (``0 log 0 = 0``). Shape ``(..., C) -> (...)``.
    """
    return -(probs * torch.log(probs.clamp_min(torch.finfo(probs.dtype).tiny))).sum(-1)


def kl_divergence(
    teacher_logits: torch.Tensor, student_logits: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """Per-sample ``KL(p_T || p_S)`` at temperature tau, shape ``(N,)``, computed in log space.

    ``KL(p_T || p_S) = sum_c p_T[c] * (log p_T[c] - log p_S[c])`` with both distributions
    softened by the same temperature. Not scaled by tau^2.
    """
    check_temperature(temperature)
    log_p_s = log_softmax_with_temperature(student_logits, temperature)
    log_p_t = log_softmax_with_temperature(teacher_logits, temperature)
    return F.kl_div(log_p_s, log_p_t, reduction="none", log_target=True).sum(-1)


def soft_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 4.0,
    check: bool = True,
) -> torch.Tensor:
    """The soft term ``tau^2 * KL(p_T || p_S)``, averaged over the batch (``batchmean``).

    Logits ``(N, C)``; both sides through ``log_softmax`` (KL in log space). The teacher's
    logits are detached: the gradient flows into the student only. ``check``: refuse bad input
    (see the module docstring); the formula is the same either way.
    """
    if check:
        check_temperature(temperature)
        _check_pair(student_logits, teacher_logits)
    log_p_s = torch.log_softmax(_float(student_logits) / temperature, dim=1)
    log_p_t = torch.log_softmax(_float(_no_grad(teacher_logits)) / temperature, dim=1)
    kl = F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True)
    return kl * (temperature * temperature)


def hard_loss(
    student_logits: torch.Tensor,
    labels: torch.Tensor,
    label_smoothing: float = 0.0,
    check: bool = True,
) -> torch.Tensor:
    """Cross-entropy with the labels, averaged over the labelled samples.

    Logits ``(N, C)``, labels ``(N,)`` of any integer dtype. Samples labelled ``IGNORE_INDEX``
    are skipped: ``sum_{labelled} CE / max(#labelled, 1)``, so a batch with no labelled sample
    gives 0 (with a gradient of zero), not NaN, without a host-device synchronisation.
    ``label_smoothing`` as in ``F.cross_entropy``; ``check``: refuse bad input.
    """
    if check:
        check_logits(student_logits, "student_logits")
        labels = _check_labels(labels, student_logits)
    labels = labels if labels.dtype == torch.int64 else labels.long()
    total = F.cross_entropy(
        _float(student_logits),
        labels,
        ignore_index=IGNORE_INDEX,
        label_smoothing=label_smoothing,
        reduction="sum",
    )
    return total / (labels != IGNORE_INDEX).sum().clamp_min(1)


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor | None,
    temperature: float = 4.0,
    alpha: float = 0.7,
    return_parts: bool = False,
    check: bool = True,
) -> torch.Tensor | KDLossParts:
    """Hinton's distillation loss ``alpha * CE(y, S) + (1 - alpha) * tau^2 * KL(p_T || p_S)``.

    Args:
        student_logits: ``(N, C)`` raw student outputs (they carry the gradient).
        teacher_logits: ``(N, C)`` raw teacher outputs; detached here.
        labels: ``(N,)`` integer classes (any integer dtype); ``-1`` marks an unlabelled
            transfer-set sample, which only enters the soft term. ``None`` means no labels at
            all (requires ``alpha == 0``).
        temperature: tau > 0, finite, applied to both sides of the soft term only.
        alpha: weight of the hard cross-entropy term, in [0, 1]; ``1 - alpha`` weights the soft
            term. ``alpha = 1`` is plain supervised training, ``alpha = 0`` pure distillation.
        return_parts: also return the unweighted parts (see :class:`KDLossParts`).
        check: refuse bad input (below); ``False`` skips the checks, several of which read
            values back from the device, and computes the same formula.

    Returns:
        A scalar float32 tensor (float64 for float64 logits), or ``KDLossParts(total, hard,
        soft)``.

    Raises:
        ValueError: for an empty batch, a shape or class-count mismatch, bool or floating labels
            or labels out of range, a temperature that is not a finite number > 0, ``alpha``
            outside [0, 1] (or NaN), or non-finite logits; the message names the argument.

    As tau grows, ``kd_loss(..., alpha=0)`` approaches :func:`logit_matching_loss`; see there
    for how far float32 follows it.
    """
    if check:
        check_temperature(temperature)
        check_alpha(alpha)
        _check_pair(student_logits, teacher_logits)
    if labels is None:
        if alpha != 0:
            raise ValueError("labels=None needs alpha=0 (there is no hard term without labels)")
        hard = _float(student_logits).sum() * 0.0
    else:
        hard = hard_loss(student_logits, labels, check=check)
    soft = soft_loss(student_logits, teacher_logits, temperature, check=False)
    total = alpha * hard + (1.0 - alpha) * soft
    if return_parts:
        return KDLossParts(total, hard, soft)
    return total


def logit_matching_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor | None = None,
    alpha: float = 0.0,
) -> torch.Tensor:
    """Logit matching: ``alpha * CE(y, S) + (1 - alpha) * mean_c((z_S - z_T)^2) / 2``.

    The high-temperature limit of KD (Hinton et al. 2015, section 2.1). Expanding the softmax
    for tau much larger than the logits gives, per sample,

        tau^2 * KL(p_T || p_S)  ->  (1 / 2C) * sum_c (z_S,c - z_T,c)^2

    once each sample's logits are centred (a softmax ignores a constant shift, so both are
    centred here). This function returns exactly that limit averaged over the batch, so
    ``kd_loss(..., alpha=0, temperature=tau)`` approaches it as tau grows, the relative gap
    shrinking roughly as ``1 / tau``.

    **In float32 only up to tau ~ 100 to 1000.** ``tau^2 * KL`` multiplies a KL of order
    ``1 / tau^2`` computed from log-probabilities near ``-log C``: cancellation leaves a
    relative error of about ``tau^2 * 1e-7``. On 64 x 10 random logits of standard
    deviation 3, the float32 gap is 6e-3 at tau = 10, 1.5e-3 at 100, 3e-4 at 1000 and 17% at
    1e4 (float64: 6e-3, 1.5e-3, 1.6e-4, 1.6e-5). To follow the limit further, pass float64
    logits: every loss here then computes in float64.

    Shapes: logits ``(N, C)``, labels ``(N,)``. ``alpha`` weights the hard term as in
    :func:`kd_loss`.
    """
    check_alpha(alpha)
    _check_pair(student_logits, teacher_logits)
    z_s = _float(student_logits)
    z_t = _float(teacher_logits.detach())
    z_s = z_s - z_s.mean(dim=1, keepdim=True)
    z_t = z_t - z_t.mean(dim=1, keepdim=True)
    matching = 0.5 * F.mse_loss(z_s, z_t)
    if alpha == 0:
        return matching
    if labels is None:
        raise ValueError("alpha > 0 needs labels for the hard term")
    return alpha * hard_loss(student_logits, labels) + (1.0 - alpha) * matching


# --- decoupled knowledge distillation ---------------------------------------------------------


class DKDLossParts(NamedTuple):
    """``dkd_loss(..., return_parts=True)``: ``total = alpha * tckd + beta * nckd``.

    ``tckd`` and ``nckd`` are the unweighted target-class and non-target-class terms, both
    already multiplied by ``tau^2`` and averaged over the batch.
    """

    total: torch.Tensor
    tckd: torch.Tensor
    nckd: torch.Tensor


_DKD_MASK = -1e9  # added (in log space) to the target logit to drop it from the NCKD softmax


def _renamed_weight(value, old_value, name: str, old_name: str, default: float):
    """``value`` of a renamed DKD weight, or ``old_value`` given under its old keyword."""
    if old_value is None:
        return value
    if bool(value != default):
        raise ValueError(f"give DKD's {name} once: {old_name}= is its old name")
    warnings.warn(
        f"dkd_loss/DKDTerm: {old_name}= is deprecated, use {name}= (the paper's {old_name}; "
        f"kd_loss's alpha weighs the cross-entropy, not TCKD)",
        DeprecationWarning,
        stacklevel=3,
    )
    return old_value


def dkd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    tckd_weight: float = 1.0,
    nckd_weight: float = 8.0,
    temperature: float = 4.0,
    return_parts: bool = False,
    check: bool = True,
    *,
    alpha: float | None = None,
    beta: float | None = None,
) -> torch.Tensor | DKDLossParts:
    """Decoupled KD (Zhao, Cui, Song, Qiu & Liang, CVPR 2022, arXiv:2203.08679):
    ``tckd_weight * TCKD + nckd_weight * NCKD``.

    For sample ``n`` with target ``t = y_n`` and ``p = softmax(z / tau)`` on each side:

    - TCKD, target-class KD: ``KL(b_T || b_S)`` between the binary distributions
      ``b = (p_t, 1 - p_t)`` (how sure each network is of the right class);
    - NCKD, non-target-class KD: ``KL(p_hat_T || p_hat_S)`` between the distributions over the
      ``C - 1`` other classes, ``p_hat_c = p_c / (1 - p_t)`` (the "dark knowledge" proper).

    Both are multiplied by ``tau^2`` and averaged over the batch, as in mdistiller. Classic KD
    decomposes as ``KL(p_T || p_S) = TCKD + (1 - p_T,t) * NCKD`` per sample: its NCKD weight
    shrinks exactly when the teacher is confident; DKD sets the two weights freely
    (the paper's alpha and beta; mdistiller's CIFAR-100 settings: ``tckd_weight = 1``,
    ``nckd_weight = 8``, ``tau = 4``, added to a cross-entropy term of weight 1, with the DKD
    part warmed up linearly over 20 epochs).

    The paper calls the two weights alpha and beta; they are named here for what they weigh,
    since kd_loss's ``alpha`` weighs the cross-entropy. There is no cross-entropy term here (add
    one, e.g. ``Distiller(alpha=1.0, terms=[DKDTerm(...)])``, whose kd_loss with alpha = 1 is
    plain cross-entropy). The keywords ``alpha=`` and ``beta=`` are still accepted for
    ``tckd_weight`` and ``nckd_weight``, with a DeprecationWarning.

    Everything is computed in log space in float32: ``log(1 - p_t)`` is a ``logsumexp`` over the
    non-target logits, and NCKD's softmax drops the target by adding a large negative number to
    its logit before ``log_softmax`` (mdistiller subtracts 1000 from ``z / tau``); its
    probability is then exactly 0 on both sides and contributes 0, never NaN.

    Args:
        student_logits, teacher_logits: ``(N, C)`` logits with ``C >= 3``; the teacher's are
            detached.
        labels: ``(N,)`` target classes (any integer dtype); every sample needs one (no -1).
        tckd_weight, nckd_weight: weights of TCKD and NCKD (the paper's alpha and beta),
            finite numbers >= 0 (0-d tensors accepted).
        temperature: tau > 0, finite.
        return_parts: return :class:`DKDLossParts` ``(total, tckd, nckd)``.
        check: refuse bad input (below); ``False`` skips the checks (some read values back
            from the device) and computes the same formula.

    Raises:
        ValueError: fewer than 3 classes (with 2 the non-target distribution has a single class
            and NCKD is always 0), missing or unlabelled (-1) labels, bool or floating labels,
            an empty batch, shape mismatches, NaN, infinite or negative weights; the message
            names the argument; ``alpha=`` together with ``tckd_weight=`` (or ``beta=`` with
            ``nckd_weight=``).
    """
    tckd_weight = _renamed_weight(tckd_weight, alpha, "tckd_weight", "alpha", 1.0)
    nckd_weight = _renamed_weight(nckd_weight, beta, "nckd_weight", "beta", 8.0)
    if check:
        check_temperature(temperature)
        _check_dkd_inputs(student_logits, teacher_logits, labels, tckd_weight, nckd_weight)
    if labels is None:
        raise ValueError("DKD needs the labels: its two terms are split at the target class")
    labels = labels.long()
    target = torch.zeros_like(student_logits, dtype=torch.bool).scatter_(
        1, labels[:, None], True
    )  # (N, C)
    tau2 = temperature * temperature

    def parts(logits):
        z = logits.float() / temperature
        log_p = torch.log_softmax(z, dim=1)
        log_pt = log_p.gather(1, labels[:, None])  # (N, 1): log p_t
        z_other = z.masked_fill(target, _DKD_MASK)
        log_1m_pt = torch.logsumexp(z_other, dim=1, keepdim=True) - torch.logsumexp(
            z, dim=1, keepdim=True
        )  # log(1 - p_t), exact even when p_t rounds to 1
        log_b = torch.cat([log_pt, log_1m_pt], dim=1)  # (N, 2)
        log_p_hat = torch.log_softmax(z_other, dim=1)  # (N, C), target column ~ -1e9
        return log_b, log_p_hat

    log_b_s, log_hat_s = parts(student_logits)
    with torch.no_grad():
        log_b_t, log_hat_t = parts(teacher_logits.detach())
    tckd = F.kl_div(log_b_s, log_b_t, reduction="batchmean", log_target=True) * tau2
    nckd = F.kl_div(log_hat_s, log_hat_t, reduction="batchmean", log_target=True) * tau2
    total = tckd_weight * tckd + nckd_weight * nckd
    if return_parts:
        return DKDLossParts(total, tckd, nckd)
    return total


def _check_dkd_inputs(student_logits, teacher_logits, labels, tckd_weight, nckd_weight) -> None:
    _check_pair(student_logits, teacher_logits)
    for label, w in (("tckd_weight", tckd_weight), ("nckd_weight", nckd_weight)):
        value = _as_number(w, f"DKD's {label}")
        if not (value >= 0 and math.isfinite(value)):
            raise ValueError(f"DKD's {label} must be a number >= 0 and finite, got {w!r}")
    num_classes = student_logits.shape[1]
    if num_classes < 3:
        raise ValueError(
            f"DKD needs at least 3 classes (its non-target term is a distribution over the "
            f"C - 1 other classes), got C = {num_classes}"
        )
    if labels is None:
        raise ValueError("DKD needs the labels: its two terms are split at the target class")
    labels = _check_labels(labels, student_logits)
    if bool((labels == IGNORE_INDEX).any()):
        raise ValueError(
            f"DKD needs a label for every sample, got {int((labels == IGNORE_INDEX).sum())} "
            f"unlabelled (-1); train on the labelled subset (kdlib.data.labelled) or use kd_loss"
        )


class DKDTerm(torch.nn.Module):
    """:func:`dkd_loss` as a ``kdlib.distill.Distiller`` term (uses the batch's logits and labels).

    ``Distiller(student, teacher, alpha=1.0, terms=[DKDTerm()])`` trains with cross-entropy
    (kd_loss at alpha = 1) plus ``weight * (tckd_weight * TCKD + nckd_weight * NCKD)``,
    mdistiller's recipe without its warm-up. ``tckd_weight``/``nckd_weight``/``temperature``
    are DKD's own (see :func:`dkd_loss`; ``alpha=``/``beta=`` still work, deprecated). Every
    training sample needs a label.
    """

    def __init__(
        self,
        tckd_weight: float = 1.0,
        nckd_weight: float = 8.0,
        temperature: float = 4.0,
        weight: float = 1.0,
        name: str = "dkd",
        *,
        alpha: float | None = None,
        beta: float | None = None,
    ):
        super().__init__()
        tckd_weight = _renamed_weight(tckd_weight, alpha, "tckd_weight", "alpha", 1.0)
        nckd_weight = _renamed_weight(nckd_weight, beta, "nckd_weight", "beta", 8.0)
        self.tckd_weight, self.nckd_weight = tckd_weight, nckd_weight
        self.temperature, self.weight, self.name = temperature, weight, name

    def forward(self, batch) -> torch.Tensor:
        if batch.teacher_logits is None:
            raise ValueError("DKDTerm needs a teacher: the Distiller was given none")
        return dkd_loss(
            batch.student_logits,
            batch.teacher_logits,
            batch.labels,
            self.tckd_weight,
            self.nckd_weight,
            self.temperature,
            check=getattr(batch, "check", True),
        )

    def extra_repr(self) -> str:
        return (
            f"tckd_weight={self.tckd_weight}, nckd_weight={self.nckd_weight}, "
            f"temperature={self.temperature}, weight={self.weight}"
        )
