"""Metrics for teachers and students: accuracy, top-k, agreement, calibration, KL.

Functions on tensors take logits ``(N, C)`` and labels ``(N,)``; :func:`predict` collects a
model's logits over a dataset first, and :func:`compare` does it all for a teacher and a
student at once.
"""

from __future__ import annotations

import torch

from kdlib.losses import IGNORE_INDEX, kl_divergence

__all__ = [
    "accuracy",
    "agreement",
    "compare",
    "expected_calibration_error",
    "mean_std",
    "predict",
    "teacher_student_kl",
    "top_k_accuracy",
]


@torch.no_grad()
def predict(model: torch.nn.Module, data, device=None, batch_size: int = 512):
    """Run ``model`` in eval mode over ``data``; returns ``(logits (N, C) float32, labels (N,))``.

    ``data``: a loader yielding ``(x, y[, index])``, a ``kdlib.data.Split`` or an ``(x, y)``
    pair. Results stay on the model's device. The model's train/eval mode is restored.
    """
    from kdlib.distill import _batches, _device_of

    device = device or _device_of(model)
    was_training = model.training
    model.eval()
    logits, labels = [], []
    for x, y in _batches(data, batch_size):
        logits.append(model(x.to(device)).float())
        labels.append(y.to(device))
    model.train(was_training)
    return torch.cat(logits), torch.cat(labels)


def _known(logits: torch.Tensor, labels: torch.Tensor):
    keep = labels != IGNORE_INDEX
    return logits[keep], labels[keep]


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of samples whose arg-max class is the label (unlabelled samples skipped)."""
    logits, labels = _known(logits, labels)
    return (logits.argmax(1) == labels).float().mean().item()


def top_k_accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int = 5) -> float:
    """Fraction of samples whose label is among the ``k`` highest-scoring classes."""
    logits, labels = _known(logits, labels)
    k = min(k, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    return (top == labels[:, None]).any(1).float().mean().item()


def agreement(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> float:
    """Fraction of samples on which student and teacher predict the same class (top-1)."""
    return (student_logits.argmax(1) == teacher_logits.argmax(1)).float().mean().item()


def expected_calibration_error(logits: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> float:
    """ECE (Guo et al. 2017): ``sum_b |B_b|/N * |accuracy(B_b) - confidence(B_b)|``.

    Samples are binned by their top-1 confidence into ``bins`` equal-width bins on (0, 1].
    0 means perfectly calibrated.
    """
    logits, labels = _known(logits, labels)
    probs = torch.softmax(logits.float(), dim=1)
    confidence, prediction = probs.max(1)
    correct = (prediction == labels).float()
    edges = torch.linspace(0, 1, bins + 1, device=logits.device)
    ece = torch.zeros((), device=logits.device)
    for lo, hi in zip(edges[:-1], edges[1:]):
        in_bin = (confidence > lo) & (confidence <= hi)
        if in_bin.any():
            gap = (correct[in_bin].mean() - confidence[in_bin].mean()).abs()
            ece += in_bin.float().mean() * gap
    return ece.item()


def teacher_student_kl(
    teacher_logits: torch.Tensor, student_logits: torch.Tensor, temperature: float = 1.0
) -> float:
    """Mean over samples of ``KL(p_T || p_S)`` at ``temperature`` (not scaled by tau^2)."""
    return kl_divergence(teacher_logits, student_logits, temperature).mean().item()


def compare(student, teacher, data, device=None) -> dict:
    """Accuracy of both models, their agreement, the student's ECE and KL(teacher || student)."""
    s_logits, labels = predict(student, data, device)
    t_logits, _ = predict(teacher, data, device)
    t_logits = t_logits.to(s_logits.device)
    return {
        "student_accuracy": accuracy(s_logits, labels),
        "teacher_accuracy": accuracy(t_logits, labels),
        "agreement": agreement(s_logits, t_logits),
        "student_ece": expected_calibration_error(s_logits, labels),
        "kl_teacher_student": teacher_student_kl(t_logits, s_logits),
    }


def mean_std(values) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof = 1; 0 for a single value) of a list."""
    t = torch.as_tensor(list(values), dtype=torch.float64)
    std = t.std().item() if len(t) > 1 else 0.0
    return t.mean().item(), std
