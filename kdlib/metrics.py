"""Metrics for teachers and students: accuracy, top-k, per-class recall, confusion matrix,
agreement, calibration, KL; and :func:`evaluate`, the loss and accuracy a training loop logs.

Functions on tensors take logits ``(N, C)`` and labels ``(N,)``; :func:`predict` collects a
model's logits over a dataset first, and :func:`compare` does it all for a teacher and a
student at once. Wherever a dataset is taken, it may be a loader yielding ``(x, y[, index])``,
a ``kdlib.data.Split`` or an ``(x, y)`` pair.

Hinton's bias correction for a class the student never saw (Hinton, Vinyals & Dean, "Distilling
the Knowledge in a Neural Network", NIPS 2014 Deep Learning Workshop, arXiv:1503.02531,
section 3) is here too: :func:`bias_for_rate` finds the shift of one class's logit that makes a
model predict that class at a chosen rate on unlabelled inputs, and :func:`correct_class_bias`
adds it to the bias of the model's output layer.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kdlib import distributed as kdist
from kdlib.data import TensorLoader, as_batches, tensor_pair
from kdlib.losses import IGNORE_INDEX, check_logits, kl_divergence
from kdlib.runtime import device_of

__all__ = [
    "accuracy",
    "as_class_index",
    "confusion_matrix",
    "evaluate",
    "evaluation_sums",
    "per_class_recall",
    "agreement",
    "bias_for_rate",
    "compare",
    "correct_class_bias",
    "output_layer",
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
    device = device or device_of(model)
    was_training = model.training
    model.eval()
    logits, labels = [], []
    for x, y in as_batches(data, batch_size):
        logits.append(model(x.to(device)).float())
        labels.append(y.to(device))
    model.train(was_training)
    return torch.cat(logits), torch.cat(labels)


_INTEGER_LABELS = (torch.int8, torch.uint8, torch.int16, torch.int32)


def as_class_index(y: torch.Tensor) -> torch.Tensor:
    """Labels of a smaller integer dtype (int32 from numpy, uint8 from image files) as the
    int64 class indices PyTorch's losses need; other dtypes are left for the loss to check."""
    return y.long() if y.dtype in _INTEGER_LABELS else y


