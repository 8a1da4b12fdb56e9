"""Online distillation: deep mutual learning, students that teach each other as they train.

Deep Mutual Learning (DML; Zhang, Xiang, Hospedales & Lu, CVPR 2018) needs no pre-trained
teacher. ``K >= 2`` students train together on the same batches; each one learns from the labels
and from the others' current soft outputs. With logits ``z_1 ... z_K`` ``(N, C)`` and
``p_j = softmax(z_j / tau)``, participant ``i`` minimises

    L_i = alpha * CE(y, z_i) + (1 - alpha) * 1/(K-1) * sum_{j != i} tau^2 * KL(p_j || p_i)

where the peers' outputs ``p_j`` are treated as constants (detached) in ``L_i``. As in
``kd_loss``, **alpha weights the hard term**; the paper's ``CE + KL`` (tau = 1) is alpha = 0.5
up to a factor of two (which Adam does not see). The KL term is :func:`kdlib.losses.soft_loss`.

The paper updates the students in turn (student 1 steps, then the predictions are recomputed
for student 2). Here every student steps at once from the same forward pass: one forward per
student per batch instead of ``K``, each student learning from its peers' predictions before
their step (a simultaneous rather than alternating update). Because each peer is detached in
``L_i``, the gradient of ``sum_i L_i`` with respect to student ``i``'s parameters is the
gradient of ``L_i`` alone, so one ``backward`` serves all.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from kdlib.distill import _adam, _supervised_loss, evaluate, pick_device
from kdlib.losses import _check_alpha, _check_temperature, check_logits, hard_loss, soft_loss
from kdlib.runtime import progress_enabled

__all__ = ["dml_losses", "mutual_learning"]


def dml_losses(
    logits: Sequence[torch.Tensor],
    labels: torch.Tensor | None,
    temperature: float = 1.0,
    alpha: float = 0.5,
    return_parts: bool = False,
):
    """The deep-mutual-learning loss of every participant, a list of ``K`` scalars.

    Args:
        logits: ``K >= 2`` tensors ``(N, C)``, the participants' outputs on the same batch.
        labels: ``(N,)`` classes (-1 = unlabelled, soft term only); ``None`` needs alpha = 0.
        temperature: tau of the soft term (DML uses 1).
        alpha: weight of the hard cross-entropy term; ``1 - alpha`` weights the mean KL to the
            peers.
        return_parts: also return the unweighted hard and soft parts, as
            ``(totals, hards, softs)``, each a list of ``K`` scalars.

    ``L_i = alpha * CE(y, z_i) + (1 - alpha) * mean_{j != i} tau^2 KL(p_j || p_i)``, the peers
    ``z_j`` detached. Raises ``ValueError`` for fewer than two participants or mismatched
    shapes, naming the participant.
    """
    _check_temperature(temperature)
    _check_alpha(alpha)
    logits = list(logits)
    if len(logits) < 2:
        raise ValueError(f"mutual learning needs at least 2 participants, got {len(logits)}")
    for k, z in enumerate(logits):
        check_logits(z, f"logits[{k}]")
        if z.shape != logits[0].shape:
            raise ValueError(
                f"participant {k} gave logits of shape {tuple(z.shape)} but participant 0 gave "
                f"{tuple(logits[0].shape)}: all must see the same batch and classes"
            )
    if labels is None:
        if alpha != 0:
            raise ValueError("labels=None needs alpha=0 (there is no hard term without labels)")
        hards = [z.float().sum() * 0.0 for z in logits]
    else:
        hards = [hard_loss(z, labels) for z in logits]
    k = len(logits)
    softs = []
    for i, z in enumerate(logits):
        peers = [soft_loss(z, logits[j], temperature) for j in range(k) if j != i]
        softs.append(torch.stack(peers).mean())
    totals = [alpha * h + (1.0 - alpha) * s for h, s in zip(hards, softs)]
    if return_parts:
        return totals, hards, softs
    return totals


def _dml_losses_unchecked(
    logits: list[torch.Tensor], labels: torch.Tensor, temperature: float, alpha: float
) -> torch.Tensor:
    """:func:`dml_losses` on float32 logits without its input checks, hence without a
    host-device synchronisation; returns a ``(3, K)`` tensor of totals, hards and softs.

    The same formula: ``hard_i`` is the cross-entropy over the labelled samples (a sum and a
    count, 0 when none is labelled), ``soft_i = mean_{j != i} tau^2 KL(p_j || p_i)`` per sample
    (batchmean) in log space with the peers detached. :func:`mutual_learning` uses it once
    :func:`dml_losses` has checked the loader's first batch."""
    k = len(logits)
    labels = labels.long()  # no copy when they already are int64
    log_p = [F.log_softmax(z / temperature, dim=1) for z in logits]
    tau2 = temperature * temperature
    hards, softs = [], []
    for i in range(k):
        hards.append(_supervised_loss(logits[i], None, labels))
        peers = [
            F.kl_div(log_p[i], log_p[j].detach(), reduction="batchmean", log_target=True)
            for j in range(k)
            if j != i
        ]
        softs.append(torch.stack(peers).sum() * (tau2 / (k - 1)))
    hard, soft = torch.stack(hards), torch.stack(softs)
    return torch.stack([alpha * hard + (1.0 - alpha) * soft, hard, soft])


