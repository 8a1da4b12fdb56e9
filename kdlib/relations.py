"""Relation-based distillation: the student matches how the teacher relates samples to each other.

Instead of matching each sample's output or feature, these losses compare the *structure* of a
batch: distances, angles or similarities between the embeddings of its ``N`` samples. Because
they compare ``N x N`` (or ``N x N x N``) quantities, the student's embedding may have a
different width than the teacher's, and no adapter is needed; the batch sizes must agree.

- :func:`rkd_distance_loss`, :func:`rkd_angle_loss`, :func:`rkd_loss`: relational KD (Park,
  Kim, Lu & Cho, CVPR 2019). Distance-wise: pairwise Euclidean distances, each divided by the
  mean distance over the distinct pairs of the batch, compared with the Huber (smooth-L1) loss.
  Angle-wise: the cosine of the angle at every vertex of every triplet, compared with the
  Huber loss. Both are unchanged when an embedding is scaled, rotated or translated.
- :func:`similarity_preserving_loss`: similarity-preserving KD (Tung & Mori, ICCV 2019): the
  row-normalised Gram matrices of the two batches of features must agree.
- :class:`RelationTerm`: either loss as a ``kdlib.distill.Distiller`` term on tapped features.

Embeddings of any shape ``(N, ...)`` are flattened to ``(N, D)``. Losses are computed in
float32; the teacher's side is detached. They raise ``ValueError`` naming the argument for
fewer than 2 samples, mismatched batches, or embeddings that contain NaN or inf; the last check
reads a value back from the device, ``check=False`` skips it, and :class:`RelationTerm` runs
it on the first batch it sees only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "pairwise_distances",
    "normalised_distances",
    "rkd_distance_loss",
    "rkd_angle_loss",
    "rkd_loss",
    "similarity_matrix",
    "similarity_preserving_loss",
    "RelationTerm",
]


def _flat_pair(
    student: torch.Tensor,
    teacher: torch.Tensor,
    check: bool = True,
    names: tuple[str, str] = ("student_emb", "teacher_emb"),
) -> tuple[torch.Tensor, torch.Tensor]:
    for name, e in zip(names, (student, teacher)):
        if not isinstance(e, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(e).__name__}")
        if e.dim() < 2:
            raise ValueError(
                f"{name} must have shape (N, ...) with N samples, got {tuple(e.shape)}"
            )
        if e[0].numel() == 0:
            raise ValueError(f"{name} has no feature (shape {tuple(e.shape)})")
        if not e.is_floating_point():
            raise ValueError(f"{name} must be a floating point tensor, got dtype {e.dtype}")
        if check and not bool(torch.isfinite(e).all()):
            bad = int((~torch.isfinite(e)).sum())
            raise ValueError(f"{name} contains {bad} non-finite values (NaN or inf)")
    if student.shape[0] != teacher.shape[0]:
        raise ValueError(
            f"batch-size mismatch: student has {student.shape[0]} samples, teacher has "
            f"{teacher.shape[0]}; relations compare the same N samples on both sides"
        )
    if student.shape[0] < 2:
        raise ValueError(f"relations need at least 2 samples in the batch, got {student.shape[0]}")
    return student.flatten(1).float(), teacher.detach().flatten(1).float()


def pairwise_distances(emb: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Euclidean distances ``d[i, j] = ||e_i - e_j||_2`` of ``(N, D)`` embeddings, ``(N, N)``.

    Computed from ``||e_i||^2 + ||e_j||^2 - 2 e_i . e_j``, clamped at ``eps`` before the square
    root (so the gradient stays finite), with an exactly zero diagonal.
    """
    sq = emb.pow(2).sum(1)
    d2 = (sq[:, None] + sq[None, :] - 2.0 * emb @ emb.t()).clamp_min(eps)
    d = d2.sqrt()
    return d * (1.0 - torch.eye(len(emb), device=emb.device, dtype=d.dtype))


def normalised_distances(emb: torch.Tensor) -> torch.Tensor:
    """RKD's ``d[i, j] / mu``: :func:`pairwise_distances` of ``(N, D)`` embeddings divided by
    their mean over the ``N (N - 1)`` pairs ``i != j``, ``(N, N)``."""
    d = pairwise_distances(emb)
    off = ~torch.eye(len(emb), dtype=torch.bool, device=emb.device)
    mu = d[off].mean().clamp_min(1e-12)
    return d / mu


def rkd_distance_loss(
    student_emb: torch.Tensor, teacher_emb: torch.Tensor, check: bool = True
) -> torch.Tensor:
    """RKD distance-wise loss: ``mean_{i,j} huber(d_S[i, j] / mu_S, d_T[i, j] / mu_T)``.

    ``d[i, j]`` are Euclidean distances between the ``N`` embeddings (shape ``(N, ...)``), ``mu``
    their mean over the ``N (N - 1)`` ordered pairs ``i != j``; the Huber loss is smooth-L1 with
    threshold 1 (``0.5 x^2`` below 1, ``|x| - 0.5`` above), averaged over the ``N x N`` matrix
    (the diagonal is zero on both sides), as in the authors' code. ``check`` refuses NaN or
    inf in the embeddings.
    """
    s, t = _flat_pair(student_emb, teacher_emb, check)
    return F.smooth_l1_loss(normalised_distances(s), normalised_distances(t))


def _angles(emb: torch.Tensor) -> torch.Tensor:
    # cos[i, j, k] = <e_j - e_i, e_k - e_i> / (|e_j - e_i| |e_k - e_i|): the angle at vertex i
    diff = F.normalize(emb[None, :, :] - emb[:, None, :], p=2, dim=2)  # (N, N, D): [i, j]
    return torch.bmm(diff, diff.transpose(1, 2))  # (N, N, N)


