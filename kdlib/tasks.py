"""Generated tasks: data that none of the course's datasets contain, made from a seed.

:func:`spirals` draws points of the *spiral task*: in the plane, ``arms`` spiral arms wound
around the origin, one per class; the plane is then joined by ``features - 2`` coordinates of
pure noise and the whole vector turned by a random rotation, so that no single input
coordinate is the plane. A classifier has to find the plane and cut it along the arms: a
narrow network cannot follow the arms, and a few hundred labels leave the noise directions
badly fitted, which is where a teacher's soft labels on unlabelled points help.

Notebook 13 (the capstone) distils :func:`spiral_teacher` into a small student with
:func:`spiral_task` (a transfer set with few labels and a validation split); the test split,
:func:`spiral_test`, is drawn only by the capstone's graded cell. Every part of one ``seed``
shares the rotation, and the parts are independent draws of the same distribution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from kdlib.data import IGNORE_INDEX, Split, few_labels
from kdlib.models import MLP
from kdlib.teacher_cache import train_teacher

__all__ = ["SpiralTask", "spirals", "spiral_task", "spiral_teacher", "spiral_test"]

ARMS, FEATURES, TURNS, NOISE = 3, 4, 1.0, 0.05
SIZES = {"teacher": 5000, "transfer": 3000, "val": 600, "test": 2000}
PARTS = {"teacher": 1, "transfer": 2, "val": 3, "test": 4}  # independent draws of one task
LABELLED = 200  # labels of the transfer set (the rest are -1)
TEACHER_HIDDEN, TEACHER_EPOCHS = (256, 256), 30


def spirals(
    n: int,
    seed: int = 0,
    part: int = 0,
    *,
    arms: int = ARMS,
    features: int = FEATURES,
    turns: float = TURNS,
    noise: float = NOISE,
) -> Split:
    """``n`` points of the spiral task: ``x`` ``(n, features)`` float32, ``y`` ``(n,)`` int64.

    A point of class ``c`` (drawn uniformly among ``arms``) has radius ``r = sqrt(u)``,
    ``u ~ U(0, 1)`` (uniform over the disc), and angle ``2 pi (turns r + c / arms)``; its plane
    coordinates are ``3 r (cos, sin) + 3 noise e``, ``e ~ N(0, I_2)``. The vector
    ``(plane, z)``, with ``z ~ N(0, I_{features-2})``, is multiplied by a random orthogonal
    ``(features, features)`` matrix drawn from ``seed`` alone, so every ``part`` of one seed
    (an independent draw) shares it.

    Raises ``ValueError`` naming the argument: ``n`` < 1, ``arms`` < 2, ``features`` < 2,
    ``turns`` or ``noise`` negative.
    """
    for name, value, low in (("n", n, 1), ("arms", arms, 2), ("features", features, 2)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    for name, value in (("turns", turns), ("noise", noise)):
        if not isinstance(value, (int, float)) or not value >= 0:
            raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    rotation = torch.linalg.qr(
        torch.randn(features, features, generator=torch.Generator().manual_seed(seed))
    )[0]
    g = torch.Generator().manual_seed(seed * 1009 + 7919 * (part + 1))
    y = torch.randint(0, arms, (n,), generator=g)
    r = torch.rand(n, generator=g).sqrt()
    angle = 2 * math.pi * (turns * r + y / arms)
    plane = 3 * r[:, None] * torch.stack([angle.cos(), angle.sin()], 1)
    plane = plane + 3 * noise * torch.randn(n, 2, generator=g)
    x = torch.cat([plane, torch.randn(n, features - 2, generator=g)], 1) @ rotation
    return Split(x.float().contiguous(), y)


@dataclass
class SpiralTask:
    """What the capstone's student gets: ``transfer`` (``SIZES["transfer"]`` inputs, of which
    ``LABELLED`` keep their label and the others are -1) and ``val`` (labelled); no test."""

    transfer: Split
    val: Split
    num_classes: int
    input_shape: tuple[int, ...]
    seed: int

    @property
    def in_features(self) -> int:
        return self.input_shape[0]

    def __repr__(self) -> str:
        labelled = int((self.transfer.y != IGNORE_INDEX).sum())
        return (
            f"SpiralTask(seed={self.seed}, transfer={len(self.transfer)} inputs ({labelled} "
            f"labelled), val={len(self.val)}, classes={self.num_classes}, "
            f"features={self.in_features})"
        )


def spiral_task(seed: int = 0) -> SpiralTask:
    """The capstone's data: a transfer set with ``LABELLED`` labels and a validation split."""
    transfer = spirals(SIZES["transfer"], seed, PARTS["transfer"])
    return SpiralTask(
        transfer=few_labels(transfer, LABELLED, seed=seed),
        val=spirals(SIZES["val"], seed, PARTS["val"]),
        num_classes=ARMS,
        input_shape=(FEATURES,),
        seed=seed,
    )


def spiral_test(seed: int = 0) -> Split:
    """The held-out test split of :func:`spiral_task` (``SIZES["test"]`` points)."""
    return spirals(SIZES["test"], seed, PARTS["test"])


def spiral_teacher(seed: int = 0, device=None, progress: bool | None = None) -> torch.nn.Module:
    """The capstone's teacher: ``MLP(FEATURES, (256, 256), ARMS)`` trained on its own
    ``SIZES["teacher"]`` labelled points (not given to the student), Adam 3e-3 with a cosine
    schedule for ``TEACHER_EPOCHS`` epochs; from kdlib's teacher cache when it is there."""
    data = spirals(SIZES["teacher"], seed, PARTS["teacher"])
    trained = train_teacher(
        lambda: MLP(FEATURES, TEACHER_HIDDEN, ARMS),
        data.loader(128, shuffle=True, seed=seed),
        TEACHER_EPOCHS,
        seed=seed,
        lr=3e-3,
        lr_schedule="cosine",
        device=device,
        progress=progress,
        name="SpiralTeacher",
    )
    return trained.model