@torch.no_grad()
def evaluation_sums(model: nn.Module, data, device: torch.device | None = None):
    """``(summed cross-entropy, number correct, number of labelled samples)`` of ``model`` on
    ``data``: the first two as 0-d tensors on the device, the count an int. Samples labelled
    -1 are skipped; the model's train/eval mode is restored."""
    device = device or device_of(model)
    was_training = model.training
    model.eval()
    correct = torch.zeros((), device=device)
    loss = torch.zeros((), device=device)
    count = 0
    for x, y in as_batches(data):
        x, y = x.to(device, non_blocking=True), as_class_index(y.to(device, non_blocking=True))
        keep = y != IGNORE_INDEX
        logits = model(x).float()[keep]
        y = y[keep]
        loss += F.cross_entropy(logits, y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
        count += len(y)
    model.train(was_training)
    return loss, correct, count


def evaluate(
    model: nn.Module, data, device: torch.device | None = None, *, distributed: bool = False
) -> dict:
    """Accuracy and mean cross-entropy (tau = 1) of ``model`` on ``data``.

    ``data``: a loader yielding ``(x, y[, index])``, a ``kdlib.data.Split`` or an ``(x, y)``
    pair. Samples labelled -1 are skipped. Puts the model in eval mode and restores its mode.
    ``distributed``: every rank of the ``torch.distributed`` group evaluates its share of
    ``data`` (``kdlib.distributed.shard_loader``) and the sums are added over the ranks: the
    figures of the whole of ``data``, the same on every rank (call it on every rank).
    Raises ``ValueError`` when ``data`` has no labelled sample (an empty validation split has
    no accuracy, not an accuracy of 0).
    """
    if distributed:
        pair = tensor_pair(data)
        if pair is not None:  # the whole of it, in order
            data = TensorLoader(*pair, batch_size=512)
        data = kdist.shard_loader(data, kdist.rank(), kdist.world_size(), train=False)
    loss, correct, count = evaluation_sums(model, data, device)
    if distributed:
        sums = torch.stack([loss.double(), correct.double(), loss.new_tensor(count).double()])
        loss, correct, count = kdist.all_reduce_sum(sums).tolist()
    else:
        loss, correct = loss.item(), correct.item()
    if count == 0:
        raise ValueError("data has no labelled sample to evaluate on (an empty split?)")
    return {"loss": loss / count, "accuracy": correct / count}


def confusion_matrix(
    logits: torch.Tensor, labels: torch.Tensor, num_classes: int | None = None
) -> torch.Tensor:
    """``M[i, j]``: how many samples of class ``i`` were predicted as ``j``, ``(C, C)`` int64.

    ``logits`` ``(N, C)``, ``labels`` ``(N,)`` (-1 skipped); ``num_classes`` defaults to ``C``.
    Row sums are the class counts, the diagonal the correct predictions.
    """
    check_logits(logits, "logits")
    logits, labels = _known(logits, as_class_index(labels))
    c = num_classes if num_classes is not None else logits.shape[1]
    pred = logits.argmax(1)
    flat = (labels.long() * c + pred).cpu()
    return torch.bincount(flat, minlength=c * c).reshape(c, c)


def per_class_recall(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The fraction of each class's samples predicted as that class, ``(C,)`` float;
    NaN for a class without samples (the omitted class of a transfer set, say)."""
    m = confusion_matrix(logits, labels).double()
    return (m.diagonal() / m.sum(1)).float()  # 0 / 0 = NaN: no sample of that class


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
    """Accuracy and calibration of both models, their agreement and KL(teacher || student).

    Keys: ``student_accuracy``, ``teacher_accuracy``, ``agreement``, ``student_ece``,
    ``teacher_ece`` (:func:`expected_calibration_error`) and ``kl_teacher_student`` (at tau = 1).
    """
    s_logits, labels = predict(student, data, device)
    t_logits, _ = predict(teacher, data, device)
    t_logits = t_logits.to(s_logits.device)
    return {
        "student_accuracy": accuracy(s_logits, labels),
        "teacher_accuracy": accuracy(t_logits, labels),
        "agreement": agreement(s_logits, t_logits),
        "student_ece": expected_calibration_error(s_logits, labels),
        "teacher_ece": expected_calibration_error(t_logits, labels),
        "kl_teacher_student": teacher_student_kl(t_logits, s_logits),
    }


# --- Hinton's bias correction for an omitted class ---------------------------------------------


def _check_class_and_rate(target_class: int, rate: float, num_classes: int) -> None:
    if isinstance(target_class, bool) or not isinstance(target_class, int):
        raise ValueError(f"target_class must be an int class index, got {target_class!r}")
    if not 0 <= target_class < num_classes:
        raise ValueError(
            f"target_class must be in [0, {num_classes - 1}] (the model has {num_classes} "
            f"classes), got {target_class}"
        )
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate must be a number in [0, 1], got {rate!r}")


def bias_for_rate(logits: torch.Tensor, target_class: int, rate: float) -> float:
    """The shift ``delta`` of one class's logit that makes it the prediction at a given rate.

    With ``z`` the logits ``(N, C)`` of unlabelled inputs and ``k = target_class``, adding
    ``delta`` to ``z[:, k]`` (the same as adding it to the bias of class ``k`` in the output
    layer) makes row ``i`` predict ``k`` exactly when ``delta > m_i``, its margin
    ``m_i = max_{c != k} z[i, c] - z[i, k]``. The returned ``delta`` lies halfway between the
    ``r``-th and ``(r + 1)``-th smallest margins, ``r = round(rate * N)``, so that exactly ``r``
    of these rows predict ``k`` (barring ties); below all margins (``rate = 0``) or above all
    (``rate = 1``) it keeps a distance of 1 from the nearest. It may be negative (a class
    predicted too often).

    This is Hinton's correction for a class the student never saw in training (Hinton et al.
    2015, section 3): its logit is biased down, and shifting it so that the class is
    predicted as often as it occurs (its prior, or the teacher's rate of predicting it)
    needs no labels.

    Args:
        logits: ``(N, C)`` finite logits of the inputs the rate is measured on.
        target_class: the class ``k`` to shift. rate: the wanted fraction in [0, 1].

    Raises:
        ValueError: non-finite or badly shaped logits, a class out of range, a rate outside
            [0, 1]; the message names the argument.
    """
    check_logits(logits, "logits")
    _check_class_and_rate(target_class, rate, logits.shape[1])
    if logits.shape[1] < 2:
        raise ValueError(f"logits need at least 2 classes to shift one, got {logits.shape[1]}")
    z = logits.detach().to("cpu", torch.float64)  # (MPS has no float64)
    others = z.clone()
    others[:, target_class] = -math.inf
    margins = (others.max(dim=1).values - z[:, target_class]).sort().values
    n = len(margins)
    r = min(max(int(round(rate * n)), 0), n)
    if r == 0:
        return float(margins[0]) - 1.0
    if r == n:
        return float(margins[-1]) + 1.0
    return float((margins[r - 1] + margins[r]) / 2)


def output_layer(model: nn.Module) -> nn.Linear:
    """The ``nn.Linear`` that produces ``model``'s logits: the last one in ``model.head`` (kdlib's
    models keep their output layer there), else the last one in the model."""
    head = getattr(model, "head", model)
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(
            f"found no nn.Linear output layer in {type(model).__name__}; pass layer= explicitly"
        )
    return linears[-1]


@torch.no_grad()
def correct_class_bias(
    model: nn.Module,
    inputs,
    target_class: int,
    rate: float,
    layer: nn.Linear | None = None,
    device=None,
) -> float:
    """Shift the output bias of ``target_class`` so that ``model`` predicts it at ``rate``.

    Hinton's bias correction (see :func:`bias_for_rate`), applied in place: the logits of
    ``inputs`` are computed in eval mode, ``delta = bias_for_rate(logits, target_class, rate)``
    is added to ``layer.bias[target_class]``, and ``delta`` is returned. The model then
    predicts ``target_class`` on a fraction ``rate`` of ``inputs`` (up to ties), and on
    other inputs from the same distribution at about that rate.

    Args:
        model: a classifier whose logits come straight out of ``layer``.
        inputs: unlabelled inputs, a tensor or a numpy array ``(N, ...)`` (made float32), or
            anything :func:`predict` takes (a ``kdlib.data.Split``, an ``(x, y)`` pair, a
            loader); labels are not used.
        target_class: the class to shift. rate: the wanted fraction of predictions in [0, 1],
            e.g. the class's share of the teacher's training labels.
        layer: the output ``nn.Linear`` (default :func:`output_layer`), which needs a bias.
        device: where to run the model (default: where its parameters are).

    Raises:
        ValueError: a bad class or rate, a layer without a bias or with the wrong number of
            outputs, or a model whose logits do not move by exactly ``delta`` (the layer is not
            its last operation); the bias is left unchanged then.
    """
    if isinstance(inputs, np.ndarray):
        if inputs.dtype.kind not in "fiu":
            raise ValueError(f"inputs must be a numeric array, got dtype {inputs.dtype}")
        inputs = torch.as_tensor(np.array(inputs, dtype=np.float32))
    if isinstance(inputs, torch.Tensor):
        inputs = (inputs, torch.full((len(inputs),), IGNORE_INDEX, dtype=torch.long))
    logits, _ = predict(model, inputs, device)
    _check_class_and_rate(target_class, rate, logits.shape[1])
    layer = layer if layer is not None else output_layer(model)
    if not isinstance(layer, nn.Linear) or layer.bias is None:
        raise ValueError(f"layer must be an nn.Linear with a bias, got {layer!r}")
    if layer.out_features != logits.shape[1]:
        raise ValueError(
            f"layer has {layer.out_features} outputs but the model gives {logits.shape[1]} "
            f"logits: pass the output layer as layer="
        )
    delta = bias_for_rate(logits, target_class, rate)
    layer.bias[target_class] += delta
    shifted, _ = predict(model, inputs, device)
    expected = logits.clone()
    expected[:, target_class] += delta
    if not torch.allclose(shifted, expected, rtol=1e-4, atol=1e-4 * max(1.0, abs(delta))):
        layer.bias[target_class] -= delta
        raise ValueError(
            "shifting layer.bias did not shift the logits by delta: layer is not the model's "
            "last operation; pass its output layer as layer="
        )
    return delta


def mean_std(values) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof = 1; 0 for a single value) of a list."""
    t = torch.as_tensor(list(values), dtype=torch.float64)
    std = t.std().item() if len(t) > 1 else 0.0
    return t.mean().item(), std