def rkd_angle_loss(
    student_emb: torch.Tensor, teacher_emb: torch.Tensor, check: bool = True
) -> torch.Tensor:
    """RKD angle-wise loss: ``mean_{i,j,k} huber(cos_S[i, j, k], cos_T[i, j, k])``.

    ``cos[i, j, k]`` is the cosine of the angle at ``e_i`` between ``e_j - e_i`` and
    ``e_k - e_i``; a degenerate triplet (``j == i`` or ``k == i``) gives 0 on both sides. The
    mean is over all ``N^3`` entries, as in the authors' code. Memory grows as
    ``N^2 D + N^3``: keep batches modest (64-128). ``check`` refuses NaN or inf.
    """
    s, t = _flat_pair(student_emb, teacher_emb, check)
    return F.smooth_l1_loss(_angles(s), _angles(t))


def rkd_loss(
    student_emb: torch.Tensor,
    teacher_emb: torch.Tensor,
    distance_weight: float = 25.0,
    angle_weight: float = 50.0,
    check: bool = True,
) -> torch.Tensor:
    """Relational KD: ``distance_weight * L_distance + angle_weight * L_angle``.

    The default weights 25 and 50 are those of Park et al. 2019 and RepDistiller. Embeddings
    ``(N, ...)`` of the same batch; their widths may differ. ``check`` refuses NaN or inf
    (checked once, not once per part).
    """
    _flat_pair(student_emb, teacher_emb, check)
    loss = student_emb.new_zeros((), dtype=torch.float32)
    if distance_weight:
        loss = loss + distance_weight * rkd_distance_loss(student_emb, teacher_emb, check=False)
    if angle_weight:
        loss = loss + angle_weight * rkd_angle_loss(student_emb, teacher_emb, check=False)
    return loss


def similarity_matrix(feature: torch.Tensor) -> torch.Tensor:
    """Tung & Mori's ``G = normalise_rows(Q Q^T)`` for ``Q = feature.flatten(1)``, ``(N, N)``."""
    q = feature.flatten(1).float()
    return F.normalize(q @ q.t(), p=2, dim=1)


def similarity_preserving_loss(
    student_feature: torch.Tensor, teacher_feature: torch.Tensor, check: bool = True
) -> torch.Tensor:
    """Similarity-preserving KD: ``||G_S - G_T||_F^2 / N^2``.

    ``G = normalise_rows(Q Q^T)`` with ``Q`` the features flattened to ``(N, D)`` and each row
    of the ``(N, N)`` Gram matrix divided by its L2 norm (Tung & Mori 2019, eq. 2-4). Widths may
    differ; the batch size ``N`` must agree. ``check`` refuses NaN or inf in the features.
    """
    names = ("student_feature", "teacher_feature")
    s, t = _flat_pair(student_feature, teacher_feature, check, names)
    n = s.shape[0]
    return (similarity_matrix(s) - similarity_matrix(t)).pow(2).sum() / (n * n)


class RelationTerm(nn.Module):
    """A relation-based loss on tapped features as a ``Distiller`` term.

    Args:
        student_layer, teacher_layer: module names to tap, e.g. ``"pool"`` (the penultimate
            embedding, as in RKD) or a block's feature map (SP uses the last block).
        kind: ``"rkd"`` (:func:`rkd_loss`) or ``"sp"`` (:func:`similarity_preserving_loss`).
        weight: the term's weight in the total loss (SP's paper uses 3000 on CIFAR; RKD's own
            weights are ``distance_weight`` / ``angle_weight``, so 1 is its natural value).
        name: the history key; defaults to ``kind``.
        **loss_kwargs: passed to the loss (``distance_weight``, ``angle_weight`` for RKD).

    The first batch's features are checked for NaN and inf; later batches are not (no
    host-device synchronisation per step).
    """

    def __init__(
        self,
        student_layer: str,
        teacher_layer: str,
        kind: str = "rkd",
        weight: float = 1.0,
        name: str | None = None,
        **loss_kwargs,
    ):
        super().__init__()
        losses = {"rkd": rkd_loss, "sp": similarity_preserving_loss}
        if kind not in losses:
            raise ValueError(f"kind must be one of {', '.join(map(repr, losses))}, got {kind!r}")
        self.kind, self.loss_fn, self.loss_kwargs = kind, losses[kind], loss_kwargs
        self.student_layer, self.teacher_layer = student_layer, teacher_layer
        self.student_features = [student_layer]
        self.teacher_features = [teacher_layer]
        self.weight = weight
        self.name = name or kind

    def forward(self, batch) -> torch.Tensor:
        """``batch``: a ``kdlib.distill.Batch`` with the tapped features; returns a scalar."""
        s = batch.student_features.get(self.student_layer)
        t = batch.teacher_features.get(self.teacher_layer)
        if s is None or t is None:
            side, layer, got = (
                ("student", self.student_layer, batch.student_features)
                if s is None
                else ("teacher", self.teacher_layer, batch.teacher_features)
            )
            raise ValueError(
                f"no {side} feature {layer!r} in the batch (tapped: {', '.join(got) or 'none'})"
            )
        loss = self.loss_fn(s, t, check=getattr(batch, "check", True), **self.loss_kwargs)
        return loss

    def extra_repr(self) -> str:
        return (
            f"{self.kind}: {self.student_layer!r} -> {self.teacher_layer!r}, weight={self.weight}"
        )
