"""The teacher-logit cache: a frozen teacher's logits of every training sample, computed once.

Without augmentation, a frozen teacher gives the same logits for a sample every epoch, so
``Distiller(cache_teacher=True)`` computes them during the first epoch and looks them up
afterwards: the teacher runs once per sample in all. (Not to be confused with
``kdlib.teacher_cache``, which keeps *trained teachers* on disk across notebooks and runs.)

The cache is keyed by dataset index (batches ``(x, y, index)``, e.g. a ``TensorLoader`` with
``return_index=True``) and refuses a loader with a random transform, whose inputs change from
epoch to epoch. Under torchrun each rank fills the rows of its share of the epoch, and
:meth:`TeacherLogitCache.end_epoch` merges the ranks' rows.
"""

from __future__ import annotations

import torch

from kdlib import distributed as kdist

__all__ = ["TeacherLogitCache"]


def _is_random_loader(loader) -> bool:
    if getattr(loader, "transform", None) is not None:
        return True
    dataset = getattr(loader, "dataset", None)
    return getattr(dataset, "transform", None) is not None


class TeacherLogitCache:
    """Teacher logits ``(N, C)`` of a dataset's ``N`` samples, filled batch by batch.

    ``logits`` ``(N, C)`` on ``device`` (allocated at the first :meth:`store`, when ``C`` is
    known), ``filled`` ``(N,)`` bool, and ``complete``: every sample is cached, so
    :meth:`lookup` is one ``index_select`` with no check (no host-device synchronisation).
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.size = 0
        self.logits: torch.Tensor | None = None
        self.filled: torch.Tensor | None = None
        self.complete = False

    def __repr__(self) -> str:
        classes = None if self.logits is None else self.logits.shape[1]
        return f"TeacherLogitCache(size={self.size}, classes={classes}, complete={self.complete})"

    @staticmethod
    def check_usable(augment, teachers, teacher_features) -> None:
        """Refuse the cache where it cannot hold: with ``augment`` (the student sees a new
        view each step), without a teacher, or with terms that tap the teacher's features."""
        if augment is not None:
            raise ValueError(
                "cache_teacher=True was refused with augment: cached logits belong to the "
                "un-augmented images, while the student sees a new view each step. For "
                "consistent teaching keep augment and set cache_teacher=False (the teacher "
                "sees the same view as the student); for precomputed teacher outputs drop augment"
            )
        if not teachers:
            raise ValueError("cache_teacher=True needs a teacher")
        if teacher_features:
            raise ValueError(
                "cache_teacher=True caches logits only, but the terms tap teacher features "
                f"({', '.join(teacher_features)}): the teacher must run every step"
            )

    def prepare(self, loader) -> None:
        """Get ready for an epoch over ``loader``: refuse a random one, and start afresh when
        its dataset has another size than the one cached."""
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
        if self.logits is not None and self.logits.shape[0] != n:
            self.logits = self.filled = None  # a different dataset
        self.size = n
        self.complete = self.filled is not None and bool(self.filled.all())

    def lookup(self, index: torch.Tensor) -> torch.Tensor | None:
        """The cached logits of the samples ``index`` ``(B,)``, or None unless all are cached
        (a host-device synchronisation per call until the cache is complete)."""
        if index is None:
            raise ValueError(
                "cache_teacher=True needs batches (x, y, index): use a TensorLoader with "
                "return_index=True (the cache is keyed by dataset index)"
            )
        if self.complete:
            return self.logits.index_select(0, index)
        if self.logits is not None and bool(self.filled[index].all()):
            return self.logits[index]
        return None

    def store(self, index: torch.Tensor, logits: torch.Tensor) -> None:
        """Keep the teacher's ``logits`` ``(B, C)`` of the samples ``index`` ``(B,)``."""
        if self.logits is None:
            self.logits = torch.zeros((self.size, logits.shape[1]), device=self.device)
            self.filled = torch.zeros(self.size, dtype=torch.bool, device=self.device)
        self.logits[index] = logits.detach().float()
        self.filled[index] = True

    def end_epoch(self, world_size: int = 1) -> None:
        """After an epoch: merge the ranks' rows (several ranks), then note whether every
        sample is cached (one synchronisation)."""
        if self.complete or self.logits is None:
            return
        if world_size > 1:
            self.merge_shards()
        self.complete = bool(self.filled.all())

    def merge_shards(self) -> None:
        """Add up the ranks' caches (each filled on its share of the epoch): one all-reduce of
        the logits and of the filled flags; a sample cached on two ranks (the padding of
        :func:`kdlib.distributed.shard_indices`) gets the mean of its two copies."""
        flags = self.filled.to(self.logits.dtype)
        table = torch.cat([self.logits * flags[:, None], flags[:, None]], dim=1)
        table = kdist.all_reduce_sum(table)
        counts = table[:, -1]
        self.logits = table[:, :-1] / counts.clamp_min(1)[:, None]
        self.filled = counts > 0