def mutual_learning(
    students: Sequence[nn.Module],
    train_loader,
    epochs: int = 10,
    val_loader=None,
    *,
    temperature: float = 1.0,
    alpha: float = 0.5,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    optimizer: Callable | None = None,
    device: str | torch.device | None = None,
    progress: bool | None = None,
) -> list[list[dict]]:
    """Train ``students`` together by deep mutual learning; returns one history per student.

    Args:
        students: ``K >= 2`` models with the same number of classes (architectures may differ).
        train_loader: yields ``(x, y[, index])``; every student sees every batch.
        epochs: passes over ``train_loader``.
        val_loader: evaluated after each epoch for each student (accuracy, loss at tau = 1).
        temperature, alpha: of :func:`dml_losses` (alpha weights the hard term).
        lr, weight_decay: of the default optimiser, one ``Adam`` per student (fused where the
            device has a fused kernel, as in the Distiller).
        optimizer: a factory ``params -> torch.optim.Optimizer``, called once per student.
        device: where to train (default :func:`kdlib.distill.pick_device`).
        progress: a tqdm bar; ``None``: where a person watches, not under papermill, nbgrader
            or CI (see :func:`kdlib.runtime.progress_enabled`).

    Every step runs each student on the batch, computes all ``K`` losses (peers detached),
    back-propagates their sum once and steps every optimiser. History entries per epoch:
    ``epoch``, ``train_loss``, ``train_hard``, ``train_soft`` (sample-weighted means over the
    epoch), ``val_loss``, ``val_accuracy``, ``seconds``.

    Speed: as in the Distiller, the first batch runs :func:`dml_losses` with all its input
    checks and the later batches the same formula without them, so training makes **one
    host-device synchronisation per epoch** (reading the epoch's means back), plus the checks
    of the first batch and the evaluation on ``val_loader``. An epoch whose mean loss is not
    finite raises ``ValueError`` (the students diverged, or the inputs hold NaN or inf).
    """
    students = list(students)
    if len(students) < 2:
        raise ValueError(f"mutual learning needs at least 2 students, got {len(students)}")
    _check_temperature(temperature)
    _check_alpha(alpha)
    if epochs < 0:
        raise ValueError(f"epochs must be >= 0, got {epochs}")
    device = pick_device(device if device is not None else "auto")
    for s in students:
        s.to(device)
    make_optimizer = optimizer or (lambda params: _adam(params, lr, weight_decay))
    optimizers = [make_optimizer([p for p in s.parameters() if p.requires_grad]) for s in students]
    histories: list[list[dict]] = [[] for _ in students]
    show = progress_enabled(progress)
    bar = tqdm(total=epochs * len(train_loader), desc="mutual", disable=not show, leave=False)
    checked = False  # dml_losses has checked a batch of train_loader
    try:
        for epoch in range(1, epochs + 1):
            start = time.perf_counter()
            for s in students:
                s.train()
            sums = torch.zeros(3, len(students), device=device)  # total, hard, soft
            seen = 0
            for batch in train_loader:
                x = batch[0].to(device, non_blocking=True)
                y = batch[1].to(device, non_blocking=True)
                logits = [s(x).float() for s in students]
                if checked:
                    parts = _dml_losses_unchecked(logits, y, temperature, alpha)
                else:  # the loader's first batch: every input check, then the fast path
                    checked_parts = dml_losses(logits, y, temperature, alpha, return_parts=True)
                    parts = torch.stack([torch.stack(p) for p in checked_parts])
                    checked = True
                for opt in optimizers:
                    opt.zero_grad(set_to_none=True)
                parts[0].sum().backward()
                for opt in optimizers:
                    opt.step()
                sums += parts.detach() * len(y)
                seen += len(y)
                bar.update(1)
            means = (sums / max(seen, 1)).cpu().tolist()  # the epoch's one synchronisation
            if seen and not all(math.isfinite(v) for v in means[0]):
                raise ValueError(
                    f"the mutual-learning loss of epoch {epoch} is not finite ({means[0]}): a "
                    "student diverged (lower the learning rate) or the inputs contain NaN or inf"
                )
            seconds = time.perf_counter() - start
            for i, s in enumerate(students):
                record = {
                    "epoch": epoch,
                    "train_loss": means[0][i],
                    "train_hard": means[1][i],
                    "train_soft": means[2][i],
                }
                if val_loader is not None:
                    metrics = evaluate(s, val_loader, device)
                    record["val_loss"] = metrics["loss"]
                    record["val_accuracy"] = metrics["accuracy"]
                record["seconds"] = seconds
                histories[i].append(record)
            if val_loader is not None:
                accs = ", ".join(f"{h[-1]['val_accuracy']:.3f}" for h in histories)
                bar.set_postfix({"val_accuracy": accs})
    finally:
        bar.close()
    return histories
