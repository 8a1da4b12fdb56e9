"""Online distillation: deep mutual learning, students that teach each other as they train.

Deep Mutual Learning (DML; Zhang, Xiang, Hospedales & Lu, CVPR 2018) needs no pre-trained
teacher. ``K >= 2`` students train together on the same batches; each one learns from the labels
and from the others' current soft outputs. With logits ``z_1 ... z_K`` ``(N, C)`` and
``p_j = softmax(z_j / tau)``, participant ``i`` minimises

    L_i = alpha * CE(y, z_i) + (1 - alpha) * 1/(K-1) * sum_{j != i} tau^2 * KL(p_j || p_i)

where the peers' outputs ``p_j`` are treated as constants (detached) in ``L_i``. As in
``kd_loss``, **alpha weights the hard term**; the paper's ``CE + KL`` (tau = 1) is alpha = 0.5
up to a factor of two (which Adam does not see). The KL term is :func:`kdlib.losses.soft_loss`'s
(computed here from each participant's log-softmax once).

The paper updates the students in turn (student 1 steps, then the predictions are recomputed
for student 2). Here every student steps at once from the same forward pass: one forward per
student per batch instead of ``K``, each student learning from its peers' predictions before
their step (a simultaneous rather than alternating update). Because each peer is detached in
``L_i``, the gradient of ``sum_i L_i`` with respect to student ``i``'s parameters is the
gradient of ``L_i`` alone, so one ``backward`` serves all.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from kdlib.data import training_loader
from kdlib.losses import check_alpha, check_logits, check_temperature, hard_loss
from kdlib.metrics import as_class_index, evaluate
from kdlib.runtime import fit_threads_to, pick_device, progress_enabled
from kdlib.training import FirstBatchCheck, check_finite, make_optimizer

__all__ = ["dml_losses", "mutual_learning"]


def dml_losses(
    logits: Sequence[torch.Tensor],
    labels: torch.Tensor | None,
    temperature: float = 1.0,
    alpha: float = 0.5,
    return_parts: bool = False,
    check: bool = True,
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
        check: refuse bad input (below); ``False`` skips the checks, some of which read values
            back from the device, and computes the same formula.

    ``L_i = alpha * CE(y, z_i) + (1 - alpha) * mean_{j != i} tau^2 KL(p_j || p_i)``, the peers
    ``z_j`` detached; CE as in :func:`kdlib.losses.hard_loss` (over the labelled samples), KL
    per sample (batchmean) in log space, in float32. Raises ``ValueError`` for fewer than two
    participants or mismatched shapes, naming the participant.
    """
    logits = list(logits)
    if len(logits) < 2:
        raise ValueError(f"mutual learning needs at least 2 participants, got {len(logits)}")
    if check:
        check_temperature(temperature)
        check_alpha(alpha)
        for k, z in enumerate(logits):
            check_logits(z, f"logits[{k}]")
            if z.shape != logits[0].shape:
                raise ValueError(
                    f"participant {k} gave logits of shape {tuple(z.shape)} but participant 0 "
                    f"gave {tuple(logits[0].shape)}: all must see the same batch and classes"
                )
    if labels is None and alpha != 0:
        raise ValueError("labels=None needs alpha=0 (there is no hard term without labels)")
    k, tau2 = len(logits), temperature * temperature
    if labels is None:
        hards = [z.float().sum() * 0.0 for z in logits]
    else:
        hards = [hard_loss(z, labels, check=check) for z in logits]
    log_p = [F.log_softmax(z.float() / temperature, dim=1) for z in logits]
    softs = []
    for i in range(k):
        peers = [
            F.kl_div(log_p[i], log_p[j].detach(), reduction="batchmean", log_target=True)
            for j in range(k)
            if j != i
        ]
        softs.append(torch.stack(peers).sum() * (tau2 / (k - 1)))
    totals = [alpha * h + (1.0 - alpha) * s for h, s in zip(hards, softs)]
    if return_parts:
        return totals, hards, softs
    return totals


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
        device: where to train (default :func:`kdlib.runtime.pick_device`).
        progress: a tqdm bar; ``None``: where a person watches, not under papermill, nbgrader
            or CI (see :func:`kdlib.runtime.progress_enabled`).

    Every step runs each student on the batch, computes all ``K`` losses (peers detached),
    back-propagates their sum once and steps every optimiser. History entries per epoch:
    ``epoch``, ``train_loss``, ``train_hard``, ``train_soft`` (sample-weighted means over the
    epoch), ``val_loss``, ``val_accuracy``, ``seconds``.

    Speed: as in the Distiller (``kdlib.training.FirstBatchCheck``), the first batch runs
    :func:`dml_losses` with all its input checks and the later batches with ``check=False``,
    so training makes **one host-device synchronisation per epoch** (reading the epoch's means
    back), plus the checks of the first batch and the evaluation on ``val_loader``.
    ``train_loader`` may also be a ``kdlib.data.Split`` or an ``(x, y)`` pair (shuffled in
    batches of 64). An epoch whose mean loss is not
    finite raises ``ValueError`` (the students diverged, or the inputs hold NaN or inf).
    """
    students = list(students)
    if len(students) < 2:
        raise ValueError(f"mutual learning needs at least 2 students, got {len(students)}")
    check_temperature(temperature)
    check_alpha(alpha)
    if epochs < 0:
        raise ValueError(f"epochs must be >= 0, got {epochs}")
    device = pick_device(device if device is not None else "auto")
    for s in students:
        s.to(device)
    fit_threads_to(*students)
    train_loader = training_loader(train_loader)
    optimizers = [
        make_optimizer(optimizer, [p for p in s.parameters() if p.requires_grad], lr, weight_decay)
        for s in students
    ]
    histories: list[list[dict]] = [[] for _ in students]
    show = progress_enabled(progress)
    bar = tqdm(total=epochs * len(train_loader), desc="mutual", disable=not show, leave=False)
    first_batch = FirstBatchCheck()
    first_batch.start(train_loader)
    try:
        for epoch in range(1, epochs + 1):
            start = time.perf_counter()
            for s in students:
                s.train()
            sums = torch.zeros(3, len(students), device=device)  # total, hard, soft
            seen = 0
            for batch in train_loader:
                x = batch[0].to(device, non_blocking=True)
                y = as_class_index(batch[1].to(device, non_blocking=True))
                logits = [s(x).float() for s in students]
                check = first_batch.pending  # the loader's first batch: every input check
                parts = dml_losses(logits, y, temperature, alpha, return_parts=True, check=check)
                parts = torch.stack([torch.stack(p) for p in parts])  # (3, K)
                for opt in optimizers:
                    opt.zero_grad(set_to_none=True)
                parts[0].sum().backward()
                for opt in optimizers:
                    opt.step()
                first_batch.done()
                sums += parts.detach() * len(y)
                seen += len(y)
                bar.update(1)
            means = (sums / max(seen, 1)).cpu().tolist()  # the epoch's one synchronisation
            if seen:
                check_finite(means[0], epoch, "mutual-learning")
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
